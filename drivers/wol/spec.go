package wol

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Config keys read by the driver.
const (
	KeyMAC           = "mac"
	KeyInterface     = "wol.interface"
	KeyBroadcast     = "wol.broadcast"
	KeyPort          = "wol.port"
	KeyPassword      = "wol.password"
	KeyProbe         = "probe"
	KeyProbeInterval = "wol.probe-interval"
	KeyProbeTries    = "wol.probe-tries"
)

// maxProbeTimeout bounds one probe attempt when the interval is long.
const maxProbeTimeout = 5 * time.Second

// Spec registers the Wake-on-LAN driver with the model.
var Spec = machine.DriverSpec{
	Name: "wol",
	Doc:  "wake a machine with a Wake-on-LAN magic packet (raw frame or directed broadcast) and verify with a probe",
	Keys: keys,
	New:  New,
}

// keys are the driver's config keys (Spec.Keys). The probe interval is
// ctys's (10 s). How long a wake is probed is the command's window
// (wait-timeout, timeout=), the one clock the model owns: wol.probe-tries,
// ctys's count, is accepted and ignored so that older configs still load.
var keys = []machine.KeySpec{
	{Name: KeyMAC, Doc: "target MAC address (EUI-48, e.g. 00:11:22:33:44:55); required", Kind: machine.MACKind},
	{Name: KeyInterface, Doc: "send a raw Ethernet frame (EtherType 0x0842, needs CAP_NET_RAW) on this interface; must exist. Default: the first up, non-loopback, broadcast interface", Kind: interfaceKind, Privileged: true},
	{Name: KeyBroadcast, Doc: "IPv4 directed broadcast address (e.g. 192.168.3.255); if set, send a UDP datagram there instead of a raw frame (routers must forward directed broadcasts)", Kind: machine.CustomKind("IPv4 broadcast address", parseBroadcast)},
	{Name: KeyPort, Doc: "UDP port for wol.broadcast (9 is the discard port; 7, echo, is the other common choice)", Default: "9", Kind: machine.IntKind(1, 65535)},
	{Name: KeyPassword, Doc: "SecureOn password: 4 or 6 hex pairs (01:02:03:04:05:06) or 4 bytes dotted (192.168.1.1)", Secret: true, Kind: machine.CustomKind("SecureOn password", ParsePassword), Destination: []string{KeyMAC, KeyInterface, KeyBroadcast, KeyPort}},
	{Name: KeyProbe, Doc: "how to tell the machine is up: tcp:HOST:PORT or icmp:HOST (IPv4; ping socket or CAP_NET_RAW). Without it power stays unknown", Kind: machine.CustomKind("tcp:HOST:PORT or icmp:HOST", ParseProbe)},
	{Name: KeyProbeInterval, Doc: "time between probes: after a wake, until the probe answers or the command's window (wait-timeout, timeout=) ends with \"no answer after wake\"; and in the background, so a machine switched off or on elsewhere shows", Default: "10s", Kind: machine.DurationKind(time.Millisecond, time.Hour)},
	{Name: KeyProbeTries, Doc: "ignored, kept so older configs load: a wake is probed until the command's window ends", Default: "24", Kind: machine.IntKind(1, 10000)},
}

// interfaceKind is the name of an interface that exists in the network
// namespace of the calling thread: the daemon's when a value is written,
// the one New sends from when it is read.
var interfaceKind = machine.CheckedKind("interface name", func(v string) error {
	if err := machine.CheckInterfaceName(v); err != nil {
		return err
	}
	if _, err := net.InterfaceByName(v); err != nil {
		return fmt.Errorf("%q: no such interface (%v)", v, err)
	}
	return nil
})

func parseBroadcast(v string) (net.IP, error) {
	ip := net.ParseIP(strings.TrimSpace(v))
	if ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("%q: want an IPv4 broadcast address such as 192.168.3.255", v)
	}
	if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
		return nil, fmt.Errorf("%q: not a broadcast address", v)
	}
	return ip.To4(), nil
}

// settings is the parsed configuration of one host.
type settings struct {
	packet    MagicPacket
	iface     string       // raw frame interface, or SO_BINDTODEVICE for UDP
	broadcast *net.UDPAddr // nil: raw frame
	probe     *Probe       // nil: no probe
	interval  time.Duration
}

func parseConfig(c machine.Config) (settings, error) {
	v := machine.ReadConfig(c, keys)
	s := settings{
		packet:   MagicPacket{Target: v.MAC(KeyMAC), Password: machine.Value[[]byte](v, KeyPassword)},
		iface:    v.String(KeyInterface),
		interval: v.Duration(KeyProbeInterval),
	}
	v.Int(KeyProbeTries) // ignored, but a bad value is refused as when written
	if v.IsSet(KeyBroadcast) {
		s.broadcast = &net.UDPAddr{IP: machine.Value[net.IP](v, KeyBroadcast), Port: v.Int(KeyPort)}
	}
	if v.IsSet(KeyProbe) {
		p := machine.Value[Probe](v, KeyProbe)
		s.probe = &p
	}
	if err := v.Err(); err != nil {
		return s, machine.Errorf(syscall.EINVAL, "wol: %v", err)
	}
	if s.packet.Target == nil {
		return s, machine.Errorf(syscall.EINVAL, "wol: mac is not set: Wake-on-LAN needs the target's MAC address")
	}
	return s, nil
}
