package etcdstore

import (
	"context"
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/store"
)

// Watch calls fn for every change to hosts and groups after the last
// Hosts and Groups reads, in revision order, until ctx ends or the watch
// fails. It watches the one key range from config/ to the end of groups/
// so that host and group changes come in the order etcd applied them (two
// watches would each be in order, but not with each other).
//
// It starts after the older of the two reads and skips what the newer one
// already returned: a host saved between a Hosts and a later Groups read
// is seen, a group the Groups read returned is not seen again. Without a
// read it starts now.
//
// The watch needs a leader (clientv3.WithRequireLeader): a member cut off
// from quorum ends it with an error, rather than leaving the caller
// waiting for changes that cannot come. A start revision etcd compacted
// away also ends it with an error (rpctypes.ErrCompacted): the caller
// reloads with Hosts and Groups and watches again.
func (s *Store) Watch(ctx context.Context, fn func(store.Change)) error {
	s.mu.Lock()
	w := watch{s: s, hostsRev: s.hostsRev, groupsRev: s.groupsRev, fn: fn}
	s.mu.Unlock()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// The client's watch goroutines end with wctx.
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.groupsPrefix()))}
	if start := w.start(); start > 0 {
		opts = append(opts, clientv3.WithRev(start))
	}
	for resp := range s.cli.Watch(wctx, s.configPrefix(), opts...) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := resp.Err(); err != nil {
			return s.wrap("watch", err)
		}
		for _, ev := range resp.Events {
			w.event(ev)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("etcd store: watch: ended by the etcd client (closed?)")
}

// watch is one Watch call's state.
type watch struct {
	s                   *Store
	hostsRev, groupsRev int64 // the reads Watch follows
	fn                  func(store.Change)
	// The host whose removal was the last change, and its revision: the
	// removals of its subhosts in that revision are part of it.
	removed    string
	removedRev int64
}

// start is the first revision to watch: the one after the older read.
func (w *watch) start() int64 {
	switch {
	case w.hostsRev == 0 && w.groupsRev == 0:
		return 0
	case w.hostsRev == 0:
		return w.groupsRev + 1
	case w.groupsRev == 0:
		return w.hostsRev + 1
	default:
		return min(w.hostsRev, w.groupsRev) + 1
	}
}

// event passes one etcd event on as a store.Change, unless the read it
// follows already saw it or it is no host or group.
func (w *watch) event(ev *clientv3.Event) {
	key, rev := string(ev.Kv.Key), ev.Kv.ModRevision
	del := ev.Type == mvccpb.DELETE
	if path, ok := w.s.hostPath(key); ok {
		if rev <= w.hostsRev {
			return
		}
		if del {
			// A ranged delete lists the host first, then its subhosts.
			if rev == w.removedRev && strings.HasPrefix(path, w.removed+"/") {
				return
			}
			w.removed, w.removedRev = path, rev
			w.fn(store.Change{Host: path, Removed: true})
			return
		}
		text, err := w.s.open(key, ev.Kv.Value)
		w.fn(store.Change{Host: path, Text: text, Err: err})
		return
	}
	if name, ok := w.s.groupName(key); ok && rev > w.groupsRev {
		if del {
			w.fn(store.Change{Group: name, Removed: true})
			return
		}
		w.fn(store.Change{Group: name, Members: members(ev.Kv.Value)})
	}
}
