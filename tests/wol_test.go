package tests

// The Wake-on-LAN tests run the daemon inside a "sender" network namespace
// the test creates, with the machines to wake (netns.Responder: a NIC that
// opens a TCP service only after a valid magic packet) in a target
// namespace. The daemon's FUSE mount is visible to the test, which drives
// it with bash as a user would. No packet leaves the test's namespaces.
//
//	sender mfes: mfes0 10.78.1.1/24  <->  target mfet: mfet0 10.78.1.2/24
//
// and, for directed broadcasts, a router in between (netns.Routed).

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// The test machines' MACs: locally administered, 02:6d:66:65:00:NN.
var pcMAC, pcMAC2, pcMAC3, nobody = wolMAC(0x12), wolMAC(0x13), wolMAC(0x14), wolMAC(0x99)

func wolMAC(n byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0x6d, 0x66, 0x65, 0x00, n} }

// startIn mounts machinefs like start, with the daemon in ns. It does not
// use `ip netns exec`: that also unshares the mount namespace, so the mount
// would not be visible to the test.
func startIn(t *testing.T, ns *netns.NS) *daemon {
	t.Helper()
	return startNS(t, ns)
}

// segmentWoL builds the sender and target namespaces joined by one veth.
func segmentWoL(t *testing.T) (s, tg *netns.NS) {
	t.Helper()
	netns.NeedRoot(t)
	s, tg = netns.New(t, "mfes"), netns.New(t, "mfet")
	netns.Veth(t, netns.End{NS: s, Name: "mfes0", Addr: "10.78.1.1/24"}, netns.End{NS: tg, Name: "mfet0", Addr: "10.78.1.2/24"})
	return s, tg
}

// wolConfig is what a user appends for a WoL host: how to send (via, a
// "key = value" line), how to probe, then extra lines (later lines win).
func wolConfig(mac net.HardwareAddr, via, probe string, extra ...string) string {
	return strings.Join(append([]string{
		"drivers = wol",
		"mac = " + mac.String(),
		via,
		"probe = " + probe,
		"wol.probe-interval = 100ms",
		"wol.probe-tries = 30",
	}, extra...), "\n")
}

// wolHost is wolConfig for a target on the sender's segment: raw frames on
// the sender's veth, probing port of the target.
func wolHost(mac net.HardwareAddr, port int, extra ...string) string {
	return wolConfig(mac, "wol.interface = mfes0", fmt.Sprintf("tcp:10.78.1.2:%d", port), extra...)
}

// as makes d report to subtest t until t ends.
func (d *daemon) as(t *testing.T) {
	prev := d.t
	d.t = t
	t.Cleanup(func() { d.t = prev })
}

// appendConfig creates host name and appends config with cat >>.
func (d *daemon) appendConfig(name, config string) {
	d.t.Helper()
	d.ok(fmt.Sprintf("mkdir hosts/%s && cat >> hosts/%s/config <<'EOF'\n%s\nEOF", name, name, config))
}

// eventsInOrder fails unless each of want occurs in log, in this order.
func eventsInOrder(t *testing.T, log string, want ...string) {
	t.Helper()
	rest := log
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("events.log lacks %q after the earlier steps:\n%s", w, log)
		}
		rest = rest[i+len(w):]
	}
}

