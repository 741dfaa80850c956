// Package storetest is the behaviour every store.Store must have, as one
// test suite: the directory store runs it, and so must any other store
// (etcd) before the model may use it.
package storetest

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/machinefs/machinefs/store"
)

// Run runs the suite. open returns an empty store; reopen, if not nil,
// returns a second store over the same data as the last one open made, as
// the next start of the daemon would (a store that keeps nothing across
// restarts is not one).
func Run(t *testing.T, open func(t *testing.T) store.Store, reopen func(t *testing.T) store.Store) {
	t.Run("HostsRoundTrip", func(t *testing.T) { testHostsRoundTrip(t, open, reopen) })
	t.Run("RemoveHostTakesSubhosts", func(t *testing.T) { testRemoveHost(t, open) })
	t.Run("GroupsRoundTrip", func(t *testing.T) { testGroups(t, open, reopen) })
	t.Run("ConcurrentSaves", func(t *testing.T) { testConcurrent(t, open) })
}

func save(t *testing.T, s store.Store, path, text string) {
	t.Helper()
	if err := s.SaveHost(path, []byte(text), false); err != nil {
		t.Fatalf("SaveHost %s: %v", path, err)
	}
}

// hosts returns the stored hosts as "path: text".
func hosts(t *testing.T, s store.Store) []string {
	t.Helper()
	hs, err := s.Hosts()
	if err != nil {
		t.Fatalf("Hosts: %v", err)
	}
	var out []string
	for _, h := range hs {
		if h.Err != nil {
			t.Fatalf("Hosts: %s: %v", h.Path, h.Err)
		}
		out = append(out, h.Path+": "+string(h.Text))
	}
	return out
}

func testHostsRoundTrip(t *testing.T, open, reopen func(t *testing.T) store.Store) {
	s := open(t)
	s.Clean(nil)
	if got := hosts(t, s); len(got) != 0 {
		t.Fatalf("a new store has hosts: %q", got)
	}
	// Saved subhost first: Hosts still lists every host before its
	// subhosts, since the model makes a host's parent first.
	save(t, s, "hosts/b", "drivers = sim\n")
	save(t, s, "hosts/a", "# lab\ndrivers = sim\n")
	save(t, s, "hosts/a/subhosts/vm", "drivers = ns\n")
	save(t, s, "hosts/a/subhosts/vm/subhosts/c", "")
	if err := s.SaveHost("hosts/b", []byte("drivers = ipmi\nipmi.password = x\n"), true); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"hosts/a: # lab\ndrivers = sim\n",
		"hosts/a/subhosts/vm: drivers = ns\n",
		"hosts/a/subhosts/vm/subhosts/c: ",
		"hosts/b: drivers = ipmi\nipmi.password = x\n",
	}
	if got := hosts(t, s); !slices.Equal(got, want) {
		t.Fatalf("Hosts = %q, want %q", got, want)
	}
	if reopen == nil {
		return
	}
	s2 := reopen(t)
	s2.Clean(nil)
	if got := hosts(t, s2); !slices.Equal(got, want) {
		t.Fatalf("Hosts after a restart = %q, want %q", got, want)
	}
}

func testRemoveHost(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	for _, p := range []string{"hosts/a", "hosts/a/subhosts/vm", "hosts/a/subhosts/vm/subhosts/c", "hosts/ab", "hosts/b"} {
		save(t, s, p, "drivers = sim\n")
	}
	if err := s.RemoveHost("hosts/a/subhosts/vm"); err != nil {
		t.Fatal(err)
	}
	want := []string{"hosts/a: drivers = sim\n", "hosts/ab: drivers = sim\n", "hosts/b: drivers = sim\n"}
	if got := hosts(t, s); !slices.Equal(got, want) {
		t.Fatalf("after removing a subhost: %q, want %q", got, want)
	}
	if err := s.RemoveHost("hosts/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveHost("hosts/nosuch"); err != nil {
		t.Fatalf("removing a host that is not stored: %v", err)
	}
	// A new host of a removed host's name starts without its subhosts.
	save(t, s, "hosts/a", "")
	want = []string{"hosts/a: ", "hosts/ab: drivers = sim\n", "hosts/b: drivers = sim\n"}
	if got := hosts(t, s); !slices.Equal(got, want) {
		t.Fatalf("after removing a and making it again: %q, want %q", got, want)
	}
}

func groups(t *testing.T, s store.Store) []string {
	t.Helper()
	gs, err := s.Groups()
	if err != nil {
		t.Fatalf("Groups: %v", err)
	}
	var out []string
	for _, g := range gs {
		out = append(out, fmt.Sprintf("%s: %q", g.Name, g.Members))
	}
	return out
}

func testGroups(t *testing.T, open, reopen func(t *testing.T) store.Store) {
	s := open(t)
	if got := groups(t, s); len(got) != 0 {
		t.Fatalf("a new store has groups: %q", got)
	}
	for name, m := range map[string][]string{
		"rack":  {"hosts/lab[01-04]", "hosts/x/subhosts/vm"},
		"empty": nil,
		"gone":  {"hosts/a"},
	} {
		if err := s.SaveGroup(name, m); err != nil {
			t.Fatalf("SaveGroup %s: %v", name, err)
		}
	}
	if err := s.SaveGroup("rack", []string{"hosts/lab[01-08]"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveGroup("gone"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveGroup("nosuch"); err != nil {
		t.Fatalf("removing a group that is not stored: %v", err)
	}
	want := []string{`empty: []`, `rack: ["hosts/lab[01-08]"]`}
	got := groups(t, s)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("Groups = %q, want %q", got, want)
	}
	if reopen == nil {
		return
	}
	got = groups(t, reopen(t))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("Groups after a restart = %q, want %q", got, want)
	}
}

// Hosts and groups are saved from many goroutines at once (a config write
// per host, a group fan-out); each save is whole.
func testConcurrent(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 10 {
				path := fmt.Sprintf("hosts/h%d", i)
				if err := s.SaveHost(path, fmt.Appendf(nil, "label = %d\n", j), false); err != nil {
					t.Errorf("SaveHost %s: %v", path, err)
				}
				if err := s.SaveGroup(fmt.Sprintf("g%d", i), []string{path}); err != nil {
					t.Errorf("SaveGroup: %v", err)
				}
			}
		})
	}
	wg.Wait()
	got := hosts(t, s)
	if len(got) != 8 {
		t.Fatalf("Hosts = %q, want 8", got)
	}
	for i, h := range got {
		if want := fmt.Sprintf("hosts/h%d: label = 9\n", i); h != want {
			t.Fatalf("host %d = %q, want %q", i, h, want)
		}
	}
	if g := groups(t, s); len(g) != 8 {
		t.Fatalf("Groups = %q, want 8", g)
	}
}
