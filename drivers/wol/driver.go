package wol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
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

// driver wakes one machine.
type driver struct {
	cfg settings
	ns  netNS
	rep machine.Reporter
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu            sync.Mutex
	closed        bool
	stopVerify    context.CancelFunc // the running wake verification, if any
	lastProbe     string
	lastInterface string // interface the last raw frame went out on
}

var (
	_ machine.PowerController = (*driver)(nil)
	_ machine.Describer       = (*driver)(nil)
	_ machine.StatusReader    = (*driver)(nil)
)

// New builds a Wake-on-LAN driver. The driver sends and probes from the
// network namespace of the thread that calls New (the process's namespace
// for an ordinary goroutine). Config errors wrap syscall.EINVAL; a
// wol.interface that does not exist is one. If a probe is configured, New
// probes once in the background and reports what it finds.
func New(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return nil, err
	}
	ns := callerNS()
	if cfg.iface != "" {
		var ierr error
		if err := ns.run(func() error { _, ierr = net.InterfaceByName(cfg.iface); return nil }); err != nil {
			ns.close()
			return nil, err
		}
		if ierr != nil {
			ns.close()
			return nil, machine.Errorf(syscall.EINVAL, "wol: wol.interface %q: no such interface (%v)", cfg.iface, ierr)
		}
	}
	d := &driver{cfg: cfg, ns: ns, rep: env.Report, log: env.Log, lastProbe: "never"}
	if d.rep == nil {
		d.rep = nopReporter{}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if cfg.probe == nil {
		d.rep.Report(machine.Status{Power: machine.PowerUnknown, Reason: "no probe configured: WoL cannot report power"})
	} else {
		d.wg.Add(1)
		go d.initialProbe()
	}
	return d, nil
}

type nopReporter struct{}

func (nopReporter) Report(machine.Status) {}
func (nopReporter) Event(string, string)  {}

func (d *driver) Kind() string { return "wol" }

// Verbs: wol, on and resume send a magic packet. pause and suspend are
// listed so that they fail with a reason instead of "unknown verb": ctys maps
// them to poweroff on WoL hosts, which Wake-on-LAN cannot do.
func (d *driver) Verbs() []string { return []string{"wol", "on", "resume", "pause", "suspend"} }

// Power sends the magic packet and returns once it is on the wire; the wake
// is verified in the background by the probe.
func (d *driver) Power(ctx context.Context, cmd machine.Command) error {
	switch cmd.Verb {
	case "wol", "on", "resume":
	case "pause", "suspend":
		return machine.Errorf(syscall.ENOTSUP, "wol: %s: Wake-on-LAN can only wake a machine; ctys maps %s to poweroff on WoL hosts, which needs a driver that can power off (e.g. ipmi)", cmd.Verb, cmd.Verb)
	default:
		return machine.Errorf(syscall.ENOTSUP, "wol: %s: Wake-on-LAN can only wake a machine (wol, on, resume)", cmd.Verb)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return machine.Errorf(syscall.EIO, "wol: driver is closed")
	}

	via, err := d.send(ctx)
	if err != nil {
		d.log.Warn("wake failed", "mac", d.cfg.packet.Target.String(), "err", err)
		return err
	}
	what := fmt.Sprintf("magic packet for %s sent %s", d.cfg.packet.Target, via)
	if cmd.Label != "" {
		what += " (" + cmd.Label + ")"
	}
	d.log.Info("magic packet sent", "mac", d.cfg.packet.Target.String(), "via", via)
	d.rep.Event("wol", what)

	if d.cfg.probe == nil {
		// The error ends the command: without it the model would keep
		// waiting for "on" until wait-timeout, the host busy meanwhile.
		d.rep.Report(machine.Status{Power: machine.PowerUnknown, Reason: "no probe configured: WoL cannot report power",
			Err: machine.Errorf(syscall.ENOTSUP, "wol: packet sent, but the wake cannot be confirmed: no probe configured (set probe = tcp:HOST:PORT or icmp:HOST)")})
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	if d.stopVerify != nil {
		d.stopVerify() // a newer wake supersedes the running verification
	}
	vctx, stop := context.WithCancel(d.ctx)
	d.stopVerify = stop
	d.rep.Report(machine.Status{Power: machine.PowerStarting, Reachable: true, Reason: what + "; waiting for probe " + d.cfg.probe.String()})
	d.wg.Add(1)
	go d.verify(vctx)
	return nil
}

// Status implements machine.StatusReader: one probe attempt, so "on" is not
// answered "already on" for a machine that went to sleep since the last
// probe. A probe that does not answer cannot tell off from asleep or
// unreachable: unknown, and the model then sends the packet.
func (d *driver) Status(ctx context.Context) (machine.Status, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return machine.Status{}, machine.Errorf(syscall.EIO, "wol: driver is closed")
	}
	if d.cfg.probe == nil {
		return machine.Status{Power: machine.PowerUnknown, Reason: "no probe configured: WoL cannot report power"}, nil
	}
	p := d.cfg.probe.String()
	if err := d.probeOnce(ctx); err != nil {
		return machine.Status{Power: machine.PowerUnknown, Reason: "probe " + p + " did not answer (off, asleep or unreachable): " + err.Error()}, nil
	}
	return machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "probe " + p + " answered"}, nil
}

