package model_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
)

// pipeGuest is a test driver whose machine is only a console: a kernel
// pipe pair the test writes as the guest would, held as a guest driver
// holds its pty (machine.SerialHolder). It is a stand-in, said so: it lets
// a model test flood a console past the backlog, or stop reading it, at
// an exact moment. The same through real guests and the mount is in
// tests/ (TestIPMISerial's readers and writer, TestQEMUGuest's paused
// guest that does not read its serial).
type pipeGuest struct {
	console pipeEnds
	guest   *os.File // the guest's end: what it writes is console output
	input   *os.File // the guest's end: what it reads is console input
}

func (g *pipeGuest) Kind() string                                       { return "pipeguest" }
func (g *pipeGuest) Close() error                                       { return g.console.Close() }
func (g *pipeGuest) HasSerial() bool                                    { return true }
func (g *pipeGuest) HoldsSerial()                                       {}
func (g *pipeGuest) Serial(context.Context) (io.ReadWriteCloser, error) { return g.console, nil }

type pipeEnds struct{ r, w *os.File }

func (p pipeEnds) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p pipeEnds) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p pipeEnds) Close() error                { p.r.Close(); return p.w.Close() }

func pipeGuestSpec(t *testing.T, guests chan<- *pipeGuest) machine.DriverSpec {
	return machine.DriverSpec{Name: "pipeguest", Doc: "test only: a console of kernel pipes", New: func(ctx context.Context, env machine.DriverEnv) (machine.Driver, error) {
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		inR, inW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { outW.Close(); inR.Close() })
		g := &pipeGuest{console: pipeEnds{r: outR, w: inW}, guest: outW, input: inR}
		guests <- g
		return g, nil
	}}
}

// A reader that falls more than the backlog behind a flooding guest is
// told how much it missed and goes on from the oldest byte kept; the
// guest never waits for it; a new reader starts with the backlog; one
// writer at a time.
func TestSerialSlowReaderSkips(t *testing.T) {
	h, g := addPipeGuest(t)
	ctx := context.Background()
	slow, err := h.OpenSerial(ctx, true, model.Caller{Pid: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := h.OpenSerial(ctx, true, model.Caller{Pid: 2}); machine.ErrnoOf(err) != syscall.EBUSY {
		t.Fatalf("second writer: %v, want EBUSY", err)
	}

	// 200 KiB of output, then a last line: the guest's writes all return
	// though nobody reads.
	chunk := bytes.Repeat([]byte("x"), 1024)
	for range 200 {
		if _, err := g.guest.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	g.guest.Write([]byte("\nlast line\n"))

	fresh, err := h.OpenSerial(ctx, false, model.Caller{Pid: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	got := readUntil(t, slow, "last line\n")
	// What was still in the pipe when the writes returned arrives after
	// the reader joined: the backlog and at most a pipe's worth more.
	if !strings.Contains(got, "bytes of serial output lost") || len(got) > 2*model.SerialBacklog+200 {
		t.Fatalf("slow reader got %d bytes, want the lost note and not all 200 KiB:\n%.200q", len(got), got)
	}
	if got := readUntil(t, fresh, "last line\n"); len(got) > 2*model.SerialBacklog {
		t.Fatalf("new reader got %d bytes: %.200q", len(got), got)
	}
}

// A guest that never reads its console blocks the write of its input:
// Ctrl-C (the write's context) ends the writer's wait with EINTR, the
// next write too while the first is still pending, and once the guest
// reads, writes go through again.
func TestSerialWriteToDeafGuestIsInterruptible(t *testing.T) {
	h, g := addPipeGuest(t)
	w, err := h.OpenSerial(context.Background(), true, model.Caller{Pid: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	big := bytes.Repeat([]byte("y"), 1<<20) // more than a pipe holds
	for i, what := range []string{"the blocked write", "a write behind it"} {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(100 * time.Millisecond); cancel() }() // Ctrl-C
		if _, err := w.Write(ctx, big); machine.ErrnoOf(err) != syscall.EINTR {
			t.Fatalf("%d: %s: %v, want EINTR", i, what, err)
		}
	}
	go io.Copy(io.Discard, g.input) // the guest starts reading
	if n, err := w.Write(context.Background(), []byte("ls\n")); err != nil || n != 3 {
		t.Fatalf("write once the guest reads: %d, %v", n, err)
	}
}

// addPipeGuest adds a host whose driver is a pipeGuest to a new tree.
func addPipeGuest(t *testing.T) (*model.Host, *pipeGuest) {
	t.Helper()
	guests := make(chan *pipeGuest, 1)
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: []machine.DriverSpec{pipeGuestSpec(t, guests)}})
	t.Cleanup(tree.Close)
	cf := &model.ConfigFile{}
	cf.Set("drivers", "pipeguest")
	h, err := tree.Add(context.Background(), nil, "g", cf, model.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	return h, <-guests
}

// readUntil reads s until its output ends with want.
func readUntil(t *testing.T, s *model.SerialSession, want string) string {
	t.Helper()
	var out []byte
	buf := make([]byte, 8192)
	for !bytes.HasSuffix(out, []byte(want)) {
		ctx, cancel := context.WithTimeout(context.Background(), 10e9)
		n, err := s.Read(ctx, buf)
		cancel()
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(out), err)
		}
		out = append(out, buf[:n]...)
	}
	return string(out)
}
