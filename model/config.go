package model

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// ConfigFile is one host's configuration as the user wrote it: "key = value"
// lines, # comments and blank lines. Setting a key rewrites its line in place
// and keeps every comment, so a file edited by hand and through the tree
// stays the user's file.
type ConfigFile struct {
	lines []configLine
}

type configLine struct {
	raw     string // the line as it is written in the file
	key     string // "" for comments and blank lines
	value   string
	comment string // inline comment, with its leading whitespace and '#'
}

// inlineComment is a '#' preceded by whitespace; a '#' inside a value
// (a password, say) without a space before it stays part of the value.
var inlineComment = regexp.MustCompile(`\s+#.*$`)

// ParseConfig parses the text of a config file. Lines that are neither
// comments nor "key = value" are an EINVAL error naming the line.
func ParseConfig(text string) (*ConfigFile, error) {
	cf := &ConfigFile{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		l, err := parseConfigLine(sc.Text())
		if err != nil {
			return nil, machine.Errorf(syscall.EINVAL, "line %d: %v", n, err)
		}
		cf.lines = append(cf.lines, l)
	}
	return cf, sc.Err()
}

func parseConfigLine(raw string) (configLine, error) {
	trimmed := strings.TrimSpace(raw)
	if trimmed == "" || strings.HasPrefix(trimmed, "#") {
		return configLine{raw: raw}, nil
	}
	comment := inlineComment.FindString(raw)
	body := strings.TrimSuffix(raw, comment)
	// Errors never quote the line: it may hold a password.
	key, value, ok := strings.Cut(body, "=")
	if !ok {
		return configLine{}, fmt.Errorf("not \"key = value\"")
	}
	key = strings.TrimSpace(key)
	if !keyRE.MatchString(key) {
		return configLine{}, fmt.Errorf("not a valid key (lower-case letters, digits, '.', '_', '-')")
	}
	return configLine{raw: raw, key: key, value: strings.TrimSpace(value), comment: comment}, nil
}

var keyRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// Get returns the value of key.
func (cf *ConfigFile) Get(key string) (string, bool) {
	for i := len(cf.lines) - 1; i >= 0; i-- {
		if cf.lines[i].key == key {
			return cf.lines[i].value, true
		}
	}
	return "", false
}

// Duration returns key as a duration, or def when unset or malformed (values
// are checked when they are set, so malformed means a hand-edited file).
func (cf *ConfigFile) Duration(key string, def time.Duration) time.Duration {
	v, ok := cf.Get(key)
	if !ok {
		return def
	}
	d, err := parseDuration(v)
	if err != nil {
		return def
	}
	return d
}

// Keys lists the keys set, in file order.
func (cf *ConfigFile) Keys() []string {
	var keys []string
	for _, l := range cf.lines {
		if l.key != "" {
			keys = append(keys, l.key)
		}
	}
	return keys
}

// Set sets key to value, rewriting the key's line in place (keeping its
// inline comment) or appending a new line.
func (cf *ConfigFile) Set(key, value string) { cf.setLine(configLine{key: key, value: value}) }

// setLine applies an edit line: its inline comment, if any, replaces the
// old line's.
func (cf *ConfigFile) setLine(e configLine) {
	for i := range cf.lines {
		l := &cf.lines[i]
		if l.key == e.key {
			if e.comment != "" {
				l.comment = e.comment
			}
			l.value = e.value
			l.raw = e.key + " = " + e.value + l.comment
			return
		}
	}
	cf.lines = append(cf.lines, configLine{raw: e.key + " = " + e.value + e.comment, key: e.key, value: e.value, comment: e.comment})
}

// Delete removes every line that sets key.
func (cf *ConfigFile) Delete(key string) {
	kept := cf.lines[:0]
	for _, l := range cf.lines {
		if l.key != key {
			kept = append(kept, l)
		}
	}
	cf.lines = kept
}

// Clone returns an independent copy.
func (cf *ConfigFile) Clone() *ConfigFile {
	return &ConfigFile{lines: append([]configLine(nil), cf.lines...)}
}

// Render returns the file text. mask, if not nil, says which keys are
// secret: their values are shown as "<set>".
func (cf *ConfigFile) Render(mask func(key string) bool) string {
	var b strings.Builder
	for _, l := range cf.lines {
		if l.key != "" && mask != nil && mask(l.key) {
			b.WriteString(l.key + " = <set>" + l.comment + "\n")
			continue
		}
		b.WriteString(l.raw + "\n")
	}
	return b.String()
}

