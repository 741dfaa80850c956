package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// adopt takes over the guest an earlier driver of this host left running
// (an earlier machinefs, or this one before a config change): its pid
// file names a live QEMU whose command line carries this guest's QMP
// socket. What it finds is reported: off, the guest's state from
// query-status, or unknown when its QMP does not answer.
func (m *Machine) adopt(ctx context.Context) {
	off := func(why string, err error) {
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: why, Err: err})
	}
	if err := m.foreign(); err != nil {
		off(err.Error(), err) // another host's guest: leave it alone
		return
	}
	pid, err := m.readPid()
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("qemu: unreadable pid file, ignored", "err", err)
		}
		off("no guest running", nil)
		return
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		m.cleanup(m.recordedTap())
		off(fmt.Sprintf("recorded guest pid %d is gone", pid), nil)
		return
	}
	st, ours := m.isOurs(pid)
	if !ours {
		unix.Close(pidfd)
		m.cleanup(m.recordedTap())
		off(fmt.Sprintf("recorded guest pid %d is gone (the pid is not this guest's QEMU)", pid), nil)
		return
	}
	accel := cmdlineValue(pid, "-machine", "accel") + " (adopted)"
	g, err := newGuest(pid, pidfd, st.Start, accel)
	if err != nil {
		unix.Close(pidfd)
		m.report.Report(machine.Status{Power: machine.PowerUnknown, Reason: "cannot watch the recorded guest", Err: err})
		return
	}
	g.adopted = true
	g.tap = m.recordedTap()
	m.mu.Lock()
	m.g = g
	m.mu.Unlock()
	m.watch(g)

	cctx, cancel := context.WithTimeout(ctx, min(m.s.qmpTimeout, time.Second))
	defer cancel()
	reason := fmt.Sprintf("adopted guest pid %d", pid)
	if err := m.connect(cctx, g, false); err != nil {
		m.mu.Lock()
		g.qmpError = err
		m.mu.Unlock()
		m.report.Report(machine.Status{Power: machine.PowerUnknown, Reason: reason + ", but its QMP does not answer", Err: machine.Errorf(syscall.EHOSTUNREACH, "QMP: %v", err)})
		return
	}
	status, err := queryStatus(cctx, g.qmp)
	if err != nil {
		m.report.Report(machine.Status{Power: machine.PowerUnknown, Reason: reason + ", but query-status failed", Err: err})
		return
	}
	m.mu.Lock()
	g.paused = status.Power == machine.PowerPaused
	if status.Power == machine.PowerCrashed {
		g.crashed = "guest panicked (seen at adoption)"
	}
	m.mu.Unlock()
	status.Reason = reason + ": " + status.Reason
	m.report.Report(status)
}

// recordedTap is the TAP of a guest whose QEMU ran with a TAP: the host's
// name, when qemu.net is a bridge.
func (m *Machine) recordedTap() string {
	if m.s.net == nil || m.s.net.vde {
		return ""
	}
	return m.name
}

// foreign says why the guest directory is not this host's: another host of
// the same name shares qemu.dir. nil if it is this host's, or free.
func (m *Machine) foreign() error {
	b, err := os.ReadFile(m.file(hostFile))
	if err != nil {
		return nil
	}
	owner := strings.TrimSpace(string(b))
	if owner == "" || owner == m.path {
		return nil
	}
	pid, err := m.readPid()
	if err != nil {
		return nil // the other host's guest is gone: the directory is free
	}
	if _, ours := m.isOurs(pid); !ours {
		return nil
	}
	return machine.Errorf(syscall.EBUSY, "qemu.dir %s: %s belongs to %s (pid %d); give this host a qemu.dir of its own", m.s.dir, m.guestDir(), owner, pid)
}
