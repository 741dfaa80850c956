package machine

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// Error is a failure that carries the errno a filesystem call returns and a
// reason a person can read in state and events.
type Error struct {
	Errno  syscall.Errno
	Reason string
}

func (e *Error) Error() string { return e.Reason }

// Unwrap lets errors.As find the errno.
func (e *Error) Unwrap() error { return e.Errno }

// Errorf builds an *Error; %w in format keeps the wrapped error's text.
func Errorf(errno syscall.Errno, format string, args ...any) error {
	return &Error{Errno: errno, Reason: fmt.Errorf(format, args...).Error()}
}

// ErrnoOf maps any error to the errno a user sees. Drivers wrap a
// syscall.Errno (fmt.Errorf("ipmi: %w: %v", syscall.EACCES, err)) to choose
// one; context deadlines become ETIMEDOUT and cancellation EINTR. Everything
// else is EIO.
func ErrnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return syscall.ETIMEDOUT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

// Errnos lists every errno a user of the tree can get and what it means,
// for README, the man page and the README file at the root of the mount.
var Errnos = [][2]string{
	{"EINVAL", "the line did not parse: unknown verb, modifier, key or bad value (reason in the message and events)"},
	{"ENOTSUP", "no configured driver supports the verb or file (reason in state: last-error); wol wait without a probe"},
	{"EBUSY", "a command is in flight on the host; or rmdir of a host that is on or has running subhosts"},
	{"ETIMEDOUT", "a driver did not answer within timeout, or a wait did not reach its state within wait-timeout/timeout="},
	{"EINTR", "the writer was interrupted while waiting (the command goes on)"},
	{"EACCES", "not allowed: file mode (root and the operators group write control files), an operator changing a privileged key, bad BMC credentials, or a BMC offering only authentication that would expose the password"},
	{"EIO", "the driver failed (its words in state: last-error and in events)"},
	{"EHOSTUNREACH", "the machine's controller cannot be reached"},
	{"EHOSTDOWN", "a woken machine never answered its probe within the command's window (\"no answer after wake\")"},
	{"ECANCELED", "a waiting command was overridden by a later command with force, or its host was removed"},
	{"EEXIST", "mkdir or ctl add of a host that exists"},
	{"ENOENT", "no such host"},
	{"EROFS", "the tree is mounted read-only"},
	{"ENOBUFS", "a console session's unread transcript is full (1 MiB, or 32 MiB for the mount): read it, or open a write-only session"},
	{"EFBIG", "more than 1 MiB written through one open file of config, members or ctl"},
	{"ESHUTDOWN", "machinefs stopped (SIGTERM or unmount) while the write waited; the command goes on"},
	{"ENOSPC", "a 17th temporary file in one directory"},
	{"EXDEV", "rename of a temporary file into another directory (mv then copies)"},
	{"EOPNOTSUPP", "setxattr on a temporary file"},
	{"EXFULL", "a switch has no free port (the kernel's limit of ports on a bridge)"},
	{"EPERM", "the driver lacks a privilege (e.g. CAP_NET_RAW for Wake-on-LAN frames); poweroff/reboot self of the local host without allow-self; unlink or rename of a tree file"},
}
