package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// maxQueued bounds the events waiting to be sent: a store that is slow or
// gone must not grow the daemon. Beyond it events are dropped for the
// other agents (this agent's logs keep them) and every status is sent
// again once the store answers.
const maxQueued = 4096

// maxBatch bounds the events of one transaction: each may add a snapshot
// put, and etcd takes at most 128 operations in one (--max-txn-ops).
const maxBatch = 100

// maxExtra bounds the answers that ride in one transaction.
const maxExtra = 20

// publisher sends this agent's events and the snapshots of the hosts it
// runs, and applies the other agents'. A snapshot is put only when it
// differs from the last one put: an agent at rest writes nothing.
type publisher struct {
	a       *Agent
	unwatch func()

	mu      sync.Mutex
	queue   []model.Event
	dropped bool
	extra   []extraOp // answers to send with the next snapshots
	signal  chan struct{}
	stopped chan struct{} // closed when run ends: nothing more is sent

	last map[string][]byte // path -> snapshot last put (this agent's hosts)

	rmu    sync.Mutex
	remote map[string]remoteStatus // path -> another agent's snapshot
	rev    int64                   // revision the load read

}

// extraOp is a put that rides with the next batch of snapshots (an
// owner's answer to a command: one write instead of two, and the answer
// never before the snapshot that shows its effect).
type extraOp struct {
	op   clientv3.Op
	done chan error
}

// sendWith puts op in the same transaction as the snapshots and events
// queued so far, and waits until it is committed.
func (p *publisher) sendWith(ctx context.Context, op clientv3.Op) error {
	done := make(chan error, 1)
	p.mu.Lock()
	p.extra = append(p.extra, extraOp{op: op, done: done})
	p.mu.Unlock()
	select {
	case p.signal <- struct{}{}:
	default:
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-p.stopped:
		return errors.New("cluster: the agent is closing")
	}
}

type remoteStatus struct {
	node string
	st   model.HostState
}

func newPublisher(a *Agent) *publisher {
	p := &publisher{a: a, signal: make(chan struct{}, 1), last: map[string][]byte{}, remote: map[string]remoteStatus{}, stopped: make(chan struct{})}
	p.unwatch = a.tree.Watch(p.enqueue)
	return p
}

func (p *publisher) close() { p.unwatch() }

// enqueue is the tree's watcher: it must not block.
func (p *publisher) enqueue(e model.Event) {
	if e.Remote || (e.Node != "" && e.Node != p.a.node) {
		return
	}
	if e.Kind == machine.EventOwner || e.Kind == machine.EventStale {
		// Each agent's own view of owners and of etcd: every agent
		// logs its own, none sends it (they would repeat once per agent).
		return
	}
	p.mu.Lock()
	if len(p.queue) >= maxQueued {
		p.dropped = true
	} else {
		p.queue = append(p.queue, e)
	}
	p.mu.Unlock()
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

func (p *publisher) run(ctx context.Context) {
	defer close(p.stopped)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.signal:
		}
		for p.flush(ctx) {
		}
	}
}

// flush sends what is queued, one batch; it says whether more is queued.
func (p *publisher) flush(ctx context.Context) bool {
	p.mu.Lock()
	n := min(len(p.queue), maxBatch)
	batch := p.queue[:n:n]
	p.queue = p.queue[n:]
	k := min(len(p.extra), maxExtra)
	extra := p.extra[:k:k]
	p.extra = p.extra[k:]
	dropped := p.dropped
	p.dropped = false
	more := len(p.queue) > 0 || len(p.extra) > 0
	p.mu.Unlock()
	if dropped {
		p.a.log.Warn("events not sent to the other agents: too many queued", "max", maxQueued)
		p.publishAll(ctx)
	}
	if len(batch)+len(extra) == 0 {
		return more
	}
	err := p.commit(ctx, batch, extra)
	for _, x := range extra {
		x.done <- err
	}
	return more
}

// commit sends one batch: the snapshots it changed, its events, and the
// answers riding with it, in one transaction.
func (p *publisher) commit(ctx context.Context, batch []model.Event, extra []extraOp) error {
	s := p.a.session()
	if s == nil {
		return errors.New("cluster: no etcd session")
	}
	ops := p.statusOps(batch)
	if len(batch) > 0 {
		evs, _ := json.Marshal(batch)
		ops = append(ops, clientv3.OpPut(p.a.k.events(p.a.node), string(evs), clientv3.WithLease(s.Lease())))
	}
	for _, x := range extra {
		ops = append(ops, x.op)
	}
	cctx, cancel := p.a.call(ctx)
	defer cancel()
	if _, err := p.a.cli.Txn(cctx).Then(ops...).Commit(); err != nil {
		p.a.log.Warn("sending events", "events", len(batch), "err", err)
		p.forget()
		return err
	}
	return nil
}

// statusOps are the puts of the snapshots batch changed, of hosts this
// agent runs, and the deletes of those it removed.
func (p *publisher) statusOps(batch []model.Event) []clientv3.Op {
	s := p.a.session()
	seen := map[string]bool{}
	var ops []clientv3.Op
	for _, e := range batch {
		path := hostOf(e.Path)
		if path == "" || seen[path] {
			continue
		}
		seen[path] = true
		if op, ok := p.statusOp(path, s); ok {
			ops = append(ops, op)
		}
	}
	return ops
}

