package model_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/view"
)

// groupOf makes a tree with fan-out fanout and a group "rack" of n hosts
// n0... made with the key-value pairs kv (addSub's).
func groupOf(t *testing.T, fanout, n int, kv ...string) (*model.Tree, *model.Group) {
	t.Helper()
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: []machine.DriverSpec{sim.Spec}, FanOut: fanout})
	t.Cleanup(tree.Close)
	for i := range n {
		addSub(t, tree, nil, fmt.Sprintf("n%d", i), kv...)
	}
	g, err := tree.AddGroup("rack", model.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetMembers(context.Background(), fmt.Sprintf("n[0-%d]\n", n-1), true, model.Caller{}); err != nil {
		t.Fatal(err)
	}
	return tree, g
}

// watchHosts calls fn with mu held for every event of a host, until the
// test ends.
func watchHosts(t *testing.T, tree *model.Tree, mu *sync.Mutex, fn func(model.Event)) {
	stop := tree.Watch(func(e model.Event) {
		if !strings.HasPrefix(e.Path, "hosts/") {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		fn(e)
	})
	t.Cleanup(stop)
}

// With wait, a group sends every member's command before it waits on
// any (issue 19): the fan-out bounds the commands on their way, not the
// machines on their way to the state. Six members, fan-out 2: every
// member's driver has accepted before the first machine is on (each takes
// 500 ms to come on). Before, the third member started only when one of
// the first two was on.
func TestGroupWaitSendsEveryMemberFirst(t *testing.T) {
	const members = 6
	tree, g := groupOf(t, 2, members, "sim.initial", "off", "sim.on-delay", "500ms")
	var mu sync.Mutex
	accepted, acceptedAtFirstOn, ons := 0, -1, 0
	watchHosts(t, tree, &mu, func(e model.Event) {
		switch {
		case e.Kind == machine.EventCommand && strings.HasSuffix(e.Detail, " ok"):
			accepted++
		case e.Kind == machine.EventPower && e.Detail == string(machine.PowerOn):
			if ons++; ons == 1 {
				acceptedAtFirstOn = accepted
			}
		}
	})
	if err := g.Exec(context.Background(), "on wait", model.Caller{}); err != nil {
		t.Fatal(err)
	}
	// The last member's power event is published just after its verdict
	// let the group's wait return: count it before judging.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := ons
		mu.Unlock()
		if n == members {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if acceptedAtFirstOn != members || ons != members {
		t.Fatalf("%d of %d members had accepted when the first came on (%d on in all): the group waited before sending", acceptedAtFirstOn, members, ons)
	}
	if st := view.GroupState(g); !strings.Contains(st, "6 members: 6 ok, 0 failed") {
		t.Fatalf("state:\n%s", st)
	}
}

// The fan-out still bounds the driver calls: members whose drivers never
// answer hold their slots until the host's timeout, so at most fan-out
// are in flight, and the others wait their turn. The result is the worst
// member's (ETIMEDOUT), and every member is in state.
func TestGroupFanOutBoundsDriverCalls(t *testing.T) {
	const fanout, members = 2, 5
	tree, g := groupOf(t, fanout, members, "sim.initial", "off", "sim.hang", "on", "timeout", "100ms")
	most := mostInFlight(t, tree)
	err := g.Exec(context.Background(), "on wait", model.Caller{})
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || !strings.Contains(err.Error(), "5 of 5 members failed") {
		t.Fatalf("err %v, want ETIMEDOUT, 5 of 5 failed", err)
	}
	if most := most(); most > fanout || most == 0 {
		t.Fatalf("%d driver calls in flight at most, fan-out %d", most, fanout)
	}
	st := view.GroupState(g)
	for i := range members {
		if want := fmt.Sprintf("hosts/n%d: unknown (last: failed:", i); !strings.Contains(st, want) {
			t.Errorf("state lacks %q:\n%s", want, st)
		}
	}
}

// Without -o fanout=N, a group's every member is handed its command at
// once, up to MaxAutoFanOut: with 40 members whose drivers never answer,
// all 40 are in flight together (the old default of 32 held 8 back), and
// state shows the fan-out used.
func TestGroupDefaultFanOutIsTheGroup(t *testing.T) {
	const members = 40
	tree, g := groupOf(t, 0, members, "sim.initial", "off", "sim.hang", "on", "timeout", "300ms")
	most := mostInFlight(t, tree)
	err := g.Exec(context.Background(), "on", model.Caller{})
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT {
		t.Fatalf("err %v, want ETIMEDOUT", err)
	}
	if most := most(); most != members {
		t.Fatalf("%d driver calls in flight at most, want all %d", most, members)
	}
	if st := view.GroupState(g); !strings.Contains(st, fmt.Sprintf("fan-out: %d\n", members)) {
		t.Errorf("state lacks the fan-out %d:\n%s", members, st)
	}
}

// mostInFlight counts the tree's hosts whose driver calls are in flight (a
// host shows starting until its command is answered); the func it returns
// gives the most there were at once.
func mostInFlight(t *testing.T, tree *model.Tree) func() int {
	var mu sync.Mutex
	inFlight, most := 0, 0
	watchHosts(t, tree, &mu, func(e model.Event) {
		switch {
		case e.Kind == machine.EventPower && e.Detail == string(machine.PowerStarting):
			inFlight++
			most = max(most, inFlight)
		case e.Kind == machine.EventCommand:
			inFlight--
		}
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return most
	}
}
