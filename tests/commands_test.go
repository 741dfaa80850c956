package tests

// Commands do what they say, whoever else is writing: a cached state never
// decides a command, a config write never disturbs a machine, a command
// that changes nothing says so, and a group names real hosts. Real
// ipmi_sim BMCs and the demo's simulated machines, through the mount.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

// TestCommandAsksTheBMC: the BMC is switched off with ipmitool behind the
// daemon's back, between two of its polls (the poll is an hour here: the
// tree cannot have learned it). "on wait" must power the machine on, not
// answer "already on" from what the tree last polled.
func TestCommandAsksTheBMC(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password, "ipmi.poll = 1h"))
	d.waitPower("node07", "on")

	b.SetPower(false)
	if b.Power() != "off" {
		t.Fatalf("ipmitool chassis power off: the BMC is %s", b.Power())
	}
	if got := d.read("hosts/node07/power"); got != "on\n" {
		t.Fatalf("the tree learned of the change by itself (power %q): the test shows nothing", got)
	}
	before := len(b.Commands())
	d.ok("echo 'on wait' > hosts/node07/power")
	if b.Power() != "on" {
		t.Fatalf("'on wait' returned 0 with the machine %s", b.Power())
	}
	if got := b.Commands()[before:]; len(got) != 1 || got[0] != "power 1" {
		t.Fatalf("the BMC received %q, want one power on", got)
	}
	st := d.read("hosts/node07/state")
	if lc := stateField(st, "last-command"); strings.Contains(lc, "already") || !strings.HasSuffix(lc, ": ok") {
		t.Fatalf("last-command %q, want the command run\n%s", lc, st)
	}
	if ev := d.read("hosts/node07/events.log"); !strings.Contains(ev, "hosts/node07 power off") {
		t.Fatalf("the change the BMC reported is not in events:\n%s", ev)
	}

	// At the target, the BMC is asked and confirms; nothing is sent.
	before = len(b.Commands())
	d.ok("echo 'on wait' > hosts/node07/power")
	if lc := stateField(d.read("hosts/node07/state"), "last-command"); !strings.Contains(lc, "ok (already on, ipmi confirms)") {
		t.Fatalf("last-command %q", lc)
	}
	// force always reaches the BMC.
	d.ok("echo 'on force wait' > hosts/node07/power")
	if got := b.Commands()[before:]; len(got) != 1 || got[0] != "power 1" {
		t.Fatalf("after on and on force the BMC received %q, want one power on (force)", got)
	}
}

// TestTimedOutCommandLeavesUnknown: a driver call that timed out may still
// run (a BMC that answers late), so power is unknown, not the state before;
// and "off force" then reaches the driver instead of "already off".
func TestTimedOutCommandLeavesUnknown(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("late", "drivers = sim\nsim.hang = on\nsim.off-delay = 0s\ntimeout = 1s")
	d.waitPower("late", "off")
	d.fails("echo on > hosts/late/power", "Connection timed out")
	st := d.read("hosts/late/state")
	if p := stateField(st, "power"); p != "unknown" {
		t.Fatalf("power after a timed out command = %q, want unknown\n%s", p, st)
	}
	d.ok("echo 'off force wait' > hosts/late/power")
	st = d.read("hosts/late/state")
	if lc := stateField(st, "last-command"); strings.Contains(lc, "already") || !strings.HasSuffix(lc, ": ok") {
		t.Fatalf("off force after a timeout: last-command %q, want the driver asked\n%s", lc, st)
	}
	if p := stateField(st, "power"); p != "off" {
		t.Fatalf("power %q after off force wait", p)
	}
}

