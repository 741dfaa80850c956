package model_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/drivers/wol"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/view"
)

// A host reached by two drivers (here the simulator for power and a real
// Wake-on-LAN probe on loopback, as "ipmi wol" hosts are): while the first
// runs a command, the second's probe going silent must neither end the
// command nor make power unknown.
func TestSecondDriverDoesNotDecide(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: []machine.DriverSpec{sim.Spec, wol.Spec}})
	t.Cleanup(tree.Close)
	h := addSub(t, tree, nil, "two",
		"drivers", "sim wol", "sim.off-delay", "400ms",
		"mac", "02:00:00:00:00:01", "wol.interface", "lo",
		"probe", "tcp:"+ln.Addr().String(), "wol.probe-interval", "20ms")

	done := make(chan error, 1)
	go func() { done <- run(t, h, "off wait") }()
	// The probe stops answering while the simulator is still stopping.
	waitFor(t, "the simulator stopping", func() bool { return h.Power() == machine.PowerStopping })
	ln.Close()
	if err := <-done; err != nil {
		t.Fatalf("off wait: %v (a second driver's probe decided the command)\n%s", err, view.State(h))
	}
	if p := h.Power(); p != machine.PowerOff {
		t.Fatalf("power %s after off, want off", p)
	}
	// At rest, the probe's silence does not hide what the simulator knows.
	waitFor(t, "the probe to fail", func() bool { return strings.Contains(view.State(h), "refused (the address answers") })
	time.Sleep(60 * time.Millisecond) // the probe's report follows its record
	if st := view.State(h); !strings.Contains(st, "power: off\n") {
		t.Fatalf("a silent probe made power unknown:\n%s", st)
	}
}

// waitFor waits until cond holds; it fails the test after 10 s, which only
// a broken model takes (no speed is asserted).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
