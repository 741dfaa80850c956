package cluster_test

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/cluster"
	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/internal/etcdtest"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store/etcdstore"
)

// These tests run two or three agents in one process over one real etcd
// member: the model and the cluster protocol, without FUSE. tests/
// cluster_test.go runs agents as daemons on machines of their own.

type agent struct {
	name string
	tree *model.Tree
	ag   *cluster.Agent
	cli  *clientv3.Client
}

// startAgent runs an agent named name: a tree over the etcd store, joined.
func startAgent(t *testing.T, endpoint, name string) *agent {
	t.Helper()
	cli := etcdtest.Client(t, endpoint)
	st, err := etcdstore.New(cli, etcdstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tree := model.NewTree(model.Options{Store: st, Drivers: []machine.DriverSpec{sim.Spec}})
	ag, err := cluster.New(cli, tree, st, cluster.Options{Node: name, TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tree.SetPeers(ag)
	ctx := context.Background()
	if err := tree.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ag.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a := &agent{name: name, tree: tree, ag: ag, cli: cli}
	t.Cleanup(a.stop)
	return a
}

// startAgents starts agents named names and waits until each knows the
// others (a node key may name only an agent that joined).
func startAgents(t *testing.T, endpoint string, names ...string) []*agent {
	t.Helper()
	var out []*agent
	for _, n := range names {
		out = append(out, startAgent(t, endpoint, n))
	}
	eventually(t, "the agents to know each other", func() bool {
		for _, a := range out {
			for _, n := range names {
				if !a.ag.KnownNode(n) {
					return false
				}
			}
		}
		return true
	})
	return out
}

func (a *agent) stop() {
	if a.ag == nil {
		return
	}
	a.ag.Close()
	a.tree.Close()
	a.ag = nil
}

var root = model.Caller{Uid: 0, Gid: 0, Pid: 1}

// eventually waits up to 10s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cfg(t *testing.T, text string) *model.ConfigFile {
	t.Helper()
	cf, err := model.ParseConfig(text)
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

// A host bound to node b, created on a's tree, runs on b: its command
// written on a runs there, and a shows b's state.
func TestCommandRunsOnOwner(t *testing.T) {
	ep := etcdtest.StartMember(t)
	ab := startAgents(t, ep, "a", "b")
	a, b := ab[0], ab[1]
	if _, err := a.tree.Add(context.Background(), nil, "m1", cfg(t, "drivers = sim\nnode = b\nsim.on-delay = 50ms\n"), root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to own hosts/m1", func() bool {
		h := b.tree.Host("hosts/m1")
		if h == nil {
			return false
		}
		_, here := h.Owner()
		return here
	})
	ha := a.tree.Host("hosts/m1")
	eventually(t, "a to see b as the owner", func() bool { n, here := ha.Owner(); return n == "b" && !here })
	if err := ha.Exec(context.Background(), "on wait", root); err != nil {
		t.Fatalf("on wait from a: %v", err)
	}
	if p := b.tree.Host("hosts/m1").Power(); p != machine.PowerOn {
		t.Fatalf("on b the machine is %s, want on", p)
	}
	eventually(t, "a to show on", func() bool { return ha.Power() == machine.PowerOn })
	st := ha.State()
	if st.Owner != "b" || !strings.Contains(st.LastCommand, "node=a") {
		t.Fatalf("a's state: owner %q, last command %q; want owner b and the command from node=a", st.Owner, st.LastCommand)
	}
	// The owner's refusal comes back with its errno: EBUSY while a
	// command is in flight there.
	if err := ha.Exec(context.Background(), "off", root); err != nil {
		t.Fatal(err)
	}
	if err := ha.Exec(context.Background(), "on", root); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("on while off is in flight: %v, want EBUSY", err)
	}
}

// An agent that goes: its hosts show it gone and commands fail at once
// with EHOSTUNREACH; an elected host is taken over by another agent.
func TestAgentGone(t *testing.T) {
	ep := etcdtest.StartMember(t)
	ab := startAgents(t, ep, "a", "b")
	agents := map[string]*agent{"a": ab[0], "b": ab[1]}
	a := agents["a"]
	if _, err := a.tree.Add(context.Background(), nil, "bmc", cfg(t, "drivers = sim\nagents = a b\n"), root); err != nil {
		t.Fatal(err)
	}
	var x string
	eventually(t, "an owner for bmc", func() bool { x, _ = a.tree.Host("hosts/bmc").Owner(); return x != "" })
	gone, y := agents[x], agents[map[string]string{"a": "b", "b": "a"}[x]]
	if _, err := y.tree.Add(context.Background(), nil, "bound", cfg(t, "drivers = sim\nnode = "+x+"\n"), root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "bound to be "+x+"'s", func() bool {
		h := y.tree.Host("hosts/bound")
		n, _ := h.Owner()
		return n == x && h.State().Reason != "no state from the owner yet"
	})
	gone.stop()
	hb := y.tree.Host("hosts/bound")
	eventually(t, "bound to show "+x+" gone", func() bool { return hb.State().OwnerGone != "" })
	if st := hb.State(); st.Reachable || !strings.Contains(st.OwnerGone, "agent "+x+" gone since") {
		t.Fatalf("state of a gone agent's host: reachable %v, %q", st.Reachable, st.OwnerGone)
	}
	start := time.Now()
	err := hb.Exec(context.Background(), "on", root)
	if !errors.Is(err, syscall.EHOSTUNREACH) || time.Since(start) > 2*time.Second {
		t.Fatalf("on for a gone agent's host: %v after %s, want EHOSTUNREACH at once", err, time.Since(start))
	}
	eventually(t, y.name+" to take bmc over", func() bool { _, here := y.tree.Host("hosts/bmc").Owner(); return here })
	if err := y.tree.Host("hosts/bmc").Exec(context.Background(), "on wait", root); err != nil {
		t.Fatalf("on wait on the taken-over host: %v", err)
	}
}

// A command for a host won by election, written on another agent, runs
// on the winner.
func TestElectedHostForwarded(t *testing.T) {
	ep := etcdtest.StartMember(t)
	ab := startAgents(t, ep, "a", "b")
	a, b := ab[0], ab[1]
	if _, err := a.tree.Add(context.Background(), nil, "bmc", cfg(t, "drivers = sim\nagents = b\nsim.on-delay = 50ms\n"), root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to win bmc", func() bool {
		n, _ := a.tree.Host("hosts/bmc").Owner()
		h := b.tree.Host("hosts/bmc")
		return n == "b" && h != nil && h.State().Owner == "b"
	})
	if err := a.tree.Host("hosts/bmc").Exec(context.Background(), "on wait", root); err != nil {
		t.Fatalf("on wait from a: %v", err)
	}
}

