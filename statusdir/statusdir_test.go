package statusdir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/view"
)

// The worker must end with Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var who = model.Caller{Uid: 1000, Gid: 100, Pid: 42}

func newTree(t *testing.T) *model.Tree {
	t.Helper()
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: []machine.DriverSpec{sim.Spec}})
	t.Cleanup(tree.Close)
	return tree
}

func add(t *testing.T, tree *model.Tree, parent *model.Host, name string, kv ...string) *model.Host {
	t.Helper()
	cf := &model.ConfigFile{}
	cf.Set("drivers", "sim")
	for i := 0; i+1 < len(kv); i += 2 {
		cf.Set(kv[i], kv[i+1])
	}
	h, err := tree.Add(context.Background(), parent, name, cf, who)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func start(t *testing.T, tree *model.Tree) (*Dir, string) {
	t.Helper()
	root := t.TempDir()
	d, err := Start(tree, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d, root
}

func read(t testing.TB, root, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitFor waits for the copy to reach a state; it asserts nothing about
// how fast.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The first pass writes every host, subhost and group with the view's
// text; later changes follow the events, and Sync writes a host whose
// event may not have come yet.
func TestCopyFollowsTheTree(t *testing.T) {
	tree := newTree(t)
	a := add(t, tree, nil, "a", "sim.initial", "on", "label", "first")
	add(t, tree, a, "vm1")
	g, err := tree.AddGroup("g", who)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetMembers(context.Background(), "hosts/a\n", true, who); err != nil {
		t.Fatal(err)
	}
	d, root := start(t, tree)
	sub := tree.Host("hosts/a/subhosts/vm1")
	for rel, want := range map[string]string{
		"hosts/a/power":              "on\n",
		"hosts/a/state":              view.State(a),
		"hosts/a/subhosts/vm1/power": view.Power(sub),
		"hosts/a/subhosts/vm1/state": view.State(sub),
		"groups/g/power":             view.GroupPower(g),
	} {
		if got := read(t, root, rel); got != want {
			t.Errorf("%s: %q, want %q", rel, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "hosts/a/power")); err != nil || fi.Mode().Perm() != fileMode {
		t.Errorf("hosts/a/power: %v %v, want mode %v", fi.Mode(), err, os.FileMode(fileMode))
	}

	// A command: Sync, as fs calls it before answering the write, leaves
	// the copy showing what the tree shows.
	if err := a.Exec(context.Background(), "off", who); err != nil {
		t.Fatal(err)
	}
	d.Sync("hosts/a/power")
	if got, want := read(t, root, "hosts/a/power"), view.Power(a); got != want {
		t.Errorf("after off and Sync: power %q, tree %q", got, want)
	}
	waitFor(t, "a off in the copy", func() bool { return read(t, root, "hosts/a/power") == "off\n" })
	waitFor(t, "the group's power", func() bool { return read(t, root, "groups/g/power") == "off\n" })

	// No temporary file is left beside the files.
	ents, _ := os.ReadDir(filepath.Join(root, "hosts/a"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "power state subhosts" {
		t.Errorf("hosts/a holds %q", names)
	}

	// A subhost removed: its directory goes, and the parent's state
	// loses it.
	if err := tree.Remove(context.Background(), sub, who); err != nil {
		t.Fatal(err)
	}
	d.Sync("hosts/a/state")
	waitFor(t, "vm1 gone", func() bool {
		_, err := os.Stat(filepath.Join(root, "hosts/a/subhosts"))
		return os.IsNotExist(err)
	})
	if got, want := read(t, root, "hosts/a/state"), view.State(a); got != want {
		t.Errorf("state after the subhost went:\n%s\nwant\n%s", got, want)
	}
	if err := tree.RemoveGroup(g, who); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "group gone", func() bool {
		_, err := os.Stat(filepath.Join(root, "groups/g"))
		return os.IsNotExist(err)
	})
}

// Only changed files are written again: an event that changes nothing a
// file shows leaves its inode alone.
func TestUnchangedNotRewritten(t *testing.T) {
	tree := newTree(t)
	a := add(t, tree, nil, "a", "sim.initial", "on")
	d, root := start(t, tree)
	before, err := os.Stat(filepath.Join(root, "hosts/a/power"))
	if err != nil {
		t.Fatal(err)
	}
	// "on" on a host that is on changes last-command, not power.
	if err := a.Exec(context.Background(), "on", who); err != nil {
		t.Fatal(err)
	}
	d.Sync("hosts/a/power")
	after, err := os.Stat(filepath.Join(root, "hosts/a/power"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("power was rewritten although it did not change")
	}
	if got := read(t, root, "hosts/a/state"); !strings.Contains(got, `last-command: "on"`) {
		t.Errorf("state not rewritten after the command:\n%s", got)
	}
}

func TestOwnerPath(t *testing.T) {
	for in, want := range map[string]string{
		"hosts/a/power":                     "hosts/a",
		"hosts/a/subhosts/b/power":          "hosts/a/subhosts/b",
		"hosts/a/subhosts/b/subhosts/c/ctl": "hosts/a/subhosts/b/subhosts/c",
		"hosts/a/vswitch/br0/ctl":           "hosts/a",
		"groups/g/power":                    "groups/g",
		"ctl":                               "",
		"vswitch/ctl":                       "",
	} {
		if got := ownerPath(in); got != want {
			t.Errorf("ownerPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/tmp/a\040b\134c`); got != `/tmp/a b\c` {
		t.Errorf("unescape: %q", got)
	}
}

// BenchmarkEventToFile is the copy's own share of a daemon-side change,
// without FUSE or the mount's notifier: a simulated host's power event
// until its power file in the copy (on /dev/shm) is renamed into place and
// an inotify watcher of its directory wakes.
func BenchmarkEventToFile(b *testing.B) {
	tree := model.NewTree(model.Options{Store: store.NewDir(b.TempDir()), Drivers: []machine.DriverSpec{sim.Spec}})
	defer tree.Close()
	cf := &model.ConfigFile{}
	cf.Set("drivers", "sim")
	cf.Set("sim.on-delay", "0s")
	cf.Set("sim.off-delay", "0s")
	h, err := tree.Add(context.Background(), nil, "a", cf, who)
	if err != nil {
		b.Fatal(err)
	}
	root, err := os.MkdirTemp("/dev/shm", "statusdir-bench")
	if err != nil {
		b.Skip("no /dev/shm:", err)
	}
	defer os.RemoveAll(root)
	d, err := Start(tree, root, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, filepath.Join(root, "hosts/a"), unix.IN_MOVED_TO); err != nil {
		b.Fatal(err)
	}
	// Events come from the simulator's own goroutine once the command is
	// accepted; the time of the power event is taken from a watch of the
	// tree registered after the copy's.
	var at sync.Map
	stop := tree.Watch(func(e model.Event) {
		if e.Kind == machine.EventPower && e.Path == "hosts/a" {
			at.Store(e.Detail, e.Time)
		}
	})
	defer stop()
	buf := make([]byte, 4096)
	target := "on"
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		if err := h.Exec(context.Background(), target, who); err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := unix.Read(fd, buf); err != nil {
				b.Fatal(err)
			}
			woke := time.Now()
			if read(b, root, "hosts/a/power") == target+"\n" {
				t, _ := at.Load(target)
				total += woke.Sub(t.(time.Time))
				break
			}
		}
		target = map[string]string{"on": "off", "off": "on"}[target]
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "event-to-wake-ns")
}

// The goroutine that changes the tree writes its host's power in the copy
// before it goes on: with the worker stopped, a command's transitional
// state is in the copy when Exec returns, and the driver's later report
// (from the simulator's timer) is written by the timer's goroutine.
func TestChangerWritesTheCopy(t *testing.T) {
	tree := newTree(t)
	h := add(t, tree, nil, "lab01", "sim.on-delay", "1s")
	d, root := start(t, tree)
	close(d.quit) // the worker ends; the watchers stay
	<-d.done
	t.Cleanup(func() { d.once.Do(d.unwatch) }) // before Close, which would close quit again
	if err := h.Exec(context.Background(), "on", who); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, "hosts/lab01/power"); got != "starting\n" {
		t.Fatalf("copy of power when Exec returned: %q, want starting", got)
	}
	waitFor(t, "the simulator's on in the copy", func() bool { return read(t, root, "hosts/lab01/power") == "on\n" })
}
