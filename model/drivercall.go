package model

import (
	"context"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// callDriver runs fn with a deadline and returns when fn does or the
// deadline passes, whichever is first: a driver that ignores its context
// cannot hang the filesystem. The driver call is detached from the caller's
// cancellation (an interrupted shell must not leave a half-sent command).
func callDriver(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- fn(cctx) }()
	select {
	case err := <-res:
		return timedOut(cctx.Err() != nil, timeout, err)
	case <-cctx.Done():
		return machine.Errorf(syscall.ETIMEDOUT, "no answer within %s", timeout)
	}
}

// callBounded is callDriver for a call that ends by its context's deadline
// by itself (ConsoleCommand.Bounded): it runs on the caller's goroutine,
// and its context carries the deadline without arming a timer for it.
// Handing a call to a goroutine of its own costs a trip through the
// scheduler, and a new timer that is the runtime's next one wakes its
// network poller thread; each costs tens of microseconds on a small VM, a
// large part of a console round trip.
func callBounded(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	err := fn(deadlineContext{Context: context.WithoutCancel(ctx), deadline: deadline})
	return timedOut(!time.Now().Before(deadline), timeout, err)
}

// deadlineContext is a context with a deadline that its callee enforces
// itself (a socket timeout, say): Deadline reports it, but Done does not
// close when it passes. Only Bounded driver calls get one.
type deadlineContext struct {
	context.Context
	deadline time.Time
}

func (c deadlineContext) Deadline() (time.Time, bool) { return c.deadline, true }

// timedOut says ETIMEDOUT for a driver error that came from its deadline
// (expired: the deadline has passed).
func timedOut(expired bool, timeout time.Duration, err error) error {
	if err != nil && expired && machine.ErrnoOf(err) == syscall.EIO {
		return machine.Errorf(syscall.ETIMEDOUT, "no answer within %s: %v", timeout, err)
	}
	return err
}
