package uml

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/nodes"
)

// client is a guest's mconsole socket, kept connected from one request to
// the next. A request on it is two system calls (send, receive) where a
// socket of its own costs eight (socket, bind, two timeouts, connect,
// send, receive, close): on a small VM that is a tenth of a console round
// trip through the tree.
//
// UML's protocol has no request ids, so a reply must never reach the
// wrong request. Replies come in order, one per request, and the socket
// is closed as soon as an exchange fails for any reason but an "ERR"
// reply (a timeout, a cancellation, a short reply): a late reply can then
// only reach a closed socket. A request that finds the socket busy with
// another takes a socket of its own, so nobody waits on someone else's
// slow request.
type client struct {
	sock    string
	life    context.Context // the guest's: its end wakes a blocked request
	timeout time.Duration   // the driver's mconsole timeout

	// stale says the kept socket talks to a socket UML no longer reads:
	// the next request closes it and connects anew.
	stale atomic.Bool

	mu  sync.Mutex
	fd  int           // -1: not connected
	cur time.Duration // the timeout set on fd
}

func newClient(sock string, life context.Context, timeout time.Duration) *client {
	return &client{sock: sock, life: life, timeout: timeout, fd: -1}
}

// request sends command and returns UML's reply. It ends within the
// mconsole timeout, or by ctx's deadline if that is sooner, which it
// enforces itself with the socket's timeouts: the caller's context needs
// no timer of its own (nodes.ConsoleCommand.Bounded). It ends early when
// ctx is cancelled or the guest ends.
func (c *client) request(ctx context.Context, command string) (string, error) {
	d := c.timeout
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl))
	}
	if d <= 0 {
		return "", c.timedOut(command, d)
	}
	if !c.mu.TryLock() {
		return c.once(ctx, command, d)
	}
	defer c.mu.Unlock()
	if c.stale.Swap(false) {
		c.closeLocked()
	}
	for try := 0; ; try++ {
		if c.fd < 0 {
			fd, err := dial(c.sock)
			if err != nil {
				return "", mconsoleErr(ctx, err)
			}
			c.fd, c.cur = fd, 0
		}
		if c.cur != d {
			if err := setTimeout(c.fd, d); err != nil {
				c.closeLocked()
				return "", err
			}
			c.cur = d
		}
		text, err := exchange(ctx, c.life, c.fd, command)
		var reply *ReplyError
		if err == nil || errors.As(err, &reply) {
			return text, err
		}
		c.closeLocked()
		// The kept socket's peer is gone (UML made its socket anew) and
		// the request was not sent: once more, on a new socket.
		if try == 0 && errors.Is(err, errPeerGone) && ctx.Err() == nil && c.life.Err() == nil {
			continue
		}
		return "", c.explain(command, d, err)
	}
}

// once sends command on a socket of its own, for a request that finds the
// kept socket busy.
func (c *client) once(ctx context.Context, command string, d time.Duration) (string, error) {
	fd, err := dial(c.sock)
	if err != nil {
		return "", mconsoleErr(ctx, err)
	}
	defer unix.Close(fd)
	if err := setTimeout(fd, d); err != nil {
		return "", err
	}
	text, err := exchange(ctx, c.life, fd, command)
	return text, c.explain(command, d, err)
}

// explain says why an exchange failed: the guest's end, or a timeout that
// names the command and the bound.
func (c *client) explain(command string, d time.Duration, err error) error {
	if err == nil {
		return nil
	}
	if c.life.Err() != nil {
		return context.Cause(c.life)
	}
	if errors.Is(err, syscall.EAGAIN) || nodes.ErrnoOf(err) == syscall.ETIMEDOUT {
		return c.timedOut(command, d)
	}
	return err
}

func (c *client) timedOut(command string, d time.Duration) error {
	return nodes.Errorf(syscall.ETIMEDOUT, "UML did not answer %q within %s", command, d.Round(time.Millisecond))
}

// reset drops the kept socket before the next request. UML re-executes
// itself to reboot and binds a new socket at the same path, while the old
// one stays open (UML does not mark it close-on-exec) and unread: a
// request on it would go unanswered until it timed out. Reset does not
// wait for a request in flight.
func (c *client) reset() { c.stale.Store(true) }

// close closes the kept socket; the guest has ended, so a request still
// on it has been woken.
func (c *client) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

func (c *client) closeLocked() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}
