package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// request is a command (or a console line) sent to the agent that owns
// its host, at requests/OWNER/ID on the writer's lease: if the writer's
// agent goes, the request goes, and the owner stops waiting for it.
type request struct {
	model.Forwarded
	Wait    bool              `json:"wait,omitempty"`
	Console string            `json:"console,omitempty"` // a console line, not a command
	Switch  *model.SwitchCall `json:"switch,omitempty"`  // a switch call for the machine's agent
}

// result is the owner's answer at nodes/OWNER/results/ID: first
// "accepted" (a waiting command then gets "done"), or "done" at once.
type result struct {
	Phase  string             `json:"phase"`
	Errno  int                `json:"errno,omitempty"`
	Reason string             `json:"reason,omitempty"`
	Reply  string             `json:"reply,omitempty"`  // a console line's reply
	Switch *model.SwitchReply `json:"switch,omitempty"` // a switch call's
}

const (
	phaseAccepted = "accepted"
	phaseDone     = "done"
)

func (r result) err() error {
	if r.Errno == 0 {
		return nil
	}
	return machine.Errorf(syscall.Errno(r.Errno), "%s", r.Reason)
}

// Forward runs req on the agent that owns req.Path (model.Peers).
func (a *Agent) Forward(ctx context.Context, req model.Forwarded) (<-chan error, error) {
	cmd, err := machine.ParseCommand(req.Line)
	if err != nil {
		return nil, err
	}
	f, res, err := a.send(ctx, req.Path, "", request{Forwarded: req, Wait: cmd.Wait})
	if err != nil || res.Phase == phaseDone || !cmd.Wait {
		f.end()
		if err == nil {
			err = res.err()
		}
		return nil, err
	}
	// The verdict is bounded as a local wait is: by the command's window
	// and the model's grace, plus etcd's bound. A stack (its steps have
	// windows of their own) ends when its owner answers or goes.
	var bound <-chan time.Time
	if spec := machine.SpecOf(cmd); spec.Target != "" && (req.Own || !model.IsStackVerb(cmd.Verb) || cmd.Force) {
		window := cmd.Timeout
		if h := a.tree.Host(req.Path); window <= 0 && h != nil {
			window = h.Config().Duration("wait-timeout")
		}
		bound = time.After(window + machine.VerdictGrace + a.tmo)
	}
	done := make(chan error, 1)
	go func() {
		defer f.end()
		res, err := f.next(ctx, bound)
		if err == nil {
			err = res.err()
		}
		done <- err
	}()
	return done, nil
}

// ForwardConsole runs a console line on the agent that owns path
// (model.Peers).
func (a *Agent) ForwardConsole(ctx context.Context, path, line string, who model.Caller) (string, error) {
	f, res, err := a.send(ctx, path, "", request{Forwarded: model.Forwarded{Path: path, Who: who}, Console: line})
	f.end()
	if err == nil {
		err = res.err()
	}
	return res.Reply, err
}

// CallSwitch runs a switch call on node's agent (model.Peers).
func (a *Agent) CallSwitch(ctx context.Context, node string, call model.SwitchCall) (model.SwitchReply, error) {
	path := "hosts/" + node
	f, res, err := a.send(ctx, path, node, request{Forwarded: model.Forwarded{Path: path}, Switch: &call})
	f.end()
	if err == nil {
		err = res.err()
	}
	if res.Switch == nil {
		return model.SwitchReply{}, err
	}
	return *res.Switch, err
}

