package model

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Host is one machine in the tree: a host under hosts/ or a subhost under a
// host's subhosts/. It holds the machine's state, runs its commands through
// its drivers and publishes every change as an event.
type Host struct {
	tree   *Tree
	parent *Host
	name   string
	path   string
	id     uint64
	log    *EventLog

	// mu guards the host's configuration, drivers, shown state and
	// operations together: a command's admission reads all four at once
	// (is one in flight, which driver, what does the tree show, which
	// timeouts), and a config change must not slip between them.
	mu      sync.Mutex
	cfg     *ConfigFile
	drivers driverSet
	state   shownState
	op      *operation // the command in flight on this machine
	stack   *operation // a stack command (poweroff, reboot) in flight

	serial    *serialHub // the serial console's sessions and backlog
	serialLog *EventLog  // serial.log

	consoleMu sync.Mutex
	console   string // last console exchange, for readers that did not write

	subhosts map[string]*Host // guarded by tree.mu

	owner ownership // guarded by mu; see peers.go

	check *hostChecks // the tool and permission report (check.go); made on first use, under mu
}

// shownState is what the state file shows of a host, besides its drivers'
// own lines.
type shownState struct {
	power     machine.Power
	since     time.Time
	reason    string
	reachable bool
	lastCmd   string
	lastErr   string
	// leaving is the command taking down the machine this agent runs
	// on (see leaving.go), "" otherwise.
	leaving string
}

// Name is the host's own name, Path its place in the tree.
func (h *Host) Name() string { return h.name }

// Path is the host's path in the tree, e.g. "hosts/lab01/subhosts/vm1".
func (h *Host) Path() string { return h.path }

// ID is a number unique to this host for the life of the process.
func (h *Host) ID() uint64 { return h.id }

// Log is the host's events.log: its own events and its subhosts'.
func (h *Host) Log() *EventLog { return h.log }

// Parent is the host a subhost runs on, nil for hosts.
func (h *Host) Parent() *Host { return h.parent }

// Power is the current power state.
func (h *Host) Power() machine.Power {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.tree.peers != nil && !h.owner.here {
		if h.owner.remote == nil {
			return machine.PowerUnknown
		}
		return h.owner.remote.Power
	}
	return h.state.power
}

// emit publishes an event about this host.
func (h *Host) emit(kind machine.EventKind, detail string) {
	h.tree.publish(Event{Time: time.Now(), Path: h.path, Kind: kind, Detail: detail})
}

// Exec parses and runs one line written to the power file.
func (h *Host) Exec(ctx context.Context, line string, who Caller) error {
	cmd, err := machine.ParseCommand(line)
	if err != nil {
		return err
	}
	return h.Run(ctx, cmd, who)
}

// refresh asks sr for the machine's state, merges what it tells into the
// host (a change shows as a power event, as a report would) and says
// whether the machine is at target. A driver that cannot tell (an error,
// unknown, a transition) answers false: the command then goes to it.
func (h *Host) refresh(ctx context.Context, sr machine.StatusReader, gen uint64, timeout time.Duration, target machine.Power) bool {
	res := make(chan machine.Status, 1)
	err := callDriver(ctx, timeout, func(ctx context.Context) error {
		st, err := sr.Status(ctx)
		res <- st
		return err
	})
	if err != nil {
		h.tree.log.Debug("status before a command", "host", h.path, "driver", sr.Kind(), "err", err)
		return false
	}
	st := <-res
	if st.Power == "" || st.Power == machine.PowerUnknown || st.Power.Transitional() {
		return false
	}
	h.mu.Lock()
	// A command that started meanwhile, or new drivers, own the state.
	if h.drivers.gen != gen || h.op != nil {
		h.mu.Unlock()
		return false
	}
	changed, reach := st.Power != h.state.power, !h.state.reachable
	reason := st.Reason
	if reason == "" {
		reason = sr.Kind() + " reports " + string(st.Power)
	}
	h.setPowerLocked(st.Power, reason)
	h.state.reachable = true
	h.mu.Unlock()
	if changed {
		h.emit(machine.EventPower, string(st.Power))
	}
	if reach {
		h.emit(machine.EventReachable, "yes")
	}
	return st.Power == target
}

