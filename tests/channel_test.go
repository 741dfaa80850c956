package tests

// The FUSE channel stays with the daemon (issue 13): no process the daemon
// starts holds /dev/fuse, a killed daemon's mount fails at once instead of
// hanging, and the next daemon clears any stale mount by itself.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/internal/procfs"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// procTree returns the roots and all their descendants (by the parent pid
// in /proc/PID/stat).
func procTree(roots ...int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := procfs.ReadStat(pid); err == nil {
			children[st.Ppid] = append(children[st.Ppid], pid)
		}
	}
	var out []int
	seen := map[int]bool{}
	for queue := roots; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
		queue = append(queue, children[p]...)
	}
	return out
}

// holdsFUSE reports whether process pid has /dev/fuse open. (A subhost
// that inherited it after its pivot_root would still see the host's path.)
func holdsFUSE(pid int) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && (l == "/dev/fuse" || strings.HasSuffix(l, "/dev/fuse")) {
			return true
		}
	}
	return false
}

// isPoker reports whether pid is a machinefs poker (fs/poker.go).
func isPoker(pid int) bool {
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	return bytes.Contains(env, []byte("MACHINEFS_POKER=1\x00"))
}

// checkChannel fails the test unless the daemon holds /dev/fuse and no
// other process of its tree, nor of the extra roots (adopted subhosts and
// guests), does. want are pids that must be among those checked.
func checkChannel(t *testing.T, daemonPid int, extra []int, want ...int) {
	t.Helper()
	if !holdsFUSE(daemonPid) {
		t.Fatalf("the daemon (%d) has no /dev/fuse open: the check sees nothing", daemonPid)
	}
	procs := procTree(append([]int{daemonPid}, extra...)...)
	checked := map[int]bool{}
	poker := false
	for _, pid := range procs {
		checked[pid] = true
		poker = poker || isPoker(pid)
		if pid != daemonPid && holdsFUSE(pid) {
			cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("process %d (%s), started by the daemon, holds /dev/fuse", pid, bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
		}
	}
	for _, pid := range want {
		if !checked[pid] {
			t.Fatalf("process %d is not among the daemon's (%v)", pid, procs)
		}
	}
	if !poker {
		t.Fatalf("no poker among the daemon's processes %v", procs)
	}
}

// failsNotConnected runs a command on the dead mount with a hard timeout
// (a hung FUSE request is only ended by SIGKILL) and wants "Transport
// endpoint is not connected".
func failsNotConnected(t *testing.T, args ...string) {
	t.Helper()
	r := runIn(t, "/", "timeout", append([]string{"-s", "KILL", "5"}, args...)...)
	if r.code == 0 || !strings.Contains(r.err, "Transport endpoint is not connected") {
		t.Errorf("%v on the killed daemon's mount: exit %d, stderr %q; want a failure with ENOTCONN, not a hang (exit 137)", args, r.code, r.err)
	}
}

// With an ns subhost and a UML guest running, only the daemon holds
// /dev/fuse. After kill -9 of the daemon its mount fails with ENOTCONN at
// once, and a new daemon on the same mountpoint, config and state comes up
// with no manual step and adopts both.
func TestChannelStaysWithDaemon(t *testing.T) {
	umlh.Skip(t)
	// Cleanups run last in, first out: the daemon stops first, then the
	// guest and the subhost are killed, whatever state the test left.
	e := newNSEnv(t)
	uroot, udir := umlh.Root(t), umlh.Dir(t)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(udir, "web1.machinefs", "console.log"))
			t.Logf("guest console:\n%s", b)
		}
	})
	d := start(t)
	d.addHost("lab01", "drivers = sim\nsim.initial = on\nlocal = yes")
	s := addSub(d, "mfchs", e.config("ns.root = "+e.root("")))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power", s))
	eventually(t, "subhost booted", func() bool { return strings.Contains(d.read(s+"/events.log"), "notify booted") })
	nsPid, err := strconv.Atoi(stateField(d.read(s+"/state"), "pid"))
	if err != nil {
		t.Fatal(err)
	}
	d.addHost("lab01/subhosts/web1", umlh.Config(uroot, udir, "uml.poweroff-timeout = 5s"))
	// The channel is checked as soon as linux runs: a guest that holds
	// /dev/fuse may not even boot (on this host linux stalls early on).
	d.ok("echo on > " + umlWeb1 + "/power")
	umlPid, err := strconv.Atoi(strings.Fields(stateField(d.read(umlWeb1+"/state"), "uml-pid"))[0])
	if err != nil {
		t.Fatal(err)
	}
	checkChannel(t, d.cmd.Process.Pid, nil, nsPid, umlPid)
	d.umlWaitPower(umlWeb1, "on")
	eventually(t, "guest booted", func() bool { return strings.Contains(d.read(umlWeb1+"/events.log"), " notify booted") })

	// kill -9: the daemon's cleanup does not run.
	first := d.log
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("killed daemon's log:\n%s", first)
		}
	})
	d.cmd.Process.Kill()
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon did not die of SIGKILL")
	}
	d.cmd = nil
	// The harness unmounts only what a daemon it stops left behind.
	t.Cleanup(func() {
		if d.cmd == nil && mounted(d.mnt) {
			syscall.Unmount(d.mnt, syscall.MNT_DETACH)
		}
	})
	// statfs always asks the daemon; ls opens the root directory (a
	// request); README was never looked up, so stat asks too. A stat of
	// a name the kernel still has cached may answer from the cache.
	failsNotConnected(t, "stat", "-f", d.mnt)
	failsNotConnected(t, "stat", filepath.Join(d.mnt, "README"))
	failsNotConnected(t, "ls", d.mnt)
	if t.Failed() {
		return
	}
	if !umlAlive(nsPid) || !umlAlive(umlPid) {
		t.Fatalf("subhost %d or guest %d did not survive the daemon", nsPid, umlPid)
	}

	// A new daemon on the same mountpoint: it clears the dead mount by
	// itself and adopts both.
	d.start()
	eventually(t, "subhost adopted", func() bool { return d.read(s+"/power") == "on\n" })
	if st := d.read(s + "/state"); !strings.Contains(stateField(st, "reason"), "adopted") || stateField(st, "pid") != strconv.Itoa(nsPid) {
		t.Fatalf("subhost after the restart:\n%s", st)
	}
	d.umlWaitPower(umlWeb1, "on")
	if st := d.read(umlWeb1 + "/state"); stateField(st, "uml-pid") != fmt.Sprintf("%d (adopted)", umlPid) {
		t.Fatalf("guest after the restart:\n%s", st)
	}
	checkChannel(t, d.cmd.Process.Pid, []int{nsPid, umlPid})

	// Both answer the new daemon, and go.
	if got := d.umlConsole(umlWeb1, "version"); !strings.HasPrefix(got, "OK Linux") {
		t.Fatalf("console of the adopted guest: %q", got)
	}
	d.ok(fmt.Sprintf("echo 'stop wait timeout=5s' > %s/power", s))
	d.ok("echo 'poweroff force wait timeout=10s' > " + umlWeb1 + "/power")
	umlGone(t, udir)
	if held := e.nsHeld("mfchs"); len(held) > 0 {
		t.Fatalf("the adopted subhost's stop left %v", held)
	}
}

