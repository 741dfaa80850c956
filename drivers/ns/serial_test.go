package ns

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

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
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

func (o *output) has(s string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Contains(o.buf.String(), s)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// shellRoot is a subhost root whose init is busybox sh, as the subhost
// scripts' "control start" gives a shell as the console.
func (f *fixture) shellRoot() string {
	dir := f.root()
	if err := os.WriteFile(filepath.Join(dir, "init"), []byte("#!/bin/sh\nexec /bin/sh\n"), 0o755); err != nil {
		f.t.Fatal(err)
	}
	return dir
}

func serialOf(t *testing.T, d *Subhost) (io.ReadWriteCloser, *output) {
	t.Helper()
	s, err := d.Serial(context.Background())
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
	deadline := time.Now().Add(10 * time.Second)
	for !o.has(want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console after %q; it says:\n%s", want, line, o)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The init's console is a pty: a shell as init answers through Serial,
// with the console as its controlling terminal; the console survives the
// driver (a daemon restart) and the next driver's Serial reaches the same
// shell; off ends the console's holder.
func TestSerialNSShell(t *testing.T) {
	f := setup(t)
	c := f.cfg("ns.root", f.shellRoot())
	d, r := f.open("mfns1", c)
	if !d.HasSerial() {
		t.Fatal("no serial")
	}
	s, o := serialOf(t, d)
	if _, err := s.Write([]byte("x")); machine.ErrnoOf(err) != syscall.EIO {
		t.Fatalf("write while off: %v, want EIO", err)
	}
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	typeIn(t, s, o, "echo hello-$((6*7))", "hello-42")
	// A real console: a terminal, and the controlling one (ash turns job
	// control off, saying so, without one).
	typeIn(t, s, o, "[ -t 0 ] && [ -t 1 ] && echo is-a-$((1+1))-tty", "is-a-2-tty")
	if o.has("job control turned off") {
		t.Fatalf("the console is not the shell's controlling terminal:\n%s", o)
	}
	holder := d.rec.Holder
	d.Close()
	<-o.end // Close ends the stream
	if procStart(holder) == 0 {
		t.Fatal("the console holder ended with the driver")
	}
	d2, r2 := f.open("mfns1", c)
	if st := r2.power(); st.Power != machine.PowerOn {
		t.Fatalf("after adoption: %+v", st)
	}
	s2, o2 := serialOf(t, d2)
	typeIn(t, s2, o2, "echo again-$((2*3))", "again-6")
	f.power(d2, "off")
	waitPower(t, r2, machine.PowerOff)
	netns.WaitFor(t, 10*time.Second, "console holder gone", func() bool { return procStart(holder) == 0 })
	if _, err := os.Stat(consolePath(f.state, "mfns1")); err == nil {
		t.Fatal("console socket left after off")
	}
	if _, err := s2.Write([]byte("x")); machine.ErrnoOf(err) != syscall.EIO {
		t.Fatalf("write after off: %v, want EIO", err)
	}
}
