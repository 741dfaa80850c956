package uml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/childproc"
	"github.com/machinefs/machinefs/drivers/internal/ptyhold"
	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
	"golang.org/x/sys/unix"
)

// Remove implements machine.Remover: the host leaves the tree, so its guest
// goes and so does everything the driver made for it. A running guest is
// halted (mconsole halt, bounded by a short wait), then its process group
// is killed whatever the halt did; the umid directory, the TAP, the record,
// the notify and console sockets and the console log are removed, and the
// console's holder is killed. A guest the driver
// does not watch (its record names a live process it could not take over)
// is killed too. Close alone never does this: it leaves the guest for
// adoption.
func (m *Machine) Remove(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true // no new guest from now on
	g := m.g
	if g != nil {
		g.expect = "host removed"
		if g.timer != nil {
			g.timer.Stop()
		}
	}
	m.mu.Unlock()

	// A host whose umid another host's guest holds (same name, shared
	// uml.dir) has nothing there to remove.
	if r, err := readRecord(m.recordPath()); err == nil && g == nil {
		if err := m.foreign(r); err != nil {
			m.log.Info("uml: host removed; the guest under its umid is another host's, left alone", "err", err)
			return nil
		}
	}
	var errs []error
	var groups []int // process groups killed: their helpers must be gone too
	var holders []ptyhold.Holder
	if g != nil {
		holders = append(holders, g.holder)
		m.log.Info("uml: host removed, stopping its guest", "pid", g.pid)
		if err := m.stopGuest(ctx, g); err != nil {
			errs = append(errs, err)
		}
		groups = append(groups, g.pid)
	}
	// A guest recorded but not watched (adoption failed), or leftovers of
	// one whose watcher did not clean up.
	if r, err := readRecord(m.recordPath()); err == nil {
		if err := killRecorded(ctx, r); err != nil {
			errs = append(errs, err)
		} else {
			removeUmidDir(m.umidDir(), r.Pid)
			m.deleteTap(r.Tap)
		}
		groups = append(groups, r.Pid)
		holders = append(holders, ptyhold.Holder{Pid: r.Holder, Start: r.HolderStart})
	}
	// The console holders would end by themselves with their guest; the
	// host leaves the tree, so nothing waits for their last output.
	for _, h := range holders {
		if err := ptyhold.Kill(h.Pid, h.Start); err != nil {
			errs = append(errs, err)
		}
	}
	for _, pgid := range groups {
		if err := waitGroupGone(ctx, pgid); err != nil {
			errs = append(errs, err)
		}
	}
	removeDeadUmidDir(m.umidDir())
	if m.net != nil {
		m.deleteTap(m.umid) // a TAP left by a guest that was killed
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(m.side); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopGuest halts g and kills its process group, and waits until the
// watcher has handled the exit (and cleaned up after it) or ctx ends.
func (m *Machine) stopGuest(ctx context.Context, g *guest) error {
	wait := min(m.reqTimeout, time.Second)
	hctx, cancel := context.WithTimeout(ctx, wait)
	_, err := m.request(hctx, g, "halt")
	cancel()
	if err == nil {
		t := time.NewTimer(wait)
		select {
		case <-g.done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	} else {
		m.log.Info("uml: halt of a removed host's guest not answered, killing it", "pid", g.pid, "err", err)
	}
	// Helpers and a guest that did not halt go now.
	m.kill(g)
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return machine.Errorf(syscall.ETIMEDOUT, "guest pid %d did not end after SIGKILL", g.pid)
	}
}

// waitGroupGone waits until no live process is left in process group pgid
// (the guest's helpers, killed with it, end a moment after the guest), for
// at most two seconds or until ctx ends. Zombies do not count: they are
// gone, only not yet reaped by whoever inherited them.
func waitGroupGone(ctx context.Context, pgid int) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		left := groupMembers(pgid)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return machine.Errorf(syscall.ETIMEDOUT, "guest helpers %v did not end after SIGKILL", left)
		}
		unix.Kill(-pgid, unix.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
}

// groupMembers lists the live (not zombie) processes of process group pgid.
func groupMembers(pgid int) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || st.State == 'Z' || st.Pgrp != pgid {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// killRecorded kills the process group of a recorded guest that still
// runs (same pid and start time) and waits for it to end.
func killRecorded(ctx context.Context, r record) error {
	pidfd, err := unix.PidfdOpen(r.Pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(pidfd)
	st, err := procfs.ReadStat(r.Pid)
	if err != nil || st.Start != r.Start || st.State == 'Z' {
		return nil // gone, or another process now
	}
	unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	// Setsid made the guest its process group's leader.
	if pgid, err := unix.Getpgid(r.Pid); err == nil && pgid == r.Pid {
		unix.Kill(-r.Pid, unix.SIGKILL)
	}
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 50)
		if err == nil && n > 0 {
			childproc.Reap(r.Pid)
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("waiting for guest pid %d: %w", r.Pid, err)
		}
		if ctx.Err() != nil {
			return machine.Errorf(syscall.ETIMEDOUT, "recorded guest pid %d did not end after SIGKILL", r.Pid)
		}
	}
}

// removeDeadUmidDir removes a umid directory whose pid file names no live
// process (or that has no pid file). One of a live process is left alone:
// it is not this driver's to take.
func removeDeadUmidDir(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 1 && unix.Kill(p, 0) == nil {
			if st, err := procfs.ReadStat(p); err == nil && st.State != 'Z' {
				return
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return
	}
	os.RemoveAll(dir)
}
