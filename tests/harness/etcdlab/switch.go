package etcdlab

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// addBridge creates bridge name, up, in ns (the lab's switch); it goes
// with the namespace. netns.Bridge would put it in the test's namespace.
func addBridge(t testing.TB, ns *netns.NS, name string) {
	t.Helper()
	nl := ns.Netlink(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := nl.LinkAdd(br); err != nil {
		t.Fatalf("etcdlab: bridge %s in %s: %v", name, ns, err)
	}
	if err := nl.LinkSetUp(br); err != nil {
		t.Fatalf("etcdlab: bridge %s up: %v", name, err)
	}
}

// enslave puts port into bridge, both in ns.
func enslave(t testing.TB, ns *netns.NS, port, bridge string) {
	t.Helper()
	nl := ns.Netlink(t)
	p, err := nl.LinkByName(port)
	if err != nil {
		t.Fatal(err)
	}
	br, err := nl.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetMaster(p, br); err != nil {
		t.Fatalf("etcdlab: %s into %s: %v", port, bridge, err)
	}
}

// setAddr puts the address cidr on dev in ns.
func setAddr(t testing.TB, ns *netns.NS, dev, cidr string) {
	t.Helper()
	nl := ns.Netlink(t)
	l, err := nl.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(l, a); err != nil {
		t.Fatalf("etcdlab: %s on %s: %v", cidr, dev, err)
	}
}