func (h *Host) setPowerLocked(p machine.Power, reason string) {
	if h.state.power != p {
		h.state.since = time.Now()
	}
	h.state.power = p
	h.state.reason = reason
}

// reporter is the Reporter a driver gets: it tags reports with the driver
// generation so a closed driver's late reports are dropped.
type reporter struct {
	h    *Host
	gen  uint64
	kind string
}

func (r reporter) Report(st machine.Status) { r.h.report(r.gen, r.kind, st) }

func (r reporter) Event(kind machine.EventKind, detail string) {
	r.h.mu.Lock()
	live := r.h.drivers.gen == r.gen
	r.h.mu.Unlock()
	if live {
		r.h.emit(kind, detail)
	}
}

func (h *Host) report(gen uint64, kind string, st machine.Status) {
	var events []Event
	h.mu.Lock()
	if h.drivers.gen != gen {
		h.mu.Unlock()
		return
	}
	st = h.heardLocked(kind, st)
	if st.Power != "" && st.Power != h.state.power {
		h.setPowerLocked(st.Power, st.Reason)
		events = append(events, Event{Kind: machine.EventPower, Detail: string(st.Power)})
	} else if st.Reason != "" {
		h.state.reason = st.Reason
	}
	if st.Reachable != h.state.reachable {
		h.state.reachable = st.Reachable
		events = append(events, Event{Kind: machine.EventReachable, Detail: yesNo(st.Reachable)})
	}
	if st.Err != nil {
		h.state.lastErr = prefixed(kind, st.Err).Error()
		events = append(events, Event{Kind: machine.EventError, Detail: h.state.lastErr})
	}
	if op := h.op; op != nil && st.Power != "" && !st.Power.Transitional() {
		switch {
		case st.Power == op.target:
			h.finishLocked(op, nil)
		case st.Power != op.prev || st.Err != nil:
			// The driver's errno wins (a verification that ran out of
			// time is ETIMEDOUT); a plain wrong state is EIO.
			why, code := st.Reason, syscall.EIO
			if st.Err != nil {
				why, code = st.Err.Error(), machine.ErrnoOf(st.Err)
			}
			h.finishLocked(op, machine.Errorf(code, "%q: reached %s, expected %s: %s", op.cmd.String(), st.Power, op.target, why))
		}
	}
	h.mu.Unlock()
	for _, e := range events {
		h.emit(e.Kind, e.Detail)
	}
}

// heardLocked is what the host takes from a report of driver kind. One
// driver speaks for a machine while it runs a command: another driver's
// word on power (a WoL probe that stops answering while IPMI powers the
// machine off) must neither end that command nor flip power under it.
// And a driver that is not the host's first source of state cannot make
// a known power unknown: it only cannot tell. Reasons and errors are kept.
func (h *Host) heardLocked(kind string, st machine.Status) machine.Status {
	if op := h.op; op != nil && op.driver != "" && op.driver != kind {
		st.Power, st.Reachable = "", h.state.reachable
	}
	if st.Power == machine.PowerUnknown && h.state.power != machine.PowerUnknown && kind != h.drivers.primary() {
		st.Power, st.Reachable = "", h.state.reachable
	}
	return st
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Busy says why the host cannot be removed, or "" if it can.
func (h *Host) busy() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if op := h.busyOpLocked(false); op != nil {
		return fmt.Sprintf("%s: command %q in flight", h.path, op.cmd.String())
	}
	switch h.state.power {
	case machine.PowerOff, machine.PowerUnknown, machine.PowerCrashed, "":
		return ""
	}
	return fmt.Sprintf("%s is %s: power it off first", h.path, h.state.power)
}

// prefixed names the driver an error came from, unless its text already
// does.
func prefixed(kind string, err error) error {
	if strings.HasPrefix(err.Error(), kind+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", kind, err)
}
