package qemu

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/childproc"
	"github.com/machinefs/machinefs/drivers/internal/tap"
	"github.com/machinefs/machinefs/machine"
)

// newGuest prepares the watch of QEMU process pid through its pidfd.
func newGuest(pid, pidfd int, start uint64, accel string) (*guest, error) {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &guest{pid: pid, pidfd: pidfd, start: start, wake: wake, accel: accel, done: make(chan struct{})}, nil
}

// watch runs the guest's watcher: one goroutine waiting for the process
// to end (its pidfd) or for Close (the wake eventfd).
func (m *Machine) watch(g *guest) {
	go func() {
		defer func() {
			// The pidfd goes with the watcher; the wake eventfd
			// too, unless Close holds it (it writes it, then waits).
			m.mu.Lock()
			g.gone = true
			unix.Close(g.pidfd)
			if !g.detached {
				unix.Close(g.wake)
			}
			m.mu.Unlock()
			close(g.done)
		}()
		fds := []unix.PollFd{{Fd: int32(g.pidfd), Events: unix.POLLIN}, {Fd: int32(g.wake), Events: unix.POLLIN}}
		for {
			fds[0].Revents, fds[1].Revents = 0, 0
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				m.log.Error("qemu: poll", "err", err)
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents != 0 {
				m.exited(g)
				return
			}
		}
	}()
}

// unwatch stops the watcher of a guest that keeps running (Close).
func (m *Machine) unwatch(g *guest) {
	var one [8]byte
	one[0] = 1
	unix.Write(g.wake, one[:])
	<-g.done
	unix.Close(g.wake)
}

// kill ends QEMU with SIGKILL. The pidfd is held and the process not
// reaped, so the signal cannot reach another process that got its pid.
func (m *Machine) kill(g *guest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !g.gone {
		unix.PidfdSendSignal(g.pidfd, unix.SIGKILL, nil, 0)
	}
}

// exited handles the end of the QEMU process: how it ended, cleanup of
// what it leaves behind (sockets, pid file, TAP), and the report.
func (m *Machine) exited(g *guest) {
	how := "ended (it was adopted, so its exit status went elsewhere)"
	if ws, ok := childproc.Reap(g.pid); ok {
		how = childproc.HowEnded(ws)
	}
	m.mu.Lock()
	q := g.qmp
	m.mu.Unlock()
	if q != nil {
		q.close()
	}
	m.mu.Lock()
	if g.timer != nil {
		g.timer.Stop()
	}
	if m.g == g {
		m.g = nil
	}
	crashed, expect, shutdown := g.crashed, g.expect, g.shutdown
	m.mu.Unlock()
	m.cleanup(g.tap)
	m.log.Info("qemu: guest process ended", "pid", g.pid, "how", how, "shutdown", shutdown)
	m.report.Report(exitStatus(crashed, expect, shutdown, how))
}

// cleanup removes what a QEMU that ended leaves: its sockets and pid file
// (QEMU removes neither on SIGKILL) and its TAP. The log stays for a
// look at why it ended.
func (m *Machine) cleanup(tapName string) {
	for _, f := range []string{qmpSock, serialSock, pidFile} {
		os.Remove(m.file(f))
	}
	if err := tap.Delete(tapName, m.tapAlias()); err != nil {
		m.log.Warn("qemu: removing TAP", "err", err)
	}
}

// exitStatus is the report of a guest's end: off, with the reason. An
// end the driver did not ask for and the guest did not choose carries an
// error.
func exitStatus(crashed, expect, shutdown, how string) machine.Status {
	off := func(reason string) machine.Status {
		return machine.Status{Power: machine.PowerOff, Reachable: true, Reason: reason}
	}
	switch {
	case expect != "" && crashed != "":
		return off(fmt.Sprintf("guest stopped (%s) after %s: QEMU %s", expect, crashed, how))
	case expect != "":
		return off(fmt.Sprintf("guest stopped (%s): QEMU %s", expect, how))
	case shutdown == "guest-shutdown":
		return off("guest powered off")
	case shutdown == "guest-panic":
		st := off(fmt.Sprintf("guest panicked: QEMU %s", how))
		st.Power = machine.PowerCrashed
		return st
	}
	reason := "QEMU " + how
	if shutdown != "" {
		reason += " (shutdown: " + shutdown + ")"
	}
	st := off(reason + "; see " + logFile)
	st.Err = machine.Errorf(syscall.EIO, "%s", reason)
	return st
}
