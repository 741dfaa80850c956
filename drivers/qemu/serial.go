package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/childproc"
	"github.com/machinefs/machinefs/machine"
)

var _ machine.SerialHolder = (*Machine)(nil)

// HasSerial implements machine.Serialer: every guest has its first serial
// port on a chardev socket (-serial chardev:ser0).
func (m *Machine) HasSerial() bool { return true }

// HoldsSerial marks the serial line as one the model drains: QEMU drops
// what the guest writes while nobody is connected, so the driver stays
// connected and the model reads.
func (m *Machine) HoldsSerial() {}

// Serial implements machine.Serialer: the one line of the driver's life,
// to which each QEMU's serial socket is attached when it starts or is
// adopted.
func (m *Machine) Serial(context.Context) (io.ReadWriteCloser, error) { return m.line, nil }

// connect opens g's QMP session and its serial socket. A QEMU just
// started makes its sockets while it starts up: with retry, connect waits
// for them (bounded by qemu.qmp-timeout and ctx) unless QEMU ends first.
func (m *Machine) connect(ctx context.Context, g *guest, retry bool) error {
	cctx, cancel := context.WithTimeout(ctx, m.s.qmpTimeout)
	defer cancel()
	onEvent := func(ev qmpEvent) { m.onEvent(g, ev) }
	var q *qmpConn
	err := machine.Poll(cctx, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
		select {
		case <-g.done:
			return true, errors.New("QEMU ended")
		default:
		}
		var err error
		q, err = dialQMP(ctx, m.file(qmpSock), m.s.qmpTimeout, onEvent)
		return err == nil || !retry, err
	})
	if q == nil {
		if err == nil {
			err = fmt.Errorf("QEMU ended before its QMP socket answered")
		}
		return err
	}
	c, err := (&net.Dialer{}).DialContext(cctx, "unix", m.file(serialSock))
	if err != nil {
		q.close()
		return fmt.Errorf("serial socket: %w", err)
	}
	m.mu.Lock()
	g.qmp = q
	m.mu.Unlock()
	m.line.Attach(c)
	return nil
}

// reapWait waits for a process that was sent SIGKILL to end, reaps it and
// closes its pidfd.
func reapWait(pidfd, pid int) {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, 5000); !errors.Is(err, unix.EINTR) {
			break
		}
	}
	childproc.Reap(pid)
	unix.Close(pidfd)
}
