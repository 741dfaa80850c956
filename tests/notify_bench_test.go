package tests

// BenchmarkInotifyWake: how long after a change an inotify watcher wakes
// (issue 19: within 2x of tmpfs). A watcher on a host's state file, as
// `inotifywait -m hosts/lab02/state` is, wakes through the notifier: the
// change is made by a write of `on` to the host's power (the host is on,
// so the command changes only state's last-command line), and the notifier
// invalidates state and has the poker write to it. The baseline is a write
// to a tmpfs file with a watcher on that file, in the same run.
//
//	ns/op           machinefs: from the start of the write to power until
//	                the watcher of state wakes
//	tmpfs-ns/op     tmpfs: from the start of the write until its watcher
//	                wakes; x-tmpfs is their ratio
//	write-ns        the write to power itself (open, write, close), and
//	after-write-ns  the rest: the daemon-side part of the wake-up (0 when
//	                the watcher woke before the writer's close returned)

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// watcher is an inotify instance watching one file for IN_MODIFY.
type watcher struct {
	b  *testing.B
	fd int
}

// newWatcher watches a file for IN_MODIFY.
func newWatcher(b *testing.B, path string) *watcher { return watchFor(b, path, unix.IN_MODIFY) }

// watchFor watches path for the events of mask, with its own inotify
// descriptor.
func watchFor(b *testing.B, path string, mask uint32) *watcher {
	b.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, path, mask); err != nil {
		b.Fatalf("watch %s: %v", path, err)
	}
	return &watcher{b: b, fd: fd}
}

// wait blocks until an event is there (it is left to drain).
func (w *watcher) wait() {
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 10_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			w.b.Fatalf("no inotify event within 10 s (%v)", err)
		}
		return
	}
}

// drain lets the events of the last change come (the poker writes each
// changed file once; a change may come with a second one, such as the
// command's own), then reads them all.
func (w *watcher) drain() {
	time.Sleep(3 * time.Millisecond)
	buf := make([]byte, 64<<10)
	for {
		if _, err := unix.Read(w.fd, buf); err != nil {
			return
		}
	}
}

// truncWrite writes line to path as `echo line > path` does: open with
// truncation, one write, close.
func truncWrite(b *testing.B, path, line string) {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_TRUNC|syscall.O_CLOEXEC, 0)
	if err != nil {
		b.Fatalf("open %s: %v", path, err)
	}
	if _, err := syscall.Write(fd, []byte(line)); err != nil {
		b.Fatalf("write %s: %v", path, err)
	}
	syscall.Close(fd)
}

func BenchmarkInotifyWake(b *testing.B) {
	d, _ := startBench(b, "hosts/lab02/power", "--demo")
	power := filepath.Join(d.mnt, "hosts/lab02/power")
	if p, err := os.ReadFile(power); err != nil || string(p) != "on\n" {
		b.Fatalf("demo host lab02: power %q, %v; want on", p, err)
	}
	tmp := filepath.Join(benchTmpfs(b), "state")
	if err := os.WriteFile(tmp, []byte("x\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	fuseW := newWatcher(b, filepath.Join(d.mnt, "hosts/lab02/state"))
	tmpW := newWatcher(b, tmp)

	var wake, write, tmpfsWake time.Duration
	round := func() (w, wr, t time.Duration) {
		t0 := time.Now()
		truncWrite(b, power, "on\n")
		t1 := time.Now()
		fuseW.wait()
		t2 := time.Now()
		fuseW.drain()
		t3 := time.Now()
		truncWrite(b, tmp, "x\n")
		tmpW.wait()
		t4 := time.Now()
		tmpW.drain()
		return t2.Sub(t0), t1.Sub(t0), t4.Sub(t3)
	}
	round() // the first change looks state up for the poker
	b.ResetTimer()
	for range b.N {
		w, wr, t := round()
		wake, write, tmpfsWake = wake+w, write+wr, tmpfsWake+t
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(wake.Nanoseconds())/n, "ns/op")
	b.ReportMetric(float64(tmpfsWake.Nanoseconds())/n, "tmpfs-ns/op")
	b.ReportMetric(float64(wake)/float64(tmpfsWake), "x-tmpfs")
	b.ReportMetric(float64(write.Nanoseconds())/n, "write-ns")
	b.ReportMetric(max(0, float64((wake-write).Nanoseconds())/n), "after-write-ns")
}