func TestWoLWakeThroughTree(t *testing.T) {
	t.Parallel()
	s, tg := segmentWoL(t)
	pc12 := tg.StartResponder(t, netns.Sleeper{MAC: pcMAC, Interface: "mfet0", Service: "10.78.1.2:2212", Boot: 300 * time.Millisecond})
	pc13 := tg.StartResponder(t, netns.Sleeper{MAC: pcMAC2, Interface: "mfet0", Service: "10.78.1.2:2213", Boot: 300 * time.Millisecond})
	pc14 := tg.StartResponder(t, netns.Sleeper{MAC: pcMAC3, Interface: "mfet0", Service: "10.78.1.2:2214"})
	d := startIn(t, s)

	d.appendConfig("pc12", wolHost(pcMAC, 2212))
	// The start-up probe finds the service closed: unknown, never off.
	eventually(t, "pc12 initial probe", func() bool {
		return strings.Contains(stateField(d.read("hosts/pc12/state"), "reason"), "did not answer")
	})
	st := d.read("hosts/pc12/state")
	if p := stateField(st, "power"); p != "unknown" {
		t.Fatalf("asleep pc12: power %q, want unknown\n%s", p, st)
	}
	if dr := stateField(st, "drivers"); dr != "wol" {
		t.Fatalf("drivers %q\n%s", dr, st)
	}
	if v := stateField(st, "wol-via"); v != "raw frame on mfes0" {
		t.Errorf("wol-via %q", v)
	}

	t.Run("wol", func(t *testing.T) {
		d.as(t)
		d.ok("echo wol > hosts/pc12/power")
		// The machine boots for 300ms: the write returned long before.
		if p := d.read("hosts/pc12/power"); p != "starting\n" {
			t.Fatalf("right after wol: power %q, want starting", p)
		}
		if r := stateField(d.read("hosts/pc12/state"), "reason"); !strings.Contains(r, "magic packet for "+pcMAC.String()+" sent as raw frame on mfes0") {
			t.Errorf("starting reason %q", r)
		}
		eventually(t, "pc12 on", func() bool { return d.read("hosts/pc12/power") == "on\n" })
		if !pc12.Woke() {
			t.Fatal("pc12 is on but the responder never got its magic packet")
		}
		st := d.read("hosts/pc12/state")
		if r := stateField(st, "reason"); r != "probe tcp:10.78.1.2:2212 answered" {
			t.Errorf("reason %q, want the probe's answer", r)
		}
		if r := stateField(st, "reachable"); r != "yes" {
			t.Errorf("reachable %q", r)
		}
		if lp := stateField(st, "last-probe"); !strings.HasSuffix(lp, "tcp:10.78.1.2:2212 answered") {
			t.Errorf("last-probe %q", lp)
		}
		ev := d.read("hosts/pc12/events.log")
		eventsInOrder(t, ev,
			"hosts/pc12 power starting",
			"hosts/pc12 wol magic packet for "+pcMAC.String()+" sent as raw frame on mfes0",
			`hosts/pc12 command "wol" uid=0`,
			"hosts/pc12 power on")
		t.Logf("events.log:\n%s\nstate:\n%s", ev, st)
	})

	t.Run("wol wait", func(t *testing.T) {
		d.as(t)
		d.appendConfig("pc13", wolHost(pcMAC2, 2213))
		eventually(t, "pc13 initial probe", func() bool {
			return strings.Contains(stateField(d.read("hosts/pc13/state"), "reason"), "did not answer")
		})
		start := time.Now()
		d.ok(`echo "wol wait timeout=10s" > hosts/pc13/power`)
		took := time.Since(start)
		if p := d.read("hosts/pc13/power"); p != "on\n" || !pc13.Woke() {
			t.Fatalf("after wol wait: power %q (responder woke %v), want on", p, pc13.Woke())
		}
		if took < 300*time.Millisecond {
			t.Errorf("wol wait returned after %s, before the machine booted", took)
		}
		if c := stateField(d.read("hosts/pc13/state"), "last-command"); !strings.Contains(c, "wol wait timeout=10s") || !strings.HasSuffix(c, ": ok") {
			t.Errorf("last-command %q", c)
		}
	})

	t.Run("resume", func(t *testing.T) {
		d.as(t)
		d.appendConfig("pc14", wolHost(pcMAC3, 2214))
		d.ok(`echo "resume wait timeout=10s" > hosts/pc14/power`)
		if p := d.read("hosts/pc14/power"); p != "on\n" || !pc14.Woke() {
			t.Fatalf("after resume wait: power %q, responder woke %v", p, pc14.Woke())
		}
		if ev := d.read("hosts/pc14/events.log"); !strings.Contains(ev, "wol magic packet for "+pcMAC3.String()) {
			t.Errorf("resume sent no magic packet:\n%s", ev)
		}
	})

	t.Run("pause", func(t *testing.T) {
		d.as(t)
		// ctys maps pause to poweroff on WoL hosts; WoL cannot do it.
		for _, v := range []string{"pause", "suspend"} {
			d.fails("echo "+v+" > hosts/pc12/power", "Operation not supported")
			st := d.read("hosts/pc12/state")
			if e := stateField(st, "last-error"); !strings.Contains(e, "Wake-on-LAN can only wake") || !strings.Contains(e, "ctys maps "+v+" to poweroff") {
				t.Errorf("%s: last-error %q does not say why", v, e)
			}
			if p := stateField(st, "power"); p != "on" {
				t.Errorf("%s refused but power is %q, want on", v, p)
			}
		}
		if ev := d.read("hosts/pc12/events.log"); !strings.Contains(ev, `command "pause" uid=0`) || !strings.Contains(ev, "Wake-on-LAN can only wake") {
			t.Errorf("refused pause not in events:\n%s", ev)
		}
	})
}

