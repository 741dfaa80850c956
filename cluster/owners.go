package cluster

import (
	"cmp"
	"context"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/model"
)

// Who owns a host:
//
//   - a subhost (and the switches of a host) belongs to the machine it
//     runs on: the agent named by its top host's node key. A top host
//     without node has no agent: its subhosts have no owner.
//   - a top host with agents = A B ... is won by one of those agents
//     (they reach its BMC or its segment); without agents but with node,
//     it is that node's; with neither, any agent may win it.
//   - a top host whose node is one of its agents prefers it: the machine's
//     own agent runs it while it is alive (its power through its own
//     init, drivers/local), another of the agents while it is gone (to
//     wake it, to probe it), and gives it back when it returns.
//
// Winning is an etcd key owners/PATH created on the winner's session
// lease: when the winner goes, the key goes with its lease, and the next
// eligible agent creates it (Ironic's conductor takeover). Agents try in
// an order hashed from the host's path (rendezvous hashing), the first at
// once and each next one a little later, so hosts spread over agents and
// two agents rarely race for one key.

// claimStep is how much later each next agent in a host's order tries to
// win it.
const claimStep = 300 * time.Millisecond

// rule is who may own a host.
type rule struct {
	node     string   // the owner, for a host bound to a node
	elected  bool     // won among eligible
	eligible []string // nil: any agent
	prefer   string   // the eligible agent that wins whenever it is alive
}

func ruleOf(h *model.Host) rule {
	top := h
	for top.Parent() != nil {
		top = top.Parent()
	}
	cf := top.Config()
	node, _ := cf.Get("node")
	if top != h {
		return rule{node: node}
	}
	if v, ok := cf.Get("agents"); ok && v != "" {
		r := rule{elected: true, eligible: model.AgentNames(v)}
		if slices.Contains(r.eligible, node) {
			r.prefer = node
		}
		return r
	}
	if node != "" {
		return rule{node: node}
	}
	return rule{elected: true}
}

// loadAgents reads the live agents and the owners of elected hosts, and
// returns the revision to watch from.
func (a *Agent) loadAgents(ctx context.Context) (int64, error) {
	cctx, cancel := a.call(ctx)
	defer cancel()
	ag, err := a.cli.Get(cctx, a.k.agents(), clientv3.WithPrefix())
	if err != nil {
		return 0, wrapEtcd("read agents", err)
	}
	rev := ag.Header.Revision
	ow, err := a.cli.Get(cctx, a.k.owners(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return 0, wrapEtcd("read owners", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, kv := range ag.Kvs {
		node := strings.TrimPrefix(string(kv.Key), a.k.agents())
		a.alive[node] = time.Now()
		a.leases[node] = kv.Lease
		a.known[node] = true
	}
	for _, kv := range ow.Kvs {
		a.owners[strings.TrimPrefix(string(kv.Key), a.k.owners())] = string(kv.Value)
	}
	return rev, nil
}

// watchAgents follows agents/ and owners/ from rev on.
func (a *Agent) watchAgents(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		wctx := clientv3.WithRequireLeader(ctx)
		ch := a.cli.Watch(wctx, a.k.agents(), clientv3.WithPrefix(), clientv3.WithRev(rev))
		och := a.cli.Watch(wctx, a.k.owners(), clientv3.WithPrefix(), clientv3.WithRev(rev))
		rev = a.followAgents(ctx, ch, och, rev)
		if ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			if r, err := a.loadAgents(ctx); err == nil {
				rev = r + 1
				a.poke()
			}
		}
	}
}

// followAgents applies agents/ and owners/ changes until a watch ends;
// it returns the revision to go on from.
func (a *Agent) followAgents(ctx context.Context, ch, och clientv3.WatchChan, rev int64) int64 {
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-ch:
		case wr, ok = <-och:
		case <-ctx.Done():
			return rev
		}
		if !ok || wr.Err() != nil {
			return rev
		}
		a.mu.Lock()
		for _, ev := range wr.Events {
			a.applyAgentEvent(ev)
		}
		a.mu.Unlock()
		if wr.Header.Revision >= rev {
			rev = wr.Header.Revision + 1
		}
		a.poke()
	}
}

func (a *Agent) applyAgentEvent(ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	put := ev.Type == clientv3.EventTypePut
	if node, ok := strings.CutPrefix(key, a.k.agents()); ok {
		if put {
			// A put on another lease is a new incarnation: the agent went
			// and came back (its machine rebooted) before its old lease
			// expired, so no delete was seen.
			a.known[node] = true
			a.alive[node] = time.Now()
			a.leases[node] = ev.Kv.Lease
			delete(a.goneAt, node)
			a.wake(node)
		} else {
			delete(a.alive, node)
			delete(a.leases, node)
			a.goneAt[node] = time.Now()
			a.wake(node)
		}
		return
	}
	if path, ok := strings.CutPrefix(key, a.k.owners()); ok {
		if put {
			a.owners[path] = string(ev.Kv.Value)
		} else {
			delete(a.owners, path)
		}
	}
}

