package nodes

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