// send puts the magic packet on the wire and says how.
func (d *driver) send(ctx context.Context) (string, error) {
	var via string
	err := d.ns.run(func() error {
		if b := d.cfg.broadcast; b != nil {
			via = "by UDP to " + b.String()
			if d.cfg.iface != "" {
				via += " on " + d.cfg.iface
			}
			return SendUDP(ctx, b, d.cfg.iface, d.cfg.packet)
		}
		name := d.cfg.iface
		if name == "" {
			ifi, err := DefaultInterface()
			if err != nil {
				return err
			}
			name = ifi.Name
		}
		via = "as raw frame on " + name
		d.mu.Lock()
		d.lastInterface = name
		d.mu.Unlock()
		return SendRaw(ctx, name, d.cfg.packet)
	})
	return via, err
}

// probeOnce runs one probe attempt and records it for Describe.
func (d *driver) probeOnce(ctx context.Context) error {
	p := *d.cfg.probe
	timeout := min(d.cfg.interval, maxProbeTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	ip, err := p.resolve(rctx)
	cancel()
	if err == nil {
		err = d.ns.run(func() error { return p.try(ctx, ip, timeout) })
	}
	if ctx.Err() != nil {
		return ctx.Err() // superseded or closed: not a result
	}
	res := "answered"
	if err != nil {
		res = "no answer: " + err.Error()
		if errors.Is(err, errRefused) {
			res = err.Error()
		}
	}
	d.mu.Lock()
	d.lastProbe = time.Now().Format(time.RFC3339) + " " + p.String() + " " + res
	d.mu.Unlock()
	return err
}

func (d *driver) initialProbe() {
	defer d.wg.Done()
	err := d.probeOnce(d.ctx)
	if d.ctx.Err() != nil {
		return
	}
	p := d.cfg.probe.String()
	if err == nil {
		d.rep.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "probe " + p + " answered"})
		return
	}
	d.rep.Report(machine.Status{Power: machine.PowerUnknown, Reason: "probe " + p + " did not answer (off, asleep or unreachable): " + err.Error()})
}

// verify probes every interval, up to tries times, after a wake.
func (d *driver) verify(ctx context.Context) {
	defer d.wg.Done()
	p := d.cfg.probe.String()
	start := time.Now()
	var last error
	for i := 1; i <= d.cfg.tries; i++ {
		last = d.probeOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if last == nil {
			d.rep.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "probe " + p + " answered"})
			return
		}
		if i == d.cfg.tries {
			break
		}
		t := time.NewTimer(time.Until(start.Add(time.Duration(i) * d.cfg.interval)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	d.rep.Report(machine.Status{
		Power:  machine.PowerUnknown,
		Reason: "no answer after wake",
		Err: machine.Errorf(syscall.EHOSTDOWN, "wol: no answer after wake: probe %s failed %d times, every %s; last: %v",
			p, d.cfg.tries, d.cfg.interval, last),
	})
}

// Describe adds wol-target, wol-via, probe and last-probe to state.
func (d *driver) Describe() [][2]string {
	target := d.cfg.packet.Target.String()
	if len(d.cfg.packet.Password) > 0 {
		target += " (SecureOn password set)"
	}
	var via string
	switch {
	case d.cfg.broadcast != nil:
		via = "udp " + d.cfg.broadcast.String()
		if d.cfg.iface != "" {
			via += " on " + d.cfg.iface
		}
	case d.cfg.iface != "":
		via = "raw frame on " + d.cfg.iface
	default:
		via = "raw frame on first up interface"
	}
	probe := "none"
	if d.cfg.probe != nil {
		probe = fmt.Sprintf("%s every %s, %d tries", d.cfg.probe, d.cfg.interval, d.cfg.tries)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.broadcast == nil && d.cfg.iface == "" && d.lastInterface != "" {
		via += " (last: " + d.lastInterface + ")"
	}
	return [][2]string{
		{"wol-target", target},
		{"wol-via", via},
		{"probe", probe},
		{"last-probe", d.lastProbe},
	}
}

// Close stops the probes and waits for them.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
	d.ns.close()
	return nil
}
