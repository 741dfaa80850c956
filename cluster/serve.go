package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// server runs the commands other agents send for the hosts this agent
// owns. A command runs once: the request's creation is seen once, and a
// retried write is a new request. It never runs after this agent lost
// the host: it starts only after a transaction confirmed, at one
// revision, that the request is still there and that this agent's lease
// still holds the host (its owners/ key, or for a host bound to this
// node, its agents/ key).
type server struct {
	a *Agent

	mu      sync.Mutex
	running map[string]context.CancelFunc // request key -> its cancel
}

func newServer(a *Agent) *server {
	return &server{a: a, running: map[string]context.CancelFunc{}}
}

// run serves requests created from rev on: the revision at which this
// agent joined, since other agents send to it as soon as they see it
// alive, which can be before this watch starts.
func (s *server) run(ctx context.Context, rev int64) {
	prefix := s.a.k.requests(s.a.node)
	for ctx.Err() == nil {
		ch := s.a.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
		for wr := range ch {
			if wr.CompactRevision != 0 {
				rev = wr.CompactRevision // what was before is gone from etcd
			}
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				s.apply(ctx, ev)
			}
			rev = wr.Header.Revision + 1
		}
		if ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
		}
	}
	s.mu.Lock()
	for _, cancel := range s.running {
		cancel()
	}
	s.mu.Unlock()
}

func (s *server) apply(ctx context.Context, ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	if ev.Type == clientv3.EventTypeDelete {
		s.mu.Lock()
		cancel, ok := s.running[key]
		delete(s.running, key)
		s.mu.Unlock()
		if ok {
			cancel()
		}
		s.dropResult(ctx, key)
		return
	}
	if !ev.IsCreate() {
		return
	}
	var req request
	if err := json.Unmarshal(ev.Kv.Value, &req); err != nil {
		s.a.log.Warn("a request that does not parse", "key", key, "err", err)
		return
	}
	rctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.running[key] = cancel
	s.mu.Unlock()
	go s.handle(rctx, key, req)
}

// handle runs one request and answers it.
func (s *server) handle(ctx context.Context, key string, req request) {
	id := key[strings.LastIndex(key, "/")+1:]
	if err := s.fence(ctx, key, req.Path, req.Switch != nil); err != nil {
		s.answer(ctx, id, result{Phase: phaseDone, Errno: int(machine.ErrnoOf(err)), Reason: err.Error()})
		return
	}
	if req.Switch != nil {
		// Bounded as the writer's side bounds the call.
		rep, err := s.a.tree.RunSwitchCall(ctx, *req.Switch)
		r := resultOf(phaseDone, err)
		r.Switch = &rep
		s.answer(ctx, id, r)
		return
	}
	if req.Console != "" {
		reply, err := s.a.tree.RunConsole(ctx, req.Path, req.Console, req.Who)
		r := resultOf(phaseDone, err)
		r.Reply = reply
		s.answer(ctx, id, r)
		return
	}
	done, err := s.a.tree.RunForwarded(ctx, req.Forwarded)
	if err != nil || done == nil {
		s.answer(ctx, id, resultOf(phaseDone, err))
		return
	}
	s.answer(ctx, id, result{Phase: phaseAccepted})
	select {
	case err := <-done:
		s.answer(ctx, id, resultOf(phaseDone, err))
	case <-ctx.Done():
	}
}

func resultOf(phase string, err error) result {
	if err == nil {
		return result{Phase: phase}
	}
	return result{Phase: phase, Errno: int(machine.ErrnoOf(err)), Reason: err.Error()}
}

// fence confirms, in one transaction, that the request is still there
// and that this agent's lease holds path (machine: this agent's own
// machine, for a switch call).
func (s *server) fence(ctx context.Context, key, path string, machineOnly bool) error {
	sess := s.a.session()
	if sess == nil {
		return machine.Errorf(syscall.EHOSTUNREACH, "agent %s has no etcd session", s.a.node)
	}
	h := s.a.tree.Host(path)
	if h == nil {
		return machine.Errorf(syscall.ENOENT, "no host %s on agent %s", path, s.a.node)
	}
	holder := s.a.k.agent(s.a.node)
	if ruleOf(h).elected && !machineOnly {
		holder = s.a.k.owner(path)
	}
	cctx, cancel := s.a.call(ctx)
	defer cancel()
	txn := func() (*clientv3.TxnResponse, error) {
		return s.a.cli.Txn(cctx).If(
			clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.LeaseValue(holder), "=", sess.Lease()),
		).Else(clientv3.OpGet(key, clientv3.WithCountOnly()), clientv3.OpGet(holder)).Commit()
	}
	resp, err := txn()
	// A leader election (a member just came back) fails a read once or
	// twice: asked again within the bound, the answer is a real one.
	for i := 0; err != nil && i < 3 && cctx.Err() == nil; i++ {
		time.Sleep(100 * time.Millisecond)
		resp, err = txn()
	}
	switch {
	case err != nil:
		return machine.Errorf(syscall.EHOSTUNREACH, "agent %s cannot confirm it owns %s: %v", s.a.node, path, err)
	case !resp.Succeeded:
		s.a.log.Info("fence refused a request", "host", path, "request-present", resp.Responses[0].GetResponseRange().Count, "holder", holder, "holder-kvs", resp.Responses[1].GetResponseRange().Kvs, "lease", sess.Lease())
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return machine.Errorf(syscall.EINTR, "the request for %s was withdrawn", path)
		}
		return machine.Errorf(syscall.EHOSTUNREACH, "agent %s does not own %s any more", s.a.node, path)
	}
	return nil
}

// answer puts a result for request id, on this agent's lease, after the
// snapshots and events the command made so far.
func (s *server) answer(ctx context.Context, id string, r result) {
	sess := s.a.session()
	if sess == nil {
		return
	}
	b, _ := json.Marshal(r)
	cctx, cancel := s.a.call(context.WithoutCancel(ctx))
	defer cancel()
	op := clientv3.OpPut(s.a.k.result(s.a.node, id), string(b), clientv3.WithLease(sess.Lease()))
	if err := s.a.pub.sendWith(cctx, op); err != nil {
		s.a.log.Warn("answering a request", "id", id, "err", err)
	}
}

// dropResult removes the answer to a request its writer withdrew.
func (s *server) dropResult(ctx context.Context, key string) {
	id := key[strings.LastIndex(key, "/")+1:]
	cctx, cancel := s.a.call(ctx)
	defer cancel()
	if _, err := s.a.cli.Delete(cctx, s.a.k.result(s.a.node, id)); err != nil {
		s.a.log.Debug("removing an answer", "id", id, "err", err)
	}
}

var _ model.Peers = (*Agent)(nil)
