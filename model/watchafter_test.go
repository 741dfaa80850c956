package model_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/view"
)

// WatchAfter's fn runs after the watchers had the event, with no lock of
// the tree held: it can render the host the event is about (the
// status-dir writes its copy there). A fn called under the bus's or the
// host's lock would deadlock here, and the test would time out.
func TestWatchAfterSeesTheChange(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "lab01")
	var mu sync.Mutex
	var order []string
	var powers []string
	stopW := tree.Watch(func(e model.Event) {
		if e.Path == h.Path() && e.Kind == machine.EventPower {
			mu.Lock()
			order = append(order, "watch")
			mu.Unlock()
		}
	})
	defer stopW()
	stopA := tree.WatchAfter(func(e model.Event) {
		if e.Path != h.Path() || e.Kind != machine.EventPower {
			return
		}
		p := view.Power(tree.Host(e.Path)) // takes the tree's and the host's locks
		mu.Lock()
		order = append(order, "after")
		powers = append(powers, p)
		mu.Unlock()
	})
	if err := run(t, h, "on wait"); err != nil {
		t.Fatal(err)
	}
	// The wait ends when the host is on, which may be before the event
	// saying so is published.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		done := len(powers) > 0 && powers[len(powers)-1] == "on\n"
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after-watcher rendered %q within 5 s, want it to end with on", powers)
		}
	}
	stopA()
	stopA() // stopping twice is harmless
	if err := run(t, h, "off wait"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Each event: the watcher first, then the after-watcher; none after
	// it was stopped (the off command's events reach only the watcher).
	n := len(powers)
	want := []string{}
	for range n {
		want = append(want, "watch", "after")
	}
	if len(order) < 2*n || !slices.Equal(order[:2*n], want) {
		t.Fatalf("calls %v, want watch then after for each of the %d events, then watch only", order, n)
	}
	for _, c := range order[2*n:] {
		if c != "watch" {
			t.Fatalf("after-watcher called after it was stopped: %v", order)
		}
	}
}
