package model

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/store"
)

// The store's own behaviour (layout, crash leftovers) is tested in package
// store; these test what the tree makes of it.

// loadTree loads the store at dir into a new tree, as the daemon does at
// start, and returns the host paths it made.
func loadTree(t *testing.T, dir string) []string {
	t.Helper()
	tree := NewTree(Options{Store: store.NewDir(dir), Log: slog.New(slog.DiscardHandler)})
	t.Cleanup(tree.Close)
	if err := tree.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(parent *Host)
	walk = func(parent *Host) {
		for _, h := range tree.Hosts(parent) {
			out = append(out, h.path)
			walk(h)
		}
	}
	walk(nil)
	return out
}

func writeStoreFile(t *testing.T, dir, name, text string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Load repairs the store before it reads it: a removal a crash cut short
// before its commit is undone, so its host and subhost come back.
func TestLoadCleansTheStore(t *testing.T) {
	dir := t.TempDir()
	writeStoreFile(t, dir, "hosts/.removing-1/a.conf", "drivers = sim\n")
	writeStoreFile(t, dir, "hosts/.removing-1/a/subhosts/vm.conf", "drivers = sim\n")
	writeStoreFile(t, dir, "hosts/.b.conf.tmp1", "drivers = sim\n")
	if got, want := loadTree(t, dir), []string{"hosts/a", "hosts/a/subhosts/vm"}; !slices.Equal(got, want) {
		t.Fatalf("hosts: %q, want %q", got, want)
	}
}

// A tree's changes reach its store: config rendered as the user's file,
// secrets only in a file of mode 0600, a removed host and its subhosts
// gone for the next start, groups with their members.
func TestTreePersists(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	tree := NewTree(Options{Store: store.NewDir(dir), Drivers: []machine.DriverSpec{{
		Name: "x",
		Keys: []machine.KeySpec{{Name: "x.password", Secret: true}},
	}}})
	t.Cleanup(tree.Close)
	cf, err := ParseConfig("# kept\nlabel = rack 3\n")
	if err != nil {
		t.Fatal(err)
	}
	a, err := tree.Add(ctx, nil, "a", cf, Caller{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.Add(ctx, a, "vm", &ConfigFile{}, Caller{}); err != nil {
		t.Fatal(err)
	}
	secret, _ := ParseConfig("x.password = s3cret\n")
	if _, err := tree.Add(ctx, nil, "b", secret, Caller{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hosts/a.conf")); string(b) != "# kept\nlabel = rack 3\n" {
		t.Fatalf("hosts/a.conf: %q", b)
	}
	if fi, err := os.Stat(filepath.Join(dir, "hosts/b.conf")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("a file with a secret: %v %v", fi, err)
	}
	g, err := tree.AddGroup("rack", Caller{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetMembers(ctx, "hosts/a\nhosts/b\n", true, Caller{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "groups/rack.members")); string(b) != "hosts/a\nhosts/b\n" {
		t.Fatalf("groups/rack.members: %q", b)
	}
	if err := tree.Remove(ctx, a, Caller{}); err != nil {
		t.Fatal(err)
	}
	if got := loadTree(t, dir); !slices.Equal(got, []string{"hosts/b"}) {
		t.Fatalf("after removing a: %q", got)
	}
	if err := tree.RemoveGroup(g, Caller{}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "groups"))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".members") {
			t.Fatalf("removed group left %s", e.Name())
		}
	}
}