// statusOp is the put of path's snapshot if it changed (or its delete if
// the host went), for a host this agent runs.
func (p *publisher) statusOp(path string, s interface{ Lease() clientv3.LeaseID }) (clientv3.Op, bool) {
	key := p.a.k.status(p.a.node, path)
	h := p.a.tree.Host(path)
	if h == nil {
		if _, ok := p.last[path]; ok {
			delete(p.last, path)
			return clientv3.OpDelete(key), true
		}
		return clientv3.Op{}, false
	}
	if _, here := h.Owner(); !here || s == nil {
		return clientv3.Op{}, false
	}
	b, err := json.Marshal(h.State())
	if err != nil || bytes.Equal(b, p.last[path]) {
		return clientv3.Op{}, false
	}
	p.last[path] = b
	return clientv3.OpPut(key, string(b), clientv3.WithLease(s.Lease())), true
}

// forget makes the next flush send every snapshot again.
func (p *publisher) forget() {
	p.mu.Lock()
	p.dropped = true
	p.mu.Unlock()
	clear(p.last)
}

// publishAll puts the snapshot of every host this agent runs that
// changed since it was last put.
func (p *publisher) publishAll(ctx context.Context) {
	s := p.a.session()
	var ops []clientv3.Op
	for _, h := range p.a.tree.AllHosts() {
		if op, ok := p.statusOp(h.Path(), s); ok {
			ops = append(ops, op)
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), maxBatch)
		cctx, cancel := p.a.call(ctx)
		_, err := p.a.cli.Txn(cctx).Then(ops[:n]...).Commit()
		cancel()
		if err != nil {
			p.a.log.Warn("sending snapshots", "err", err)
			clear(p.last)
			return
		}
		ops = ops[n:]
	}
}

// hostOf is the host path an event path names ("hosts/a/subhosts/b"),
// "" for the tree and groups.
func hostOf(path string) string {
	if !strings.HasPrefix(path, "hosts/") {
		return ""
	}
	return path
}

// load reads the other agents' snapshots.
func (p *publisher) load(ctx context.Context) error {
	cctx, cancel := p.a.call(ctx)
	defer cancel()
	resp, err := p.a.cli.Get(cctx, p.a.k.nodes(), clientv3.WithPrefix())
	if err != nil {
		return wrapEtcd("read the agents' state", err)
	}
	for _, kv := range resp.Kvs {
		p.applyStatus(string(kv.Key), kv.Value)
	}
	p.rev = resp.Header.Revision
	return nil
}

// applyStatus takes another agent's snapshot; it says whether key was one.
func (p *publisher) applyStatus(key string, value []byte) bool {
	node, rest, ok := p.a.k.nodeKey(key)
	if ok {
		p.a.learn(node)
	}
	path, isStatus := strings.CutPrefix(rest, "status/")
	if !ok || !isStatus || node == p.a.node {
		return false
	}
	p.rmu.Lock()
	defer p.rmu.Unlock()
	if value == nil {
		if r, ok := p.remote[path]; ok && r.node == node {
			delete(p.remote, path)
		}
		return true
	}
	var st model.HostState
	if err := json.Unmarshal(value, &st); err != nil {
		p.a.log.Warn("a snapshot that does not parse", "from", node, "host", path, "err", err)
		return true
	}
	p.remote[path] = remoteStatus{node: node, st: st}
	if h := p.a.tree.Host(path); h != nil {
		if owner, _ := h.Owner(); owner == node {
			h.SetRemoteState(st)
		}
	}
	return true
}

// remoteOf is the last snapshot node sent of path.
func (p *publisher) remoteOf(path, node string) (model.HostState, bool) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	r, ok := p.remote[path]
	return r.st, ok && r.node == node
}

// watchOthers follows the other agents' snapshots and events.
func (p *publisher) watchOthers(ctx context.Context) {
	rev := p.rev + 1
	for ctx.Err() == nil {
		ch := p.a.cli.Watch(clientv3.WithRequireLeader(ctx), p.a.k.nodes(), clientv3.WithPrefix(), clientv3.WithRev(rev))
		for wr := range ch {
			if wr.Err() != nil {
				break
			}
			p.applyWatch(wr)
			rev = wr.Header.Revision + 1
		}
		if ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// applyWatch applies one watch response: snapshots first, so a reader
// woken by an event reads the state that came with it.
func (p *publisher) applyWatch(wr clientv3.WatchResponse) {
	var events []*clientv3.Event
	for _, ev := range wr.Events {
		var value []byte
		if ev.Type == clientv3.EventTypePut {
			value = ev.Kv.Value
		}
		if !p.applyStatus(string(ev.Kv.Key), value) {
			events = append(events, ev)
		}
	}
	for _, ev := range events {
		node, rest, ok := p.a.k.nodeKey(string(ev.Kv.Key))
		if !ok || node == p.a.node || ev.Type != clientv3.EventTypePut {
			continue
		}
		if id, isResult := strings.CutPrefix(rest, "results/"); isResult {
			p.a.deliver(id, ev.Kv.Value)
			continue
		}
		if rest != "events" {
			continue
		}
		var batch []model.Event
		if err := json.Unmarshal(ev.Kv.Value, &batch); err != nil {
			p.a.log.Warn("events that do not parse", "from", node, "err", err)
			continue
		}
		for _, e := range batch {
			e.Node = node
			p.a.tree.PublishRemote(e)
		}
	}
}

// Sync returns once what this agent has queued (snapshots, events) is
// committed (model.Peers): the read rides in the next transaction.
func (a *Agent) Sync(ctx context.Context) error {
	return a.pub.sendWith(ctx, clientv3.OpGet(a.k.joined(a.node)))
}
