package uml

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
	"golang.org/x/sys/unix"
)

// The mconsole wire format (arch/um/include/shared/mconsole.h), in host
// byte order:
//
//	request      {u32 magic, u32 version, u32 len, char data[len]}
//	reply        {u32 err, u32 more, u32 len, char data[len]} (data ends in NUL)
//	notification {u32 magic, u32 version, u32 type, u32 len, char data[len]}
const (
	mconsoleMagic   = 0xcafebabe
	mconsoleVersion = 2
	// MaxRequest is the longest command UML accepts (MCONSOLE_MAX_DATA
	// less the NUL).
	MaxRequest = 511
	maxReply   = 12 + 512
)

// Notification types (enum mconsole_notify_type).
const (
	notifySocket = 0
	notifyPanic  = 1
	notifyHang   = 2
	notifyUser   = 3
)

// ReplyError is an "ERR" reply of UML: its text is UML's own words.
type ReplyError struct {
	Command string
	Text    string
}

func (e *ReplyError) Error() string {
	if e.Text == "" {
		return fmt.Sprintf("UML refused %q", e.Command)
	}
	return e.Text
}

// Request sends one command to the mconsole socket at sock and returns the
// reply text, the datagrams of a multi-part reply joined. An "ERR" reply is
// a *ReplyError. The socket is new for this request (UML's protocol has no
// request ids, so a fresh socket can never read a stale reply); a guest's
// own requests go through its kept client instead.
//
// The request ends when ctx does: a receive timeout for its deadline, a
// shutdown of the socket for its cancellation. A UML that does not answer
// never blocks the caller.
func Request(ctx context.Context, sock, command string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", ctxErr(ctx, err)
	}
	var d time.Duration // no deadline: no timeout
	if dl, ok := ctx.Deadline(); ok {
		d = max(time.Until(dl), time.Microsecond)
	}
	fd, err := dialTimeout(sock, d)
	if err != nil {
		return "", ctxErr(ctx, mconsoleErr(ctx, err))
	}
	defer unix.Close(fd)
	text, err := exchange(ctx, nil, fd, command)
	return text, ctxErr(ctx, err)
}

