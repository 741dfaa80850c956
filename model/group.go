package model

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// Group is a named set of hosts (ctys GROUPS) that power commands act on
// in parallel, with a bounded fan-out. Members are host paths, one per
// line, with pdsh/freeipmi hostranges: node[01-40], rack[1-3,7].
type Group struct {
	tree *Tree
	name string
	path string
	log  *EventLog

	mu      sync.Mutex
	members []string // lines as written
	hosts   []string // members expanded, in order, without duplicates
	results map[string]string
	lastCmd string
	op      *operation // the command running on the members
}

// Name is the group's name, Path its place in the tree ("groups/rack3").
func (g *Group) Name() string { return g.name }

// Path is "groups/NAME".
func (g *Group) Path() string { return g.path }

// Log is the group's events.log.
func (g *Group) Log() *EventLog { return g.log }

func (g *Group) emit(kind machine.EventKind, detail string) {
	g.tree.publish(Event{Time: time.Now(), Path: g.path, Kind: kind, Detail: detail})
}

// refuseMembers records a members write that changed nothing.
func (g *Group) refuseMembers(who Caller, err error) {
	g.tree.publish(Event{Time: time.Now(), Path: g.path, Kind: machine.EventMembers, Refused: true, Detail: fmt.Sprintf("%s refused: %v", who, err)})
}

// SetMembers applies a write to the members file: with replace (the file
// was truncated, `>`) the lines become the members, otherwise (`>>`) they
// are added. Every line is checked first: a bad line or range, a line that
// names no host in the tree, or a file that would name more than
// MaxGroupHosts hosts, is EINVAL and nothing changes. An empty write with
// replace (`: > members`) empties the group.
func (g *Group) SetMembers(ctx context.Context, text string, replace bool, who Caller) error {
	if err := g.tree.writable(); err != nil {
		return err
	}
	var lines []string
	for l := range cmdtab.Lines(text) {
		if cmdtab.IsComment(l) {
			continue
		}
		// Each line on its own first: a bad line is refused before the
		// whole file is expanded.
		if _, err := parseMember(l); err != nil {
			g.refuseMembers(who, err)
			return err
		}
		lines = append(lines, l)
	}
	g.mu.Lock()
	next := lines
	if !replace {
		next = append([]string(nil), g.members...)
		have := make(map[string]struct{}, len(next)+len(lines))
		for _, l := range next {
			have[l] = struct{}{}
		}
		for _, l := range lines {
			if _, dup := have[l]; !dup {
				have[l] = struct{}{}
				next = append(next, l)
			}
		}
	}
	// The whole file is counted: the cap holds across lines and appends.
	// Lines already there that a hand edit made invalid (reported at load)
	// are not the writer's fault; a new line that fails is.
	hosts, _, bad := groupHosts(next)
	fresh := make(map[string]struct{}, len(lines))
	for _, l := range lines {
		fresh[l] = struct{}{}
	}
	for _, b := range bad {
		if _, ok := fresh[b.line]; ok {
			g.mu.Unlock()
			g.refuseMembers(who, b.err)
			return b.err
		}
	}
	// After the cap: a line is expanded again only within it.
	for _, l := range lines {
		if err := g.tree.namesAHost(l); err != nil {
			g.mu.Unlock()
			g.refuseMembers(who, err)
			return err
		}
	}
	if err := g.tree.saveGroup(g.name, next); err != nil {
		g.mu.Unlock()
		return machine.Errorf(syscall.EIO, "%v", err)
	}
	g.members = next
	g.hosts = hosts
	g.mu.Unlock()
	g.emit(machine.EventMembers, fmt.Sprintf("%d lines, %d hosts %s", len(next), len(hosts), who))
	return nil
}

// namesAHost refuses a members line that names no host in the tree (a
// typo, a host not added yet): a group command would only fail on it
// later, and the writer would not learn it. A range is accepted when one
// of its hosts exists; the others show as "missing" in state. A line that
// does not parse is left to the caller's checks.
func (t *Tree) namesAHost(line string) error {
	paths, err := expandMember(line)
	if err != nil || len(paths) == 0 {
		return nil
	}
	for _, p := range paths {
		if t.Host(p) != nil {
			return nil
		}
	}
	if len(paths) == 1 {
		return machine.Errorf(syscall.EINVAL, "member %q: no such host %s", line, paths[0])
	}
	return machine.Errorf(syscall.EINVAL, "member %q: names no host (none of %s ... %s exists)", line, paths[0], paths[len(paths)-1])
}

