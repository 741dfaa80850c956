package model

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Stack semantics follow ctys-PM's CANCEL: a host carries a stack of
// machines (its subhosts, theirs, ...).
//
//	poweroff            subhosts off, deepest first, siblings in parallel; a
//	                    host stays on, a subhost goes off after its stack
//	poweroff self       the stack, then the host itself
//	poweroff self force the host alone, at once, no stack (force needs self
//	                    on a host, as in ctys; a subhost takes force alone)
//	reboot              the stack goes down and comes back up; the host stays
//	reboot self         the stack goes down, then the host reboots
//	reboot force        immediate reset of the target alone, no stack
//
// Each step is bounded by the stopped machine's stack-timeout; a machine
// that does not stop in time is forced, and the events say so. The
// command's result is the worst result of its steps.

// IsStackVerb reports whether verb acts on a machine's stack (the cluster
// bounds a forwarded wait by its window unless it does).
func IsStackVerb(verb string) bool { return verb == "poweroff" || verb == "reboot" }

// Run runs a parsed command on this machine, with stack semantics for
// poweroff and reboot. See runOwn for the rules of a single machine.
func (h *Host) Run(ctx context.Context, cmd machine.Command, who Caller) error {
	op, err := h.start(ctx, cmd, who)
	return awaitIf(ctx, cmd, op, err)
}

// start is Run up to the command's acceptance (by the machine's driver,
// or as a stack command): it returns the operation a waiting writer waits
// for, or nil when there is none. A group sends every member's command
// this far before it waits on any.
func (h *Host) start(ctx context.Context, cmd machine.Command, who Caller) (*operation, error) {
	if err := h.tree.writable(); err != nil {
		return nil, err
	}
	if !h.runsHere() {
		return h.forward(ctx, cmd, who, false, false)
	}
	if !IsStackVerb(cmd.Verb) {
		return h.startOwn(ctx, cmd, who, false)
	}
	top := h.parent == nil
	if err := h.checkSelf(cmd, top); err != nil {
		h.refuse(cmd, who, err)
		return nil, err
	}
	if cmd.Force {
		if n := len(h.runningSubhosts()); n > 0 {
			h.emit(machine.EventWarning, fmt.Sprintf("%q: %d machines on top may be left inconsistent (force: no stack)", cmd.String(), n))
		}
		return h.startOwn(ctx, cmd, who, false)
	}
	return h.startStack(ctx, cmd, who, cmd.Self || !top)
}

// checkSelf refuses what a host must not do to itself: force without self
// (ctys), and powering off or rebooting the machine machinefs runs on unless
// its config allows it.
func (h *Host) checkSelf(cmd machine.Command, top bool) error {
	if !top {
		return nil
	}
	if cmd.Force && !cmd.Self && cmd.Verb == "poweroff" {
		return machine.Errorf(syscall.EINVAL, "%s force needs self on a host (as in ctys): \"%s self force\"", cmd.Verb, cmd.Verb)
	}
	if !cmd.Self {
		return nil
	}
	cf := h.Config()
	if cf.Bool("local") {
		if !cf.Bool("allow-self") {
			return machine.Errorf(syscall.EPERM, "%s self: %s is the machine machinefs runs on (local = yes); set allow-self = yes to allow it", cmd.Verb, h.path)
		}
	}
	return nil
}

func (h *Host) refuse(cmd machine.Command, who Caller, err error) {
	h.refuseLine(cmd.String(), who, err)
}

// CheckCommand parses a power line without running it. A line that does
// not parse is refused with EINVAL and recorded in state and events.
func (h *Host) CheckCommand(line string, who Caller) error {
	_, err := machine.ParseCommand(line)
	if err != nil {
		h.refuseLine(strings.TrimSpace(line), who, err)
	}
	return err
}

func (h *Host) refuseLine(line string, who Caller, err error) {
	quoted := fmt.Sprintf("%q %s", line, who)
	h.mu.Lock()
	h.state.lastCmd = fmt.Sprintf("%s at %s: refused: %v", quoted, stamp(time.Now()), err)
	h.state.lastErr = err.Error()
	h.mu.Unlock()
	h.emit(machine.EventCommand, quoted+" refused: "+err.Error())
}