// dial makes a datagram socket connected to UML's mconsole at sock.
//
// It is autobound to an abstract address (an empty name), as UML only
// answers bound clients. It is connected, not used with sendto: a long
// reply (stack, proc) comes as many datagrams, and the kernel queues at
// most net.unix.max_dgram_qlen (10) of them for an unconnected receiver;
// UML drops the rest, the final one included. Datagrams from the socket's
// own peer are not held to that limit.
//
// The socket is used with plain blocking calls rather than through Go's
// network poller: a request is a single datagram each way, and waiting in
// recvfrom lets UML's reply wake the waiting thread directly instead of
// going through the poller's thread first, which halves the round trip on
// small machines.
func dial(sock string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("mconsole socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mconsole socket: bind: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// dialTimeout is dial with each send and receive bounded by d (0: not
// bounded).
func dialTimeout(sock string, d time.Duration) (int, error) {
	fd, err := dial(sock)
	if err != nil || d == 0 {
		return fd, err
	}
	if err := setTimeout(fd, d); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// setTimeout bounds each send and receive on fd by d.
func setTimeout(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(max(d, time.Microsecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("mconsole socket: receive timeout: %w", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("mconsole socket: send timeout: %w", err)
	}
	return nil
}

// errPeerGone marks a send that failed because nobody has the socket open
// at the other end: UML never saw the request.
var errPeerGone = errors.New("request not sent")

// exchange sends command on fd and reads the reply (see send).
func exchange(ctx, life context.Context, fd int, command string) (string, error) {
	x, err := send(ctx, life, fd, command)
	if err != nil {
		return "", err
	}
	return x.receive()
}

// inFlight is a request sent and its reply not yet read.
type inFlight struct {
	fd        int
	ctx       context.Context
	command   string
	stops     []func() bool
	cancelled chan struct{}
}

// send sends command on fd. The socket's timeouts bound each call; ctx and
// life (either may be nil) end the exchange early by shutting the socket
// down, after which fd is of no more use. The caller must receive the
// reply, which also ends the watch of ctx and life.
func send(ctx, life context.Context, fd int, command string) (*inFlight, error) {
	if len(command) > MaxRequest {
		return nil, machine.Errorf(syscall.EINVAL, "command is %d bytes, UML takes at most %d", len(command), MaxRequest)
	}
	x := &inFlight{fd: fd, ctx: ctx, command: command, cancelled: make(chan struct{}, 2)}
	for _, c := range []context.Context{ctx, life} {
		if c != nil && c.Done() != nil {
			x.stops = append(x.stops, context.AfterFunc(c, func() {
				unix.Shutdown(fd, unix.SHUT_RDWR)
				x.cancelled <- struct{}{}
			}))
		}
	}
	req := make([]byte, 12+len(command))
	binary.NativeEndian.PutUint32(req[0:], mconsoleMagic)
	binary.NativeEndian.PutUint32(req[4:], mconsoleVersion)
	binary.NativeEndian.PutUint32(req[8:], uint32(len(command)))
	copy(req[12:], command)
	if err := retryEINTR(func() error { _, err := unix.Write(fd, req); return err }); err != nil {
		x.unwatch()
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOTCONN) {
			return nil, fmt.Errorf("%w: %w", errPeerGone, mconsoleErr(ctx, err))
		}
		return nil, mconsoleErr(ctx, err)
	}
	return x, nil
}

// unwatch ends the watch of the contexts; once it returns, no shutdown
// can hit the descriptor, even if it is closed and reused.
func (x *inFlight) unwatch() {
	for _, stop := range x.stops {
		if !stop() {
			<-x.cancelled
		}
	}
	x.stops = nil
}

// receive reads the reply, the datagrams of a multi-part reply joined.
func (x *inFlight) receive() (string, error) {
	defer x.unwatch()
	var text strings.Builder
	buf := make([]byte, maxReply)
	for {
		var n int
		err := retryEINTR(func() (err error) {
			n, _, err = unix.Recvfrom(x.fd, buf, 0)
			return err
		})
		if err == nil && n == 0 {
			err = syscall.ESHUTDOWN // shut down by an AfterFunc
		}
		if err != nil {
			return "", mconsoleErr(x.ctx, err)
		}
		if n < 12 {
			return "", machine.Errorf(syscall.EPROTO, "short mconsole reply (%d bytes)", n)
		}
		errFlag := binary.NativeEndian.Uint32(buf[0:])
		more := binary.NativeEndian.Uint32(buf[4:])
		l := int(binary.NativeEndian.Uint32(buf[8:]))
		if l > n-12 {
			l = n - 12
		}
		data, _, _ := bytes.Cut(buf[12:12+l], []byte{0})
		text.Write(data)
		if more == 0 {
			if errFlag != 0 {
				return "", &ReplyError{Command: x.command, Text: strings.TrimSpace(text.String())}
			}
			return strings.TrimRight(text.String(), "\n"), nil
		}
	}
}

// retryEINTR repeats a system call that a signal interrupted.
func retryEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// mconsoleErr maps socket errors to what a user reads: a missing socket
// means no UML listens there; a receive timeout or a cancelled request
// means it did not answer in time.
func mconsoleErr(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return machine.Errorf(syscall.EHOSTDOWN, "no UML answers on its mconsole socket: %v", err)
	case errors.Is(err, syscall.EAGAIN), ctx != nil && ctx.Err() != nil:
		return machine.Errorf(syscall.ETIMEDOUT, "UML did not answer on its mconsole socket")
	}
	return fmt.Errorf("mconsole: %w", err)
}

// ctxErr says why a request ended when its context did.
func ctxErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && cause != context.DeadlineExceeded && cause != context.Canceled {
		return cause
	}
	return err
}

// notification is one datagram UML sent to the notify socket.
type notification struct {
	kind uint32
	text string
}

func parseNotification(b []byte) (notification, bool) {
	if len(b) < 16 || binary.NativeEndian.Uint32(b[0:]) != mconsoleMagic {
		return notification{}, false
	}
	n := notification{kind: binary.NativeEndian.Uint32(b[8:])}
	l := int(binary.NativeEndian.Uint32(b[12:]))
	if l > len(b)-16 {
		l = len(b) - 16
	}
	data, _, _ := bytes.Cut(b[16:16+l], []byte{0})
	n.text = strings.TrimSpace(string(data))
	return n, true
}
