package netns

import (
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// End is one side of a veth pair.
type End struct {
	NS   *NS
	Name string           // device name, at most 15 bytes
	MAC  net.HardwareAddr // nil: the kernel picks one
	Addr string           // CIDR such as "10.77.1.1/24"; "" for none
}

// Veth creates a veth pair with a in a.NS and its peer directly in b.NS,
// sets MACs and addresses, brings both up and waits until both are
// operationally up. Nothing is created in the caller's namespace; the
// devices go when their namespaces are deleted.
func Veth(t testing.TB, a, b End) {
	t.Helper()
	ha, hb := a.NS.Netlink(t), b.NS.Netlink(t)
	la := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.Name, HardwareAddr: a.MAC},
		PeerName:         b.Name,
		PeerHardwareAddr: b.MAC,
		PeerNamespace:    netlink.NsFd(int(b.NS.h)),
	}
	if err := ha.LinkAdd(la); err != nil {
		t.Fatalf("veth %s/%s: %v", a.Name, b.Name, err)
	}
	sides := []struct {
		h *netlink.Handle
		End
	}{{ha, a}, {hb, b}}
	for _, e := range sides {
		l, err := e.h.LinkByName(e.Name)
		if err != nil {
			t.Fatal(err)
		}
		if e.Addr != "" {
			addr, err := netlink.ParseAddr(e.Addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.h.AddrAdd(l, addr); err != nil {
				t.Fatalf("addr %s on %s: %v", e.Addr, e.Name, err)
			}
		}
		if err := e.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	// Until linkwatch sees the carrier (it may wait up to a second) the
	// devices have no qdisc and drop what is sent: wait for oper up.
	for _, e := range sides {
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err := e.h.LinkByName(e.Name)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is not oper up: %v", e.Name, l.Attrs().OperState)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
