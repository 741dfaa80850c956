package model_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/view"
)

// These tests hold the model's stack and group rules (ctys CANCEL order,
// forcing, worst result, fan-out) without FUSE: real simulated machines,
// the model's own events.

// recorder collects the events under a path, as `cat events` would.
type recorder struct {
	mu    sync.Mutex
	lines []string
	stop  func()
}

func record(t *testing.T, tree *model.Tree, under string) *recorder {
	r := &recorder{}
	r.stop = tree.Watch(func(e model.Event) {
		if !e.Under(under) {
			return
		}
		r.mu.Lock()
		r.lines = append(r.lines, e.Path+" "+string(e.Kind)+" "+e.Detail)
		r.mu.Unlock()
	})
	t.Cleanup(r.stop)
	return r
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

// index is the position of the first line containing every part, -1 if
// none does.
func (r *recorder) index(parts ...string) int {
next:
	for i, l := range r.all() {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		return i
	}
	return -1
}

func addSub(t *testing.T, tree *model.Tree, parent *model.Host, name string, kv ...string) *model.Host {
	t.Helper()
	cf := &model.ConfigFile{}
	cf.Set("drivers", "sim")
	cf.Set("sim.initial", "on")
	cf.Set("sim.off-delay", "20ms")
	cf.Set("sim.on-delay", "20ms")
	for i := 0; i+1 < len(kv); i += 2 {
		cf.Set(kv[i], kv[i+1])
	}
	h, err := tree.Add(context.Background(), parent, name, cf, model.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// A stack goes down deepest first; without self the host stays on.
func TestStackDeepestFirst(t *testing.T) {
	tree := newTree(t)
	host := addSub(t, tree, nil, "a")
	vm := addSub(t, tree, host, "vm")
	ct := addSub(t, tree, vm, "ct")
	ev := record(t, tree, "hosts/a")
	if err := run(t, host, "poweroff wait"); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*model.Host{vm, ct} {
		if p := h.Power(); p != machine.PowerOff {
			t.Errorf("%s: %s after the stack, want off", h.Path(), p)
		}
	}
	if p := host.Power(); p != machine.PowerOn {
		t.Errorf("host: %s, want on (no self)", p)
	}
	inner := ev.index("step " + ct.Path() + " poweroff ok")
	outer := ev.index("step " + vm.Path() + " poweroff ok")
	if inner < 0 || outer < 0 || inner > outer {
		t.Fatalf("steps out of order (ct %d, vm %d):\n%s", inner, outer, strings.Join(ev.all(), "\n"))
	}
}

// With self the host goes last; a reboot without self brings the stack back.
func TestStackSelfAndReboot(t *testing.T) {
	tree := newTree(t)
	host := addSub(t, tree, nil, "b")
	vm := addSub(t, tree, host, "vm")
	if err := run(t, host, "reboot wait"); err != nil {
		t.Fatal(err)
	}
	if vm.Power() != machine.PowerOn || host.Power() != machine.PowerOn {
		t.Fatalf("after reboot: vm %s, host %s; want both on", vm.Power(), host.Power())
	}
	ev := record(t, tree, "hosts/b")
	if err := run(t, host, "poweroff self wait"); err != nil {
		t.Fatal(err)
	}
	if vm.Power() != machine.PowerOff || host.Power() != machine.PowerOff {
		t.Fatalf("after poweroff self: vm %s, host %s; want both off", vm.Power(), host.Power())
	}
	sub, self := ev.index("step "+vm.Path()+" poweroff ok"), ev.index("step "+host.Path()+" poweroff ok")
	if sub < 0 || self < 0 || sub > self {
		t.Fatalf("the host did not go last:\n%s", strings.Join(ev.all(), "\n"))
	}
}

// A machine that does not stop within its stack-timeout is forced off,
// and the stack still succeeds; a machine that cannot be stopped at all
// makes the stack fail with its errno (the worst step).
func TestStackForcesThenWorstResult(t *testing.T) {
	tree := newTree(t)
	host := addSub(t, tree, nil, "c")
	stuck := addSub(t, tree, host, "stuck", "sim.stuck", "poweroff off", "stack-timeout", "100ms")
	ev := record(t, tree, "hosts/c")
	err := run(t, host, "poweroff wait")
	if err == nil {
		t.Fatalf("a machine that never stops: the stack succeeded")
	}
	// stuck never reaches off, even forced: the worst step decides.
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || !strings.Contains(err.Error(), "1 of 1 steps failed") {
		t.Fatalf("err %v, want ETIMEDOUT from the one failed step", err)
	}
	if ev.index("did not stop within 100ms") < 0 || ev.index("step "+stuck.Path()+" off force failed") < 0 {
		t.Fatalf("events do not say it was forced:\n%s", strings.Join(ev.all(), "\n"))
	}

	tree2 := newTree(t)
	host2 := addSub(t, tree2, nil, "d")
	slow := addSub(t, tree2, host2, "slow", "sim.stuck", "poweroff", "stack-timeout", "100ms")
	ok := addSub(t, tree2, host2, "ok")
	ev2 := record(t, tree2, "hosts/d")
	if err := run(t, host2, "poweroff wait"); err != nil {
		t.Fatalf("forcing succeeded, yet: %v", err)
	}
	if slow.Power() != machine.PowerOff || ok.Power() != machine.PowerOff {
		t.Fatalf("slow %s, ok %s; want both off", slow.Power(), ok.Power())
	}
	if ev2.index(`"poweroff wait" done: ok (stack: 1 ok, 1 forced, 0 failed)`) < 0 {
		t.Fatalf("summary:\n%s", strings.Join(ev2.all(), "\n"))
	}
}

// A second stack command while one runs is EBUSY; the same process writing
// the same waiting command again joins it.
func TestStackAdmission(t *testing.T) {
	tree := newTree(t)
	host := addSub(t, tree, nil, "e")
	addSub(t, tree, host, "vm", "sim.off-delay", "300ms")
	who := model.Caller{Uid: 7, Gid: 7, Pid: 4242}
	if err := host.Exec(context.Background(), "poweroff", who); err != nil {
		t.Fatal(err)
	}
	if err := host.Exec(context.Background(), "reboot", model.Caller{Uid: 8}); machine.ErrnoOf(err) != syscall.EBUSY {
		t.Fatalf("another command during the stack: %v, want EBUSY", err)
	}
	if err := host.Exec(context.Background(), "on", who); machine.ErrnoOf(err) != syscall.EBUSY {
		t.Fatalf("the host's own command during its stack: %v, want EBUSY", err)
	}
}

// A group command is on its way to at most fan-out members at a time
// (from a member's "starting" until its driver accepted or refused),
// every member gets it, and the result is the worst member's.
func TestGroupFanOutAndWorst(t *testing.T) {
	const fanout, members = 2, 6
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: []machine.DriverSpec{sim.Spec}, FanOut: fanout})
	t.Cleanup(tree.Close)
	var names []string
	for i := range members {
		kv := []string{"sim.initial", "off", "sim.on-delay", "30ms"}
		if i == 3 {
			kv = append(kv, "sim.fail", "on")
		}
		addSub(t, tree, nil, fmt.Sprintf("n%d", i), kv...)
		names = append(names, fmt.Sprintf("n%d", i))
	}
	g, err := tree.AddGroup("rack", model.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetMembers(context.Background(), "n[0-5]\n", true, model.Caller{}); err != nil {
		t.Fatal(err)
	}
	// Count machines between their "starting" and their own command
	// event (accepted or refused), which comes before the slot is free.
	var mu sync.Mutex
	inFlight, most := 0, 0
	stop := tree.Watch(func(e model.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case e.Kind == machine.EventPower && e.Detail == string(machine.PowerStarting):
			inFlight++
			most = max(most, inFlight)
		case e.Kind == machine.EventCommand && strings.HasPrefix(e.Path, "hosts/"):
			inFlight--
		}
	})
	defer stop()
	err = g.Exec(context.Background(), "on wait", model.Caller{})
	if machine.ErrnoOf(err) != syscall.EIO || !strings.Contains(err.Error(), "1 of 6 members failed") {
		t.Fatalf("err %v, want EIO, 1 of 6 failed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if most > fanout || most == 0 {
		t.Fatalf("%d members in flight at once, fan-out %d", most, fanout)
	}
	st := view.GroupState(g)
	for _, n := range names {
		want := "hosts/" + n + ": on (last: ok)"
		if n == "n3" {
			want = "hosts/n3: off (last: failed:"
		}
		if !strings.Contains(st, want) {
			t.Errorf("state lacks %q:\n%s", want, st)
		}
	}
}
