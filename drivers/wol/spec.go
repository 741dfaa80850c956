package wol

import (
	"fmt"
	"net"
	"strconv"
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

// Defaults (as ctys: probe every 10 s, 24 times, i.e. 4 minutes).
const (
	DefaultProbeInterval = 10 * time.Second
	DefaultProbeTries    = 24
	// maxProbeTimeout bounds one probe attempt when the interval is long.
	maxProbeTimeout = 5 * time.Second
)

// Spec registers the Wake-on-LAN driver with the model.
var Spec = machine.DriverSpec{
	Name: "wol",
	Doc:  "wake a machine with a Wake-on-LAN magic packet (raw frame or directed broadcast) and verify with a probe",
	Keys: []KeySpec{
		{Name: KeyMAC, Doc: "target MAC address (EUI-48, e.g. 00:11:22:33:44:55); required", Check: checkMAC},
		{Name: KeyInterface, Doc: "send a raw Ethernet frame (EtherType 0x0842, needs CAP_NET_RAW) on this interface; must exist. Default: the first up, non-loopback, broadcast interface", Check: checkInterface, Privileged: true},
		{Name: KeyBroadcast, Doc: "IPv4 directed broadcast address (e.g. 192.168.3.255); if set, send a UDP datagram there instead of a raw frame (routers must forward directed broadcasts)", Check: checkBroadcast},
		{Name: KeyPort, Doc: "UDP port for wol.broadcast", Default: strconv.Itoa(DefaultPort), Check: checkPort},
		{Name: KeyPassword, Doc: "SecureOn password: 4 or 6 hex pairs (01:02:03:04:05:06) or 4 bytes dotted (192.168.1.1)", Secret: true, Check: checkPassword, Destination: []string{KeyMAC, KeyInterface, KeyBroadcast, KeyPort}},
		{Name: KeyProbe, Doc: "how to tell the machine is up: tcp:HOST:PORT or icmp:HOST (IPv4; ping socket or CAP_NET_RAW). Without it power stays unknown", Check: checkProbe},
		{Name: KeyProbeInterval, Doc: "time between probes after a wake (Go duration or seconds)", Default: DefaultProbeInterval.String(), Check: checkInterval},
		{Name: KeyProbeTries, Doc: "probes after a wake before giving up with \"no answer after wake\"", Default: strconv.Itoa(DefaultProbeTries), Check: checkTries},
	},
	New: New,
}

// KeySpec is machine.KeySpec, named here to keep Spec readable.
type KeySpec = machine.KeySpec

func checkMAC(v string) error {
	_, err := ParseMAC(v)
	return err
}

func checkInterfaceName(v string) error {
	if v == "" || len(v) > 15 || v == "." || v == ".." || strings.ContainsAny(v, "/: \t\n") {
		return fmt.Errorf("wol.interface %q: not an interface name (1-15 characters, no '/', ':' or spaces)", v)
	}
	return nil
}

// checkInterface is the write-time check: the name must be valid and the
// interface must exist in the network namespace of the calling thread,
// which for the model is the daemon's, where New looks for it too.
func checkInterface(v string) error {
	if err := checkInterfaceName(v); err != nil {
		return err
	}
	if _, err := net.InterfaceByName(v); err != nil {
		return fmt.Errorf("wol.interface %q: no such interface (%v)", v, err)
	}
	return nil
}

func parseBroadcast(v string) (net.IP, error) {
	ip := net.ParseIP(strings.TrimSpace(v))
	if ip == nil || ip.To4() == nil {
		return nil, fmt.Errorf("wol.broadcast %q: want an IPv4 broadcast address such as 192.168.3.255", v)
	}
	if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() {
		return nil, fmt.Errorf("wol.broadcast %q: not a broadcast address", v)
	}
	return ip.To4(), nil
}

func checkBroadcast(v string) error {
	_, err := parseBroadcast(v)
	return err
}

func parsePort(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("wol.port %q: want a port number 1-65535 (usually 9 or 7)", v)
	}
	return n, nil
}

func checkPort(v string) error {
	_, err := parsePort(v)
	return err
}

func checkPassword(v string) error {
	_, err := ParsePassword(v)
	return err
}

func checkProbe(v string) error {
	_, err := ParseProbe(v)
	return err
}

func parseInterval(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, nerr := strconv.ParseUint(v, 10, 32); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < time.Millisecond || d > time.Hour {
		return 0, fmt.Errorf("wol.probe-interval %q: want a duration between 1ms and 1h (e.g. 10s)", v)
	}
	return d, nil
}

func checkInterval(v string) error {
	_, err := parseInterval(v)
	return err
}

func parseTries(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > 10000 {
		return 0, fmt.Errorf("wol.probe-tries %q: want a number 1-10000", v)
	}
	return n, nil
}

func checkTries(v string) error {
	_, err := parseTries(v)
	return err
}

// settings is the parsed configuration of one host.
type settings struct {
	packet    MagicPacket
	iface     string       // raw frame interface, or SO_BINDTODEVICE for UDP
	broadcast *net.UDPAddr // nil: raw frame
	probe     *Probe       // nil: no probe
	interval  time.Duration
	tries     int
}

func parseConfig(c machine.Config) (settings, error) {
	s := settings{interval: DefaultProbeInterval, tries: DefaultProbeTries}
	inval := func(err error) error { return machine.Errorf(syscall.EINVAL, "wol: %v", err) }
	get := func(k string) (string, bool) {
		if c == nil {
			return "", false
		}
		v, ok := c.Get(k)
		return v, ok && strings.TrimSpace(v) != ""
	}
	v, ok := get(KeyMAC)
	if !ok {
		return s, machine.Errorf(syscall.EINVAL, "wol: mac is not set: Wake-on-LAN needs the target's MAC address")
	}
	mac, err := ParseMAC(v)
	if err != nil {
		return s, inval(err)
	}
	s.packet.Target = mac
	if v, ok := get(KeyPassword); ok {
		if s.packet.Password, err = ParsePassword(v); err != nil {
			return s, inval(err)
		}
	}
	if v, ok := get(KeyInterface); ok {
		if err := checkInterfaceName(v); err != nil {
			return s, inval(err)
		}
		s.iface = v
	}
	port := DefaultPort
	if v, ok := get(KeyPort); ok {
		if port, err = parsePort(v); err != nil {
			return s, inval(err)
		}
	}
	if v, ok := get(KeyBroadcast); ok {
		ip, err := parseBroadcast(v)
		if err != nil {
			return s, inval(err)
		}
		s.broadcast = &net.UDPAddr{IP: ip, Port: port}
	}
	if v, ok := get(KeyProbe); ok {
		p, err := ParseProbe(v)
		if err != nil {
			return s, inval(err)
		}
		s.probe = &p
	}
	if v, ok := get(KeyProbeInterval); ok {
		if s.interval, err = parseInterval(v); err != nil {
			return s, inval(err)
		}
	}
	if v, ok := get(KeyProbeTries); ok {
		if s.tries, err = parseTries(v); err != nil {
			return s, inval(err)
		}
	}
	return s, nil
}
