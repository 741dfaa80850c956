package uml

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
	"golang.org/x/sys/unix"
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
// slow request (or on a console session that has not read its reply yet).
type client struct {
	sock    string
	life    context.Context // the guest's: its end wakes a blocked request
	timeout time.Duration   // the driver's mconsole timeout

	mu     sync.Mutex // guards what follows; never held during a request
	fd     int        // the kept socket, -1: not connected
	cur    time.Duration
	busy   bool // a request has the kept socket
	stale  bool // the next request must connect anew (reset)
	closed bool
}

func newClient(sock string, life context.Context, timeout time.Duration) *client {
	return &client{sock: sock, life: life, timeout: timeout, fd: -1}
}

// request sends command and returns UML's reply. It ends within the
// mconsole timeout, or by ctx's deadline if that is sooner, which it
// enforces itself with the socket's timeouts: the caller's context needs
// no timer of its own (machine.ConsoleCommand.Bounded). It ends early when
// ctx is cancelled or the guest ends.
func (c *client) request(ctx context.Context, command string) (string, error) {
	collect, err := c.start(ctx, command)
	if err != nil {
		return "", err
	}
	return collect()
}

// start sends command and returns what reads the reply, which the caller
// must call: until then the socket is the request's. The bound runs from
// the send, as for request.
func (c *client) start(ctx context.Context, command string) (collect func() (string, error), err error) {
	d := c.timeout
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl))
	}
	if d <= 0 {
		return nil, c.timedOut(command, d)
	}
	for try := 0; ; try++ {
		fd, kept, err := c.acquire(d)
		if err != nil {
			return nil, mconsoleErr(ctx, err)
		}
		x, err := send(ctx, c.life, fd, command)
		if err != nil {
			c.release(fd, kept, false)
			// The kept socket's peer is gone (UML made its socket
			// anew) and the request was not sent: once more, anew.
			if try == 0 && kept && errors.Is(err, errPeerGone) && ctx.Err() == nil && c.life.Err() == nil {
				continue
			}
			return nil, c.explain(command, d, err)
		}
		return func() (string, error) {
			text, err := x.receive()
			var reply *ReplyError
			c.release(fd, kept, err == nil || errors.As(err, &reply))
			return text, c.explain(command, d, err)
		}, nil
	}
}

// acquire returns the kept socket, connected and with timeout d, or, when
// another request has it, a socket of its own (kept false).
func (c *client) acquire(d time.Duration) (fd int, kept bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return -1, false, context.Cause(c.life)
	}
	if c.busy {
		fd, err := dialTimeout(c.sock, d)
		return fd, false, err
	}
	if c.stale && c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
	c.stale = false
	if c.fd < 0 {
		if c.fd, err = dial(c.sock); err != nil {
			c.fd = -1
			return -1, false, err
		}
		c.cur = 0
	}
	if c.cur != d {
		if err := setTimeout(c.fd, d); err != nil {
			unix.Close(c.fd)
			c.fd = -1
			return -1, false, err
		}
		c.cur = d
	}
	c.busy = true
	return c.fd, true, nil
}

// release gives back a socket from acquire; one whose exchange failed (ok
// false) is closed.
func (c *client) release(fd int, kept, ok bool) {
	if !kept {
		unix.Close(fd)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = false
	if !ok || c.closed {
		unix.Close(c.fd)
		c.fd = -1
	}
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
	if errors.Is(err, syscall.EAGAIN) || machine.ErrnoOf(err) == syscall.ETIMEDOUT {
		return c.timedOut(command, d)
	}
	return err
}

func (c *client) timedOut(command string, d time.Duration) error {
	return machine.Errorf(syscall.ETIMEDOUT, "UML did not answer %q within %s", command, d.Round(time.Millisecond))
}

// reset drops the kept socket before the next request. UML re-executes
// itself to reboot and binds a new socket at the same path, while the old
// one stays open (UML does not mark it close-on-exec) and unread: a
// request on it would go unanswered until it timed out.
func (c *client) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stale = true
}

// close closes the kept socket once the guest has ended; a request that
// still has it (its blocked receive was woken by the guest's end) closes
// it when it is done.
func (c *client) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if !c.busy && c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}
