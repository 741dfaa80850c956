package model

import (
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// Where a machine runs. A subhost's drivers (ns, uml, qemu) start
// processes on the machine of its host: that host must be one an agent
// runs on - the machine this machinefs runs on (local = yes), or in a
// cluster the agent its node key names. Before, a subhost filed under any
// host ran here without a word. Simulated drivers run nowhere and may sit
// anywhere.

// checkPlacement checks keys about to be set on the host at path (self,
// nil while it is being made, under parent): a subhost's real drivers
// need an agent on its host's machine, and only one host is local.
func (t *Tree) checkPlacement(self, parent *Host, set *ConfigFile) error {
	if v, ok := set.Get("local"); ok && parent == nil {
		if yes, _ := machine.ParseBool(v); yes {
			if err := t.oneLocal(self); err != nil {
				return err
			}
		}
	}
	if parent == nil {
		return nil
	}
	drivers, ok := set.Get("drivers")
	if !ok {
		drivers, _ = set.Get("driver")
	}
	if !t.runsSomewhere(drivers) {
		return nil
	}
	top := parent
	for top.parent != nil {
		top = top.parent
	}
	if t.hasAgent(top) {
		return nil
	}
	if t.peers != nil {
		return machine.Errorf(syscall.ENOTSUP, "%s has no agent (no node key): a subhost runs on its host's machine; set node = AGENT on %s", top.path, top.path)
	}
	return machine.Errorf(syscall.ENOTSUP, "%s is not the machine machinefs runs on (local = yes): a subhost runs on its host's machine, and machinefs runs nothing on another machine without an agent there", top.path)
}

// checkAgents refuses, in a cluster, a node or agents key that names an
// agent that never joined it (a typo would leave the host without owner).
func (t *Tree) checkAgents(key, value string) error {
	if t.peers == nil || (key != "node" && key != "agents") {
		return nil
	}
	for _, n := range AgentNames(value) {
		if !t.peers.KnownNode(n) {
			return machine.Errorf(syscall.EINVAL, "%s: no agent %q ever joined this cluster (start machinefs -o node=%s on that machine first)", key, n, n)
		}
	}
	return nil
}

// oneLocal refuses a second local host: machinefs runs on one machine.
func (t *Tree) oneLocal(self *Host) error {
	for _, h := range t.Hosts(nil) {
		if h != self && h.Config().Bool("local") {
			return machine.Errorf(syscall.EINVAL, "local = yes: %s is already the machine machinefs runs on", h.path)
		}
	}
	return nil
}

// runsSomewhere says whether any of the drivers named runs a real
// machine (not a simulation).
func (t *Tree) runsSomewhere(drivers string) bool {
	for _, n := range driverNames(drivers) {
		if spec, ok := t.specs[n]; ok && !spec.Simulated {
			return true
		}
	}
	return false
}

// hasAgent says whether an agent runs on top's machine.
func (t *Tree) hasAgent(top *Host) bool {
	cf := top.Config()
	if t.peers != nil {
		node, _ := cf.Get("node")
		return node != ""
	}
	return cf.Bool("local")
}
