package tests

// The model owns the deadline: "has the machine reached its target?" is
// decided by one clock, the command's (wait-timeout, or timeout=). The
// drivers that follow a command (ipmi's verification, wol's probing) stop
// there and report the verdict themselves, so what the user sees is the
// driver's answer, not a timeout that the driver then contradicts. WoL
// hosts are re-probed in the background, as IPMI hosts are polled.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/tests/harness/ipmisim"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// TestDeadlineWoLWaitNoAnswer: a woken machine that never answers its probe
// fails `wol wait` with EHOSTDOWN at wait-timeout, although probe-interval
// x probe-tries (10s) is longer: the probing ends at the command's
// deadline, with the driver's verdict, not the model's ETIMEDOUT.
func TestDeadlineWoLWaitNoAnswer(t *testing.T) {
	s, _ := segmentWoL(t)
	d := startIn(t, s)
	// Nobody listens at the probe's port (and no NIC wakes for nobody).
	d.appendConfig("mute", wolConfig(nobody, "wol.interface = mfes0", "tcp:10.78.1.2:2250",
		"wol.probe-interval = 200ms", "wol.probe-tries = 50", "wait-timeout = 2s"))
	eventually(t, "mute initial probe", func() bool {
		return strings.Contains(stateField(d.read("hosts/mute/state"), "reason"), "did not answer")
	})
	d.fails(`echo "wol wait" > hosts/mute/power`, "Host is down")
	st := d.read("hosts/mute/state")
	if r := stateField(st, "reason"); r != "no answer after wake" {
		t.Errorf("reason %q, want the driver's verdict\n%s", r, st)
	}
	if e := stateField(st, "last-error"); !strings.Contains(e, "no answer after wake") || strings.Contains(e, "timed out") {
		t.Errorf("last-error %q, want the driver's no-answer verdict", e)
	}
	if c := stateField(st, "last-command"); !strings.Contains(c, `"wol wait"`) || !strings.Contains(c, "no answer after wake") {
		t.Errorf("last-command %q", c)
	}
	// WoL never claims off: nothing answered, so nothing is known.
	if p := stateField(st, "power"); p != "unknown" {
		t.Errorf("power %q, want unknown", p)
	}
	ev := d.read("hosts/mute/events.log")
	eventsInOrder(t, ev, "hosts/mute power starting", "hosts/mute wol magic packet", "hosts/mute error wol: no answer after wake")
	if strings.Contains(ev, "power still") {
		t.Errorf("the model's clock spoke:\n%s", ev)
	}
}

// TestDeadlineIPMIPoweroffHardOff: the OS ignores the soft shutdown, and
// wait-timeout (4s) is shorter than ipmi.verify-timeout (5s). poweroff
// gives the soft shutdown half the window, powers off hard and verifies
// that before the deadline: `poweroff self wait` succeeds with power off.
func TestDeadlineIPMIPoweroffHardOff(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password, "ipmi.verify-timeout = 5s", "wait-timeout = 4s"))
	d.waitPower("node07", "on")
	b.WriteFile("soft_delay", "60")
	before := len(b.Commands())
	d.ok("echo 'poweroff self wait' > hosts/node07/power")
	if p := d.read("hosts/node07/power"); p != "off\n" {
		t.Fatalf("after poweroff self wait: power %q, want off", p)
	}
	if b.Power() != "off" {
		t.Fatalf("the simulator's power is %s", b.Power())
	}
	if got := strings.Join(b.Commands()[before:], ","); got != "shutdown 1,power 0" {
		t.Fatalf("BMC hook got %q, want the soft shutdown, then the hard off", got)
	}
	st := d.read("hosts/node07/state")
	if r := stateField(st, "reason"); !strings.HasPrefix(r, "verified: BMC reports off") || !strings.HasSuffix(r, "after poweroff (hard off)") {
		t.Errorf("reason %q, want the hard off's verification", r)
	}
	if c := stateField(st, "last-command"); !strings.Contains(c, `"poweroff self wait"`) || !strings.Contains(c, ": ok") {
		t.Errorf("last-command %q", c)
	}
	ev := d.read("hosts/node07/events.log")
	eventsInOrder(t, ev, "hosts/node07 power stopping", "hosts/node07 notify poweroff: not off ", "s after the soft shutdown; powering off hard", "hosts/node07 power off")
	if strings.Contains(ev, "power unknown") || strings.Contains(ev, "Connection timed out") {
		t.Errorf("the wait timed out on the way:\n%s", ev)
	}
}

// TestDeadlineWoLReprobe: a WoL host shown on whose machine goes away
// (its service closes) leaves on without any command, and comes back on
// when the service does: the background probe, as IPMI's poll.
func TestDeadlineWoLReprobe(t *testing.T) {
	t.Parallel()
	s, tg := segmentWoL(t)
	ln := tg.ListenTCP(t, "10.78.1.2:2251")
	d := startIn(t, s)
	d.appendConfig("pc", wolHost(pcMAC, 2251))
	d.waitPower("pc", "on")
	ln.Close()
	eventually(t, "pc to leave on", func() bool { return d.read("hosts/pc/power") != "on\n" })
	st := d.read("hosts/pc/state")
	if p, r := stateField(st, "power"), stateField(st, "reason"); p != "unknown" || !strings.Contains(r, "did not answer") {
		t.Fatalf("after the service closed: power %q reason %q, want unknown (did not answer)\n%s", p, r, st)
	}
	tg.ListenTCP(t, "10.78.1.2:2251")
	d.waitPower("pc", "on")
	ev := d.read("hosts/pc/events.log")
	eventsInOrder(t, ev, "hosts/pc power on", "hosts/pc power unknown", "hosts/pc power on")
	if strings.Contains(ev, "hosts/pc command") {
		t.Errorf("a command ran:\n%s", ev)
	}
}

// TestDeadlineWoLSendsWhenOn: `wol` on a host that shows on sends its
// magic packet all the same (a machine's state may be stale, and sending
// is what the user asked for); the machine answers and the command ends on.
func TestDeadlineWoLSendsWhenOn(t *testing.T) {
	t.Parallel()
	s, tg := segmentWoL(t)
	pc := tg.StartResponder(t, netns.Sleeper{MAC: pcMAC, Interface: "mfet0", Service: "10.78.1.2:2252"})
	d := startIn(t, s)
	d.appendConfig("pc", wolHost(pcMAC, 2252))
	d.ok(`echo "wol wait timeout=10s" > hosts/pc/power`)
	if p := d.read("hosts/pc/power"); p != "on\n" || !pc.Woke() {
		t.Fatalf("after the first wake: power %q, woke %v", p, pc.Woke())
	}
	for i := 2; i <= 3; i++ {
		seen, _ := pc.Seen()
		d.ok(`echo "wol wait timeout=10s" > hosts/pc/power`)
		if now, _ := pc.Seen(); now <= seen {
			t.Fatalf("wol %d on a host shown on: the responder saw no new magic packet (%d before, %d after)", i, seen, now)
		}
		st := d.read("hosts/pc/state")
		if c := stateField(st, "last-command"); strings.Contains(c, "already") || !strings.HasSuffix(c, ": ok") {
			t.Errorf("wol %d: last-command %q, want a wake that ran", i, c)
		}
		if p := stateField(st, "power"); p != "on" {
			t.Errorf("wol %d: power %q", i, p)
		}
	}
	if n := strings.Count(d.read("hosts/pc/events.log"), fmt.Sprintf("wol magic packet for %s", pcMAC)); n != 3 {
		t.Errorf("%d magic packet events, want 3", n)
	}
}
