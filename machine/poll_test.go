package machine

import (
	"context"
	"errors"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestPollDone: the first look that reports done ends the poll with nil,
// whatever earlier looks said.
func TestPollDone(t *testing.T) {
	n := 0
	err := Poll(t.Context(), time.Millisecond, func(context.Context) (bool, error) {
		n++
		if n < 3 {
			return false, errors.New("refused")
		}
		return true, nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d looks, want nil after 3", err, n)
	}
}

// TestPollDeadline: a target that never shows ends the poll at ctx's
// deadline (not before), with DeadlineExceeded and the last reason look
// gave; every look saw the deadline.
func TestPollDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	want, _ := ctx.Deadline()
	looks := 0
	err := Poll(ctx, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
		looks++
		if dl, ok := ctx.Deadline(); !ok || !dl.Equal(want) {
			t.Errorf("look %d: deadline %v %v, want %v", looks, dl, ok, want)
		}
		return false, Errorf(syscall.EHOSTDOWN, "no answer (look %d)", looks)
	})
	if time.Now().Before(want) {
		t.Fatalf("Poll returned before the deadline: %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Poll = %v, want DeadlineExceeded", err)
	}
	if ErrnoOf(err) != syscall.EHOSTDOWN {
		t.Fatalf("Poll = %v: errno %v, want the last look's EHOSTDOWN", err, ErrnoOf(err))
	}
	if looks < 2 {
		t.Fatalf("%d looks in 100ms every 10ms", looks)
	}
}

// TestPollCancel: a cancelled poll (superseded, closed) says Canceled and
// keeps no reason from a look that the cancellation cut short.
func TestPollCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	looks := 0
	err := Poll(ctx, time.Hour, func(ctx context.Context) (bool, error) {
		looks++
		cancel()
		return false, ctx.Err()
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || looks != 1 {
		t.Fatalf("Poll = %v after %d looks, want Canceled after 1", err, looks)
	}
	if err.Error() != context.Canceled.Error() {
		t.Errorf("Poll = %q: the cut-short look's error should not count", err)
	}
	// Already ended: no look at all.
	if err := Poll(ctx, time.Millisecond, func(context.Context) (bool, error) {
		t.Fatal("look called with an ended context")
		return false, nil
	}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Poll on an ended context = %v", err)
	}
}

// TestPollSchedule: a long interval is cut by the deadline: no look after
// it, and Poll returns there.
func TestPollSchedule(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	var starts []time.Time
	_ = Poll(ctx, time.Hour, func(context.Context) (bool, error) {
		starts = append(starts, time.Now())
		return false, nil
	})
	if len(starts) != 1 {
		t.Fatalf("%d looks with an interval of an hour, want 1", len(starts))
	}
}

// TestPollNoGoroutine: nothing of Poll outlives it.
func TestPollNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 100 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
		_ = Poll(ctx, 100*time.Microsecond, func(context.Context) (bool, error) { return false, nil })
		cancel()
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("%d goroutines after 100 polls, %d before", after, before)
	}
}

// TestFollowContext: the context ends at the command's deadline; a command
// without one is followed for NoDeadline.
func TestFollowContext(t *testing.T) {
	at := time.Now().Add(time.Minute)
	ctx, cancel := FollowContext(t.Context(), Command{Verb: "on", Deadline: at})
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || !dl.Equal(at) {
		t.Fatalf("deadline %v %v, want %v", dl, ok, at)
	}
	before := time.Now()
	ctx2, cancel2 := FollowContext(t.Context(), Command{Verb: "on"})
	defer cancel2()
	if dl, ok := ctx2.Deadline(); !ok || dl.Before(before.Add(NoDeadline)) || dl.After(time.Now().Add(NoDeadline)) {
		t.Fatalf("no deadline given: %v %v, want NoDeadline from now", dl, ok)
	}
}

// One command followed at a time: a newer one cancels the older follow,
// whose late Done leaves the newer alone; Done of the current one ends it.
func TestFollower(t *testing.T) {
	var f Follower
	deadline := time.Now().Add(time.Minute)
	first, id1 := f.Start(context.Background(), Command{Verb: "on", Deadline: deadline})
	if !f.Active() || !f.Current(id1) {
		t.Fatal("not following after Start")
	}
	if d, ok := first.Deadline(); !ok || !d.Equal(deadline) {
		t.Fatalf("follow ends at %v, want the command's deadline %v", d, deadline)
	}
	second, id2 := f.Start(context.Background(), Command{Verb: "off", Deadline: deadline})
	if first.Err() == nil {
		t.Fatal("a newer command did not stop the older follow")
	}
	f.Done(id1) // the superseded follow ends late
	if !f.Active() || !f.Current(id2) || f.Current(id1) || second.Err() != nil {
		t.Fatal("the superseded follow's Done touched the newer one")
	}
	f.Done(id2)
	if f.Active() || second.Err() == nil {
		t.Fatal("Done did not end the current follow")
	}
	third, _ := f.Start(context.Background(), Command{Verb: "on", Deadline: deadline})
	f.Stop()
	if f.Active() || third.Err() == nil {
		t.Fatal("Stop did not end the follow")
	}
}
