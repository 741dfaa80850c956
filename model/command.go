package model

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// runOwn runs a command on this machine alone, through its driver. It
// returns once the driver accepted it, or with cmd.Wait once the target
// state is reached. Errors carry the errno (see ErrnoOf) and are recorded in
// state and events. inStack is set for the host's own step of its stack
// command, which must not be refused as busy by that very command.
func (h *Host) runOwn(ctx context.Context, cmd machine.Command, who Caller, inStack bool) error {
	op, err := h.startOwn(ctx, cmd, who, inStack)
	return awaitIf(ctx, cmd, op, err)
}

// awaitIf ends a command that start, startOwn or startStack began: at
// once without cmd.Wait, after an error, or with nothing to wait for
// (already at the target); else when op has its verdict.
func awaitIf(ctx context.Context, cmd machine.Command, op *operation, err error) error {
	if err != nil || op == nil || !cmd.Wait {
		return err
	}
	return awaitOp(ctx, op)
}

// startOwn is runOwn up to the driver's acceptance: it returns the
// operation to wait for (the one a retried waiting write joins, too), or
// nil when there is none (already at the target). A group member holds
// its fan-out slot for this part only.
//
// The steps: choose the driver, admit the command (operation.go), answer
// "already" when the machine itself confirms it is at the target, start
// the operation, have the driver accept it, and arm the deadline.
func (h *Host) startOwn(ctx context.Context, cmd machine.Command, who Caller, inStack bool) (*operation, error) {
	if !h.runsHere() {
		return h.forward(ctx, cmd, who, true, inStack)
	}
	quoted := fmt.Sprintf("%q %s", cmd.String(), who)
	// asked names the driver asked for the machine's state (at most
	// once); unsure says it could not tell, so the command goes on.
	asked, unsure := "", false
	for {
		h.mu.Lock()
		pc, err := h.commandDriverLocked(cmd, quoted)
		if err == nil {
			var join *operation
			if join, err = h.admitLocked(cmd, who, inStack, h.op); join != nil {
				h.mu.Unlock()
				return h.rejoin(join, quoted), nil
			}
		}
		if err != nil {
			h.mu.Unlock()
			h.emit(machine.EventCommand, quoted+" refused: "+err.Error())
			return nil, err
		}
		if !h.shownAtTargetLocked(cmd) || unsure {
			op := h.startLocked(cmd, who, pc.Kind(), quoted) // unlocks
			return h.accept(ctx, pc, op, quoted)
		}
		// What the tree shows may be stale (ipmitool, a guest's own
		// shutdown, a BMC not polled since): the machine decides, not
		// the cache.
		sr := h.drivers.statusReader(pc)
		if sr == nil || asked != "" {
			h.alreadyLocked(quoted, asked) // unlocks
			return nil, nil
		}
		gen, timeout := h.drivers.gen, h.cfg.Duration("timeout")
		h.mu.Unlock()
		asked = sr.Kind()
		unsure = !h.refresh(ctx, sr, gen, timeout, machine.SpecOf(cmd).Target)
	}
}

// commandDriverLocked returns the driver that runs cmd, or the reason
// none does (recorded in state).
func (h *Host) commandDriverLocked(cmd machine.Command, quoted string) (machine.PowerController, error) {
	if pc := h.drivers.power(cmd.Verb); pc != nil {
		return pc, nil
	}
	err := h.drivers.unsupported(cmd.Verb)
	h.state.lastCmd = fmt.Sprintf("%s at %s: refused: %v", quoted, stamp(time.Now()), err)
	h.state.lastErr = err.Error()
	return nil, err
}

// shownAtTargetLocked says whether the tree shows the machine where cmd
// would take it, so that the command may be answered "already" (ipmitool
// semantics: "on" on a machine that is on succeeds and changes nothing).
// A reboot, a verb that always acts (wol), and force always go to the
// driver.
func (h *Host) shownAtTargetLocked(cmd machine.Command) bool {
	spec := machine.SpecOf(cmd)
	return spec.Target != "" && h.state.power == spec.Target && spec.Transit != machine.PowerRebooting && !spec.Always && !cmd.Force
}