// A wake that does not reach the machine (wrong MAC, wrong SecureOn
// password) ends as unknown with "no answer after wake", never on.
func TestWoLNoAnswerAfterWake(t *testing.T) {
	t.Parallel()
	s, tg := segmentWoL(t)
	pw := []byte{1, 2, 3, 4, 5, 6}
	pc := tg.StartResponder(t, netns.Sleeper{MAC: pcMAC, Password: pw, Interface: "mfet0", Service: "10.78.1.2:2220"})
	d := startIn(t, s)
	quick := []string{"wol.probe-interval = 50ms", "wol.probe-tries = 4"}

	for _, tc := range []struct{ name, config string }{
		{"wrongmac", wolHost(nobody, 2220, append(quick, "wol.password = 01:02:03:04:05:06")...)},
		{"wrongpw", wolHost(pcMAC, 2220, append(quick, "wol.password = 01:02:03:04:05:07")...)},
		{"nopw", wolHost(pcMAC, 2220, quick...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d.as(t)
			h := "hosts/" + tc.name
			d.appendConfig(tc.name, tc.config)
			eventually(t, tc.name+" initial probe", func() bool {
				return strings.Contains(stateField(d.read(h+"/state"), "reason"), "did not answer")
			})
			magic, _ := pc.Seen()
			// The probing ends at the command's deadline.
			d.fails(`echo "wol wait timeout=2s" > `+h+"/power", "Host is down")
			st := d.read(h + "/state")
			if p := stateField(st, "power"); p != "unknown" {
				t.Fatalf("power %q, want unknown\n%s", p, st)
			}
			if r := stateField(st, "reason"); r != "no answer after wake" {
				t.Errorf("reason %q", r)
			}
			if e := stateField(st, "last-error"); !strings.Contains(e, "no answer after wake") || !strings.Contains(e, "times in") || !strings.Contains(e, "every 50ms") {
				t.Errorf("last-error %q", e)
			}
			if r := stateField(st, "reachable"); r != "no" {
				t.Errorf("reachable %q", r)
			}
			ev := d.read(h + "/events.log")
			eventsInOrder(t, ev, h+" power starting", h+" wol magic packet", h+" power unknown")
			if !strings.Contains(ev, h+" error wol: ") || !strings.Contains(ev, "no answer after wake") {
				t.Errorf("no error event:\n%s", ev)
			}
			if strings.Contains(ev, h+" power on") {
				t.Errorf("claimed on:\n%s", ev)
			}
			if strings.Contains(ev, "01:02:03:04:05:0") {
				t.Errorf("the SecureOn password shows in events:\n%s", ev)
			}
			now, wrong := pc.Seen()
			if now == magic || wrong == 0 || pc.Woke() {
				t.Fatalf("responder saw %d new magic packets (%d wrong), woke %v: the packet did not arrive as intended", now-magic, wrong, pc.Woke())
			}
		})
	}

	t.Run("control", func(t *testing.T) {
		// The same machine with the right password wakes: the failures
		// above are the MAC and the password, not the set-up.
		d.as(t)
		d.appendConfig("rightpw", wolHost(pcMAC, 2220, append(quick, "wol.password = 01:02:03:04:05:06")...))
		d.ok(`echo "wol wait timeout=10s" > hosts/rightpw/power`)
		if p := d.read("hosts/rightpw/power"); p != "on\n" || !pc.Woke() {
			t.Fatalf("power %q, woke %v", p, pc.Woke())
		}
		if tgt := stateField(d.read("hosts/rightpw/state"), "wol-target"); tgt != pcMAC.String()+" (SecureOn password set)" {
			t.Errorf("wol-target %q", tgt)
		}
		if c := d.read("hosts/rightpw/config"); !strings.Contains(c, "wol.password = <set>") {
			t.Errorf("config shows the password:\n%s", c)
		}
	})
}

