package model

import "github.com/machinefs/machinefs/machine"

// HostState is what a host shows at one moment: the state file's facts,
// for package view to render. Drivers' details are asked for after the
// host's lock is released, so Describe may take a driver's own locks and
// the driver may report meanwhile.
type HostState struct {
	Power       machine.Power
	Since       string // RFC 3339, "" before the first change
	Reason      string
	Drivers     []string // kinds, "(simulation)" marked; "(not ready: ...)" last
	Reachable   bool
	LastCommand string
	LastError   string
	Label       string
	Subhosts    []string
	Details     [][2]string // Describer lines, driver by driver
	// Owner is the agent that runs the host ("" on a single machine);
	// OwnerGone says since when it is gone ("" while it is alive).
	Owner, OwnerGone string
	// Stale says why the state shown may be old (the cluster's store
	// cannot be reached), "" when it is current.
	Stale string
	// Leaving is the command that is taking down the machine the owner
	// agent runs on ("poweroff self"), "" otherwise: the owner cannot
	// report the end of it, so the other agents read its departure as
	// the verdict (leaving.go).
	Leaving string
}

// State takes a snapshot of the host.
func (h *Host) State() HostState {
	subs := h.tree.subhostNames(h)
	h.mu.Lock()
	if h.tree.peers != nil && !h.owner.here {
		st := h.remoteStateLocked(subs)
		h.mu.Unlock()
		st.Stale = h.tree.staleReason()
		return st
	}
	st := HostState{
		Power:       h.state.power,
		Reason:      h.state.reason,
		Drivers:     h.driverLabelsLocked(),
		Reachable:   h.state.reachable,
		LastCommand: h.state.lastCmd,
		LastError:   h.state.lastErr,
		Subhosts:    subs,
		Leaving:     h.state.leaving,
	}
	if !h.state.since.IsZero() {
		st.Since = stamp(h.state.since)
	}
	st.Label, _ = h.cfg.Get("label")
	drivers := append([]machine.Driver(nil), h.drivers.list...)
	if h.tree.peers != nil {
		st.Owner = h.owner.node
	}
	h.mu.Unlock()
	st.Stale = h.tree.staleReason()
	for _, d := range drivers {
		if ds, ok := d.(machine.Describer); ok {
			st.Details = append(st.Details, ds.Describe()...)
		}
	}
	return st
}

// driverLabelsLocked names the host's drivers as state shows them.
func (h *Host) driverLabelsLocked() []string {
	var parts []string
	for _, d := range h.drivers.list {
		s := d.Kind()
		if spec, ok := h.tree.specs[d.Kind()]; ok && spec.Simulated {
			s += " (simulation)"
		}
		parts = append(parts, s)
	}
	if h.drivers.err != nil {
		parts = append(parts, "(not ready: "+h.drivers.err.Error()+")")
	}
	return parts
}

// GroupState is what a group shows at one moment.
type GroupState struct {
	Members     []string          // the members file's lines, as written
	Hosts       []string          // the members expanded, in order
	Power       []machine.Power   // each host's power; "" for a host not in the tree
	Results     map[string]string // each host's outcome of the last command
	LastCommand string
	FanOut      int
}

// State takes a snapshot of the group.
func (g *Group) State() GroupState {
	g.mu.Lock()
	st := GroupState{
		Members:     append([]string(nil), g.members...),
		Hosts:       g.hosts, // replaced, never changed in place
		Results:     g.results,
		LastCommand: g.lastCmd,
		FanOut:      g.tree.fanOut(len(g.hosts)),
	}
	g.mu.Unlock()
	st.Power = make([]machine.Power, len(st.Hosts))
	for i, p := range st.Hosts {
		if h := g.tree.Host(p); h != nil {
			st.Power[i] = h.Power()
		}
	}
	return st
}

// Members is the members file's lines, as written.
func (g *Group) Members() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.members...)
}
