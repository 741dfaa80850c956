package model

import (
	"context"
	"fmt"
	"slices"
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

	mu        sync.Mutex
	cfg       *ConfigFile
	drivers   []machine.Driver
	driverErr error
	gen       uint64 // driver generation: reports from closed drivers are ignored
	power     machine.Power
	since     time.Time
	reason    string
	reachable bool
	lastCmd   string
	lastErr   string
	op        *operation
	stack     *operation // a stack command (poweroff, reboot) in flight
	console   string     // last console exchange, for readers that did not write

	subhosts map[string]*Host // guarded by tree.mu
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
	return h.power
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

// statusReaderLocked returns the driver to ask for the machine's state
// before a command is answered from the cache: the driver that would run
// the command if it can tell, else the first driver that can.
func (h *Host) statusReaderLocked(pc machine.PowerController) machine.StatusReader {
	if sr, ok := pc.(machine.StatusReader); ok {
		return sr
	}
	for _, d := range h.drivers {
		if sr, ok := d.(machine.StatusReader); ok {
			return sr
		}
	}
	return nil
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
	if h.gen != gen || h.op != nil {
		h.mu.Unlock()
		return false
	}
	changed, reach := st.Power != h.power, !h.reachable
	reason := st.Reason
	if reason == "" {
		reason = sr.Kind() + " reports " + string(st.Power)
	}
	h.setPowerLocked(st.Power, reason)
	h.reachable = true
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
	if h.power != p {
		h.since = time.Now()
	}
	h.power = p
	h.reason = reason
}

// powerDriverLocked returns the first configured driver that supports verb.
func (h *Host) powerDriverLocked(verb string) machine.PowerController {
	for _, d := range h.drivers {
		if pc, ok := d.(machine.PowerController); ok && slices.Contains(pc.Verbs(), verb) {
			return pc
		}
	}
	return nil
}

func (h *Host) unsupportedLocked(verb string) error {
	if h.driverErr != nil {
		return machine.Errorf(machine.ErrnoOf(h.driverErr), "%s: drivers not ready: %v", verb, h.driverErr)
	}
	if len(h.drivers) == 0 {
		return machine.Errorf(syscall.ENOTSUP, "%s: no driver configured (set drivers in config)", verb)
	}
	return machine.Errorf(syscall.ENOTSUP, "%s: not supported by drivers %s", verb, h.driverKindsLocked())
}

func (h *Host) driverKindsLocked() string {
	var kinds []string
	for _, d := range h.drivers {
		kinds = append(kinds, d.Kind())
	}
	return strings.Join(kinds, ", ")
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
	live := r.h.gen == r.gen
	r.h.mu.Unlock()
	if live {
		r.h.emit(kind, detail)
	}
}

func (h *Host) report(gen uint64, kind string, st machine.Status) {
	var events []Event
	h.mu.Lock()
	if h.gen != gen {
		h.mu.Unlock()
		return
	}
	if st.Power != "" && st.Power != h.power {
		h.setPowerLocked(st.Power, st.Reason)
		events = append(events, Event{Kind: machine.EventPower, Detail: string(st.Power)})
	} else if st.Reason != "" {
		h.reason = st.Reason
	}
	if st.Reachable != h.reachable {
		h.reachable = st.Reachable
		events = append(events, Event{Kind: machine.EventReachable, Detail: yesNo(st.Reachable)})
	}
	if st.Err != nil {
		h.lastErr = prefixed(kind, st.Err).Error()
		events = append(events, Event{Kind: machine.EventError, Detail: h.lastErr})
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
	switch h.power {
	case machine.PowerOff, machine.PowerUnknown, machine.PowerCrashed, "":
		return ""
	}
	return fmt.Sprintf("%s is %s: power it off first", h.path, h.power)
}

// prefixed names the driver an error came from, unless its text already
// does.
func prefixed(kind string, err error) error {
	if strings.HasPrefix(err.Error(), kind+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", kind, err)
}
