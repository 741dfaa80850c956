package vswitch

import (
	"context"
	"net"
	"syscall"

	"github.com/machinefs/machinefs/machine"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// snap is what Watch remembers of a device to tell what changed.
type snap struct {
	name   string
	bridge bool
	master int
	up     bool
}

// Watch subscribes to link notifications in the Manager's namespace and
// calls fn (from one goroutine, in order) for every change to a bridge or a
// bridge port: created, deleted, up, down, port-added, port-removed. It
// reports changes whoever made them (`ip link set TAP down` as well as the
// Manager's own), for every bridge in the namespace; Change.Switch says
// which. Only administrative state counts (carrier flaps are not changes).
//
// Watch returns once the subscription is live; changes made after it
// returns are seen. The returned channel is closed when ctx is done and
// every goroutine of the watch has ended.
func (m *Manager) Watch(ctx context.Context, fn func(Change)) (<-chan struct{}, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	updates := make(chan netlink.LinkUpdate, 64)
	stop := make(chan struct{})
	ns := m.ns
	err := netlink.LinkSubscribeWithOptions(updates, stop, netlink.LinkSubscribeOptions{
		Namespace:     &ns,
		ErrorCallback: func(error) {}, // a closed socket at stop; nothing to do
	})
	if err != nil {
		close(stop)
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: subscribe to link changes: %v", err)
	}
	// Seed after subscribing: nothing falls between the two.
	links, err := m.links()
	if err != nil {
		close(stop)
		for range updates {
		}
		return nil, err
	}
	known := map[int]snap{}
	for _, l := range links {
		known[l.Attrs().Index] = snapOf(l)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		go func() { <-ctx.Done(); close(stop) }()
		for u := range updates { // closed once stop closes the socket
			if ctx.Err() != nil || u.Family != unix.AF_UNSPEC {
				continue // AF_BRIDGE port notices duplicate the AF_UNSPEC ones
			}
			for _, c := range diff(known, u) {
				fn(c)
			}
		}
	}()
	return done, nil
}

func snapOf(l netlink.Link) snap {
	a := l.Attrs()
	return snap{name: a.Name, bridge: isBridge(l), master: a.MasterIndex, up: a.Flags&net.FlagUp != 0}
}

// diff updates known with u and returns the changes it means.
func diff(known map[int]snap, u netlink.LinkUpdate) []Change {
	idx := int(u.Index)
	prev, had := known[idx]
	bridgeName := func(i int) (string, bool) {
		s, ok := known[i]
		return s.name, ok && s.bridge && i != 0
	}
	var cs []Change
	if u.Header.Type == unix.RTM_DELLINK {
		delete(known, idx)
		if !had {
			return nil
		}
		if prev.bridge {
			return []Change{{prev.name, prev.name, "deleted"}}
		}
		if br, ok := bridgeName(prev.master); ok {
			return []Change{{br, prev.name, "port-removed"}}
		}
		return nil
	}
	cur := snapOf(u.Link)
	known[idx] = cur
	if cur.bridge {
		switch {
		case !had:
			cs = append(cs, Change{cur.name, cur.name, "created"})
		case prev.up != cur.up:
			cs = append(cs, Change{cur.name, cur.name, upDown(flagsOf(cur.up))})
		}
		return cs
	}
	if had && prev.master != cur.master {
		if br, ok := bridgeName(prev.master); ok {
			cs = append(cs, Change{br, cur.name, "port-removed"})
		}
	}
	if br, ok := bridgeName(cur.master); ok {
		switch {
		case !had || prev.master != cur.master:
			cs = append(cs, Change{br, cur.name, "port-added"})
		case prev.up != cur.up:
			cs = append(cs, Change{br, cur.name, upDown(flagsOf(cur.up))})
		}
	}
	return cs
}

func flagsOf(up bool) net.Flags {
	if up {
		return net.FlagUp
	}
	return 0
}