// Hosts is the members expanded to host paths, in order, without
// duplicates. It is computed when the members change, not on every read
// (power and state read it on every cat); callers must not modify it.
func (g *Group) Hosts() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.hosts
}

// Exec runs a power command on every member in parallel, sending it to at
// most the fan-out at a time (see run, fanOut). It returns once every
// member accepted it, or with wait once every member reached its state;
// the result is the worst member's, and state lists every member's
// outcome.
func (g *Group) Exec(ctx context.Context, line string, who Caller) error {
	cmd, err := machine.ParseCommand(line)
	if err != nil {
		g.emit(machine.EventCommand, fmt.Sprintf("%q %s refused: %v", strings.TrimSpace(line), who, err))
		return err
	}
	if err := g.tree.writable(); err != nil {
		return err
	}
	g.mu.Lock()
	join, err := admit(g.op, g.op, cmd, who)
	if err != nil {
		g.mu.Unlock()
		g.emit(machine.EventCommand, fmt.Sprintf("%q %s refused: %v", cmd.String(), who, err))
		return err
	}
	if join != nil {
		g.mu.Unlock()
		return awaitOp(ctx, join)
	}
	op := newOperation(cmd, who)
	g.op = op
	g.mu.Unlock()

	// The members' commands are not tied to the writer: an interrupted
	// wait (Ctrl-C) must not release the fan-out early and start every
	// remaining member at once. The caller waits for the outcome.
	go func() {
		err := g.run(context.WithoutCancel(ctx), cmd, who)
		g.mu.Lock()
		g.op = nil
		op.end(err)
		g.mu.Unlock()
	}()
	return awaitOp(ctx, op)
}

// run runs cmd on every member. The fan-out bounds the members whose
// commands are on their way to their machines (a driver call, a BMC
// request) at a time; a member's slot is free once its driver accepted,
// so with wait every member's command is sent before the group waits on
// any (as a plain write, which never held a slot while the machines
// moved). Waiting costs a driver nothing it does not do after a plain
// write too: it follows its command to the target either way.
func (g *Group) run(ctx context.Context, cmd machine.Command, who Caller) error {
	paths := g.Hosts()
	results := make(map[string]string, len(paths))
	var mu sync.Mutex
	var worst error
	sem := make(chan struct{}, g.tree.fanOut(len(paths)))
	var wg sync.WaitGroup
	started := time.Now()
	for _, p := range paths {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			err := g.member(ctx, p, cmd, who, func() { <-sem })
			outcome := "ok"
			if err != nil {
				outcome = "failed: " + err.Error()
			}
			mu.Lock()
			results[p] = outcome
			if err != nil && worst == nil {
				worst = fmt.Errorf("%s: %w", p, err)
			}
			mu.Unlock()
			g.emit(machine.EventMember, fmt.Sprintf("%s %q %s", p, cmd.String(), outcome))
		}()
	}
	wg.Wait()
	failed := 0
	for _, o := range results {
		if o != "ok" {
			failed++
		}
	}
	summary := fmt.Sprintf("%d members: %d ok, %d failed (%s)", len(paths), len(paths)-failed, failed, time.Since(started).Round(time.Millisecond))
	g.mu.Lock()
	g.results = results
	g.lastCmd = fmt.Sprintf("%q %s at %s: %s", cmd.String(), who, stamp(started), summary)
	g.mu.Unlock()
	g.emit(machine.EventCommand, fmt.Sprintf("%q %s %s", cmd.String(), who, summary))
	if worst != nil {
		return machine.Errorf(machine.ErrnoOf(worst), "%d of %d members failed; first: %v", failed, len(paths), worst)
	}
	return nil
}

// MaxAutoFanOut bounds the default fan-out: without -o fanout=N, every
// member's command of a group of up to this many is handed to its driver
// at once, as ipmipower sends every request before it waits. The fixed
// default of 32 held members 33-50 of a group of 50 until one of the first
// 32 BMCs had answered. Past it, the goroutines and sockets of a large
// group's commands in flight stay bounded.
const MaxAutoFanOut = 64

