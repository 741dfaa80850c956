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

// operation is a power command in flight: accepted by a driver, not yet at
// its target state.
type operation struct {
	cmd     machine.Command
	who     Caller
	target  machine.Power
	prev    machine.Power
	started time.Time
	done    chan struct{}
	err     error
	timer   *time.Timer
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

// PowerText is the content of the power file.
func (h *Host) PowerText() string { return string(h.Power()) + "\n" }

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

// runOwn runs a command on this machine alone, through its driver. It
// returns once the driver accepted it, or with cmd.Wait once the target
// state is reached. Errors carry the errno (see ErrnoOf) and are recorded in
// state and events. inStack is set for the host's own step of its stack
// command, which must not be refused as busy by that very command.
func (h *Host) runOwn(ctx context.Context, cmd machine.Command, who Caller, inStack bool) error {
	spec, _ := machine.LookupVerb(cmd.Verb)
	quoted := fmt.Sprintf("%q %s", cmd.String(), who)

	// asked: the driver asked for the machine's state (at most once);
	// unsure: it could not tell, so the command goes to the driver.
	asked, unsure := "", false
again:
	h.mu.Lock()
	pc := h.powerDriverLocked(cmd.Verb)
	if pc == nil {
		err := h.unsupportedLocked(cmd.Verb)
		h.lastCmd = fmt.Sprintf("%s at %s: refused: %v", quoted, stamp(time.Now()), err)
		h.lastErr = err.Error()
		h.mu.Unlock()
		h.emit(machine.EventCommand, quoted+" refused: "+err.Error())
		return err
	}
	if op := h.busyOpLocked(inStack); op != nil && !cmd.Force {
		if op == h.op && isRetry(op, cmd, who) {
			h.mu.Unlock()
			return h.rejoin(ctx, op, quoted)
		}
		h.mu.Unlock()
		err := machine.Errorf(syscall.EBUSY, "busy: %q is in flight since %s", op.cmd.String(), stamp(op.started))
		h.emit(machine.EventCommand, quoted+" refused: "+err.Error())
		return err
	}
	now := time.Now()
	if spec.Target != "" && h.power == spec.Target && spec.Transit != machine.PowerRebooting && !spec.Always && !cmd.Force && !unsure {
		// What the tree shows may be stale (ipmitool, a guest's own
		// shutdown, a BMC that has not been polled since): the machine
		// decides, not the cache. force always goes to the driver.
		if sr := h.statusReaderLocked(pc); sr != nil && asked == "" {
			gen, timeout := h.gen, h.cfg.Duration("timeout", defaultTimeout)
			h.mu.Unlock()
			asked = sr.Kind()
			unsure = !h.refresh(ctx, sr, gen, timeout, spec.Target)
			goto again
		}
		// ipmitool semantics: "on" on a machine that is on succeeds
		// and changes nothing.
		how := "already " + string(h.power)
		if asked != "" {
			how += ", " + asked + " confirms"
		}
		h.lastCmd = fmt.Sprintf("%s at %s: ok (%s)", quoted, stamp(now), how)
		h.mu.Unlock()
		h.emit(machine.EventCommand, quoted+" ok ("+how+")")
		return nil
	}
	op := &operation{cmd: cmd, who: who, target: spec.Target, prev: h.power, started: now, done: make(chan struct{})}
	if prev := h.op; prev != nil {
		h.finishLocked(prev, machine.Errorf(syscall.ECANCELED, "overridden by %q (force)", cmd.String()))
	}
	h.op = op
	h.lastCmd = fmt.Sprintf("%s at %s: in flight", quoted, stamp(now))
	changed := spec.Transit != "" && h.power != spec.Transit
	if changed {
		h.setPowerLocked(spec.Transit, fmt.Sprintf("command %q by uid %d", cmd.String(), who.Uid))
	}
	timeout := h.cfg.Duration("timeout", 10*time.Second)
	opTimeout := h.cfg.Duration("wait-timeout", 2*time.Minute)
	if cmd.Timeout > 0 {
		opTimeout = cmd.Timeout
	}
	h.mu.Unlock()
	if changed {
		h.emit(machine.EventPower, string(spec.Transit))
	}

	if spec.Target != "" {
		cmd.Deadline = now.Add(opTimeout)
		op.cmd.Deadline = cmd.Deadline
	}
	err := callDriver(ctx, timeout, func(ctx context.Context) error { return pc.Power(ctx, cmd) })

	h.mu.Lock()
	if err != nil {
		err = prefixed(pc.Kind(), err)
		// A refused command changed nothing: the previous state stands.
		// A call that timed out may still reach the machine (a BMC that
		// answers late runs it): nothing is known until the driver
		// reports again.
		after, why := op.prev, fmt.Sprintf("command %q failed", cmd.String())
		if machine.ErrnoOf(err) == syscall.ETIMEDOUT {
			after, why = machine.PowerUnknown, fmt.Sprintf("command %q timed out: the machine may still run it; unknown until the driver reports", cmd.String())
		}
		changed := h.op == op && h.power != after
		if h.op == op {
			h.setPowerLocked(after, why)
		}
		h.finishLocked(op, err)
		h.lastErr = err.Error()
		h.mu.Unlock()
		h.emit(machine.EventCommand, quoted+" failed: "+err.Error())
		h.emit(machine.EventError, err.Error())
		if changed {
			h.emit(machine.EventPower, string(after))
		}
		return err
	}
	if op.target == "" {
		h.finishLocked(op, nil)
	} else if h.op == op {
		// The model's clock ends the command at its deadline, unless the
		// driver follows it there itself: then its verdict decides, and
		// the clock is only a backstop.
		after := time.Until(cmd.Deadline)
		if v, ok := pc.(machine.Verifier); ok && v.Verifies(cmd) {
			after += machine.VerdictGrace
		}
		op.timer = time.AfterFunc(after, func() { h.opTimedOut(op, opTimeout) })
	}
	h.mu.Unlock()
	h.emit(machine.EventCommand, quoted+" ok")

	if !cmd.Wait {
		return nil
	}
	return awaitOp(ctx, op)
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

// isRetry says whether cmd from who is the command op runs, written again
// by the same process while it is in flight: a program that retries a
// write a signal interrupted (Go's os.File, Python) after the wait ended
// with EINTR.
func isRetry(op *operation, cmd machine.Command, who Caller) bool {
	return cmd.Wait && op.cmd.String() == cmd.String() && sameProcess(op.who, who)
}

// rejoin waits on for op, in flight, instead of refusing its retry as busy.
func (h *Host) rejoin(ctx context.Context, op *operation, quoted string) error {
	h.emit(machine.EventCommand, quoted+" waits again for the one in flight since "+stamp(op.started))
	return awaitOp(ctx, op)
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

func (h *Host) opTimedOut(op *operation, after time.Duration) {
	h.mu.Lock()
	if h.op != op {
		h.mu.Unlock()
		return
	}
	err := machine.Errorf(syscall.ETIMEDOUT, "%q: power still %s after %s, expected %s", op.cmd.String(), h.power, after, op.target)
	changed := h.power.Transitional()
	if changed {
		h.setPowerLocked(machine.PowerUnknown, err.Error())
	}
	h.lastErr = err.Error()
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
	select {
	case <-op.done:
		return
	default:
	}
	op.err = err
	close(op.done)
	verdict := "ok"
	if err != nil {
		verdict = "failed: " + err.Error()
	}
	h.lastCmd = fmt.Sprintf("%q %s at %s: %s", op.cmd.String(), op.who, stamp(op.started), verdict)
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

// StateText is the content of the state file: "key: value" lines.
func (h *Host) StateText() string {
	subs := h.tree.subhostNames(h)
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	// Values come from drivers, guests and BMCs: escaped, one line each.
	line := func(k, v string) { b.WriteString(k + ": " + Escape(v) + "\n") }
	line("power", string(h.power))
	if h.since.IsZero() {
		line("since", "")
	} else {
		line("since", stamp(h.since))
	}
	line("reason", h.reason)
	line("drivers", h.driversTextLocked())
	line("reachable", yesNo(h.reachable))
	line("last-command", h.lastCmd)
	line("last-error", h.lastErr)
	label, _ := h.cfg.Get("label")
	line("label", label)
	line("subhosts", strings.Join(subs, " "))
	for _, d := range h.drivers {
		if ds, ok := d.(machine.Describer); ok {
			for _, kv := range ds.Describe() {
				line(kv[0], kv[1])
			}
		}
	}
	return b.String()
}

func (h *Host) driversTextLocked() string {
	var parts []string
	for _, d := range h.drivers {
		s := d.Kind()
		if spec, ok := h.tree.specs[d.Kind()]; ok && spec.Simulated {
			s += " (simulation)"
		}
		parts = append(parts, s)
	}
	if h.driverErr != nil {
		parts = append(parts, "(not ready: "+h.driverErr.Error()+")")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

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