// Without a probe WoL cannot tell whether the machine woke: power stays
// unknown and state says why, even when the machine did wake.
func TestWoLNoProbe(t *testing.T) {
	t.Parallel()
	s, tg := segmentWoL(t)
	pc := tg.StartResponder(t, netns.Sleeper{MAC: pcMAC, Interface: "mfet0", Service: "10.78.1.2:2230"})
	d := startIn(t, s)
	d.appendConfig("np", "drivers = wol\nmac = "+pcMAC.String()+"\nwol.interface = mfes0")
	const why = "no probe configured: WoL cannot report power"
	st := d.read("hosts/np/state")
	if p, r := stateField(st, "power"), stateField(st, "reason"); p != "unknown" || r != why {
		t.Fatalf("before wake: power %q reason %q\n%s", p, r, st)
	}
	d.ok("echo wol > hosts/np/power")
	eventually(t, "the machine to wake", pc.Woke)
	time.Sleep(200 * time.Millisecond) // nothing may turn it into on
	st = d.read("hosts/np/state")
	if p, r := stateField(st, "power"), stateField(st, "reason"); p != "unknown" || r != why {
		t.Fatalf("after wake: power %q reason %q, want unknown (%s)\n%s", p, r, why, st)
	}
	if pr := stateField(st, "probe"); pr != "none" {
		t.Errorf("probe %q", pr)
	}
	ev := d.read("hosts/np/events.log")
	if strings.Contains(ev, "power on") {
		t.Fatalf("claimed on without a probe:\n%s", ev)
	}
	eventsInOrder(t, ev, "hosts/np wol magic packet for "+pcMAC.String(), `hosts/np command "wol" uid=0`)

	if e := stateField(st, "last-error"); !strings.Contains(e, "cannot be confirmed: no probe configured") {
		t.Errorf("last-error %q does not say the wake cannot be confirmed", e)
	}

	// The wake is over as far as anyone can tell: the host takes the next
	// command and config change at once, not busy until wait-timeout (2m).
	if r := d.sh("echo wol > hosts/np/power"); r.code != 0 {
		t.Errorf("second wol: exit %d stderr %q, want accepted", r.code, r.err)
	}
	if r := d.sh("echo 'label = no probe' >> hosts/np/config"); r.code != 0 {
		t.Errorf("config change after a wake: exit %d stderr %q, want accepted", r.code, r.err)
	}
	// A waiting wake cannot be confirmed: it fails at once with the reason,
	// not with ETIMEDOUT when the timeout runs out.
	start := time.Now()
	r := d.sh(`echo "wol wait timeout=5s" > hosts/np/power`)
	if took := time.Since(start); r.code == 0 || !strings.Contains(r.err, "Operation not supported") || took > 8*time.Second {
		t.Errorf("wol wait without probe: exit %d stderr %q after %s, want a prompt ENOTSUP", r.code, r.err, took.Round(time.Millisecond))
	}
	if c := stateField(d.read("hosts/np/state"), "last-command"); !strings.Contains(c, "no probe configured") {
		t.Errorf("last-command %q does not say why the wait failed", c)
	}
	if p := d.read("hosts/np/power"); p != "unknown\n" {
		t.Errorf("power %q, want unknown", p)
	}
}