func parseDuration(v string) (time.Duration, error) {
	if d, err := time.ParseDuration(v); err == nil {
		return d, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 10s, 2m)", v)
	}
	return time.Duration(n) * time.Second, nil
}

// Store keeps one config file per host in a directory: hosts/NAME.conf, and
// for subhosts hosts/NAME/subhosts/SUB.conf, mirroring the tree.
type Store struct {
	Dir string
}

func (s *Store) file(path string) string {
	return filepath.Join(s.Dir, filepath.FromSlash(path)+".conf")
}

// Save writes a host's file atomically: a temporary file in the same
// directory, fsync, rename over the old file, fsync the directory. A crash
// leaves either the old or the new file, never half of one. Files holding
// secrets are readable by their owner only.
func (s *Store) Save(path string, cf *ConfigFile, secret bool) error {
	mode := os.FileMode(0o644)
	if secret {
		mode = 0o600
	}
	return writeAtomic(s.file(path), []byte(cf.Render(nil)), mode)
}

// writeAtomic replaces name with data: a temporary file in the same
// directory, fsync, rename, fsync of the directory.
func writeAtomic(name string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("config: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("config: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("config: fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("config: fsync %s: %w", dir, err)
	}
	return nil
}

// Remove deletes a host's file and the directory of its subhosts, as one
// atomic step: a crash at any point leaves either the whole host (file and
// subhosts) or nothing of it. Deleting file by file could leave a
// subhost's file without its host's, and a new host of the same name would
// take that old subhost back at the next start.
//
// Both move into a trash directory, ".removing-*" next to the host's file;
// renaming the trash to ".removed-*" is the commit. Clean, at start, puts a
// ".removing-*" trash back (the removal never happened) and deletes a
// ".removed-*" one (it did).
func (s *Store) Remove(path string) error {
	conf := s.file(path)
	dir := filepath.Join(s.Dir, filepath.FromSlash(path))
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
	// The host is gone; what is left of the trash is hidden from Load and
	// deleted at the next start.
	if err := os.RemoveAll(done); err != nil {
		slog.Warn("config: deleting a removed host's files; they go at the next start", "path", path, "err", err)
	}
	return nil
}

// Trash directories of Remove: a removal in progress, one committed.
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

// tempRE matches writeAtomic's temporary files (".NAME.conf.tmp123").
var tempRE = regexp.MustCompile(`^\..+\.tmp[0-9]*$`)

// Clean repairs what a crash can leave in the store; Tree.Load calls it at
// start, before anything else reads or writes the store. It deletes
// writeAtomic's temporary files, finishes or undoes Remove's removals
// (see Remove), and deletes a host's subhosts directory that has no host
// file beside it (left by a removal of an older machinefs that crashed):
// no host owns it, and a new host of that name must not inherit it.
// Problems are logged: what is left is hidden from Load either way.
func (s *Store) Clean(log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	var clean func(dir string, hostDir bool)
	clean = func(dir string, hostDir bool) {
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
			case !e.IsDir() && tempRE.MatchString(name):
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
			clean(filepath.Join(full, "subhosts"), true)
		}
	}
	clean(filepath.Join(s.Dir, "hosts"), true)
	clean(filepath.Join(s.Dir, "groups"), false)
}

// StoredHost is one file found by Load.
type StoredHost struct {
	Path   string // tree path, e.g. "hosts/lab01/subhosts/vm1"
	Config *ConfigFile
	Err    error // the file could not be parsed
}

// Load reads every host file, parents before their subhosts.
func (s *Store) Load() ([]StoredHost, error) {
	var out []StoredHost
	var walk func(treeDir string) error
	walk = func(treeDir string) error {
		dir := filepath.Join(s.Dir, filepath.FromSlash(treeDir))
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
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			sh := StoredHost{Path: path}
			if err == nil {
				sh.Config, sh.Err = ParseConfig(string(data))
			} else {
				sh.Err = err
			}
			out = append(out, sh)
			if err := walk(path + "/subhosts"); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk("hosts")
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether name can name a host, subhost, switch or group.
func ValidName(name string) bool {
	return nameRE.MatchString(name) && !strings.HasSuffix(name, ".conf")
}
