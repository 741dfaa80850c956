package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/store/etcdstore"
)

// watching runs s.Watch until cleanup and returns the changes it sees,
// one line each, and the error Watch ended with.
func watching(t *testing.T, s *etcdstore.Store) (<-chan string, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lines, done := make(chan string, 100), make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, func(c store.Change) { lines <- changeLine(c) })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch ended with %v, want context.Canceled", err)
		}
	})
	return lines, done
}

func changeLine(c store.Change) string {
	what := "host " + c.Host
	if c.Group != "" {
		what = "group " + c.Group
	}
	switch {
	case c.Removed:
		return what + " removed"
	case c.Err != nil:
		return what + " error"
	case c.Group != "":
		return fmt.Sprintf("%s %q", what, c.Members)
	default:
		return what + " " + strings.TrimSpace(string(c.Text))
	}
}

// next waits for n changes. The minute is a hang guard, to say what
// came before the change that did not, not a measure.
func next(t *testing.T, lines <-chan string, n int) []string {
	t.Helper()
	var got []string
	for range n {
		select {
		case l := <-lines:
			got = append(got, l)
		case <-time.After(time.Minute):
			t.Fatalf("no change after %q", got)
		}
	}
	return got
}

// Two agents on one cluster: what one saves and removes, the other's
// Watch sees, in order; what the watching agent saves, it sees too. The
// watch starts after the reads: what they returned comes not again, what
// came after them comes even before Watch was called.
func TestWatch(t *testing.T) {
	cliA := startMember(t)
	a := newStore(t, cliA, siteKey(0))
	b := newStore(t, newClient(t, cliA.Endpoints()[0][len("http://"):]), siteKey(0))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.SaveHost("hosts/old", []byte("label = read\n"), false))
	_, err := b.Hosts()
	must(err)
	must(a.SaveHost("hosts/early", []byte("label = between the reads\n"), false))
	must(a.SaveGroup("g0", []string{"hosts/old"})) // in b's Groups read
	_, err = b.Groups()
	must(err)
	must(a.SaveGroup("g1", []string{"hosts/early"})) // after both reads, before Watch
	lines, _ := watching(t, b)
	must(a.SaveHost("hosts/lab1", []byte("drivers = sim\n"), false))
	must(a.SaveHost("hosts/lab1/subhosts/vm", []byte("drivers = ns\n"), false))
	must(a.SaveHost("hosts/lab1/subhosts/vm/subhosts/c", nil, false))
	must(a.SaveHost("hosts/lab10", []byte("drivers = sim\n"), false))
	must(a.SaveHost("hosts/sec", []byte(secretText), true))
	must(b.SaveHost("hosts/own", []byte("label = b's own\n"), false))
	must(a.SaveGroup("rack", []string{"hosts/lab1", "hosts/lab10"}))
	must(a.RemoveHost("hosts/lab1"))
	must(a.RemoveGroup("rack"))
	must(a.RemoveHost("hosts/lab10/subhosts/nosuch"))
	must(a.SaveGroup("empty", nil))
	must(a.SaveGroup("end", nil)) // nothing more came before it
	want := []string{
		"host hosts/early label = between the reads",
		`group g1 ["hosts/early"]`,
		"host hosts/lab1 drivers = sim",
		"host hosts/lab1/subhosts/vm drivers = ns",
		"host hosts/lab1/subhosts/vm/subhosts/c ",
		"host hosts/lab10 drivers = sim",
		"host hosts/sec drivers = ipmi\nipmi.password = se#cret",
		"host hosts/own label = b's own",
		`group rack ["hosts/lab1" "hosts/lab10"]`,
		// One removal for the host and its subhosts, which go with it.
		"host hosts/lab1 removed",
		"group rack removed",
		"group empty []",
		"group end []",
	}
	if got := next(t, lines, len(want)); !slices.Equal(got, want) {
		t.Fatalf("b saw\n%q\nwant\n%q", got, want)
	}
	// A subhost removed alone is a change of its own, and an agent with
	// another site's key sees a secret as an error.
	c := newStore(t, cliA, siteKey(1))
	_, err = c.Hosts()
	must(err)
	cLines, _ := watching(t, c)
	must(a.SaveHost("hosts/lab10/subhosts/vm", nil, false))
	must(a.RemoveHost("hosts/lab10/subhosts/vm"))
	must(a.SaveHost("hosts/sec", []byte(secretText), true))
	must(a.SaveGroup("end", nil))
	want = []string{"host hosts/lab10/subhosts/vm ", "host hosts/lab10/subhosts/vm removed", "host hosts/sec error", "group end []"}
	if got := next(t, cLines, len(want)); !slices.Equal(got, want) {
		t.Fatalf("c saw %q, want %q", got, want)
	}
}

// A watch whose start etcd compacted away ends with an error, so the
// caller reloads.
func TestWatchCompacted(t *testing.T) {
	cli := startMember(t)
	s := newStore(t, cli, nil)
	if _, err := s.Hosts(); err != nil {
		t.Fatal(err)
	}
	var rev int64
	for i := range 3 {
		resp, err := cli.Put(context.Background(), "/machinefs/config/hosts/x/", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := cli.Compact(context.Background(), rev); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
	defer cancel()
	err := s.Watch(ctx, func(c store.Change) { t.Errorf("a change from a compacted watch: %+v", c) })
	if !errors.Is(err, rpctypes.ErrCompacted) || !strings.HasPrefix(err.Error(), "etcd store: watch: ") {
		t.Fatalf("Watch = %v, want ErrCompacted", err)
	}
}
