package store_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/store/storetest"
)

func TestDir(t *testing.T) {
	var dir string
	storetest.Run(t,
		func(t *testing.T) store.Store { dir = t.TempDir(); return store.NewDir(dir) },
		func(t *testing.T) store.Store { return store.NewDir(dir) })
}

// storeFiles lists every file and directory under dir.
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(dir, p); rel != "." {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The layout is the one earlier versions wrote and read: an existing
// config directory must keep working, and users edit these files.
func TestDirLayout(t *testing.T) {
	dir := t.TempDir()
	s := store.NewDir(dir)
	secret := "drivers = ipmi\nipmi.password = se#cret\n"
	if err := s.SaveHost("hosts/a", []byte(secret), true); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveHost("hosts/a/subhosts/b", []byte("drivers = ns\n"), false); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveGroup("rack", []string{"hosts/a", "hosts/a/subhosts/b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveGroup("empty", nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name, text string
		mode       os.FileMode
	}{
		{"hosts/a.conf", secret, 0o600},
		{"hosts/a/subhosts/b.conf", "drivers = ns\n", 0o644},
		{"groups/rack.members", "hosts/a\nhosts/a/subhosts/b\n", 0o644},
		{"groups/empty.members", "", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.name, fi.Mode().Perm(), f.mode)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, f.name)); string(b) != f.text {
			t.Errorf("%s: %q, want %q", f.name, b, f.text)
		}
	}
	// A secret removed: the file is readable again.
	if err := s.SaveHost("hosts/a", []byte("drivers = sim\n"), false); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "hosts/a.conf")); fi.Mode().Perm() != 0o644 {
		t.Errorf("hosts/a.conf without a secret: mode %v", fi.Mode().Perm())
	}
	want := []string{"groups", "groups/empty.members", "groups/rack.members", "hosts", "hosts/a", "hosts/a/subhosts", "hosts/a/subhosts/b.conf", "hosts/a.conf"}
	if got := storeFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("files: %q, want %q (no temporary files)", got, want)
	}
}

// A hand-edited store: comments and blank lines in a members file, files
// that name no host or group, an unreadable host file.
func TestDirReadsHandEdits(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, "hosts/README", "hosts/-bad.conf", "hosts/ok.conf", "groups/notes.txt")
	if err := os.WriteFile(filepath.Join(dir, "groups/g.members"), []byte("# rack 3\n\n  hosts/ok  \nhosts/x[1-2]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "hosts/dir.conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := store.NewDir(dir)
	hs, err := s.Hosts()
	if err != nil || len(hs) != 1 || hs[0].Path != "hosts/ok" || hs[0].Err != nil {
		t.Fatalf("Hosts = %+v, %v", hs, err)
	}
	gs, err := s.Groups()
	if err != nil || len(gs) != 1 || gs[0].Name != "g" || !slices.Equal(gs[0].Members, []string{"hosts/ok", "hosts/x[1-2]"}) {
		t.Fatalf("Groups = %+v, %v", gs, err)
	}
	if err := os.Chmod(filepath.Join(dir, "hosts/ok.conf"), 0); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		return // root reads it anyway
	}
	if hs, _ := s.Hosts(); len(hs) != 1 || hs[0].Err == nil {
		t.Fatalf("an unreadable file: %+v", hs)
	}
}

// These build on disk, by hand, what a crash leaves in the store: a crash
// between two system calls of RemoveHost or of the atomic writer is a
// fault no real part produces on demand (killing the daemon at the right
// instant is not reproducible), so the leftover files and directories are
// made directly, then the store is cleaned as at start.

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

// started cleans the store at dir and lists its hosts, as the daemon does
// at start.
func started(t *testing.T, dir string) []string {
	t.Helper()
	s := store.NewDir(dir)
	s.Clean(slog.New(slog.DiscardHandler))
	hs, err := s.Hosts()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range hs {
		out = append(out, h.Path)
	}
	return out
}

func TestDirCrashLeftovers(t *testing.T) {
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
		// RemoveHost moved the subhosts into its trash, not the host's
		// file yet: the removal never happened.
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
		name:  "temporary files of the atomic writer",
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
			if got := started(t, dir); !slices.Equal(got, c.hosts) {
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
				if err := store.NewDir(dir).SaveHost("hosts/a", nil, false); err != nil {
					t.Fatal(err)
				}
				want := append([]string{"hosts/a"}, c.hosts...)
				slices.Sort(want)
				if got := started(t, dir); !slices.Equal(got, want) {
					t.Fatalf("a new host a took an old subhost: %q, want %q", got, want)
				}
			}
		})
	}
}

// RemoveHost leaves nothing of the host on disk: no trash, no subhosts
// directory for a new host of the same name.
func TestDirRemoveLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s := store.NewDir(dir)
	for _, p := range []string{"hosts/a", "hosts/a/subhosts/vm", "hosts/a/subhosts/vm/subhosts/c", "hosts/b"} {
		if err := s.SaveHost(p, nil, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RemoveHost("hosts/a/subhosts/vm"); err != nil {
		t.Fatal(err)
	}
	if got := storeFiles(t, dir); !slices.Equal(got, []string{"hosts", "hosts/a", "hosts/a/subhosts", "hosts/a.conf", "hosts/b.conf"}) {
		t.Fatalf("store after removing a's subhost: %q", got)
	}
	if err := s.RemoveHost("hosts/a"); err != nil {
		t.Fatal(err)
	}
	if got := storeFiles(t, dir); !slices.Equal(got, []string{"hosts", "hosts/b.conf"}) {
		t.Fatalf("store after removing a: %q", got)
	}
}

// A save that fails leaves the old file and no temporary file, and says
// it failed with the store's context.
func TestDirSaveFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	s := store.NewDir(dir)
	if err := s.SaveHost("hosts/a", []byte("label = old\n"), false); err != nil {
		t.Fatal(err)
	}
	// hosts/a/subhosts cannot be made: a file is in the way.
	writeFiles(t, dir, "hosts/a/subhosts")
	err := s.SaveHost("hosts/a/subhosts/vm", []byte("x = y\n"), false)
	if err == nil || !strings.HasPrefix(err.Error(), "config: ") {
		t.Fatalf("save under a file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "hosts/a.conf")); string(b) != "label = old\n" {
		t.Fatalf("old file: %q", b)
	}
}
