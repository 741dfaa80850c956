package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
)

// Options configure an agent.
type Options struct {
	Node   string        // this agent's name (-o node=)
	Prefix string        // keyspace prefix, default "/machinefs/"
	TTL    time.Duration // session lease: how soon others see this agent gone (default 5s)
	// Timeout bounds each etcd call (default 5s).
	Timeout time.Duration
	Log     *slog.Logger
}

// Agent is this machine's member of the cluster: it implements
// model.Peers for its tree.
type Agent struct {
	cli  *clientv3.Client
	node string
	k    keys
	ttl  time.Duration
	tmo  time.Duration
	log  *slog.Logger
	tree *model.Tree
	st   store.Store

	mu      sync.Mutex
	sess    *concurrency.Session
	joinRev int64                // the revision of this agent's first join: requests are served from it
	alive   map[string]time.Time // live agents, since
	leases  map[string]int64     // live agents' session leases: a new one is a new incarnation
	goneAt  map[string]time.Time // agents seen going, when
	owners  map[string]string    // elected hosts: path -> node
	known   map[string]bool      // every agent that ever joined
	waiters map[string]chan struct{}
	answers map[string]chan result // forwarded requests waiting, by id
	changed chan struct{}          // reconcile needed

	started time.Time

	pub   *publisher
	serve *server
	wg    sync.WaitGroup
	stop  context.CancelFunc
}

// New makes an agent for tree over cli; Start runs it.
func New(cli *clientv3.Client, tree *model.Tree, st store.Store, o Options) (*Agent, error) {
	if o.Node == "" {
		return nil, errors.New("cluster: an agent needs a node name (-o node=)")
	}
	if o.Prefix == "" {
		o.Prefix = "/machinefs/"
	}
	if o.TTL <= 0 {
		o.TTL = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cli: cli, node: o.Node, k: keys{o.Prefix}, ttl: o.TTL, tmo: o.Timeout,
		log: o.Log.With("node", o.Node), tree: tree, st: st,
		alive: map[string]time.Time{}, goneAt: map[string]time.Time{}, leases: map[string]int64{},
		owners: map[string]string{}, known: map[string]bool{o.Node: true}, waiters: map[string]chan struct{}{}, answers: map[string]chan result{},
		changed: make(chan struct{}, 1), started: time.Now(),
	}
	a.pub = newPublisher(a)
	a.serve = newServer(a)
	return a, nil
}

// Node is this agent's name.
func (a *Agent) Node() string { return a.node }

// agentRecord is the value of agents/NODE.
type agentRecord struct {
	Since time.Time `json:"since"`
	Pid   int       `json:"pid"`
}

// Start joins the cluster: a session lease, this agent's key, what the
// others run and publish, and the loops that keep it current. It fails if
// etcd does not answer within the timeout.
func (a *Agent) Start(ctx context.Context) error {
	if err := a.newSession(ctx); err != nil {
		return err
	}
	rev, err := a.loadAgents(ctx)
	if err != nil {
		return err
	}
	if err := a.pub.load(ctx); err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	a.stop = stop
	a.reconcile(runCtx)
	a.pub.publishAll(runCtx)
	a.goLoop(func() { a.watchAgents(runCtx, rev+1) })
	a.goLoop(func() { a.reconcileLoop(runCtx) })
	a.goLoop(func() { a.pub.run(runCtx) })
	a.goLoop(func() { a.pub.watchOthers(runCtx) })
	a.goLoop(func() { a.serve.run(runCtx, a.joinRev) })
	a.goLoop(func() { a.health(runCtx) })
	if w, ok := a.st.(store.Watcher); ok {
		a.goLoop(func() { a.watchStore(runCtx, w) })
	}
	return nil
}

func (a *Agent) goLoop(fn func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		fn()
	}()
}

// Close leaves the cluster: loops end, the session is revoked so others
// see this agent gone at once, not after the TTL.
func (a *Agent) Close() {
	if a.stop != nil {
		a.stop()
	}
	a.pub.close()
	a.wg.Wait()
	a.mu.Lock()
	s := a.sess
	a.mu.Unlock()
	if s != nil {
		_ = s.Close()
	}
}

// newSession takes a new lease and puts this agent's key on it.
func (a *Agent) newSession(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, a.tmo)
	defer cancel()
	s, err := concurrency.NewSession(a.cli, concurrency.WithTTL(int(a.ttl.Seconds()+0.5)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fmt.Errorf("cluster: etcd session: %w", err)
	}
	rec, _ := json.Marshal(agentRecord{Since: time.Now().UTC(), Pid: pid()})
	// joined stays when the agent goes: the node and agents keys may name
	// an agent that joined once (EINVAL otherwise), and one that is away
	// shows as gone, not unknown.
	resp, err := a.cli.Txn(cctx).Then(
		clientv3.OpPut(a.k.agent(a.node), string(rec), clientv3.WithLease(s.Lease())),
		clientv3.OpPut(a.k.joined(a.node), string(rec)),
	).Commit()
	if err != nil {
		_ = s.Close()
		return fmt.Errorf("cluster: register agent %s: %w", a.node, err)
	}
	a.mu.Lock()
	a.sess = s
	if a.joinRev == 0 {
		a.joinRev = resp.Header.Revision
	}
	a.mu.Unlock()
	return nil
}

func (a *Agent) session() *concurrency.Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sess
}

// KnownNode says whether name joined the cluster once (model.Peers).
func (a *Agent) KnownNode(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.known[name]
}

// learn records that node joined the cluster once.
func (a *Agent) learn(node string) {
	a.mu.Lock()
	a.known[node] = true
	a.mu.Unlock()
}

// startedAt is when this agent started: the "gone since" of an agent it
// never saw. Called with a.mu held.
func (a *Agent) startedAt() time.Time { return a.started }

// call bounds one etcd call by the timeout.
func (a *Agent) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.tmo)
}

// poke asks the reconcile loop to look at ownership again.
func (a *Agent) poke() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}
