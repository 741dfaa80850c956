package atomicfile

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestWrite(t *testing.T) {
	for _, d := range []Durability{Durable, ProcessCrash} {
		dir := t.TempDir()
		name := filepath.Join(dir, "a.conf")
		if err := Write(name, []byte("one\n"), 0o600, d); err != nil {
			t.Fatal(err)
		}
		if err := Write(name, []byte("two\n"), 0o644, d); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(name)
		fi, _ := os.Stat(name)
		if err != nil || string(b) != "two\n" || fi.Mode().Perm() != 0o644 {
			t.Fatalf("durability %d: %q %v, mode %v", d, b, err, fi.Mode())
		}
		// Only the file: no temporary file is left.
		if got := names(t, dir); !slices.Equal(got, []string{"a.conf"}) {
			t.Fatalf("durability %d: directory holds %q", d, got)
		}
	}
}

// A write that cannot be renamed into place (a directory is in the way)
// fails, and leaves neither a temporary file nor a changed target.
func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "x")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(target, []byte("data"), 0o644, Durable); err == nil {
		t.Fatal("replacing a directory: no error")
	}
	if got := names(t, dir); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("directory holds %q", got)
	}
	if err := Write(filepath.Join(dir, "nosuch", "f"), nil, 0o644, Durable); !os.IsNotExist(err) {
		t.Fatalf("a missing directory: %v", err)
	}
}

func TestIsTemp(t *testing.T) {
	dir := t.TempDir()
	tmp, err := os.CreateTemp(dir, tempPattern("a.conf"))
	if err != nil {
		t.Fatal(err)
	}
	tmp.Close()
	for name, want := range map[string]bool{
		filepath.Base(tmp.Name()): true,
		".a.conf.tmp":             true,
		".rack.members.tmp4242":   true,
		"a.conf":                  false,
		".a.conf":                 false,
		"a.conf.tmp1":             false,
		".tmp":                    false,
	} {
		if IsTemp(name) != want {
			t.Errorf("IsTemp(%q) = %v, want %v", name, !want, want)
		}
	}
}