// wake tells forwarded commands waiting on node that it came or went.
// Called with a.mu held.
func (a *Agent) wake(node string) {
	if ch, ok := a.waiters[node]; ok {
		close(ch)
		delete(a.waiters, node)
	}
}

// changes returns a channel closed when node's agent comes or goes.
func (a *Agent) changes(node string) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch, ok := a.waiters[node]
	if !ok {
		ch = make(chan struct{})
		a.waiters[node] = ch
	}
	return ch
}

// leaseOf is the session lease of node's live agent (0: none known).
func (a *Agent) leaseOf(node string) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.leases[node]
}

// isAlive says whether node's agent is in the cluster now, and if not,
// since when it is known gone.
func (a *Agent) isAlive(node string) (bool, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if node == a.node {
		return true, time.Time{}
	}
	if _, ok := a.alive[node]; ok {
		return true, time.Time{}
	}
	if t, ok := a.goneAt[node]; ok {
		return false, t
	}
	return false, a.startedAt()
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.changed:
			a.reconcile(ctx)
		}
	}
}

// reconcile gives every host of the tree its owner as known now, and
// tries to win the elected hosts nobody owns.
func (a *Agent) reconcile(ctx context.Context) {
	for _, h := range a.tree.AllHosts() {
		a.reconcileHost(ctx, h)
	}
}

func (a *Agent) reconcileHost(ctx context.Context, h *model.Host) {
	r := ruleOf(h)
	path := h.Path()
	owner := r.node
	if r.elected {
		a.mu.Lock()
		owner = a.owners[path]
		a.mu.Unlock()
		switch {
		case owner == "":
			a.scheduleClaim(ctx, path, r)
		case owner == a.node && r.eligible != nil && !slices.Contains(r.eligible, a.node):
			a.release(ctx, path)
		case owner == a.node && r.prefer != "" && r.prefer != a.node:
			if alive, _ := a.isAlive(r.prefer); alive {
				a.release(ctx, path) // the machine's own agent is back
			}
		}
	}
	if owner == "" {
		h.SetOwner(ctx, "", false, time.Time{})
		return
	}
	alive, since := a.isAlive(owner)
	if alive {
		since = time.Time{}
	}
	// The owner's snapshot before and after: a reader woken by the owner
	// event reads it, and one that came while this agent ran the host
	// was kept aside.
	st, known := a.pub.remoteOf(path, owner)
	if known {
		h.SetRemoteState(st)
	}
	h.SetOwner(ctx, owner, owner == a.node, since)
	if known {
		h.SetRemoteState(st)
	}
}

// scheduleClaim tries to win path if this agent is eligible, after the
// delay its place in the path's order gives.
func (a *Agent) scheduleClaim(ctx context.Context, path string, r rule) {
	a.mu.Lock()
	var live []string
	for n := range a.alive {
		if r.eligible == nil || slices.Contains(r.eligible, n) {
			live = append(live, n)
		}
	}
	a.mu.Unlock()
	if !slices.Contains(live, a.node) {
		return
	}
	slices.SortFunc(live, func(x, y string) int {
		switch r.prefer {
		case x:
			return -1
		case y:
			return 1
		}
		return cmp.Compare(rank(path, y), rank(path, x))
	})
	delay := time.Duration(slices.Index(live, a.node)) * claimStep
	time.AfterFunc(delay, func() {
		if ctx.Err() == nil {
			a.claim(ctx, path)
		}
	})
}

// rank is path's rendezvous weight for node.
func rank(path, node string) uint32 {
	f := fnv.New32a()
	f.Write([]byte(path + "\x00" + node))
	return f.Sum32()
}

// claim creates owners/PATH on this agent's lease, if nobody has.
func (a *Agent) claim(ctx context.Context, path string) {
	s := a.session()
	if s == nil {
		return
	}
	cctx, cancel := a.call(ctx)
	defer cancel()
	key := a.k.owner(path)
	resp, err := a.cli.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, a.node, clientv3.WithLease(s.Lease()))).Commit()
	if err != nil {
		a.log.Warn("claiming a host", "host", path, "err", err)
		return
	}
	if resp.Succeeded {
		a.log.Info("won a host", "host", path)
	}
}

// release gives up path, if this agent's lease holds it.
func (a *Agent) release(ctx context.Context, path string) {
	s := a.session()
	if s == nil {
		return
	}
	cctx, cancel := a.call(ctx)
	defer cancel()
	key := a.k.owner(path)
	_, err := a.cli.Txn(cctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", s.Lease())).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		a.log.Warn("releasing a host", "host", path, "err", err)
	}
}
