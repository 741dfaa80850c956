package model

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// These tests build on disk, by hand, what a crash leaves in the store:
// a crash between two system calls of Remove or writeAtomic is a fault no
// real part produces on demand (killing the daemon at the right instant
// is not reproducible), so the leftover files and directories are made
// directly, then the store is loaded as at start.

func writeFiles(t *testing.T, dir string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("drivers = sim\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// storeFiles lists every file and directory under dir.
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if rel, _ := filepath.Rel(dir, p); rel != "." {
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// loadTree loads the store at dir into a new tree, as the daemon does at
// start, and returns the host paths it made.
func loadTree(t *testing.T, dir string) []string {
	t.Helper()
	tree := NewTree(Options{Store: &Store{Dir: dir}})
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

func TestStoreCrashLeftovers(t *testing.T) {
	for _, c := range []struct {
		name  string
		files []string // on disk after the crash
		dirs  []string // empty directories on disk after the crash
		hosts []string // what the next start shows
	}{{
		// An older machinefs deleted a.conf, then crashed before the
		// subhosts: no host owns them, they must not come back when a
		// new host a is made.
		name:  "old remove, host file gone",
		files: []string{"hosts/a/subhosts/old.conf", "hosts/a/subhosts/old/subhosts/deeper.conf", "hosts/z.conf"},
		hosts: []string{"hosts/z"},
	}, {
		// Remove moved the subhosts into its trash, not the host's file
		// yet: the removal never happened.
		name:  "remove before its commit, subhosts moved",
		files: []string{"hosts/a.conf", "hosts/.removing-1234/a/subhosts/vm.conf"},
		hosts: []string{"hosts/a", "hosts/a/subhosts/vm"},
	}, {
		name:  "remove before its commit, both moved",
		files: []string{"hosts/.removing-1234/a.conf", "hosts/.removing-1234/a/subhosts/vm.conf"},
		hosts: []string{"hosts/a", "hosts/a/subhosts/vm"},
	}, {
		name:  "remove of a subhost before its commit",
		files: []string{"hosts/a.conf", "hosts/a/subhosts/.removing-9/vm.conf", "hosts/a/subhosts/.removing-9/vm/subhosts/c.conf"},
		hosts: []string{"hosts/a", "hosts/a/subhosts/vm", "hosts/a/subhosts/vm/subhosts/c"},
	}, {
		name:  "remove before its commit, trash still empty",
		dirs:  []string{"hosts/.removing-77"},
		files: []string{"hosts/a.conf"},
		hosts: []string{"hosts/a"},
	}, {
		// Committed: the host is gone, whatever of the trash is left.
		name:  "remove after its commit",
		files: []string{"hosts/.removed-1234/a/subhosts/vm.conf", "hosts/b.conf", "hosts/b/subhosts/.removed-5/x.conf"},
		hosts: []string{"hosts/b"},
	}, {
		name:  "temporary files of writeAtomic",
		files: []string{"hosts/a.conf", "hosts/.a.conf.tmp123456", "hosts/a/subhosts/.vm.conf.tmp99", "groups/.rack.members.tmp4242", "groups/.x.members.tmp"},
		hosts: []string{"hosts/a"},
	}} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, c.files...)
			for _, d := range c.dirs {
				if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if got := loadTree(t, dir); !slices.Equal(got, c.hosts) {
				t.Fatalf("hosts after the crash: %q, want %q", got, c.hosts)
			}
			for _, f := range storeFiles(t, dir) {
				if base := filepath.Base(f); strings.HasPrefix(base, ".") {
					t.Fatalf("left in the store: %s (all: %q)", f, storeFiles(t, dir))
				}
			}
			// A new host of a removed host's name starts empty, now and
			// at the next start.
			if !slices.Contains(c.hosts, "hosts/a") {
				if err := (&Store{Dir: dir}).Save("hosts/a", &ConfigFile{}, false); err != nil {
					t.Fatal(err)
				}
				want := append([]string{"hosts/a"}, c.hosts...)
				slices.Sort(want)
				if got := loadTree(t, dir); !slices.Equal(got, want) {
					t.Fatalf("a new host a took an old subhost: %q, want %q", got, want)
				}
			}
		})
	}
}

// Remove leaves nothing of the host: no trash, no subhosts for a new host
// of the same name.
func TestStoreRemoveIsAtomic(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: dir}
	for _, p := range []string{"hosts/a", "hosts/a/subhosts/vm", "hosts/a/subhosts/vm/subhosts/c", "hosts/b"} {
		if err := s.Save(p, &ConfigFile{}, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove("hosts/a/subhosts/vm"); err != nil {
		t.Fatal(err)
	}
	if got := loadTree(t, dir); !slices.Equal(got, []string{"hosts/a", "hosts/b"}) {
		t.Fatalf("after removing a subhost: %q", got)
	}
	if err := s.Remove("hosts/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("hosts/nosuch"); err != nil {
		t.Fatalf("removing a host without files: %v", err)
	}
	if got := storeFiles(t, dir); !slices.Equal(got, []string{"hosts", "hosts/b.conf"}) {
		t.Fatalf("store after removing a: %q", got)
	}
	if err := s.Save("hosts/a", &ConfigFile{}, false); err != nil {
		t.Fatal(err)
	}
	if got := loadTree(t, dir); !slices.Equal(got, []string{"hosts/a", "hosts/b"}) {
		t.Fatalf("new host a: %q", got)
	}
}
