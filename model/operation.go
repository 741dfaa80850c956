package model

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// operation is one command on a host, from admission to verdict: a power
// command on the machine alone (runOwn) or a stack command (startStack). It
// owns the three decisions a command needs: whether it may start now
// (admitLocked: busy, the same command retried, force), when the model
// stops waiting for it (arm: its deadline), and how it ended (finishLocked:
// its verdict, which every waiter gets).
type operation struct {
	cmd     machine.Command
	who     Caller
	driver  string // the driver running it (runOwn): it alone decides it
	target  machine.Power
	prev    machine.Power
	started time.Time
	done    chan struct{}
	err     error
	timer   *time.Timer
}

// isRetry says whether cmd from who is the command op runs, written again
// by the same process while it is in flight: a program that retries a
// write a signal interrupted (Go's os.File, Python) after the wait ended
// with EINTR.
func isRetry(op *operation, cmd machine.Command, who Caller) bool {
	return cmd.Wait && op.cmd.String() == cmd.String() && sameProcess(op.who, who)
}

// rejoin records a retry that waits on for op, in flight, instead of
// being refused as busy, and returns op to wait for.
func (h *Host) rejoin(op *operation, quoted string) *operation {
	h.emit(machine.EventCommand, quoted+" waits again for the one in flight since "+stamp(op.started))
	return op
}

// newOperation starts an operation for cmd from who.
func newOperation(cmd machine.Command, who Caller) *operation {
	return &operation{cmd: cmd, who: who, started: time.Now(), done: make(chan struct{})}
}

// end gives op its verdict, once: every waiter gets err. It says whether
// this call decided (false: op had ended before).
func (op *operation) end(err error) bool {
	select {
	case <-op.done:
		return false
	default:
	}
	op.err = err
	close(op.done)
	return true
}

// awaitOp waits until op reaches its target or fails, or until the caller
// is interrupted (the command goes on).
func awaitOp(ctx context.Context, op *operation) error {
	select {
	case <-op.done:
		return op.err
	case <-ctx.Done():
		if op.target == "" {
			return machine.Errorf(syscall.EINTR, "interrupted while waiting for %q (the command goes on)", op.cmd.String())
		}
		return machine.Errorf(syscall.EINTR, "interrupted while waiting for %s (the command goes on)", op.target)
	}
}

func (h *Host) opTimedOut(op *operation, after time.Duration) {
	h.mu.Lock()
	if h.op != op {
		h.mu.Unlock()
		return
	}
	err := machine.Errorf(syscall.ETIMEDOUT, "%q: power still %s after %s, expected %s", op.cmd.String(), h.state.power, after, op.target)
	changed := h.state.power.Transitional()
	if changed {
		h.setPowerLocked(machine.PowerUnknown, err.Error())
	}
	h.state.lastErr = err.Error()
	h.state.leaving = "" // the machine did not go down as asked
	h.finishLocked(op, err)
	h.mu.Unlock()
	if changed {
		h.emit(machine.EventPower, string(machine.PowerUnknown))
	}
	h.emit(machine.EventError, err.Error())
}

// finishLocked ends op with err and records the verdict.
func (h *Host) finishLocked(op *operation, err error) {
	if op.timer != nil {
		op.timer.Stop()
	}
	if h.op == op {
		h.op = nil
	}
	if !op.end(err) {
		return
	}
	verdict := "ok"
	if err != nil {
		verdict = "failed: " + err.Error()
	}
	h.state.lastCmd = fmt.Sprintf("%q %s at %s: %s", op.cmd.String(), op.who, stamp(op.started), verdict)
}

// admitLocked decides whether cmd from who may start on h now; see admit.
// own is the operation of the same sort already in flight (the host's
// command for runOwn, its stack command for startStack). inStack is set for
// the host's own step of its stack command, which that command must not
// refuse. Called with h.mu held.
func (h *Host) admitLocked(cmd machine.Command, who Caller, inStack bool, own *operation) (join *operation, err error) {
	return admit(h.busyOpLocked(inStack), own, cmd, who)
}

// admit is the one admission rule for hosts, stacks and groups: with
// nothing in flight (busy nil) cmd starts; the same process writing the
// same waiting command again joins the one in flight (own); anything else
// is refused with EBUSY, unless cmd is forced.
func admit(busy, own *operation, cmd machine.Command, who Caller) (join *operation, err error) {
	switch {
	case busy == nil, cmd.Force:
		return nil, nil
	case busy == own && isRetry(busy, cmd, who):
		return busy, nil
	}
	return nil, machine.Errorf(syscall.EBUSY, "busy: %q is in flight since %s", busy.cmd.String(), stamp(busy.started))
}

// arm starts the model's clock for op, accepted by pc: at the deadline
// the model ends a command that has not reached its target with
// ETIMEDOUT. A driver that follows the command there itself (a Verifier)
// reports its verdict by the deadline; the clock then waits
// VerdictGrace longer, as a backstop only. Called with h.mu held.
func (h *Host) armLocked(op *operation, pc machine.PowerController) {
	after := time.Until(op.cmd.Deadline)
	if v, ok := pc.(machine.Verifier); ok && v.Verifies(op.cmd) {
		after += machine.VerdictGrace
	}
	window := op.cmd.Deadline.Sub(op.started)
	op.timer = time.AfterFunc(after, func() { h.opTimedOut(op, window) })
}
