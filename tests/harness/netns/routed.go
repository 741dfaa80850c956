package netns

import (
	"net"
	"testing"
)

// Routed is a sender and a target on two /24 subnets with a router between:
//
//	Sender  P+"s0" NET1.2/24  <->  Router P+"r1" NET1.1/24
//	Router  P+"r2" NET2.1/24  <->  Target P+"t0" NET2.2/24
//
// where P is the prefix. Sender and target route by default through the
// router, which forwards, and forwards directed broadcasts (to NET2.255)
// arriving on P+"r1" until DirectedBroadcast(t, false).
type Routed struct {
	Sender, Router, Target *NS
	// Device names: SenderDev in Sender, RouterIn and RouterOut in Router,
	// TargetDev in Target.
	SenderDev, RouterIn, RouterOut, TargetDev string
	// SenderIP, TargetIP and Broadcast (the target subnet's directed
	// broadcast address) are dotted IPv4 addresses.
	SenderIP, TargetIP, Broadcast string
}

// RoutedSpec chooses the names and addresses of a Routed topology.
type RoutedSpec struct {
	// Prefix starts every namespace and device name ("mfw"); at most 12
	// bytes so the device names fit.
	Prefix string
	// Net1 and Net2 are the first three octets of the sender's and the
	// target's subnets, e.g. "10.77.1" and "10.77.2".
	Net1, Net2 string
	// TargetMAC is the target device's address; nil: the kernel's choice.
	TargetMAC net.HardwareAddr
}

// NewRouted builds a Routed topology; everything goes at cleanup.
func NewRouted(t testing.TB, spec RoutedSpec) *Routed {
	t.Helper()
	p := spec.Prefix
	r := &Routed{
		Sender: New(t, p+"s"), Router: New(t, p+"r"), Target: New(t, p+"t"),
		SenderDev: p + "s0", RouterIn: p + "r1", RouterOut: p + "r2", TargetDev: p + "t0",
		SenderIP: spec.Net1 + ".2", TargetIP: spec.Net2 + ".2", Broadcast: spec.Net2 + ".255",
	}
	Veth(t, End{NS: r.Sender, Name: r.SenderDev, Addr: r.SenderIP + "/24"}, End{NS: r.Router, Name: r.RouterIn, Addr: spec.Net1 + ".1/24"})
	Veth(t, End{NS: r.Router, Name: r.RouterOut, Addr: spec.Net2 + ".1/24"}, End{NS: r.Target, Name: r.TargetDev, MAC: spec.TargetMAC, Addr: r.TargetIP + "/24"})
	r.Sender.DefaultRoute(t, r.SenderDev, spec.Net1+".1")
	r.Target.DefaultRoute(t, r.TargetDev, spec.Net2+".1")
	r.Router.Sysctl(t, "net/ipv4/ip_forward", "1")
	r.Router.Sysctl(t, "net/ipv4/conf/all/bc_forwarding", "1")
	r.DirectedBroadcast(t, true)
	return r
}

// DirectedBroadcast switches the router's forwarding of directed broadcasts
// arriving from the sender's side (bc_forwarding on RouterIn; the kernel
// needs it on "all" too, which NewRouted sets).
func (r *Routed) DirectedBroadcast(t testing.TB, on bool) {
	t.Helper()
	v := "0"
	if on {
		v = "1"
	}
	r.Router.Sysctl(t, "net/ipv4/conf/"+r.RouterIn+"/bc_forwarding", v)
}
