package backupdest_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/backupdest"
	"github.com/machinefs/machinefs/machine"
)

// A backup directory reached through a link (an admin's choice) is
// resolved once; DEST may name it either way, or relative to it.
func TestResolveThroughLinkedDir(t *testing.T) {
	real, outside := t.TempDir(), t.TempDir()
	link := filepath.Join(outside, "backups")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"a", filepath.Join(link, "a"), filepath.Join(real, "a")} {
		d, err := backupdest.Resolve("x.backup-dir", link, dest)
		if err != nil || d.Path() != filepath.Join(real, "a") {
			t.Errorf("Resolve(%s): %q %v, want %s", dest, d.Path(), err, filepath.Join(real, "a"))
		}
	}
	if _, err := backupdest.Resolve("x.backup-dir", filepath.Join(outside, "none"), "a"); machine.ErrnoOf(err) != syscall.ENOENT || !strings.Contains(err.Error(), "x.backup-dir") {
		t.Errorf("a backup dir that does not exist: %v, want ENOENT naming the key", err)
	}
}

// The daemon makes DEST itself: a file of mode 0600 or a directory of
// mode 0700, never over anything that exists.
func TestCreate(t *testing.T) {
	dir := t.TempDir()
	d, err := backupdest.Resolve("x.backup-dir", dir, "img")
	if err != nil {
		t.Fatal(err)
	}
	f, err := d.CreateFile()
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Lstat(d.Path()); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("file: %v %v, want mode 0600", fi, err)
	}
	if _, err := d.CreateFile(); machine.ErrnoOf(err) != syscall.EEXIST {
		t.Fatalf("second CreateFile: %v, want EEXIST", err)
	}
	t2, err := backupdest.Resolve("x.backup-dir", dir, "tree")
	if err != nil {
		t.Fatal(err)
	}
	r, err := t2.Mkdir()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Mkdir("sub", 0o755); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if fi, err := os.Lstat(t2.Path()); err != nil || fi.Mode() != fs.ModeDir|0o700 {
		t.Fatalf("directory: %v %v, want mode 0700", fi, err)
	}
	if err := t2.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(t2.Path()); !os.IsNotExist(err) {
		t.Fatalf("after Remove: %v", err)
	}
}

// A directory swapped for a link to the outside (absolute or relative)
// between the check and the creation (the backup copies guest-made links
// into the same directory) still leads nowhere outside: EACCES, nothing
// written there.
func TestSwapAfterResolve(t *testing.T) {
	for _, relative := range []bool{false, true} {
		dir, outside := t.TempDir(), t.TempDir()
		sub := filepath.Join(dir, "sub")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		d, err := backupdest.Resolve("x.backup-dir", dir, "sub/x")
		if err != nil {
			t.Fatal(err)
		}
		target := outside
		if relative {
			target, _ = filepath.Rel(dir, outside)
		}
		if err := os.Remove(sub); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, sub); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateFile(); machine.ErrnoOf(err) != syscall.EACCES {
			t.Errorf("CreateFile through a swapped link to %s: %v, want EACCES", target, err)
		}
		if _, err := d.Mkdir(); machine.ErrnoOf(err) != syscall.EACCES {
			t.Errorf("Mkdir through a swapped link to %s: %v, want EACCES", target, err)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Fatalf("%s holds %d entries, want none", outside, len(ents))
		}
	}
}