// busyOpLocked returns the command that makes the host busy: its own
// command in flight, or a stack command (unless the caller is that stack's
// own step).
func (h *Host) busyOpLocked(inStack bool) *operation {
	if h.op != nil {
		return h.op
	}
	if h.stack != nil && !inStack {
		return h.stack
	}
	return nil
}

// running reports whether a machine is up in any sense (a stack step has
// something to stop).
func running(p machine.Power) bool {
	switch p {
	case machine.PowerOn, machine.PowerStarting, machine.PowerRebooting, machine.PowerPaused, machine.PowerStopping:
		return true
	}
	return false
}

func (h *Host) runningSubhosts() []*Host {
	var out []*Host
	for _, s := range h.tree.Hosts(h) {
		if running(s.Power()) || len(s.runningSubhosts()) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// startStack starts a stack command: the machines on top first, then
// (with self) the machine itself. It returns the stack's operation once
// the stack runs.
func (h *Host) startStack(ctx context.Context, cmd machine.Command, who Caller, self bool) (*operation, error) {
	quoted := fmt.Sprintf("%q %s", cmd.String(), who)
	h.mu.Lock()
	if join, err := h.admitLocked(cmd, who, false, h.stack); join != nil {
		h.mu.Unlock()
		return h.rejoin(join, quoted), nil
	} else if err != nil {
		h.mu.Unlock()
		h.emit(machine.EventCommand, quoted+" refused: "+err.Error())
		return nil, err
	}
	op := newOperation(cmd, who)
	h.stack = op
	h.state.lastCmd = fmt.Sprintf("%s at %s: in flight (stack)", quoted, stamp(op.started))
	h.mu.Unlock()
	h.emit(machine.EventCommand, quoted+" accepted (stack)")

	// The stack is not tied to the writer: an interrupted wait (Ctrl-C)
	// must not cut a step's wait short, or the step would be forced off
	// and the machine below powered off under machines still stopping.
	// Its outcome is in state and events.
	go h.runStackSteps(context.WithoutCancel(ctx), op, self, quoted)
	return op, nil
}

// runStackSteps runs the stack command op: the machines on top go down
// (deepest first), then with self the host itself, and a reboot without
// self brings the machines on top up again. The verdict is the worst step.
func (h *Host) runStackSteps(ctx context.Context, op *operation, self bool, quoted string) {
	cmd := op.cmd
	s := &stackRun{cmd: cmd, who: op.who, root: h}
	subs := h.tree.Hosts(h)
	wasOn := s.down(ctx, subs)
	// ctys: poweroff and reboot without self act on the machines on
	// top alone. With none running the command changes nothing,
	// which readers of ipmitool and virsh would not guess: say so.
	empty := ""
	if !self && s.steps() == 0 {
		empty = h.emptyStack(cmd.Verb, len(subs))
	}
	if self {
		own := machine.Command{Verb: cmd.Verb, Wait: true, Label: cmd.Label, Timeout: cmd.Timeout, Line: cmd.Line}
		start := time.Now()
		err := h.runOwn(ctx, own, op.who, true)
		s.record(h, cmd.Verb, err, false, start)
	}
	if cmd.Verb == "reboot" && !self {
		s.up(ctx, wasOn)
	}
	err := s.verdict()
	summary := s.summary()
	if empty != "" {
		summary = empty
	}
	h.mu.Lock()
	h.stack = nil
	verdict := "ok"
	if err != nil {
		verdict = "failed: " + err.Error()
		h.state.lastErr = err.Error()
	}
	h.state.lastCmd = fmt.Sprintf("%s at %s: %s (%s)", quoted, stamp(op.started), verdict, summary)
	h.mu.Unlock()
	// The summary is in events before the waiting writer returns: a
	// `cat events.log` after `poweroff wait` shows how the stack ended.
	h.emit(machine.EventStack, fmt.Sprintf("%q done: %s (%s)", cmd.String(), verdict, summary))
	op.end(err)
}

// stackRun collects the steps of one stack command.
type stackRun struct {
	cmd  machine.Command
	who  Caller
	root *Host

	mu     sync.Mutex
	ok     int
	forced int
	failed []error
}

func (s *stackRun) record(m *Host, verb string, err error, forced bool, start time.Time) {
	took := time.Since(start).Round(time.Millisecond)
	label := ""
	if s.cmd.Label != "" {
		label = " label=" + s.cmd.Label
	}
	s.mu.Lock()
	var outcome string
	switch {
	case err != nil:
		s.failed = append(s.failed, fmt.Errorf("%s: %w", m.path, err))
		outcome = "failed: " + err.Error()
	case forced:
		s.forced++
		outcome = "forced"
	default:
		s.ok++
		outcome = "ok"
	}
	s.mu.Unlock()
	s.root.emit(machine.EventStack, fmt.Sprintf("%q%s step %s %s %s (%s)", s.cmd.Verb, label, m.path, verb, outcome, took))
}

// down stops machines deepest first, siblings in parallel, and returns the
// ones that were running, parents before children.
func (s *stackRun) down(ctx context.Context, machines []*Host) [][]*Host {
	var mu sync.Mutex
	var levels [][]*Host
	var wg sync.WaitGroup
	var stop func(m *Host, depth int)
	stop = func(m *Host, depth int) {
		defer wg.Done()
		var inner sync.WaitGroup
		for _, c := range s.root.tree.Hosts(m) {
			inner.Add(1)
			wg.Add(1)
			go func() { defer inner.Done(); stop(c, depth+1) }()
		}
		inner.Wait()
		if !running(m.Power()) {
			return
		}
		mu.Lock()
		for len(levels) <= depth {
			levels = append(levels, nil)
		}
		levels[depth] = append(levels[depth], m)
		mu.Unlock()
		s.stopOne(ctx, m)
	}
	for _, m := range machines {
		wg.Add(1)
		go stop(m, 0)
	}
	wg.Wait()
	return levels
}

// stopOne powers one machine off within its stack-timeout, forcing it when
// it does not stop.
func (s *stackRun) stopOne(ctx context.Context, m *Host) {
	timeout := m.Config().Duration("stack-timeout")
	start := time.Now()
	err := m.runOwn(ctx, machine.Command{Verb: "poweroff", Wait: true, Timeout: timeout, Label: s.cmd.Label}, s.who, false)
	if errors.Is(err, syscall.ENOTSUP) {
		err = m.runOwn(ctx, machine.Command{Verb: "off", Wait: true, Timeout: timeout, Label: s.cmd.Label}, s.who, false)
	}
	if err == nil {
		s.record(m, "poweroff", nil, false, start)
		return
	}
	s.root.emit(machine.EventStack, fmt.Sprintf("%s did not stop within %s (%v): forcing", m.path, timeout, err))
	ferr := m.runOwn(ctx, machine.Command{Verb: "off", Force: true, Wait: true, Timeout: timeout, Label: s.cmd.Label}, s.who, false)
	s.record(m, "off force", ferr, true, start)
}

// up starts the machines a stack reboot stopped, parents first.
func (s *stackRun) up(ctx context.Context, levels [][]*Host) {
	for _, level := range levels {
		var wg sync.WaitGroup
		for _, m := range level {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				timeout := m.Config().Duration("stack-timeout")
				err := m.runOwn(ctx, machine.Command{Verb: "on", Wait: true, Timeout: timeout, Label: s.cmd.Label}, s.who, false)
				s.record(m, "on", err, false, start)
			}()
		}
		wg.Wait()
	}
}

// verdict is the worst result of the steps.
func (s *stackRun) verdict() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failed) == 0 {
		return nil
	}
	first := s.failed[0]
	return machine.Errorf(machine.ErrnoOf(first), "stack: %d of %d steps failed: %v", len(s.failed), len(s.failed)+s.ok+s.forced, first)
}

func (s *stackRun) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("stack: %d ok, %d forced, %d failed", s.ok, s.forced, len(s.failed))
}

// steps is the number of machines the stack acted on so far.
func (s *stackRun) steps() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok + s.forced + len(s.failed)
}

// emptyStack says what a stack command without self that found nothing to
// stop did: nothing. subs is the number of subhosts the host has.
func (h *Host) emptyStack(verb string, subs int) string {
	what := "stack empty"
	if subs > 0 {
		what = "stack: no subhost running"
	}
	left := "host left " + string(h.Power())
	if verb == "reboot" {
		left = "nothing rebooted, " + left
	}
	return fmt.Sprintf("%s: %s (use %s self)", what, left, verb)
}