// A host bound to a node whose power moves to an agent that reaches its
// BMC (agents set later): a stack poweroff written on a third agent stops
// the subhosts on the node, then the host through the other agent.
func TestStackAcrossAgents(t *testing.T) {
	ep := etcdtest.StartMember(t)
	abc := startAgents(t, ep, "a", "b", "c")
	a, b, c := abc[0], abc[1], abc[2]
	ctx := context.Background()
	if _, err := a.tree.Add(ctx, nil, "m", cfg(t, "node = b\n"), root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "m on a", func() bool { return a.tree.Host("hosts/m") != nil && b.tree.Host("hosts/m") != nil })
	if _, err := a.tree.Add(ctx, a.tree.Host("hosts/m"), "vm", cfg(t, "drivers = sim\nsim.initial = on\nsim.off-delay = 50ms\n"), root); err != nil {
		t.Fatal(err)
	}
	if err := a.tree.Host("hosts/m").SetConfig(ctx, "drivers = sim\nsim.initial = on\nsim.off-delay = 50ms\nagents = a\n", root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a to own m, c to see it on", func() bool {
		_, here := a.tree.Host("hosts/m").Owner()
		hc, vm := c.tree.Host("hosts/m"), c.tree.Host("hosts/m/subhosts/vm")
		if hc == nil || vm == nil {
			return false
		}
		n, _ := hc.Owner()
		return here && n == "a" && hc.Power() == machine.PowerOn && vm.Power() == machine.PowerOn
	})
	if err := c.tree.Host("hosts/m").Exec(ctx, "poweroff self wait", root); err != nil {
		t.Fatalf("poweroff self wait from c: %v", err)
	}
	if p := b.tree.Host("hosts/m/subhosts/vm").Power(); p != machine.PowerOff {
		t.Fatalf("vm on b: %s", p)
	}
}

