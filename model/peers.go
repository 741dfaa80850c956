package model

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Peers is the rest of a cluster as the tree sees it; package cluster
// implements it over etcd. A tree without Peers is a single machine that
// runs every host itself. With Peers every host has one owner agent at a
// time: only the owner builds the host's drivers and runs its commands;
// every other agent shows the owner's last snapshot and forwards commands.
type Peers interface {
	// Node is this agent's name (-o node=).
	Node() string
	// Forward runs req on the agent that owns req.Path. It returns once
	// that agent accepted or refused the command (refused: the owner's
	// errno and reason); with req.Cmd.Wait, done then delivers the
	// verdict. No owner, or an owner that is gone, is EHOSTUNREACH at
	// once; ctx ending drops the request (the command goes on, as a local
	// one does after EINTR).
	Forward(ctx context.Context, req Forwarded) (done <-chan error, err error)
	// ForwardConsole runs a console line on the agent that owns path and
	// returns its reply ("OK ..." or "ERR ...").
	ForwardConsole(ctx context.Context, path, line string, who Caller) (string, error)
	// KnownNode says whether name is an agent of the cluster (one that
	// joined it once), for the node and agents keys.
	KnownNode(name string) bool
	// CallSwitch runs a call of machine.Switches on node's agent: the
	// switches of a machine are its kernel's.
	CallSwitch(ctx context.Context, node string, call SwitchCall) (SwitchReply, error)
	// Sync returns once every snapshot and event this agent has so far
	// is committed: an agent about to take its own machine down tells
	// the site first (leaving.go).
	Sync(ctx context.Context) error
}

// ErrOwnerRestarted marks a forwarded command whose owner agent went and
// came back (a new session) before it answered: its machine rebooted, or
// the agent was restarted. The command's fate is unknown.
var ErrOwnerRestarted = errors.New("the owner agent restarted")

// Forwarded is a command sent to the agent that owns its host.
type Forwarded struct {
	Path    string
	Line    string // the command as written (machine.Command.String)
	Who     Caller // Node says where it was written
	Own     bool   // the machine alone (a stack's step), not its stack
	InStack bool   // a step of a stack command: the stack does not make it busy
}

// ownership is which agent runs a host, as this agent knows it.
type ownership struct {
	node   string     // the owner agent; "" while none is known
	here   bool       // this agent runs the host (always, without Peers)
	gone   time.Time  // the owner's agent went away then (zero: alive)
	remote *HostState // the owner's last snapshot (not here)
}

