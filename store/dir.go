package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/machinefs/machinefs/internal/atomicfile"
)

// Dir keeps the store in a directory (the config directory, -o config=),
// mirroring the tree: hosts/NAME.conf, hosts/NAME/subhosts/SUB.conf, and
// groups/NAME.members with one member line per line. Files are written
// atomically (internal/atomicfile); host files holding secrets are mode
// 0600, the others 0644. The layout is the one machinefs has always
// used, so existing config directories keep working.
type Dir struct {
	root string
}

// NewDir returns the store kept in directory root.
func NewDir(root string) *Dir { return &Dir{root: root} }

var _ Store = (*Dir)(nil)

func (s *Dir) hostFile(path string) string {
	return filepath.Join(s.root, filepath.FromSlash(path)+".conf")
}

func (s *Dir) groupFile(name string) string {
	return filepath.Join(s.root, "groups", name+".members")
}

// SaveHost writes a host's file atomically: a temporary file in the same
// directory, fsync, rename over the old file, fsync the directory. A crash
// leaves either the old or the new file, never half of one. Files holding
// secrets are readable by their owner only.
func (s *Dir) SaveHost(path string, text []byte, secret bool) error {
	mode := os.FileMode(0o644)
	if secret {
		mode = 0o600
	}
	return writeFile(s.hostFile(path), text, mode)
}

// writeFile writes a file of the store, making its directory first (a
// new host's subhosts/, groups/).
func writeFile(name string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := atomicfile.Write(name, data, mode, atomicfile.Durable); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// RemoveHost deletes a host's file and the directory of its subhosts, as
// one atomic step: a crash at any point leaves either the whole host (file
// and subhosts) or nothing of it. Deleting file by file could leave a
// subhost's file without its host's, and a new host of the same name would
// take that old subhost back at the next start.
//
// Both move into a trash directory, ".removing-*" next to the host's file;
// renaming the trash to ".removed-*" is the commit. Clean, at start, puts a
// ".removing-*" trash back (the removal never happened) and deletes a
// ".removed-*" one (it did).
func (s *Dir) RemoveHost(path string) error {
	conf := s.hostFile(path)
	dir := filepath.Join(s.root, filepath.FromSlash(path))
	parent, name := filepath.Dir(conf), filepath.Base(dir)
	if !exists(conf) && !exists(dir) {
		return nil
	}
	trash, err := os.MkdirTemp(parent, removingPrefix+"*")
	if err != nil {
		return fmt.Errorf("config: remove %s: %w", path, err)
	}
	moved := func() error {
		if err := renameIfExists(dir, filepath.Join(trash, name)); err != nil {
			return err
		}
		if err := renameIfExists(conf, filepath.Join(trash, name+".conf")); err != nil {
			return err
		}
		// The moves are on disk before the commit is.
		if err := syncDir(trash); err != nil {
			return err
		}
		return syncDir(parent)
	}
	if err := moved(); err != nil {
		if rerr := restoreTrash(parent, trash); rerr != nil {
			return fmt.Errorf("config: remove %s: %w (and putting it back: %v)", path, err, rerr)
		}
		return fmt.Errorf("config: remove %s: %w", path, err)
	}
	done := filepath.Join(parent, removedPrefix+strings.TrimPrefix(filepath.Base(trash), removingPrefix))
	if err := os.Rename(trash, done); err != nil {
		if rerr := restoreTrash(parent, trash); rerr != nil {
			return fmt.Errorf("config: remove %s: %w (and putting it back: %v)", path, err, rerr)
		}
		return fmt.Errorf("config: remove %s: %w", path, err)
	}
	if err := syncDir(parent); err != nil {
		return err
	}
	// The host is gone; what is left of the trash is hidden from Hosts
	// and deleted at the next start.
	if err := os.RemoveAll(done); err != nil {
		slog.Warn("config: deleting a removed host's files; they go at the next start", "path", path, "err", err)
	}
	return nil
}

// Trash directories of RemoveHost: a removal in progress, one committed.
const (
	removingPrefix = ".removing-"
	removedPrefix  = ".removed-"
)

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}

