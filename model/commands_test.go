package model_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/view"
)

// waitPower waits until h shows p (the simulated delays are short; the
// bound only ends a broken test).
func waitPower(t *testing.T, h *model.Host, p machine.Power) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.Power() != p {
		if time.Now().After(deadline) {
			t.Fatalf("%s: power %s, want %s", h.Path(), h.Power(), p)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func lastCommand(h *model.Host) string {
	for _, l := range strings.Split(view.State(h), "\n") {
		if v, ok := strings.CutPrefix(l, "last-command: "); ok {
			return v
		}
	}
	return ""
}

// A machine switched off behind the tree's back (the simulator's quiet
// flip: no report, as an ipmitool command between two polls) is powered
// on by "on wait", not answered "already on" from the cache.
func TestStaleCacheDoesNotDecide(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "stale", "sim.initial", "on", "sim.on-delay", "20ms")
	waitPower(t, h, machine.PowerOn)
	if r := h.Console(context.Background(), "flip off quiet", model.Caller{}); !strings.Contains(r, "quietly") {
		t.Fatalf("flip: %q", r)
	}
	if h.Power() != machine.PowerOn {
		t.Fatalf("a quiet flip was reported: %s", h.Power())
	}
	if err := run(t, h, "on wait"); err != nil {
		t.Fatal(err)
	}
	if lc := lastCommand(h); strings.Contains(lc, "already") || !strings.HasSuffix(lc, ": ok") {
		t.Fatalf("last-command: %q, want the command run", lc)
	}
	if p := h.Power(); p != machine.PowerOn {
		t.Fatalf("after on wait: %s", p)
	}
	// At the target the driver confirms it, and says so.
	if err := run(t, h, "on"); err != nil {
		t.Fatal(err)
	}
	if lc := lastCommand(h); !strings.Contains(lc, "ok (already on, sim confirms)") {
		t.Fatalf("last-command: %q", lc)
	}
}

// force always reaches the driver, even when the machine shows the target.
func TestForceReachesDriver(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "force", "sim.fail", "off")
	waitPower(t, h, machine.PowerOff)
	if err := run(t, h, "off"); err != nil {
		t.Fatalf("off on an off machine: %v", err)
	}
	if err := run(t, h, "off force"); machine.ErrnoOf(err) != syscall.EIO {
		t.Fatalf("off force on an off machine: %v, want the driver's EIO (sim.fail)", err)
	}
}

// After a driver call timed out the state is unknown (a BMC may still run
// the command), and the next command is not answered from the old state.
func TestTimeoutMakesUnknown(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "late", "sim.hang", "off", "timeout", "100ms", "sim.initial", "on")
	waitPower(t, h, machine.PowerOn)
	if err := run(t, h, "off"); machine.ErrnoOf(err) != syscall.ETIMEDOUT {
		t.Fatalf("hung off: %v, want ETIMEDOUT", err)
	}
	if p := h.Power(); p != machine.PowerUnknown {
		t.Fatalf("power after a timed out call: %s, want unknown", p)
	}
	if err := run(t, h, "off force"); machine.ErrnoOf(err) != syscall.ETIMEDOUT {
		t.Fatalf("off force after the timeout: %v, want the driver asked again", err)
	}
}

// A config write that changes no key a driver reads leaves the machine and
// its driver alone; one that does keeps the simulated machine's state.
func TestConfigWriteKeepsMachine(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "cfg", "sim.on-delay", "20ms")
	waitPower(t, h, machine.PowerOff)
	if err := run(t, h, "on wait"); err != nil {
		t.Fatal(err)
	}
	sub := tree.Subscribe("hosts/cfg")
	defer sub.Close()
	for _, text := range []string{"label = x\n", "timeout = 7s\n", "stack-timeout = 9s\nwait-timeout = 1m\n"} {
		if err := h.SetConfig(context.Background(), text, model.Caller{}); err != nil {
			t.Fatal(err)
		}
	}
	if p := h.Power(); p != machine.PowerOn {
		t.Fatalf("a label edit changed power to %s", p)
	}
	if err := h.SetConfig(context.Background(), "sim.off-delay = 30ms\n", model.Caller{}); err != nil {
		t.Fatal(err)
	}
	if p := h.Power(); p != machine.PowerOn {
		t.Fatalf("a driver key edit changed power to %s", p)
	}
	var rebuilt int
	for {
		select {
		case e := <-sub.C:
			if e.Kind == "drivers" {
				rebuilt++
			}
			// A report that says "on" again (the end of "on wait", the
			// rebuilt simulator reporting what it runs) changes nothing.
			if f := strings.Fields(e.Detail); e.Kind == "power" && (len(f) == 0 || f[0] != "on") {
				t.Errorf("config writes changed power: %s", e.Detail)
			}
			continue
		default:
		}
		break
	}
	if rebuilt != 1 {
		t.Fatalf("drivers rebuilt %d times, want once (for sim.off-delay only)", rebuilt)
	}
	// The rebuilt driver runs the simulated machine it found.
	if err := run(t, h, "off wait"); err != nil {
		t.Fatal(err)
	}
}

// poweroff and reboot without self on a host with nothing on top change
// nothing (ctys), and say so in state and events.
func TestEmptyStackSaysSo(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "alone", "sim.initial", "on")
	waitPower(t, h, machine.PowerOn)
	sub := tree.Subscribe("hosts/alone")
	defer sub.Close()
	for verb, want := range map[string]string{
		"poweroff": "stack empty: host left on (use poweroff self)",
		"reboot":   "stack empty: nothing rebooted, host left on (use reboot self)",
	} {
		if err := run(t, h, verb+" wait"); err != nil {
			t.Fatalf("%s: %v", verb, err)
		}
		if lc := lastCommand(h); !strings.Contains(lc, want) {
			t.Fatalf("last-command %q, want %q", lc, want)
		}
		deadline := time.After(5 * time.Second)
		for found := false; !found; {
			select {
			case e := <-sub.C:
				found = e.Kind == "stack" && strings.Contains(e.Detail, want)
			case <-deadline:
				t.Fatalf("no stack event says %q", want)
			}
		}
	}
	if p := h.Power(); p != machine.PowerOn {
		t.Fatalf("power %s", p)
	}
}

// A member that names no host is refused with its name; an empty write
// with replace empties the group.
func TestGroupMembersNameHosts(t *testing.T) {
	tree := newTree(t)
	addSim(t, tree, "n1")
	g, err := tree.AddGroup("g", model.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err = g.SetMembers(ctx, "n1\nnosuchhost\n", true, model.Caller{})
	if machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), "nosuchhost") {
		t.Fatalf("missing host: %v", err)
	}
	if err := g.SetMembers(ctx, "x[1-3]\n", false, model.Caller{}); machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), "hosts/x1 ... hosts/x3") {
		t.Fatalf("range of missing hosts: %v", err)
	}
	if view.Members(g) != "" {
		t.Fatalf("refused writes changed members: %q", view.Members(g))
	}
	if err := g.SetMembers(ctx, "n[1-2]\n", true, model.Caller{}); err != nil {
		t.Fatalf("a range with one host: %v", err)
	}
	if err := g.SetMembers(ctx, "", true, model.Caller{}); err != nil || view.Members(g) != "" || len(g.Hosts()) != 0 {
		t.Fatalf("empty replace: %v, members %q", err, view.Members(g))
	}
}
