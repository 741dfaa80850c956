package uml_test

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// init N reaches a UML guest as far as mconsole goes: init 6 is mconsole
// reboot (the guest boots again), init 0 is the orderly poweroff
// (ctrl-alt-del to the guest's init); a run level 1-5 has no way there
// and is ENOTSUP, saying what is supported.
func TestUMLInitLevels(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}
	r := &recorder{}
	m := newMachine(t, cfg, r)
	defer m.Close()
	ctx := context.Background()
	if err := m.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "notify booted", func() bool { return r.hasEvent("notify", "booted") })

	err := m.Power(ctx, machine.Command{Verb: "init", InitLevel: 3})
	if machine.ErrnoOf(err) != syscall.ENOTSUP || !strings.Contains(err.Error(), "init 0 (poweroff") || !strings.Contains(err.Error(), "init 6 (mconsole reboot)") {
		t.Fatalf("init 3: %v, want ENOTSUP naming what is supported", err)
	}

	booted := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		n := 0
		for _, e := range r.events {
			if e == [2]string{"notify", "booted"} {
				n++
			}
		}
		return n
	}
	if err := m.Power(ctx, machine.Command{Verb: "init", InitLevel: 6}); err != nil {
		t.Fatalf("init 6: %v", err)
	}
	waitFor(t, "second boot after init 6", func() bool { return booted() >= 2 })
	waitFor(t, "on after init 6", func() bool { return r.last().Power == machine.PowerOn })

	if err := m.Power(ctx, machine.Command{Verb: "init", InitLevel: 0}); err != nil {
		t.Fatalf("init 0: %v", err)
	}
	waitFor(t, "off after init 0", func() bool { return r.last().Power == machine.PowerOff })
	if !r.hasEvent("notify", "poweroff-by-cad") {
		t.Fatalf("init 0 did not reach the guest's init by ctrl-alt-del; last %+v", r.last())
	}
	waitFor(t, "no linux left", func() bool { return len(umlh.Guests(dir)) == 0 })
}