// A mount whose daemon does not answer at all (stopped with SIGSTOP, as a
// daemon whose channel a stray process keeps open would look) does not
// hang the next daemon: its stale-mount check gives up waiting, aborts the
// connection through fusectl and mounts.
func TestChannelStaleMountAborted(t *testing.T) {
	t.Parallel()
	d := start(t)
	old := d.cmd
	if err := old.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	oldExited := d.exited
	t.Cleanup(func() {
		old.Process.Kill()
		<-oldExited
	})
	// A second daemon on the same mountpoint. Should its check hang (and
	// with it the harness's own statfs of the mount), killing the stopped
	// daemon ends the connection and the test fails, rather than hangs.
	var hung atomic.Bool
	guard := time.AfterFunc(30*time.Second, func() {
		hung.Store(true)
		old.Process.Kill()
	})
	d2 := &daemon{t: t, mnt: d.mnt, config: filepath.Join(t.TempDir(), "etc"), state: filepath.Join(t.TempDir(), "run")}
	t.Cleanup(d2.stop)
	d2.start()
	guard.Stop()
	if hung.Load() {
		t.Fatal("the new daemon's stale-mount check hung on the stopped daemon's mount")
	}
	// (Once: right after the switch a path walk could still meet the
	// aborted connection, "Software caused connection abort", in CI.)
	eventually(t, "version readable on the new mount", func() bool {
		return strings.HasPrefix(d2.sh("cat version").out, "machinefs")
	})
	// The stopped daemon's mount was detached: only the new one is left
	// once the old daemon is gone.
	old.Process.Kill()
	<-oldExited
	d.cmd = nil
	if n := strings.Count(mountsAt(t, d.mnt), "\n"); n != 1 {
		t.Fatalf("%d mounts at %s, want 1:\n%s", n, d.mnt, mountsAt(t, d.mnt))
	}
	// The log is read once the daemon is gone (its writer runs until then).
	d2.stop()
	if !strings.Contains(d2.log.String(), "aborting its connection") {
		t.Errorf("the new daemon did not say it aborted the old connection; log:\n%s", d2.log)
	}
}

// mountsAt returns the lines of /proc/self/mounts for dir.
func mountsAt(t *testing.T, dir string) string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