// A node or agents key naming an agent that never joined is EINVAL; the
// console of a host another agent runs answers from that agent.
func TestKnownNodesAndConsole(t *testing.T) {
	ep := etcdtest.StartMember(t)
	ab := startAgents(t, ep, "a", "b")
	a, b := ab[0], ab[1]
	ctx := context.Background()
	eventually(t, "a to know b", func() bool { return a.ag.KnownNode("b") })
	if _, err := a.tree.Add(ctx, nil, "x", cfg(t, "drivers = sim\nnode = nosuch\n"), root); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("node = nosuch: %v, want EINVAL", err)
	}
	if _, err := a.tree.Add(ctx, nil, "x", cfg(t, "drivers = sim\nagents = a, nosuch\n"), root); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("agents = a, nosuch: %v, want EINVAL", err)
	}
	if _, err := a.tree.Add(ctx, nil, "x", cfg(t, "drivers = sim\nnode = b\n"), root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to run x", func() bool {
		h := b.tree.Host("hosts/x")
		if h == nil {
			return false
		}
		_, here := h.Owner()
		return here
	})
	eventually(t, "a to see b as x's owner", func() bool { n, _ := a.tree.Host("hosts/x").Owner(); return n == "b" })
	reply := a.tree.Host("hosts/x").Console(ctx, "version", root)
	if !strings.HasPrefix(reply, "OK ") {
		t.Fatalf("console version on a for b's host: %q", reply)
	}
	if got := b.tree.Host("hosts/x").LastConsoleReply(); got != reply {
		t.Fatalf("the owner's last reply %q, a's %q", got, reply)
	}
}

// A forwarded wait ends by the command's window: a machine that never
// gets there is ETIMEDOUT on the writer's agent, as it is locally.
func TestForwardedWaitTimesOut(t *testing.T) {
	ep := etcdtest.StartMember(t)
	ab := startAgents(t, ep, "a", "b")
	a, b := ab[0], ab[1]
	if _, err := a.tree.Add(context.Background(), nil, "s", cfg(t, "drivers = sim\nnode = b\nsim.stuck = on\n"), root); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to run s", func() bool {
		h := b.tree.Host("hosts/s")
		if h == nil {
			return false
		}
		_, here := h.Owner()
		n, _ := a.tree.Host("hosts/s").Owner()
		return here && n == "b"
	})
	start := time.Now()
	err := a.tree.Host("hosts/s").Exec(context.Background(), "on wait timeout=300ms", root)
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("on wait timeout=300ms for a machine that never gets there: %v after %s, want ETIMEDOUT", err, time.Since(start))
	}
}

// A host whose node is one of its agents is run by that node's agent
// while it is alive, by another of its agents while it is gone, and given
// back when it returns.
func TestPreferredOwner(t *testing.T) {
	ep := etcdtest.StartMember(t)
	ab := startAgents(t, ep, "a", "b")
	a := ab[0]
	if _, err := a.tree.Add(context.Background(), nil, "m", cfg(t, "drivers = sim\nnode = b\nagents = a b\n"), root); err != nil {
		t.Fatal(err)
	}
	owner := func() string { n, _ := a.tree.Host("hosts/m").Owner(); return n }
	eventually(t, "b, the machine's own agent, to own m", func() bool { return owner() == "b" })
	ab[1].stop()
	eventually(t, "a to take m over while b is gone", func() bool { return owner() == "a" })
	b := startAgent(t, ep, "b")
	eventually(t, "b to get m back", func() bool {
		_, here := b.tree.Host("hosts/m").Owner()
		return owner() == "b" && here
	})
}
