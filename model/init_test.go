package model_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// powerEvents collects the power events of sub up to the first that is
// last: a verdict lets the wait return before the report's event is
// published.
func powerEvents(t *testing.T, sub *model.Subscription, last machine.Power) []string {
	t.Helper()
	var got []string
	bound := time.After(5 * time.Second)
	for {
		select {
		case e := <-sub.C:
			if e.Kind == machine.EventPower {
				got = append(got, e.Detail)
				if e.Detail == string(last) {
					return got
				}
			}
		case <-bound:
			t.Fatalf("no power event %s; got %q", last, got)
		}
	}
}

// init 0 and init 6 change power as poweroff and reboot do, so their wait
// waits for that: init 0 for off, init 6 for the machine to be back on
// after going down. Before, init had no target and every "init N wait"
// returned as soon as the driver accepted it, with the machine still on.
func TestInitWaitsForItsLevel(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "lvl", "sim.initial", "on", "sim.off-delay", "150ms", "sim.on-delay", "150ms")
	waitPower(t, h, machine.PowerOn)
	sub := tree.Subscribe("hosts/lvl")
	defer sub.Close()

	if err := run(t, h, "init 0 wait"); err != nil {
		t.Fatalf("init 0 wait: %v", err)
	}
	if p := h.Power(); p != machine.PowerOff {
		t.Fatalf("init 0 wait returned with power %s, want off", p)
	}
	if got := powerEvents(t, sub, machine.PowerOff); !slices.Equal(got, []string{"stopping", "off"}) {
		t.Fatalf("init 0: power events %q, want stopping, off", got)
	}

	if err := run(t, h, "on wait"); err != nil {
		t.Fatal(err)
	}
	powerEvents(t, sub, machine.PowerOn)
	if err := run(t, h, "init 6 wait"); err != nil {
		t.Fatalf("init 6 wait: %v", err)
	}
	if p := h.Power(); p != machine.PowerOn {
		t.Fatalf("init 6 wait returned with power %s, want on", p)
	}
	if got := powerEvents(t, sub, machine.PowerOn); !slices.Equal(got, []string{"rebooting", "on"}) {
		t.Fatalf("init 6: power events %q, want rebooting, on", got)
	}
	if lc := lastCommand(h); !strings.Contains(lc, `"init 6 wait"`) || !strings.HasSuffix(lc, ": ok") {
		t.Fatalf("last-command: %q", lc)
	}

	// A run level that is not a power state ends when the driver accepts
	// it: nothing changes and nothing is waited for.
	if err := run(t, h, "init 3 wait"); err != nil {
		t.Fatalf("init 3 wait: %v", err)
	}
	if p := h.Power(); p != machine.PowerOn {
		t.Fatalf("after init 3: %s", p)
	}
	// init 0 on a machine that is off is answered as poweroff is.
	if err := run(t, h, "init 0 wait"); err != nil {
		t.Fatal(err)
	}
	if err := run(t, h, "init 0 wait"); err != nil {
		t.Fatalf("init 0 on an off machine: %v", err)
	}
	if lc := lastCommand(h); !strings.Contains(lc, "already off") {
		t.Fatalf("last-command: %q, want already off", lc)
	}
}

func TestSpecOfInitLevels(t *testing.T) {
	for _, c := range []struct {
		line            string
		transit, target machine.Power
	}{
		{"init 0", machine.PowerStopping, machine.PowerOff},
		{"init 6 wait", machine.PowerRebooting, machine.PowerOn},
		{"init 3 wait", "", ""},
		{"poweroff", machine.PowerStopping, machine.PowerOff},
		{"on", machine.PowerStarting, machine.PowerOn},
	} {
		cmd, err := machine.ParseCommand(c.line)
		if err != nil {
			t.Fatal(err)
		}
		if s := machine.SpecOf(cmd); s.Transit != c.transit || s.Target != c.target {
			t.Errorf("%s: transit %q target %q, want %q %q", c.line, s.Transit, s.Target, c.transit, c.target)
		}
	}
}