// alreadyLocked records a command answered "already": the machine is at
// its target (asked: and the named driver confirmed it). It unlocks h.mu.
func (h *Host) alreadyLocked(quoted, asked string) {
	how := "already " + string(h.state.power)
	if asked != "" {
		how += ", " + asked + " confirms"
	}
	h.state.lastCmd = fmt.Sprintf("%s at %s: ok (%s)", quoted, stamp(time.Now()), how)
	h.mu.Unlock()
	h.emit(machine.EventCommand, quoted+" ok ("+how+")")
}

// startLocked makes cmd the host's operation in flight (a forced command
// overrides the one before it), shows the verb's transitional state, and
// sets the command's deadline. It unlocks h.mu.
func (h *Host) startLocked(cmd machine.Command, who Caller, driver, quoted string) *operation {
	spec := machine.SpecOf(cmd)
	now := time.Now()
	if spec.Target != "" {
		window := h.cfg.Duration("wait-timeout")
		if cmd.Timeout > 0 {
			window = cmd.Timeout
		}
		cmd.Deadline = now.Add(window)
	}
	op := &operation{cmd: cmd, who: who, driver: driver, target: spec.Target, prev: h.state.power, started: now, done: make(chan struct{})}
	if prev := h.op; prev != nil {
		h.finishLocked(prev, machine.Errorf(syscall.ECANCELED, "overridden by %q (force)", cmd.String()))
	}
	h.op = op
	h.state.lastCmd = fmt.Sprintf("%s at %s: in flight", quoted, stamp(now))
	changed := spec.Transit != "" && h.state.power != spec.Transit
	if changed {
		h.setPowerLocked(spec.Transit, fmt.Sprintf("command %q by uid %d", cmd.String(), who.Uid))
	}
	h.mu.Unlock()
	if changed {
		h.emit(machine.EventPower, string(spec.Transit))
	}
	return op
}

// accept hands op to its driver, bounded by the host's timeout, and
// returns op once the driver accepted it: a waiting writer then waits for
// its verdict (awaitIf).
func (h *Host) accept(ctx context.Context, pc machine.PowerController, op *operation, quoted string) (*operation, error) {
	h.mu.Lock()
	timeout := h.cfg.Duration("timeout")
	h.mu.Unlock()
	err := h.markLeaving(ctx, pc, op, timeout)
	if err == nil {
		err = callDriver(ctx, timeout, func(ctx context.Context) error { return pc.Power(ctx, op.cmd) })
	}
	if err != nil {
		return nil, h.refused(pc, op, quoted, err)
	}
	h.mu.Lock()
	if op.target == "" {
		h.finishLocked(op, nil)
	} else if h.op == op {
		h.armLocked(op, pc)
	}
	h.mu.Unlock()
	h.emit(machine.EventCommand, quoted+" ok")
	return op, nil
}

// refused ends op, which its driver refused or did not answer. A refused
// command changed nothing: the previous state stands. A call that timed
// out may still reach the machine (a BMC that answers late runs it):
// nothing is known until the driver reports again.
func (h *Host) refused(pc machine.PowerController, op *operation, quoted string, err error) error {
	err = prefixed(pc.Kind(), err)
	cmd := op.cmd.String()
	after, why := op.prev, fmt.Sprintf("command %q failed", cmd)
	if machine.ErrnoOf(err) == syscall.ETIMEDOUT {
		after, why = machine.PowerUnknown, fmt.Sprintf("command %q timed out: the machine may still run it; unknown until the driver reports", cmd)
	}
	h.mu.Lock()
	changed := h.op == op && h.state.power != after
	if h.op == op {
		h.setPowerLocked(after, why)
	}
	h.finishLocked(op, err)
	h.state.lastErr = err.Error()
	h.state.leaving = "" // the driver did not take the machine down
	h.mu.Unlock()
	h.emit(machine.EventCommand, quoted+" failed: "+err.Error())
	h.emit(machine.EventError, err.Error())
	if changed {
		h.emit(machine.EventPower, string(after))
	}
	return err
}
