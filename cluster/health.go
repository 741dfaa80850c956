package cluster

import (
	"context"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/store"
)

// healthEvery is how often the agent checks that etcd answers (a
// linearizable read, which needs a quorum). A check writes nothing.
const healthEvery = time.Second

// staleAfter is how long etcd may fail to answer before the tree is
// marked stale and refuses changes.
const staleAfter = 3 * time.Second

// health watches etcd's quorum and this agent's session. While etcd does
// not answer, the tree shows its last known state marked stale and
// refuses changes with EROFS (as Proxmox's pmxcfs does); when it answers
// again the tree is current again, with no restart. A session that ended
// meanwhile (its lease expired: the other agents saw this one gone and
// took its elected hosts) is replaced, and this agent gives up the hosts
// it no longer holds at once, without waiting for etcd to say so.
func (a *Agent) health(ctx context.Context) {
	t := time.NewTicker(healthEvery)
	defer t.Stop()
	var lostSince, failingSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.sessionDone():
			a.dropElected()
		}
		err := a.check(ctx)
		if err == nil {
			failingSince = time.Time{}
		} else if failingSince.IsZero() {
			failingSince = time.Now()
		}
		switch {
		case err != nil && lostSince.IsZero() && time.Since(failingSince) >= staleAfter:
			// One member going makes the client move to another: only
			// a quorum that stays away makes the tree stale.
			lostSince = failingSince
			a.log.Warn("etcd does not answer", "err", err)
			a.tree.SetStale(fmt.Sprintf("etcd quorum lost since %s", lostSince.UTC().Format(time.RFC3339)))
		case err == nil && !lostSince.IsZero():
			lostSince = time.Time{}
			a.log.Info("etcd answers again")
			a.tree.SetStale("")
			a.poke()
		}
	}
}

// sessionDone is closed when the current session ends.
func (a *Agent) sessionDone() <-chan struct{} {
	if s := a.session(); s != nil {
		return s.Done()
	}
	return nil
}

// check reads this agent's key with a quorum; a session that ended is
// replaced.
func (a *Agent) check(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 2*healthEvery)
	defer cancel()
	resp, err := a.cli.Get(cctx, a.k.agent(a.node))
	if err != nil {
		return err
	}
	s := a.session()
	alive := s != nil && len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) == s.Lease()
	select {
	case <-a.sessionDone():
		alive = false
	default:
	}
	if alive {
		return nil
	}
	a.dropElected()
	if s != nil {
		_ = s.Close()
	}
	if err := a.newSession(ctx); err != nil {
		return err
	}
	a.log.Info("new etcd session: this agent's lease had ended")
	a.pub.forget()
	a.poke()
	return nil
}

// dropElected forgets the elected hosts this agent held: its lease, and
// with it their owners/ keys, ended.
func (a *Agent) dropElected() {
	a.mu.Lock()
	for path, node := range a.owners {
		if node == a.node {
			delete(a.owners, path)
		}
	}
	a.mu.Unlock()
	a.poke()
}

// watchStore applies config changes any agent makes; after a watch that
// ended (a compaction, etcd gone a while) the whole config is read again.
func (a *Agent) watchStore(ctx context.Context, w store.Watcher) {
	for ctx.Err() == nil {
		err := w.Watch(ctx, func(c store.Change) {
			a.tree.ApplyChange(ctx, c)
			a.poke()
		})
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("config watch ended; reading the config again", "err", err)
		time.Sleep(500 * time.Millisecond)
		if err := a.tree.Reload(ctx); err != nil {
			a.log.Warn("reading the config again", "err", err)
		}
		a.poke()
	}
}

func wrapEtcd(what string, err error) error {
	return fmt.Errorf("cluster: %s: %w", what, err)
}

func pid() int { return os.Getpid() }