// TestConfigWriteLeavesMachineAlone: on the demo, a label edit and a
// timeout edit leave a running machine on and its driver in place; an
// edit of a key the simulator reads rebuilds it, and the machine stays on.
func TestConfigWriteLeavesMachineAlone(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	d.ok("echo 'on wait' > hosts/lab01/power")
	mark := len(d.read("hosts/lab01/events.log"))
	d.ok("echo 'label = x' >> hosts/lab01/config")
	d.ok("echo 'timeout = 7s' >> hosts/lab01/config")
	if got := d.read("hosts/lab01/power"); got != "on\n" {
		t.Fatalf("after a label edit power = %q, want on", got)
	}
	ev := d.read("hosts/lab01/events.log")[mark:]
	if strings.Contains(ev, "hosts/lab01 power") || strings.Contains(ev, "hosts/lab01 drivers") {
		t.Fatalf("a label edit touched the machine or its driver:\n%s", ev)
	}
	if st := d.read("hosts/lab01/state"); stateField(st, "label") != "x" {
		t.Fatalf("label not applied:\n%s", st)
	}
	d.ok("echo 'sim.off-delay = 2s' >> hosts/lab01/config")
	ev = d.read("hosts/lab01/events.log")[mark:]
	if !strings.Contains(ev, "hosts/lab01 drivers sim") {
		t.Fatalf("a driver key edit did not rebuild the driver:\n%s", ev)
	}
	if got := d.read("hosts/lab01/power"); got != "on\n" || strings.Contains(ev, "hosts/lab01 power off") {
		t.Fatalf("a rebuilt simulator lost the machine's state: power %q\n%s", got, ev)
	}
}

// TestEmptyStackSaysSo: poweroff and reboot without self on a host without
// subhosts keep their ctys meaning (the stack only) and say in state and
// events that they left the host on.
func TestEmptyStackSaysSo(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	d.waitPower("lab02", "on")
	for verb, want := range map[string]string{
		"poweroff": "stack empty: host left on (use poweroff self)",
		"reboot":   "stack empty: nothing rebooted, host left on (use reboot self)",
	} {
		d.ok(fmt.Sprintf("echo '%s wait' > hosts/lab02/power", verb))
		st := d.read("hosts/lab02/state")
		if lc := stateField(st, "last-command"); !strings.Contains(lc, want) {
			t.Fatalf("%s: last-command %q, want %q", verb, lc, want)
		}
		if ev := d.read("hosts/lab02/events.log"); !strings.Contains(ev, fmt.Sprintf("stack %q done: ok (%s)", verb+" wait", want)) {
			t.Fatalf("%s: events.log does not say it:\n%s", verb, ev)
		}
		if p := stateField(st, "power"); p != "on" {
			t.Fatalf("%s without self changed power to %s", verb, p)
		}
	}
}

// TestGroupMembersMustNameHosts: a member that names no host fails the
// write with EINVAL and the name; `: > members` empties the group.
func TestGroupMembersMustNameHosts(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	d.ok("mkdir groups/g")
	d.fails("echo nosuchhost > groups/g/members", "Invalid argument")
	d.fails("echo 'lab9[0-3]' > groups/g/members", "Invalid argument")
	if m := d.read("groups/g/members"); m != "" {
		t.Fatalf("refused writes changed members: %q", m)
	}
	if ev := d.read("groups/g/events.log"); !strings.Contains(ev, "nosuchhost") || !strings.Contains(ev, "hosts/lab90 ... hosts/lab93") {
		t.Fatalf("the refusal does not name the member:\n%s", ev)
	}
	d.ok("echo 'lab0[1-2]' > groups/g/members && echo lab03 >> groups/g/members")
	if st := d.read("groups/g/state"); stateField(st, "members") != "3" {
		t.Fatalf("state:\n%s", st)
	}
	// A refused write through a dup'ed fd (dd closes the fd it opened
	// before it writes) changes nothing.
	d.fails("echo nosuchhost | dd of=groups/g/members status=none", "Invalid argument")
	if m := d.read("groups/g/members"); m != "lab0[1-2]\nlab03\n" {
		t.Fatalf("after a refused dd: %q", m)
	}
	// The group is emptied when the file is released, which the kernel
	// sends after close returns: wait for it.
	d.ok(": > groups/g/members")
	eventually(t, "members empty after ': > members'", func() bool { return d.read("groups/g/members") == "" })
	if st := d.read("groups/g/state"); stateField(st, "members") != "0" {
		t.Fatalf("state after ': > members':\n%s", st)
	}
}