// runsHere says whether this agent runs h: builds its drivers and runs
// its commands.
func (h *Host) runsHere() bool {
	if h.tree.peers == nil {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.owner.here
}

// Owner is the agent that runs the host ("" on a single machine, or while
// none is known) and whether it is this one.
func (h *Host) Owner() (node string, here bool) {
	if h.tree.peers == nil {
		return "", true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.owner.node, h.owner.here
}

// SetOwner records that node runs the host now (here: this agent; gone:
// since when node's agent is away, zero while it is alive). An agent that
// becomes the owner builds the host's drivers (they adopt what runs: a
// guest, a BMC); one that stops being it closes them, leaving the machine
// as it is.
func (h *Host) SetOwner(ctx context.Context, node string, here bool, gone time.Time) {
	h.mu.Lock()
	was := h.owner
	h.owner = ownership{node: node, here: here, gone: gone, remote: was.remote}
	if here {
		h.owner.remote = nil
	}
	h.mu.Unlock()
	if was.node == node && was.here == here && was.gone.Equal(gone) {
		return
	}
	switch {
	case node == "":
		h.emit(machine.EventOwner, "none (no eligible agent is running)")
	case !gone.IsZero():
		h.emit(machine.EventOwner, node+" gone since "+stamp(gone))
	default:
		h.emit(machine.EventOwner, node)
	}
	switch {
	case here && !was.here:
		h.rebuildDrivers(ctx)
	case !here && was.here:
		h.closeDriversKeepMachine()
	}
}

// SetRemoteState records the owner's snapshot of the host, which every
// read on this agent shows until the next one.
func (h *Host) SetRemoteState(st HostState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.owner.here {
		return
	}
	h.owner.remote = &st
}

// remoteStateLocked is the state an agent that does not run h shows.
func (h *Host) remoteStateLocked(subs []string) HostState {
	st := HostState{Power: machine.PowerUnknown, Reason: "no state from the owner yet"}
	if h.owner.remote != nil {
		st = *h.owner.remote
	}
	st.Subhosts = subs
	st.Owner = h.owner.node
	switch {
	case h.owner.node == "":
		st.Reachable, st.Reason = false, "no agent owns it (none eligible is running)"
		st.Owner = "none"
	case !h.owner.gone.IsZero():
		st.Reachable = false
		st.OwnerGone = "agent " + h.owner.node + " gone since " + stamp(h.owner.gone)
		h.leftStateLocked(&st)
	}
	return st
}

// forwardable says why a command for h cannot reach its owner, or nil.
func (h *Host) unreachableLocked() error {
	switch {
	case h.owner.node == "":
		return machine.Errorf(syscall.EHOSTUNREACH, "%s: no agent owns it (none eligible is running)", h.path)
	case !h.owner.gone.IsZero():
		return machine.Errorf(syscall.EHOSTUNREACH, "%s: agent %s gone since %s", h.path, h.owner.node, stamp(h.owner.gone))
	}
	return nil
}

// forward sends a command to the host's owner and returns an operation
// that ends with the owner's verdict (nil without wait).
func (h *Host) forward(ctx context.Context, cmd machine.Command, who Caller, own, inStack bool) (*operation, error) {
	h.mu.Lock()
	err := h.unreachableLocked()
	h.mu.Unlock()
	quoted := quote(cmd, who)
	if err != nil {
		h.refuseLine(cmd.String(), who, err)
		return nil, err
	}
	if who.Node == "" {
		who.Node = h.tree.peers.Node()
	}
	done, err := h.tree.peers.Forward(ctx, Forwarded{Path: h.path, Line: cmd.String(), Who: who, Own: own, InStack: inStack})
	if err != nil && h.leftOnPurpose(ctx, cmd, err) {
		// The owner went down with its machine before it could answer.
		done, err = closedWith(err), nil
	}
	if err != nil {
		h.tree.log.Info("forwarded command refused", "host", h.path, "cmd", quoted, "err", err)
		return nil, err
	}
	if done == nil || !cmd.Wait {
		return nil, nil
	}
	op := newOperation(cmd, who)
	op.target = machine.SpecOf(cmd).Target
	go func() {
		select {
		case err := <-done:
			op.end(h.forwardedVerdict(ctx, cmd, err))
		case <-ctx.Done():
			// The waiter is gone (awaitOp answers EINTR); nobody reads
			// op any more.
		}
	}()
	return op, nil
}

// RunForwarded runs on the owner a command another agent forwarded: it
// returns when the command was accepted or refused, and done delivers
// the verdict of a waiting command (nil without wait).
func (t *Tree) RunForwarded(ctx context.Context, req Forwarded) (done <-chan error, err error) {
	h := t.Host(req.Path)
	if h == nil {
		return nil, machine.Errorf(syscall.ENOENT, "no host %s", req.Path)
	}
	if !h.runsHere() {
		node, _ := h.Owner()
		return nil, machine.Errorf(syscall.EHOSTUNREACH, "%s: this agent (%s) does not own it (owner: %s)", req.Path, t.peers.Node(), node)
	}
	cmd, err := machine.ParseCommand(req.Line)
	if err != nil {
		return nil, err
	}
	var op *operation
	if req.Own {
		op, err = h.startOwn(ctx, cmd, req.Who, req.InStack)
	} else {
		op, err = h.start(ctx, cmd, req.Who)
	}
	if err != nil || op == nil || !cmd.Wait {
		return nil, err
	}
	ch := make(chan error, 1)
	go func() { ch <- awaitOp(ctx, op) }()
	return ch, nil
}

// forwardConsole sends a console line to the host's owner; the reply is
// the owner's (its console event comes with its events).
func (h *Host) forwardConsole(ctx context.Context, line string, who Caller) string {
	h.mu.Lock()
	err := h.unreachableLocked()
	h.mu.Unlock()
	reply := ""
	if err == nil {
		if who.Node == "" {
			who.Node = h.tree.peers.Node()
		}
		reply, err = h.tree.peers.ForwardConsole(ctx, h.path, line, who)
	}
	if err != nil {
		reply = "ERR " + err.Error()
	}
	if !strings.HasSuffix(reply, "\n") {
		reply += "\n"
	}
	h.consoleMu.Lock()
	h.console = reply
	h.consoleMu.Unlock()
	return reply
}

// RunConsole runs on the owner a console line another agent forwarded.
func (t *Tree) RunConsole(ctx context.Context, path, line string, who Caller) (string, error) {
	h := t.Host(path)
	if h == nil {
		return "", machine.Errorf(syscall.ENOENT, "no host %s", path)
	}
	if !h.runsHere() {
		return "", machine.Errorf(syscall.EHOSTUNREACH, "%s: this agent (%s) does not own it", path, t.peers.Node())
	}
	return h.Console(ctx, line, who), nil
}

// closedWith is a verdict channel that already holds err.
func closedWith(err error) <-chan error {
	ch := make(chan error, 1)
	ch <- err
	return ch
}

func quote(cmd machine.Command, who Caller) string {
	return `"` + cmd.String() + `" ` + who.String()
}
