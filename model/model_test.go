package model_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/view"
)

// The model starts goroutines (driver calls, operation timers, simulated
// transitions); none may outlive a closed tree.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTree(t *testing.T) *model.Tree {
	t.Helper()
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: []machine.DriverSpec{sim.Spec}})
	t.Cleanup(tree.Close)
	return tree
}

func addSim(t *testing.T, tree *model.Tree, name string, kv ...string) *model.Host {
	t.Helper()
	cf := &model.ConfigFile{}
	cf.Set("drivers", "sim")
	for i := 0; i+1 < len(kv); i += 2 {
		cf.Set(kv[i], kv[i+1])
	}
	h, err := tree.Add(context.Background(), nil, name, cf, model.Caller{Uid: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func run(t *testing.T, h *model.Host, line string) error {
	t.Helper()
	return h.Exec(context.Background(), line, model.Caller{Uid: 1000, Gid: 100, Pid: 42})
}

func TestCommandLifecycle(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "a", "sim.on-delay", "50ms")
	sub := tree.Subscribe("hosts/a")
	defer sub.Close()
	if err := run(t, h, "on"); err != nil {
		t.Fatal(err)
	}
	if p := h.Power(); p != machine.PowerStarting {
		t.Fatalf("right after on: %s", p)
	}
	if err := run(t, h, "off"); machine.ErrnoOf(err) != syscall.EBUSY {
		t.Fatalf("conflicting command: %v, want EBUSY", err)
	}
	if err := run(t, h, "on wait"); machine.ErrnoOf(err) != syscall.EBUSY {
		t.Fatalf("second on while in flight: %v, want EBUSY", err)
	}
	var kinds []string
	deadline := time.After(5 * time.Second)
	for h.Power() != machine.PowerOn {
		select {
		case e := <-sub.C:
			kinds = append(kinds, string(e.Kind)+" "+e.Detail)
		case <-deadline:
			t.Fatalf("never on; events %q", kinds)
		}
	}
	st := view.State(h)
	if !strings.Contains(st, `last-command: "on" uid=1000 gid=100 pid=42`) || !strings.Contains(st, ": ok\n") {
		t.Fatalf("state:\n%s", st)
	}
}

func TestOperationTimeout(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "s", "sim.stuck", "on")
	err := run(t, h, "on wait timeout=100ms")
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT {
		t.Fatalf("err %v, want ETIMEDOUT", err)
	}
	if h.Power() != machine.PowerUnknown {
		t.Fatalf("power %s, want unknown", h.Power())
	}
	// The host is free again.
	if err := run(t, h, "off"); err != nil {
		t.Fatal(err)
	}
}

func TestHungDriverTimesOut(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "h", "sim.hang", "on", "timeout", "100ms")
	err := run(t, h, "on")
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || !strings.Contains(err.Error(), "no answer within 100ms") {
		t.Fatalf("err %v", err)
	}
	// The driver may still run it: nothing is known until it reports.
	if h.Power() != machine.PowerUnknown {
		t.Fatalf("power %s, want unknown", h.Power())
	}
}

func TestInterruptedWaitKeepsCommand(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "i", "sim.on-delay", "200ms")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := h.Exec(ctx, "on wait", model.Caller{})
	if machine.ErrnoOf(err) != syscall.EINTR {
		t.Fatalf("err %v, want EINTR", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.Power() != machine.PowerOn && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.Power() != machine.PowerOn {
		t.Fatalf("the command did not go on after the waiter left: %s", h.Power())
	}
}

func TestRemoveRefusesRunning(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "r", "sim.initial", "on")
	if err := tree.Remove(context.Background(), h, model.Caller{}); machine.ErrnoOf(err) != syscall.EBUSY {
		t.Fatalf("remove of a running host: %v", err)
	}
	if err := run(t, h, "off wait"); err != nil {
		t.Fatal(err)
	}
	if err := tree.Remove(context.Background(), h, model.Caller{}); err != nil {
		t.Fatal(err)
	}
	if tree.Host("hosts/r") != nil {
		t.Fatal("still there")
	}
}

func TestSetConfigChecksEverything(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "c")
	before := view.Config(tree, h)
	for _, text := range []string{"colour = blue\n", "sim.on-delay = soon\n", "label = x\nbogus line\n", "drivers = nosuch\n"} {
		if err := h.SetConfig(context.Background(), text, model.Caller{}); machine.ErrnoOf(err) != syscall.EINVAL {
			t.Errorf("%q: %v, want EINVAL", text, err)
		}
	}
	if view.Config(tree, h) != before {
		t.Fatalf("a refused write changed the config:\n%s", view.Config(tree, h))
	}
}
