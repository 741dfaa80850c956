package uml_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/drivers/uml"
	"github.com/machinefs/machinefs/machine"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// output collects what a serial stream says, as the model would.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
	end chan struct{}
}

func collect(r io.Reader) *output {
	o := &output{end: make(chan struct{})}
	go func() {
		defer close(o.end)
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			o.mu.Lock()
			o.buf.Write(b[:n])
			o.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return o
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func (o *output) wait(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(o.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console; it says:\n%s", want, o)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serialOf(t *testing.T, m *uml.Machine) (io.ReadWriteCloser, *output) {
	t.Helper()
	s, err := m.Serial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s, collect(s)
}

func typeIn(t *testing.T, s io.Writer, o *output, line, want string) {
	t.Helper()
	if _, err := s.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("typing %q: %v", line, err)
	}
	o.wait(t, want)
}

// ShellRC starts a shell on the guest's console.
const ShellRC = "#!/bin/sh\nmount -t devtmpfs dev /dev 2>/dev/null\nsh -i </dev/console >/dev/console 2>&1 &\n"

// The guest's console (con0, and linux's own output) is a pty held by a
// console holder: its boot lines and a shell on it answer through Serial,
// and after the driver is closed (a daemon restart) the next driver's
// Serial reaches the same shell. Off ends the holder; the console log is
// still written, by the holder.
func TestSerialUMLConsole(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	if err := os.WriteFile(filepath.Join(root, "etc/rc"), []byte(ShellRC), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}
	r := &recorder{}
	m := newMachine(t, cfg, r)
	defer func() { m.Remove(context.Background()); m.Close() }()
	s, o := serialOf(t, m)
	if _, err := s.Write([]byte("x")); machine.ErrnoOf(err) != syscall.EIO {
		t.Fatalf("write while off: %v, want EIO", err)
	}
	if err := m.Power(context.Background(), machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	o.wait(t, "Run /init as init process")
	waitFor(t, "on", func() bool { return r.last().Power == machine.PowerOn })
	typeIn(t, s, o, "echo uml-$((6*7))", "uml-42")
	if b, _ := os.ReadFile(m.ConsoleLog()); !strings.Contains(string(b), "uml-42") {
		t.Fatalf("console log lacks the console's output:\n%s", b)
	}
	m.Close()
	<-o.end
	r2 := &recorder{}
	m = newMachine(t, cfg, r2)
	if st := r2.last(); st.Power != machine.PowerOn {
		t.Fatalf("after adoption: %+v", st)
	}
	s2, o2 := serialOf(t, m)
	typeIn(t, s2, o2, "echo again-$((2*3))", "again-6")
	if err := m.Power(context.Background(), machine.Command{Verb: "off"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "off", func() bool { return r2.last().Power == machine.PowerOff })
	waitFor(t, "console socket gone", func() bool {
		_, err := os.Stat(filepath.Join(dir, "ut1.machinefs", "console.sock"))
		return err != nil
	})
	if _, err := s2.Write([]byte("x")); machine.ErrnoOf(err) != syscall.EIO {
		t.Fatalf("write after off: %v, want EIO", err)
	}
}
