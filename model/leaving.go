package model

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// A machine that runs a machinefs agent powers itself off, reboots and
// suspends through that agent (a machine.ThisMachine driver such as
// drivers/local). The agent goes down with its machine, so it cannot
// report the verdict. Instead, before the driver acts, the owner records
// the command as the host's leaving command and has the cluster commit
// that snapshot (Peers.Sync). The other agents then read the owner's
// departure as the verdict: its lease going is the probe saying "down".
// After a poweroff the host reads off; after a reboot it reads rebooting
// until the agent comes back and reports again; after a suspend, paused.

// leaveGrace is how long a writer whose forwarded command lost its owner
// waits for the owner's last snapshot to arrive: the snapshot was
// committed before the owner acted, but it comes on another watch than
// the news of the owner going. Once that snapshot says the owner is
// leaving, the writer waits for it to go for the command's whole window:
// an agent killed before it could revoke its lease is seen gone only
// when the lease expires.
const leaveGrace = 2 * time.Second

// leavingTarget is the power a command leaves the machine it takes down
// at: off, on (it comes back: reboot, init 6) or paused; "" when the
// command does not take the machine down.
func leavingTarget(cmd machine.Command) machine.Power {
	spec := machine.SpecOf(cmd)
	switch {
	case spec.Transit == machine.PowerRebooting:
		return machine.PowerOn
	case spec.Target == machine.PowerOff, spec.Target == machine.PowerPaused:
		return spec.Target
	}
	return ""
}

// markLeaving records, before pc acts, that op takes down the machine this
// agent runs on, and has the cluster commit it; nothing when it does not.
// A cluster that cannot commit it refuses the command: the machine must
// not go down without the site knowing why.
func (h *Host) markLeaving(ctx context.Context, pc machine.PowerController, op *operation, timeout time.Duration) error {
	tm, ok := pc.(machine.ThisMachine)
	if !ok || !tm.RunsThisProcess() || leavingTarget(op.cmd) == "" {
		return nil
	}
	h.mu.Lock()
	h.state.leaving = op.cmd.String()
	h.mu.Unlock()
	h.emit(machine.EventCommand, fmt.Sprintf("%q takes down the machine this agent runs on: the verdict comes from the agent going", op.cmd.String()))
	if h.tree.peers == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := h.tree.peers.Sync(ctx); err != nil {
		h.mu.Lock()
		h.state.leaving = ""
		h.mu.Unlock()
		return machine.Errorf(syscall.EROFS, "cannot tell the cluster that this machine goes down: %v", err)
	}
	return nil
}

// leftStateLocked turns the last snapshot of an owner that went away
// while taking its own machine down into what that means for the
// machine.
func (h *Host) leftStateLocked(st *HostState) {
	if st.Leaving == "" || h.owner.gone.IsZero() {
		return
	}
	cmd, err := machine.ParseCommand(st.Leaving)
	if err != nil {
		return
	}
	gone := fmt.Sprintf("agent %s went down with its machine after %q at %s", h.owner.node, st.Leaving, stamp(h.owner.gone))
	switch leavingTarget(cmd) {
	case machine.PowerOff:
		st.Power, st.Reason = machine.PowerOff, gone
	case machine.PowerPaused:
		st.Power, st.Reason = machine.PowerPaused, gone
	case machine.PowerOn:
		st.Power, st.Reason = machine.PowerRebooting, gone+": waiting for it to come back"
	}
}

// leftOnPurpose says whether err, a forwarded command's failure, only
// means that the owner went down with its machine as cmd asked: the
// owner gone (EHOSTUNREACH), or failing its commands as it shuts down,
// after it published cmd as the host's leaving command. It waits up to
// leaveGrace for the owner's last snapshot and for its going.
func (h *Host) leftOnPurpose(ctx context.Context, cmd machine.Command, err error) bool {
	switch leavingTarget(cmd) {
	case "":
		return false
	case machine.PowerOn:
		if errors.Is(err, ErrOwnerRestarted) {
			return true // it went and is back already: awaitBack sees it on
		}
	}
	h.mu.Lock()
	leaving := h.owner.remote != nil && h.owner.remote.Leaving != ""
	h.mu.Unlock()
	if !leaving && machine.ErrnoOf(err) != syscall.EHOSTUNREACH {
		return false
	}
	grace := leaveGrace
	if leaving {
		grace = h.window(cmd)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		h.mu.Lock()
		left := h.owner.remote != nil && h.owner.remote.Leaving != "" && !h.owner.gone.IsZero()
		h.mu.Unlock()
		if left {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		case <-tick.C:
		}
	}
}

// awaitBack waits, after a forwarded reboot of a machine whose agent went
// down with it, until its agent is back and shows it on, or until the
// command's window ends.
func (h *Host) awaitBack(ctx context.Context, cmd machine.Command) error {
	window := h.window(cmd)
	t := time.NewTimer(window)
	defer t.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st := h.State()
		if st.Power == machine.PowerOn && st.OwnerGone == "" && st.Leaving == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return machine.Errorf(syscall.EINTR, "interrupted while waiting for %s to come back (the command goes on)", h.path)
		case <-t.C:
			return machine.Errorf(syscall.ETIMEDOUT, "%q: %s did not come back within %s (power %s)", cmd.String(), h.path, window, st.Power)
		case <-tick.C:
		}
	}
}

// window is how long cmd may take to reach its target: timeout=, else
// the host's wait-timeout.
func (h *Host) window(cmd machine.Command) time.Duration {
	if cmd.Timeout > 0 {
		return cmd.Timeout
	}
	return h.Config().Duration("wait-timeout")
}

// forwardedVerdict is the verdict of a forwarded command whose owner
// answered err: the owner going down as the command asked is success
// (after a reboot, once the machine is back).
func (h *Host) forwardedVerdict(ctx context.Context, cmd machine.Command, err error) error {
	if err == nil || !h.leftOnPurpose(ctx, cmd, err) {
		return err
	}
	if leavingTarget(cmd) == machine.PowerOn {
		return h.awaitBack(ctx, cmd)
	}
	return nil
}