// A directed broadcast crosses a router that forwards it (bc_forwarding on
// its incoming interface) to a machine on another subnet:
//
//	sender mfes0 10.78.1.2 -- mfer1 router mfer2 -- mfet0 10.78.2.2 target
func TestWoLDirectedBroadcast(t *testing.T) {
	t.Parallel()
	netns.NeedRoot(t)
	rt := netns.NewRouted(t, netns.RoutedSpec{Prefix: "mfe", Net1: "10.78.1", Net2: "10.78.2"})
	pc := rt.Target.StartResponder(t, netns.Sleeper{MAC: pcMAC, Interface: rt.TargetDev, Service: "10.78.2.2:2240"})
	pc2 := rt.Target.StartResponder(t, netns.Sleeper{MAC: pcMAC2, Interface: rt.TargetDev, Service: "10.78.2.2:2241"})
	d := startIn(t, rt.Sender)
	cfg := func(mac net.HardwareAddr, port int) string {
		return wolConfig(mac, "wol.broadcast = "+rt.Broadcast, fmt.Sprintf("tcp:%s:%d", rt.TargetIP, port),
			"wol.probe-interval = 50ms", "wol.probe-tries = 6")
	}
	d.appendConfig("far", cfg(pcMAC, 2240))
	d.ok(`echo "wol wait timeout=10s label=across" > hosts/far/power`)
	if p := d.read("hosts/far/power"); p != "on\n" || !pc.Woke() {
		t.Fatalf("power %q, woke %v", p, pc.Woke())
	}
	st := d.read("hosts/far/state")
	if v := stateField(st, "wol-via"); v != "udp 10.78.2.255:9" {
		t.Errorf("wol-via %q", v)
	}
	if ev := d.read("hosts/far/events.log"); !strings.Contains(ev, "wol magic packet for "+pcMAC.String()+" sent by UDP to 10.78.2.255:9 (across)") {
		t.Errorf("events:\n%s", ev)
	}

	// Control: without bc_forwarding on the router's incoming interface
	// the datagram never crosses, and the wake ends without an answer.
	rt.DirectedBroadcast(t, false)
	d.appendConfig("far2", cfg(pcMAC2, 2241))
	d.fails(`echo "wol wait timeout=3s" > hosts/far2/power`, "Host is down")
	if st := d.read("hosts/far2/state"); stateField(st, "power") != "unknown" || stateField(st, "reason") != "no answer after wake" || pc2.Woke() {
		t.Fatalf("without bc_forwarding: woke %v\n%s", pc2.Woke(), st)
	}
}

// Config errors through the tree: a bad value fails the write with EINVAL
// and leaves the config as it was.
func TestWoLConfigErrors(t *testing.T) {
	t.Parallel()
	netns.NeedRoot(t)
	// A namespace of its own, although nothing here sends: only lo.
	d := startIn(t, netns.New(t, "mfes"))
	good := "drivers = wol\nmac = " + pcMAC.String() + "\nwol.broadcast = 10.78.9.255"
	d.appendConfig("bad", good)
	before := d.read("hosts/bad/config")
	for _, line := range []string{
		"mac = zz",
		"mac = 02:6d:66:65:00",
		"wol.password = 01:02:03",
		"wol.password = 01:02:03:04:05",
		"wol.password = secret",
		"wol.interface = mfenope0",
		"wol.interface = a/b",
		"wol.broadcast = ff02::1",
		"wol.broadcast = lab-bcast",
		"wol.port = 0",
		"probe = udp:host:9",
		"wol.probe-tries = 0",
	} {
		t.Run(line, func(t *testing.T) {
			d.as(t)
			r := d.sh(fmt.Sprintf("echo '%s' >> hosts/bad/config", line))
			if r.code == 0 || !strings.Contains(r.err, "Invalid argument") {
				t.Errorf("%q: exit %d stderr %q, want Invalid argument", line, r.code, r.err)
			}
			if c := d.read("hosts/bad/config"); c != before {
				t.Errorf("%q changed the config:\n%s", line, c)
			}
			st := d.read("hosts/bad/state")
			if dr := stateField(st, "drivers"); dr != "wol" {
				t.Errorf("%q: drivers %q, want a ready wol", line, dr)
			}
		})
	}
	// An interface that exists where the daemon runs is accepted.
	d.ok("echo 'wol.interface = lo' >> hosts/bad/config")
	if dr := stateField(d.read("hosts/bad/state"), "drivers"); dr != "wol" {
		t.Errorf("wol.interface = lo: drivers %q", dr)
	}
	// The hint "like 01:02:03:04:05:06" may show; a rejected value (quoted
	// in errors) must not.
	if ev := d.read("hosts/bad/events.log"); strings.Contains(ev, "secret") || strings.Contains(ev, `"01:02:03`) {
		t.Errorf("a rejected password shows in events:\n%s", ev)
	}
}
