package tests

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/internal/procfs"
)

// A write that waits (`on wait`) must not hold back the other writers of
// the file: the kernel holds the file's inode lock for the whole of a
// WRITE, and every other writer needs it (the truncation of `>` too).

// slowHost adds a host whose power-on takes far longer than any bound the
// tests wait for, and starts `on wait` on it; it returns once power reads
// starting.
func slowHost(t *testing.T, d *daemon) *started {
	t.Helper()
	d.addHost("slow", "drivers = sim\nsim.on-delay = 90s")
	waiter := startBash(t, d.mnt, "echo 'on wait' > hosts/slow/power")
	eventually(t, "power starting", func() bool { return d.sh("cat hosts/slow/power").out == "starting\n" })
	return waiter
}

// started is a bash -c running in the background.
type started struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan result
}

func startBash(t *testing.T, dir, script string) *started {
	t.Helper()
	s := &started{cmd: exec.Command("bash", "-c", script), out: &bytes.Buffer{}, done: make(chan result, 1)}
	s.cmd.Dir = dir
	var errb bytes.Buffer
	s.cmd.Stdout, s.cmd.Stderr = s.out, &errb
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("bash -c %q: %v", script, err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill() })
	go func() {
		err := s.cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		s.done <- result{out: s.out.String(), err: errb.String(), code: code}
	}()
	return s
}

// within waits for r until bound has passed; the bound is a failure
// criterion (something hangs), far above what the step takes.
func within(t *testing.T, what string, bound time.Duration, r <-chan result) result {
	t.Helper()
	select {
	case res := <-r:
		return res
	case <-time.After(bound):
		t.Fatalf("%s: still running after %s", what, bound)
		return result{}
	}
}

// 199 writers of a file whose `on wait` is in flight all get EBUSY while
// the wait goes on, and `off force` overrides it: the waiter gets
// ECANCELED. Before, they all slept uninterruptibly until the wait ended,
// and so did `off force`.
func TestWritersDuringWait(t *testing.T) {
	t.Parallel()
	d := start(t)
	waiter := slowHost(t, d)

	const n = 199
	all := make(chan result, n)
	for i := 0; i < n; i++ {
		s := startBash(t, d.mnt, "echo on > hosts/slow/power")
		go func() { all <- <-s.done }()
	}
	for i := 0; i < n; i++ {
		r := within(t, fmt.Sprintf("writer %d of %d during a wait", i+1, n), 60*time.Second, all)
		if r.code == 0 || !strings.Contains(r.err, "Device or resource busy") {
			t.Fatalf("a writer during the wait: exit %d stderr %q, want EBUSY", r.code, r.err)
		}
	}
	if p := d.read("hosts/slow/power"); p != "starting\n" {
		t.Fatalf("power after the writers = %q, want starting (the wait still in flight)", p)
	}
	if ev := d.read("hosts/slow/events.log"); strings.Count(ev, `"on" uid=0`) != n || strings.Count(ev, "refused: busy") != n {
		t.Fatalf("events do not show %d refused writers:\n%s", n, ev)
	}

	force := startBash(t, d.mnt, "echo 'off force' > hosts/slow/power")
	if r := within(t, "off force during a wait", 20*time.Second, force.done); r.code != 0 {
		t.Fatalf("off force during a wait: exit %d stderr %q", r.code, r.err)
	}
	r := within(t, "the overridden waiter", 20*time.Second, waiter.done)
	if r.code == 0 || !strings.Contains(r.err, "Operation canceled") {
		t.Fatalf("overridden on wait: exit %d stderr %q, want ECANCELED", r.code, r.err)
	}
	eventually(t, "power off", func() bool { return d.sh("cat hosts/slow/power").out == "off\n" })
}

// A writer that comes while a wait is in flight can be interrupted, and so
// can the waiter; the command goes on. Before, the writer slept in the
// kernel (D state) until the wait ended and SIGINT did nothing.
func TestWritersDuringWaitInterruptible(t *testing.T) {
	t.Parallel()
	d := start(t)
	waiter := slowHost(t, d)

	// The writer opens the file (and truncates it) and keeps it open.
	s := startBash(t, d.mnt, "exec 3> hosts/slow/power; exec sleep 600")
	pid := s.cmd.Process.Pid
	// Its open and truncation go through while the wait goes on (before,
	// it slept in do_truncate until the wait ended).
	eventually(t, "the writer past its open", func() bool { return procStat(pid).comm == "sleep" })
	syscall.Kill(pid, syscall.SIGINT)
	within(t, "an interrupted writer during a wait", 20*time.Second, s.done)

	// The waiter itself: Ctrl-C ends its wait, not the command.
	if p := d.read("hosts/slow/power"); p != "starting\n" {
		t.Fatalf("power = %q, want starting", p)
	}
	syscall.Kill(waiter.cmd.Process.Pid, syscall.SIGINT)
	r := within(t, "the interrupted waiter", 20*time.Second, waiter.done)
	if r.code == 0 {
		t.Fatalf("interrupted waiter exited 0")
	}
	if p := d.read("hosts/slow/power"); p != "starting\n" {
		t.Fatalf("power after the interrupted wait = %q, want starting (the command goes on)", p)
	}
	d.ok("echo 'off force' > hosts/slow/power")
}

// SIGTERM unmounts at once, and the waits in flight fail with ESHUTDOWN.
// Before, the daemon exited only when the wait ended.
func TestStopEndsWaits(t *testing.T) {
	t.Parallel()
	d := start(t)
	waiter := slowHost(t, d)
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("machinefs did not exit within 10s of SIGTERM with a wait in flight")
	}
	if mounted(d.mnt) {
		t.Fatalf("%s still mounted after SIGTERM", d.mnt)
	}
	r := within(t, "the waiter at SIGTERM", 10*time.Second, waiter.done)
	if r.code == 0 || !strings.Contains(r.err, "Cannot send after transport endpoint shutdown") {
		t.Fatalf("on wait at SIGTERM: exit %d stderr %q, want ESHUTDOWN", r.code, r.err)
	}
	if !strings.Contains(d.log.String(), "a wait in flight ends with ESHUTDOWN") {
		t.Fatalf("the log does not say why the wait ended:\n%s", d.log)
	}
}

type pstat struct{ comm, state string }

// procStat reads a process's name and state ("" when it has gone).
func procStat(pid int) pstat {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return pstat{}
	}
	return pstat{comm: st.Comm, state: string(st.State)}
}
