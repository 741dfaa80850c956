package uml

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/nodes"
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

var clientSeq atomic.Uint64

// Request sends one command to the mconsole socket at sock and returns the
// reply text, the datagrams of a multi-part reply joined. An "ERR" reply is
// a *ReplyError. The socket is new for every request (UML's protocol has no
// request ids, so a fresh socket can never read a stale reply) and bound to
// an abstract address, as UML only answers bound clients. The request ends
// when ctx does, so a UML that does not answer never blocks the caller.
func Request(ctx context.Context, sock, command string) (string, error) {
	if len(command) > MaxRequest {
		return "", nodes.Errorf(syscall.EINVAL, "command is %d bytes, UML takes at most %d", len(command), MaxRequest)
	}
	laddr := &net.UnixAddr{Net: "unixgram", Name: fmt.Sprintf("@machinefs-uml-%d-%d", os.Getpid(), clientSeq.Add(1))}
	conn, err := net.DialUnix("unixgram", laddr, &net.UnixAddr{Net: "unixgram", Name: sock})
	if err != nil {
		return "", mconsoleErr(err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := make([]byte, 12+len(command))
	binary.NativeEndian.PutUint32(req[0:], mconsoleMagic)
	binary.NativeEndian.PutUint32(req[4:], mconsoleVersion)
	binary.NativeEndian.PutUint32(req[8:], uint32(len(command)))
	copy(req[12:], command)
	if _, err := conn.Write(req); err != nil {
		return "", ctxErr(ctx, mconsoleErr(err))
	}
	var text strings.Builder
	buf := make([]byte, maxReply)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return "", ctxErr(ctx, mconsoleErr(err))
		}
		if n < 12 {
			return "", nodes.Errorf(syscall.EPROTO, "short mconsole reply (%d bytes)", n)
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
				return "", &ReplyError{Command: command, Text: strings.TrimSpace(text.String())}
			}
			return strings.TrimRight(text.String(), "\n"), nil
		}
	}
}

// mconsoleErr maps socket errors to what a user reads: a missing socket
// means no UML listens there.
func mconsoleErr(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return nodes.Errorf(syscall.EHOSTDOWN, "no UML answers on its mconsole socket: %v", err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nodes.Errorf(syscall.ETIMEDOUT, "UML did not answer on its mconsole socket")
	}
	return err
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