func renameIfExists(from, to string) error {
	if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// restoreTrash undoes an uncommitted removal: every entry of trash goes back
// to parent, unless parent has one of that name already (then the trash's
// copy is stale), and the trash goes.
func restoreTrash(parent, trash string) error {
	ents, err := os.ReadDir(trash)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for _, e := range ents {
		from, to := filepath.Join(trash, e.Name()), filepath.Join(parent, e.Name())
		if exists(to) {
			if err := os.RemoveAll(from); err != nil {
				return fmt.Errorf("config: %w", err)
			}
			continue
		}
		if err := os.Rename(from, to); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if err := syncDir(parent); err != nil {
		return err
	}
	if err := os.Remove(trash); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return syncDir(parent)
}

// Clean repairs what a crash can leave in the directory. It deletes the
// atomic writer's temporary files, finishes or undoes RemoveHost's
// removals (see RemoveHost), and deletes a host's subhosts directory that
// has no host file beside it (left by a removal of an older machinefs that
// crashed): no host owns it, and a new host of that name must not inherit
// it.
func (s *Dir) Clean(log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	s.clean(log, filepath.Join(s.root, "hosts"), true)
	s.clean(log, filepath.Join(s.root, "groups"), false)
}

// clean cleans one directory; hostDir: it holds host files, and the
// subhosts of each.
func (s *Dir) clean(log *slog.Logger, dir string, hostDir bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("config: cleaning the store", "dir", dir, "err", err)
		}
		return
	}
	changed := false
	// A deletion is made durable before a new host can be saved
	// beside it (syncDir); what is not is simply redone next start.
	defer func() {
		if changed {
			if err := syncDir(dir); err != nil {
				log.Warn("config: cleaning the store", "err", err)
			}
		}
	}()
	for _, e := range ents {
		name, full := e.Name(), filepath.Join(dir, e.Name())
		var err error
		switch {
		case e.IsDir() && strings.HasPrefix(name, removingPrefix):
			log.Info("config: undoing a removal a crash interrupted", "dir", full)
			err = restoreTrash(dir, full)
		case e.IsDir() && strings.HasPrefix(name, removedPrefix):
			log.Info("config: finishing a removal a crash interrupted", "dir", full)
			err = os.RemoveAll(full)
		case !e.IsDir() && atomicfile.IsTemp(name):
			log.Info("config: deleting a temporary file a crash left", "file", full)
			err = os.Remove(full)
		default:
			continue
		}
		changed = true
		if err != nil {
			log.Warn("config: cleaning the store", "path", full, "err", err)
		}
	}
	if !hostDir {
		return
	}
	// Entries may have come back from a trash: read again.
	ents, _ = os.ReadDir(dir)
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || !ValidName(name) {
			continue
		}
		full := filepath.Join(dir, name)
		if !exists(full + ".conf") {
			log.Warn("config: deleting subhosts whose host has no file", "dir", full)
			changed = true
			if err := os.RemoveAll(full); err != nil {
				log.Warn("config: cleaning the store", "path", full, "err", err)
			}
			continue
		}
		s.clean(log, filepath.Join(full, "subhosts"), true)
	}
}

// Hosts reads every host file, parents before their subhosts.
func (s *Dir) Hosts() ([]Host, error) {
	var out []Host
	var walk func(treeDir string) error
	walk = func(treeDir string) error {
		dir := filepath.Join(s.root, filepath.FromSlash(treeDir))
		ents, err := os.ReadDir(dir)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		for _, e := range ents {
			name, ok := strings.CutSuffix(e.Name(), ".conf")
			if !ok || e.IsDir() || !ValidName(name) {
				continue
			}
			path := treeDir + "/" + name
			text, err := os.ReadFile(filepath.Join(dir, e.Name()))
			out = append(out, Host{Path: path, Text: text, Err: err})
			if err := walk(path + "/subhosts"); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk("hosts")
}

// SaveGroup writes groups/NAME.members, one member line per line.
func (s *Dir) SaveGroup(name string, members []string) error {
	text := ""
	if len(members) > 0 {
		text = strings.Join(members, "\n") + "\n"
	}
	return writeFile(s.groupFile(name), []byte(text), 0o644)
}

// RemoveGroup deletes groups/NAME.members.
func (s *Dir) RemoveGroup(name string) error {
	if err := os.Remove(s.groupFile(name)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// Groups reads groups/NAME.members. Blank lines and # comments of a
// hand-edited file are dropped.
func (s *Dir) Groups() ([]Group, error) {
	dir := filepath.Join(s.root, "groups")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var out []Group
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".members")
		if !ok || !ValidName(name) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		g := Group{Name: name}
		for _, l := range strings.Split(string(data), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				g.Members = append(g.Members, l)
			}
		}
		out = append(out, g)
	}
	return out, nil
}
