package wol

import (
	"context"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// check reports what waking the machine needs: for a raw frame
// CAP_NET_RAW and the interface it leaves by (wol.interface, or the one
// ctys would pick); for a directed broadcast only the interface if one is
// named; and for the probe an address and, for icmp, a ping socket or
// CAP_NET_RAW. Whether the machine answers the probe now is power, not a
// requirement: a machine that is off is not missing anything.
func check(ctx context.Context, env machine.CheckEnv) []machine.Requirement {
	s, err := parseConfig(env.Config)
	var out []machine.Requirement
	if err != nil {
		out = append(out, machine.Lack("config", err.Error()))
	}
	if s.broadcast == nil {
		out = append(out, hostcheck.Capability(unix.CAP_NET_RAW, "sends the magic packet as a raw Ethernet frame"))
	}
	switch {
	case s.iface != "":
		out = append(out, hostcheck.Interface("interface "+s.iface, s.iface))
	case s.broadcast == nil:
		ifi, err := DefaultInterface()
		if err != nil {
			out = append(out, machine.Lack("interface (default)", err.Error()))
		} else {
			out = append(out, machine.Have("interface (default)", ifi.Name+", the first up, broadcast-capable Ethernet interface"))
		}
	}
	if s.probe != nil {
		out = append(out, probeNeeds(ctx, *s.probe)...)
	}
	return out
}

// probeNeeds: the probe's host resolves, and an icmp probe can send.
func probeNeeds(ctx context.Context, p Probe) []machine.Requirement {
	what := "probe " + p.String()
	ip, err := p.resolve(ctx)
	if err != nil {
		return []machine.Requirement{machine.Lack(what, "cannot resolve "+p.Host+": "+err.Error())}
	}
	out := []machine.Requirement{machine.Have(what, "address "+ip.String())}
	if p.Network == "icmp" && !pingAllowed() {
		out = append(out, hostcheck.Capability(unix.CAP_NET_RAW, "sends the icmp probe (no ping socket for the daemon's group: net.ipv4.ping_group_range)"))
	}
	return out
}

// pingAllowed says whether net.ipv4.ping_group_range lets the daemon's
// group open an unprivileged ping socket.
func pingAllowed() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 32)
	hi, err2 := strconv.ParseUint(f[1], 10, 32)
	gid := uint64(os.Getegid())
	return err1 == nil && err2 == nil && lo <= gid && gid <= hi
}