// fanOut is how many members' commands of a group of n may be on their way
// to their drivers at once: -o fanout=N when it was given, else the whole
// group up to MaxAutoFanOut.
func (t *Tree) fanOut(n int) int {
	if t.fanout > 0 {
		return t.fanout
	}
	return max(1, min(n, MaxAutoFanOut))
}

// member runs cmd on the member at p: it frees the member's fan-out slot
// (release) once the command was accepted or refused, then waits for the
// member's verdict when cmd waits.
func (g *Group) member(ctx context.Context, p string, cmd machine.Command, who Caller, release func()) error {
	h := g.tree.Host(p)
	if h == nil {
		release()
		return machine.Errorf(syscall.ENOENT, "no such host")
	}
	op, err := h.start(ctx, cmd, who)
	release()
	return awaitIf(ctx, cmd, op, err)
}

// Groups lists the groups, sorted by name.
func (t *Tree) Groups() []*Group {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]*Group, 0, len(t.groups))
	for _, g := range t.groups {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Group returns the group named name, or nil.
func (t *Tree) Group(name string) *Group {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.groups[name]
}

// AddGroup creates an empty group.
func (t *Tree) AddGroup(name string, who Caller) (*Group, error) {
	if err := t.writable(); err != nil {
		return nil, err
	}
	if !ValidName(name) {
		return nil, machine.Errorf(syscall.EINVAL, "%q is not a valid name", name)
	}
	g, err := t.insertGroup(name, nil, nil)
	if err != nil {
		return nil, err
	}
	if err := t.saveGroup(name, nil); err != nil {
		t.mu.Lock()
		delete(t.groups, name)
		t.mu.Unlock()
		return nil, machine.Errorf(syscall.EIO, "%v", err)
	}
	g.emit(machine.EventAdded, who.String())
	return g, nil
}

func (t *Tree) insertGroup(name string, members, hosts []string) (*Group, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.groups[name]; ok {
		return nil, machine.Errorf(syscall.EEXIST, "groups/%s exists", name)
	}
	g := &Group{tree: t, name: name, path: "groups/" + name, log: newEventLog(t.hostLog), members: members, hosts: hosts}
	t.groups[name] = g
	return g, nil
}

// RemoveGroup removes a group (its members stay); EBUSY while a command
// runs on it.
func (t *Tree) RemoveGroup(g *Group, who Caller) error {
	if err := t.writable(); err != nil {
		return err
	}
	g.mu.Lock()
	busy := g.op != nil
	g.mu.Unlock()
	if busy {
		return machine.Errorf(syscall.EBUSY, "a command is running on %s", g.path)
	}
	if t.store != nil {
		if err := t.store.RemoveGroup(g.name); err != nil {
			return machine.Errorf(syscall.EIO, "%v", err)
		}
	}
	t.mu.Lock()
	delete(t.groups, g.name)
	t.mu.Unlock()
	g.emit(machine.EventRemoved, who.String())
	return nil
}

func (t *Tree) saveGroup(name string, members []string) error {
	if t.store == nil {
		return nil
	}
	t.expectEcho("groups/"+name, strings.Join(members, "\n")) // g.path
	return t.store.SaveGroup(name, members)
}

// setStoredMembers takes members another agent saved; it says whether
// they differ from what the group had.
func (g *Group) setStoredMembers(members []string) bool {
	hosts, _, _ := groupHosts(members)
	g.mu.Lock()
	defer g.mu.Unlock()
	// Under g.mu, which a save holds while it notes its echo (see
	// Host.replaceStored).
	if g.tree.ownEcho(g.path, strings.Join(members, "\n")) || slices.Equal(g.members, members) {
		return false
	}
	g.members, g.hosts = members, hosts
	return true
}

// loadGroups makes the stored groups.
func (t *Tree) loadGroups() error {
	if t.store == nil {
		return nil
	}
	stored, err := t.store.Groups()
	if err != nil {
		return err
	}
	for _, sg := range stored {
		name, members := sg.Name, sg.Members
		if t.Group(name) != nil {
			continue
		}
		// A hand-edited file is taken as written, but only its valid lines,
		// within the cap, name hosts; the others are reported.
		hosts, _, bad := groupHosts(members)
		g, err := t.insertGroup(name, members, hosts)
		if err != nil {
			return err
		}
		for _, b := range bad {
			g.emit(machine.EventError, "members: "+b.err.Error()+" (line ignored)")
		}
	}
	return nil
}