// send puts req for agent to (the owner of path if "") and waits for its
// first answer, bounded by the host's timeout and the etcd timeout. The
// forwarding it returns (never nil) must be ended.
func (a *Agent) send(ctx context.Context, path, to string, req request) (*forwarding, result, error) {
	f := &forwarding{a: a, path: path, owner: to}
	bound := a.tmo
	if h := a.tree.Host(path); h != nil {
		bound += h.Config().Duration("timeout")
		if to == "" {
			f.owner, _ = h.Owner()
		}
	} else if to == "" {
		return f, result{}, machine.Errorf(syscall.ENOENT, "no host %s", path)
	}
	if alive, since := a.isAlive(f.owner); !alive {
		return f, result{}, machine.Errorf(syscall.EHOSTUNREACH, "%s: agent %s gone since %s", path, f.owner, since.UTC().Format(time.RFC3339))
	}
	s := a.session()
	if s == nil {
		return f, result{}, machine.Errorf(syscall.EROFS, "cluster: no session with etcd")
	}
	id := newID(a.node)
	body, _ := json.Marshal(req)
	key := a.k.request(f.owner, id)
	f.id, f.results, f.lease = id, a.await(id), a.leaseOf(f.owner)
	cctx, cancel := a.call(ctx)
	_, err := a.cli.Put(cctx, key, string(body), clientv3.WithLease(s.Lease()))
	cancel()
	if err != nil {
		return f, result{}, machine.Errorf(syscall.EROFS, "cluster: sending to agent %s: %v", f.owner, err)
	}
	f.key = key
	res, err := f.next(ctx, time.After(bound))
	return f, res, err
}

// await registers a request waiting for its answers, which come with
// the other agents' snapshots (publisher.applyWatch): after the snapshots
// the owner put before them, on the one watch this agent has on nodes/.
func (a *Agent) await(id string) chan result {
	ch := make(chan result, 4)
	a.mu.Lock()
	a.answers[id] = ch
	a.mu.Unlock()
	return ch
}

// deliver hands an answer to the request waiting for it, if any.
func (a *Agent) deliver(id string, value []byte) {
	var r result
	if json.Unmarshal(value, &r) != nil {
		return
	}
	a.mu.Lock()
	ch := a.answers[id]
	a.mu.Unlock()
	if ch != nil {
		select {
		case ch <- r:
		default:
		}
	}
}

// forwarding is one command on its way to its owner and back.
type forwarding struct {
	a       *Agent
	owner   string
	lease   int64 // the owner's session when the request was sent
	key     string
	path    string
	id      string
	results chan result
}

// next waits for the owner's next answer, the owner going, ctx ending,
// or timeout (nil: none).
func (f *forwarding) next(ctx context.Context, timeout <-chan time.Time) (result, error) {
	for {
		gone := f.a.changes(f.owner)
		if alive, since := f.a.isAlive(f.owner); !alive {
			return result{}, machine.Errorf(syscall.EHOSTUNREACH, "%s: agent %s gone since %s", f.path, f.owner, since.UTC().Format(time.RFC3339))
		}
		if l := f.a.leaseOf(f.owner); f.lease != 0 && l != 0 && l != f.lease {
			return result{}, fmt.Errorf("%w (%w)", machine.Errorf(syscall.EHOSTUNREACH, "%s: agent %s restarted before it answered", f.path, f.owner), model.ErrOwnerRestarted)
		}
		select {
		case r := <-f.results:
			// Read your writes: the owner put its snapshots with the
			// answer, and this agent applied them before handing it on.
			return r, nil
		case <-gone:
		case <-ctx.Done():
			return result{}, machine.Errorf(syscall.EINTR, "interrupted while waiting for agent %s (the command goes on)", f.owner)
		case <-timeout:
			return result{}, machine.Errorf(syscall.ETIMEDOUT, "agent %s did not answer", f.owner)
		}
	}
}

// end withdraws the request: the owner stops waiting for the command (it
// goes on, as a local one does) and removes its answer.
func (f *forwarding) end() {
	if f.id != "" {
		f.a.mu.Lock()
		delete(f.a.answers, f.id)
		f.a.mu.Unlock()
	}
	if f.key == "" {
		return
	}
	// In the background: the writer has its answer, and the request
	// goes with the writer's lease if this fails.
	go func() {
		ctx, cancel := f.a.call(context.Background())
		defer cancel()
		if _, err := f.a.cli.Delete(ctx, f.key); err != nil {
			f.a.log.Debug("withdrawing a request", "key", f.key, "err", err)
		}
	}()
}

// newID names one request, unique in the cluster.
func newID(node string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%s", node, hex.EncodeToString(b[:]))
}
