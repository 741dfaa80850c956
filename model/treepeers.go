package model

import (
	"context"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/store"
)

// Peers is the tree's cluster, nil on a single machine.
func (t *Tree) Peers() Peers { return t.peers }

// writable says why the tree refuses changes now: a read-only mount, or a
// cluster whose store is out of reach (EROFS with the reason; the change
// could not be shared, so none is made).
func (t *Tree) writable() error {
	if t.readOnly {
		return machine.Errorf(syscall.EROFS, "read-only mount")
	}
	if why := t.staleReason(); why != "" {
		return machine.Errorf(syscall.EROFS, "%s: changes are refused until it is back", why)
	}
	return nil
}

// staleReason says why what the tree shows may be old, "" when current.
func (t *Tree) staleReason() string {
	if p := t.stale.Load(); p != nil {
		return *p
	}
	return ""
}

// SetStale marks the tree stale for reason (the cluster lost its store's
// quorum): reads show the last known state marked stale, writes fail with
// EROFS. An empty reason clears it.
func (t *Tree) SetStale(reason string) {
	var old string
	if reason == "" {
		if p := t.stale.Swap(nil); p != nil {
			old = *p
		}
	} else if p := t.stale.Swap(&reason); p != nil {
		old = *p
	}
	if old == reason {
		return
	}
	detail := reason
	if reason == "" {
		detail = "store reachable again (was: " + old + ")"
	}
	t.publish(Event{Time: time.Now(), Kind: machine.EventStale, Detail: detail})
	for _, h := range t.allHosts() {
		// Every state file changes (its stale line).
		t.bus.publish(Event{Time: time.Now(), Path: h.path, Kind: machine.EventOwner, Detail: "stale", Remote: true})
	}
}

// allHosts lists every host and subhost, parents first.
func (t *Tree) allHosts() []*Host {
	var out []*Host
	var walk func(parent *Host)
	walk = func(parent *Host) {
		for _, h := range t.Hosts(parent) {
			out = append(out, h)
			walk(h)
		}
	}
	walk(nil)
	return out
}

// AllHosts lists every host and subhost, parents first.
func (t *Tree) AllHosts() []*Host { return t.allHosts() }

// PublishRemote publishes an event another agent sent: it goes to the
// event logs and streams and wakes readers as a local one would, but is
// not sent on again.
func (t *Tree) PublishRemote(e Event) {
	e.Remote = true
	t.publish(e)
}

// ApplyChange applies a change another agent (or this one) made to the
// cluster's store: a host added, reconfigured or removed, a group's
// members.
func (t *Tree) ApplyChange(ctx context.Context, c store.Change) {
	switch {
	case c.Group != "":
		t.applyGroupChange(c)
	case c.Removed:
		t.applyRemoval(ctx, c.Host)
	default:
		sh := StoredHost{Path: c.Host, Err: c.Err}
		if c.Err == nil {
			sh.Config, sh.Err = ParseConfig(string(c.Text))
		}
		if h := t.Host(c.Host); h != nil && sh.Err == nil {
			h.replaceStored(ctx, sh.Config, string(c.Text))
			return
		}
		t.applyAdded(ctx, sh)
	}
}

// expectEcho notes a config this agent is saving: the cluster's store
// sends it back. An agent that saves a config line by line (a shell's
// append, one write per line) must not take its own older lines back in
// between, or the host would flap between configs (and owners).
func (t *Tree) expectEcho(path, text string) {
	if t.peers == nil {
		return
	}
	t.echoMu.Lock()
	defer t.echoMu.Unlock()
	if t.echoes == nil {
		t.echoes = map[string][]string{}
	}
	t.echoes[path] = append(t.echoes[path], text)
}

// ownEcho says whether a change is this agent's own save coming back
// while a later save of the same host is still on its way: it is then
// skipped. The last echo is applied (it changes nothing, unless another
// agent's change came in between, which it then rightly overrides, as it
// does in the store).
func (t *Tree) ownEcho(path, text string) bool {
	t.echoMu.Lock()
	defer t.echoMu.Unlock()
	q := t.echoes[path]
	if len(q) == 0 || q[0] != text {
		return false
	}
	if len(q) == 1 {
		delete(t.echoes, path)
		return false
	}
	t.echoes[path] = q[1:]
	return true
}

// A change another agent made comes with that agent's event (the writer's
// "added", "config", "removed" line, with its uid and node): applying it
// here only wakes the files it changed (quiet), so every events.log has
// one line per change, not one per agent.

// quiet tells the filesystem what changed, without an event line.
func (t *Tree) quiet(path string, kind machine.EventKind) {
	t.bus.publish(Event{Time: time.Now(), Path: path, Kind: kind, Remote: true})
}

// applyAdded makes a host another agent added.
func (t *Tree) applyAdded(ctx context.Context, sh StoredHost) {
	parent, name, ok := t.storedPlace(sh)
	if !ok {
		return
	}
	h, err := t.insert(parent, name, sh.Config)
	if err != nil {
		return
	}
	t.quiet(h.path, machine.EventAdded)
	h.rebuildDrivers(ctx)
}

func (t *Tree) applyRemoval(ctx context.Context, path string) {
	h := t.Host(path)
	if h == nil {
		return
	}
	t.detach(h)
	t.removeTree(ctx, h)
	t.quiet(path, machine.EventRemoved)
}

func (t *Tree) applyGroupChange(c store.Change) {
	g := t.Group(c.Group)
	switch {
	case c.Removed && g != nil:
		t.mu.Lock()
		delete(t.groups, c.Group)
		t.mu.Unlock()
		t.quiet(g.path, machine.EventRemoved)
	case c.Removed:
	case g == nil:
		hosts, _, _ := groupHosts(c.Members)
		if g, err := t.insertGroup(c.Group, c.Members, hosts); err == nil {
			t.quiet(g.path, machine.EventAdded)
		}
	default:
		if g.setStoredMembers(c.Members) {
			t.quiet(g.path, machine.EventMembers)
		}
	}
}
