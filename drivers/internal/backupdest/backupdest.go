// Package backupdest checks and makes the destination of a console
// backup. The daemon writes a backup as root, and anyone who may write a
// host's console names its DEST, so DEST is held to a directory an admin
// chose in a privileged key (uml.backup-dir, qemu.backup-dir): a guest's
// disk or root tree written to /etc/cron.d would run as root.
//
// Resolve checks DEST with symbolic links resolved (for the refusal's
// words); CreateFile and Mkdir then make it through an os.Root on the
// backup directory, so a symbolic link swapped in after the check still
// cannot lead out of it, and never follow a link in DEST's last
// component.
package backupdest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// Dest is a checked DEST: a new name inside a backup directory.
type Dest struct {
	key string // the config key naming the directory, for messages
	dir string // the backup directory, symbolic links resolved
	rel string // DEST relative to dir, its directory's links resolved
}

// Path is DEST's absolute path, symbolic links in its directory resolved.
func (d Dest) Path() string { return filepath.Join(d.dir, d.rel) }

// Resolve checks DEST against the backup directory dir, named by the
// config key key. A relative DEST is taken in dir. DEST must not exist
// (EEXIST), its directory must (ENOENT), and that directory, symbolic
// links resolved, must be dir or below it (EACCES, naming key).
func Resolve(key, dir, dest string) (Dest, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Dest{}, machine.Errorf(syscall.ENOENT, "backup: %s %s: %v (an admin creates it)", key, dir, err)
	}
	p := dest
	if !filepath.IsAbs(p) {
		p = filepath.Join(root, p)
	}
	p = filepath.Clean(p)
	parent, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return Dest{}, machine.Errorf(syscall.ENOENT, "backup: directory %s: %v", filepath.Dir(p), err)
	}
	rel, err := filepath.Rel(root, filepath.Join(parent, filepath.Base(p)))
	if err == nil && rel == "." {
		return Dest{}, machine.Errorf(syscall.EEXIST, "backup: %s is %s itself; give a new path inside it", dest, key)
	}
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return Dest{}, machine.Errorf(syscall.EACCES, "backup: %s is outside %s %s (the daemon writes backups as root only there)", dest, key, dir)
	}
	d := Dest{key: key, dir: root, rel: rel}
	if _, err := os.Lstat(d.Path()); err == nil {
		return Dest{}, machine.Errorf(syscall.EEXIST, "backup: %s exists; give a new path", d.Path())
	}
	return d, nil
}

// CreateFile makes DEST a new regular file, mode 0600, for writing.
func (d Dest) CreateFile() (*os.File, error) {
	r, err := d.openDir()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	f, err := r.OpenFile(d.rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, d.errorf("creating", err)
	}
	return f, nil
}

// Mkdir makes DEST a new directory, mode 0700 (what is copied inside
// keeps the guest's owners and modes; only root may go in), and returns a
// Root on it: the copy writes through it and stays inside.
func (d Dest) Mkdir() (*os.Root, error) {
	r, err := d.openDir()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := r.Mkdir(d.rel, 0o700); err != nil {
		return nil, d.errorf("creating", err)
	}
	sub, err := r.OpenRoot(d.rel)
	if err != nil {
		r.RemoveAll(d.rel)
		return nil, d.errorf("opening", err)
	}
	return sub, nil
}

// Remove removes DEST and all below it (a failed backup's leftovers),
// only inside the backup directory.
func (d Dest) Remove() error {
	r, err := d.openDir()
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.RemoveAll(d.rel); err != nil {
		return d.errorf("removing", err)
	}
	return nil
}

func (d Dest) openDir() (*os.Root, error) {
	r, err := os.OpenRoot(d.dir)
	if err != nil {
		return nil, machine.Errorf(machine.ErrnoOf(err), "backup: %s %s: %v", d.key, d.dir, err)
	}
	return r, nil
}

// errorf keeps the errno of err. os.Root's refusal of a path that
// escapes the directory (a link swapped in after Resolve, or an absolute
// link) carries none and is EACCES.
func (d Dest) errorf(what string, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		errno = syscall.EIO
		if strings.Contains(err.Error(), "escapes") {
			errno = syscall.EACCES
		}
	}
	return machine.Errorf(errno, "backup: %s %s in %s %s: %v", what, d.rel, d.key, d.dir, err)
}
