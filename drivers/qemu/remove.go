package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/childproc"
	"github.com/machinefs/machinefs/drivers/internal/tap"
	"github.com/machinefs/machinefs/machine"
)

var _ machine.Remover = (*Machine)(nil)

// Remove implements machine.Remover: the host leaves the tree, so its
// guest goes and so does everything the driver made for it: QEMU is
// quit (killed if it does not go within a second), and the guest's
// directory (sockets, pid file, log, host record) and its TAP are
// removed. A QEMU of this guest that the driver does not watch (adoption
// failed) is killed too. Close alone never does this.
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
	if err := m.foreign(); err != nil {
		m.log.Info("qemu: host removed; the guest in its directory is another host's, left alone", "err", err)
		return nil
	}
	var errs []error
	if g != nil {
		if err := m.stopGuest(ctx, g); err != nil {
			errs = append(errs, err)
		}
	}
	if pid, err := m.readPid(); err == nil {
		if err := m.killRecorded(ctx, pid); err != nil {
			errs = append(errs, err)
		}
	}
	if err := tap.Delete(m.recordedTap(), m.tapAlias()); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(m.guestDir()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopGuest quits QEMU and waits until the watcher has handled its end,
// killing it if it does not end within a second.
func (m *Machine) stopGuest(ctx context.Context, g *guest) error {
	m.mu.Lock()
	q := g.qmp
	m.mu.Unlock()
	wait := min(m.s.qmpTimeout, time.Second)
	if q != nil {
		qctx, cancel := context.WithTimeout(ctx, wait)
		_, err := q.execute(qctx, "quit", nil)
		cancel()
		if err == nil {
			t := time.NewTimer(wait)
			select {
			case <-g.done:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
	m.kill(g)
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return machine.Errorf(syscall.ETIMEDOUT, "QEMU pid %d did not end after SIGKILL", g.pid)
	}
}

// killRecorded kills the QEMU the pid file names if it is this guest's
// and waits for it to end.
func (m *Machine) killRecorded(ctx context.Context, pid int) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(pidfd)
	if _, ours := m.isOurs(pid); !ours {
		return nil
	}
	unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 50)
		if err == nil && n > 0 {
			childproc.Reap(pid)
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("waiting for QEMU pid %d: %w", pid, err)
		}
		if ctx.Err() != nil {
			return machine.Errorf(syscall.ETIMEDOUT, "QEMU pid %d did not end after SIGKILL", pid)
		}
	}
}
