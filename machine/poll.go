package machine

import (
	"context"
	"errors"
	"time"
)

// Poll looks at a machine until it shows what the caller waits for or ctx
// ends. It is the one loop behind "has the machine reached its target?":
// a Verifier derives ctx from Command.Deadline, so the driver stops where
// the model's wait stops and never runs a clock of its own that could
// disagree with it.
//
// look runs at once and then every `every`, counted from the start of one
// look to the start of the next (a slow look does not stretch the
// schedule; one that overruns it is followed at once). It gets ctx and
// should bound a single attempt itself when that must be shorter. look's
// error does not end the poll: it says why the target does not show yet (a
// machine on its way up refuses connections, a BMC drops a packet).
//
// Poll returns nil as soon as look reports done. When ctx ends first it
// returns ctx's error (context.DeadlineExceeded at the deadline,
// context.Canceled when the caller gave up), joined with the last error
// look returned, if any. It starts no goroutine: when it returns, nothing
// of it runs on.
func Poll(ctx context.Context, every time.Duration, look func(context.Context) (done bool, err error)) error {
	every = max(every, time.Millisecond) // a zero interval would spin
	var last error
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		next := time.Now().Add(every)
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), last)
		}
		done, err := look(ctx)
		if done {
			return nil
		}
		// An attempt cut short by ctx itself says nothing about the
		// machine: keep the previous reason.
		if err != nil && ctx.Err() == nil {
			last = err
		}
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-t.C:
		}
	}
}

// NoDeadline is how long a Verifier follows a command whose caller set no
// Command.Deadline (a test or a tool calling the driver directly; the model
// always sets one): the model's default wait-timeout.
const NoDeadline = 2 * time.Minute

// FollowContext is the context a Verifier follows cmd with: parent, ended
// at cmd.Deadline, or NoDeadline from now when the command carries none.
// Poll under it stops where the model's wait stops.
func FollowContext(parent context.Context, cmd Command) (context.Context, context.CancelFunc) {
	deadline := cmd.Deadline
	if deadline.IsZero() {
		deadline = time.Now().Add(NoDeadline)
	}
	return context.WithDeadline(parent, deadline)
}

// Follower is the one command a Verifier follows at a time: a newer
// command supersedes the one being followed, and Close stops it. It has
// no lock of its own: the driver calls it with its own lock held, so that
// what it shows and whether a verdict is pending change together.
type Follower struct {
	stop context.CancelFunc
	id   int
}

// Start stops the command followed so far and follows cmd under parent
// until cmd.Deadline (FollowContext). It returns the follow's context and
// its id, which the follow hands to Current and Done.
func (f *Follower) Start(parent context.Context, cmd Command) (context.Context, int) {
	f.Stop()
	ctx, cancel := FollowContext(parent, cmd)
	f.stop = cancel
	f.id++
	return ctx, f.id
}

// Stop cancels the command followed, if any: superseded or closing, its
// verdict is no longer wanted.
func (f *Follower) Stop() {
	if f.stop != nil {
		f.stop()
		f.stop = nil
	}
}

// Active reports whether a verdict is pending: a follow reports its own,
// so what a driver sees meanwhile must not decide the command.
func (f *Follower) Active() bool { return f.stop != nil }

// Current reports whether follow id is still the one in progress.
func (f *Follower) Current(id int) bool { return f.stop != nil && f.id == id }

// Done ends follow id and releases its context, unless a newer follow
// took its place (then Start has released it already).
func (f *Follower) Done(id int) {
	if f.Current(id) {
		f.Stop()
	}
}
