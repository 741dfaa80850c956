package serialline

import (
	"bytes"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// pipeConsole is a console made of two real pipes, as a guest's pty is
// one file both ways.
type pipeConsole struct {
	r *os.File // what the guest wrote
	w *os.File // what the guest reads
}

func (c *pipeConsole) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *pipeConsole) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *pipeConsole) Close() error                { c.r.Close(); return c.w.Close() }

// guest makes a console and returns the guest's ends.
func guest(t *testing.T) (*pipeConsole, *os.File, *os.File) {
	t.Helper()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outW.Close(); inR.Close() })
	return &pipeConsole{r: outR, w: inW}, outW, inR
}

func readN(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	buf := make([]byte, n)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(r, buf); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no output")
	}
	return string(buf)
}

func TestLineSpansRestarts(t *testing.T) {
	l := New()
	defer l.Close()
	if _, err := l.Write([]byte("x")); machine.ErrnoOf(err) != syscall.EIO {
		t.Fatalf("write with no console: %v, want EIO", err)
	}
	c1, out1, in1 := guest(t)
	l.Attach(c1)
	out1.Write([]byte("boot1\n"))
	if got := readN(t, l, 6); got != "boot1\n" {
		t.Fatalf("first life: %q", got)
	}
	if _, err := l.Write([]byte("ls\n")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, in1, 3); got != "ls\n" {
		t.Fatalf("input: %q", got)
	}
	out1.Close() // the guest stops: its console ends
	c2, out2, _ := guest(t)
	l.Attach(c2)
	out2.Write([]byte("boot2\n"))
	if got := readN(t, l, 6); got != "boot2\n" {
		t.Fatalf("second life: %q", got)
	}
}

func TestLineCloseEndsRead(t *testing.T) {
	l := New()
	c, out, _ := guest(t)
	l.Attach(c)
	out.Write(bytes.Repeat([]byte("y"), 100)) // nobody reads: the pump blocks
	time.Sleep(10 * time.Millisecond)
	l.Close()
	if _, err := io.ReadAll(l); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read after close: %v", err)
	}
	c2, _, _ := guest(t)
	l.Attach(c2) // closed at once
	if _, err := c2.w.Write([]byte("z")); err == nil {
		t.Fatal("a console attached after Close was not closed")
	}
}
