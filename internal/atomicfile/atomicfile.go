// Package atomicfile replaces files so that a reader, or the next start
// after a crash, sees either the old content or the new one, never part of
// either. It is the one atomic writer of machinefs: the config store and
// the drivers' state records all write through it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// Durability says what a write must survive once Write returns.
type Durability int

const (
	// Durable survives a power loss: the file is fsynced before the
	// rename and its directory after it. Config is written this way.
	Durable Durability = iota
	// ProcessCrash survives a crash of the daemon but not of the kernel:
	// no fsync. For records of what lives in the running kernel (a
	// switch, a guest's pid), which a reboot ends anyway; it keeps a
	// journal commit out of every mkdir.
	ProcessCrash
)

// Write replaces name with data, with permissions perm: a temporary file
// in the same directory (named as IsTemp recognises, so the directory's
// owner can delete what a crash left), written, fsynced when d is Durable,
// renamed over name, and the directory fsynced when d is Durable. The
// directory must exist. On failure the temporary file is removed and name
// is untouched.
func Write(name string, data []byte, perm os.FileMode, d Durability) error {
	dir := filepath.Dir(name)
	tmp, err := os.CreateTemp(dir, tempPattern(filepath.Base(name)))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	// CreateTemp makes the file 0600; Chmod, unlike the umask, gives
	// exactly perm.
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if d == Durable {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return err
	}
	if d == Durable {
		return SyncDir(dir)
	}
	return nil
}

// SyncDir fsyncs a directory, making the renames and removals in it
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// tempPattern is CreateTemp's pattern for the temporary file of base.
func tempPattern(base string) string { return "." + base + ".tmp*" }

// tempRE matches Write's temporary files (".NAME.tmp123").
var tempRE = regexp.MustCompile(`^\..+\.tmp[0-9]*$`)

// IsTemp reports whether a file's base name is one of Write's temporary
// files. A crash between creating and renaming one leaves it behind.
func IsTemp(base string) bool { return tempRE.MatchString(base) }
