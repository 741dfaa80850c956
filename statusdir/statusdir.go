// Package statusdir keeps a copy of the tree's status files in a directory
// of an ordinary filesystem (the daemon mounts a tmpfs there: -o
// status-dir=DIR), so that monitoring reads them at tmpfs speed and
// watchers get the kernel's own inotify events, with no FUSE request and
// no poker on the way.
//
// It mirrors, at the tree's paths, every host's and subhost's power and
// state (hosts/NAME/power, hosts/NAME/subhosts/SUB/state) and every
// group's power (groups/NAME/power), rendered by the same view functions
// the mount's files use, so the bytes are the mount's. Each file is
// replaced by a rename: a reader sees the old
// content or the new, never a torn or empty file, and a watcher of the
// directory gets IN_MOVED_TO for every change. Only files whose content
// changed are written again.
//
// It is driven by the tree's events: the watcher (Tree.Watch) only marks
// paths dirty; the goroutine that made the change then writes its host's
// power (Tree.WatchAfter), and a worker writes the rest. Sync lets the
// filesystem's write path wait until a write's outcome is in the copy, so
// a shell that writes a command through the mount and then reads the copy
// reads what the mount shows.
package statusdir

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/view"
)

// fileMode is the mode of every mirrored file: the copy is for reading;
// commands go through the mount.
const fileMode = 0o444

// Dir keeps the copy in one directory up to date.
type Dir struct {
	tree *model.Tree
	root string
	log  *slog.Logger

	// mu guards what is still to be written; the event callback takes
	// only mu, never wmu, so it never waits for a write.
	mu     sync.Mutex
	dirty  map[string]bool // host and group paths to render again
	groups bool            // every group's power (a host's power changed)
	full   bool            // everything: the first pass, a reload

	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
	unwatch func()
	once    sync.Once

	// wmu lets one writer at a time (the worker or a Sync) take the dirty
	// paths, render them and write them. Each renders after it took wmu,
	// so the last to write rendered last: a file never goes back to
	// older content.
	wmu sync.Mutex
	// written is what each directory's files hold, by host or group
	// path and file name; a path is here once its directory was made.
	written map[string]map[string]string
	writes  int  // files written, for report
	closed  bool // no write after Close: DIR may be unmounted
	failing bool // a write failed and was logged; reset by one that works
}

// Start watches tree and writes the whole copy under root (an empty
// directory, the daemon's tmpfs) before it returns, so the copy is
// complete when the mount appears. Close stops it.
func Start(tree *model.Tree, root string, log *slog.Logger) (*Dir, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dir{
		tree: tree, root: root, log: log,
		dirty:   map[string]bool{},
		full:    true,
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		written: map[string]map[string]string{},
	}
	for _, top := range []string{"hosts", "groups"} {
		if err := os.MkdirAll(filepath.Join(root, top), 0o755); err != nil {
			return nil, fmt.Errorf("status-dir: %w", err)
		}
	}
	// Watch first, then the full pass: an event that comes during the
	// pass is written again after it, unchanged content skipped.
	unwatch, unsettle := tree.Watch(d.onEvent), tree.WatchAfter(d.settle)
	d.unwatch = func() { unsettle(); unwatch() }
	if err := d.flush(); err != nil {
		d.unwatch()
		return nil, fmt.Errorf("status-dir %s: %w", root, err)
	}
	go d.run()
	return d, nil
}

// Close stops the worker; nothing is written afterwards.
func (d *Dir) Close() {
	d.once.Do(func() {
		d.unwatch()
		close(d.quit)
		<-d.done
		d.wmu.Lock()
		d.closed = true
		d.wmu.Unlock()
	})
}

// quiet are the kinds of host events that change neither power nor state
// (see fs/changes.go): console and serial sessions, serial.log, switches.
var quiet = map[machine.EventKind]bool{
	machine.EventConsole: true, machine.EventSerial: true,
	machine.EventSerialLog: true, machine.EventVSwitch: true,
}

// powerKinds are the host events that may change its power, and so the
// power of the groups that hold it.
var powerKinds = map[machine.EventKind]bool{
	machine.EventPower: true, machine.EventOwner: true, machine.EventConfig: true,
	machine.EventDrivers: true, machine.EventAdded: true, machine.EventRemoved: true,
}

// onEvent marks what e changes. The tree calls it synchronously, in its
// event bus, where it must not block or call back into the tree: it only
// records, and the worker renders.
func (d *Dir) onEvent(e model.Event) {
	d.mu.Lock()
	switch {
	case e.Path == "":
		// The tree's own events; a reload may have added, changed and
		// removed any host.
		if e.Kind == machine.EventReload {
			d.full = true
		}
	case strings.HasPrefix(e.Path, "groups/"):
		d.dirty[e.Path] = true
	case quiet[e.Kind]:
	default:
		d.dirty[e.Path] = true
		if e.Kind == machine.EventAdded || e.Kind == machine.EventRemoved {
			// The parents' state lists their subhosts.
			for p := parentPath(e.Path); p != ""; p = parentPath(p) {
				d.dirty[p] = true
			}
		}
		d.groups = d.groups || powerKinds[e.Kind]
	}
	d.mu.Unlock()
}

// settle writes the power of the hosts the event just published made
// dirty, in the goroutine that made the change, so the copy's power
// changes before it goes on and no other goroutine has to be woken: waking
// the worker took 70-140 us of the 500 us from a change until a watcher of
// the copy woke (BenchmarkStatusDirInotifyWake).
//
// Power only: rendering state asks the host's drivers for their lines
// (Describe), and a driver may report from inside the lock those take (an
// ns subhost whose init ended does): state rendered here deadlocked. Power
// needs the host's own lock alone, which no reporter holds. The worker
// writes the rest (state, groups' power, full passes), and everything while
// another write holds wmu (it may have taken the paths before this event
// marked them).
func (d *Dir) settle(model.Event) {
	if d.wmu.TryLock() {
		d.mu.Lock()
		var hosts []string
		if !d.full {
			for p := range d.dirty {
				if !strings.HasPrefix(p, "groups/") {
					hosts = append(hosts, p)
				}
			}
		}
		d.mu.Unlock()
		if len(hosts) > 0 && !d.closed {
			before := d.writes
			var errs []error
			for _, p := range hosts {
				if h := d.tree.Host(p); h != nil {
					errs = append(errs, d.write(p, "power", view.Power(h)))
				}
			}
			d.report(errors.Join(errs...), d.writes != before)
		}
		d.wmu.Unlock()
	}
	d.mu.Lock()
	more := d.full || d.groups || len(d.dirty) > 0
	d.mu.Unlock()
	if more {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

func (d *Dir) run() {
	defer close(d.done)
	for {
		select {
		case <-d.quit:
			return
		case <-d.wake:
		}
		d.flush()
	}
}

// Sync writes the copy of what a write to the tree file at path (relative
// to the mount: "hosts/lab01/power") changed, and everything queued
// before, and returns once it is written. The filesystem calls it before
// it answers a command write, so the writer reads its outcome in the copy
// at once. The file's host (or group) is rendered whether or not its
// events came yet: the model may wake a waiting writer before it publishes
// the event of the state that ended the wait.
func (d *Dir) Sync(path string) {
	if p := ownerPath(path); p != "" {
		more := d.related(p)
		d.mu.Lock()
		d.dirty[p] = true
		for _, m := range more {
			d.dirty[m] = true
		}
		d.mu.Unlock()
	}
	d.flush()
}

// related are the paths whose files a command on p may change besides
// p's own: a group's members, a host's groups.
func (d *Dir) related(p string) []string {
	if name, ok := strings.CutPrefix(p, "groups/"); ok {
		if g := d.tree.Group(name); g != nil {
			return g.Hosts()
		}
		return nil
	}
	var out []string
	for _, g := range d.tree.Groups() {
		if slices.Contains(g.Hosts(), p) {
			out = append(out, g.Path())
		}
	}
	return out
}

// flush takes what is dirty and writes it. It returns the first error; a
// path that failed is written again at its next change.
func (d *Dir) flush() error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	d.mu.Lock()
	dirty, groups, full := d.dirty, d.groups, d.full
	d.dirty, d.groups, d.full = map[string]bool{}, false, false
	d.mu.Unlock()
	return d.writeLocked(dirty, groups, full)
}

// writeLocked writes what flush took; d.wmu is held.
func (d *Dir) writeLocked(dirty map[string]bool, groups, full bool) error {
	if d.closed {
		return nil
	}
	before := d.writes
	var errs []error
	if full {
		errs = d.writeAll()
	} else {
		for p := range dirty {
			errs = append(errs, d.update(p))
		}
		if groups {
			for _, g := range d.tree.Groups() {
				errs = append(errs, d.update(g.Path()))
			}
		}
	}
	err := errors.Join(errs...)
	d.report(err, d.writes != before)
	return err
}

// report logs the first failed write (ENOSPC: the tmpfs is full), not
// every one, and the first write that works after it.
func (d *Dir) report(err error, wrote bool) {
	switch {
	case err != nil && !d.failing:
		d.failing = true
		d.log.Error("status-dir: a status file could not be written; it keeps its last content until its next change", "dir", d.root, "err", err)
	case err == nil && d.failing && wrote:
		d.failing = false
		d.log.Info("status-dir: status files are written again", "dir", d.root)
	}
}

// writeAll writes every host and group and removes what the tree no
// longer has.
func (d *Dir) writeAll() []error {
	var errs []error
	live := map[string]bool{}
	for _, h := range d.tree.AllHosts() {
		live[h.Path()] = true
		errs = append(errs, d.writeHost(h))
	}
	for _, g := range d.tree.Groups() {
		live[g.Path()] = true
		errs = append(errs, d.writeGroup(g))
	}
	for p := range d.written {
		if !live[p] {
			errs = append(errs, d.remove(p))
		}
	}
	return errs
}

// update renders the host or group at path again, or removes its
// directory when it is gone.
func (d *Dir) update(path string) error {
	if name, ok := strings.CutPrefix(path, "groups/"); ok {
		if g := d.tree.Group(name); g != nil {
			return d.writeGroup(g)
		}
		return d.remove(path)
	}
	if h := d.tree.Host(path); h != nil {
		return d.writeHost(h)
	}
	return d.remove(path)
}

func (d *Dir) writeHost(h *model.Host) error {
	return errors.Join(
		d.write(h.Path(), "power", view.Power(h)),
		d.write(h.Path(), "state", view.State(h)))
}

func (d *Dir) writeGroup(g *model.Group) error {
	return d.write(g.Path(), "power", view.GroupPower(g))
}

// write replaces dir/name with content unless it holds that already.
func (d *Dir) write(dir, name, content string) error {
	files, made := d.written[dir]
	if old, ok := files[name]; ok && old == content {
		return nil
	}
	full := filepath.Join(d.root, dir)
	if !made {
		if err := os.MkdirAll(full, 0o755); err != nil {
			return err
		}
		files = map[string]string{}
		d.written[dir] = files
	}
	if err := replace(full, name, content); err != nil {
		delete(files, name)
		return fmt.Errorf("%s/%s: %w", dir, name, err)
	}
	files[name] = content
	d.writes++
	return nil
}

// replace writes content to dir/.NAME.tmp and renames it over dir/name,
// so a reader sees the old content or the new, never a part, and a
// watcher of dir gets IN_MOVED_TO. It is not internal/atomicfile: the copy
// needs no fsync and no unique temporary name (one writer at a time, wmu;
// the tmpfs is new at every start), and four system calls instead of
// atomicfile's eight cost a third as much (16 us against 40-60 us a file
// on this 2-vCPU machine), on the path of every command write (Sync).
func replace(dir, name, content string) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return err
	}
	n, err := unix.Write(fd, []byte(content))
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil && n != len(content) {
		err = io.ErrShortWrite
	}
	if err == nil {
		err = unix.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		unix.Unlink(tmp)
	}
	return err
}

// remove removes the directory of a host or group that went, with its
// subhosts, and a subhosts directory it leaves empty.
func (d *Dir) remove(path string) error {
	full := filepath.Join(d.root, path)
	if err := os.RemoveAll(full); err != nil {
		return err
	}
	for p := range d.written {
		if p == path || strings.HasPrefix(p, path+"/") {
			delete(d.written, p)
		}
	}
	if parentPath(path) != "" {
		// Fails, as meant, while other subhosts are left.
		os.Remove(filepath.Dir(full))
	}
	return nil
}

// parentPath is the host a subhost runs on ("" for a top-level host).
func parentPath(path string) string {
	i := strings.LastIndex(path, "/subhosts/")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// ownerPath is the host or group whose directory holds the tree file at
// path: "hosts/a/subhosts/b" for "hosts/a/subhosts/b/power", "groups/g"
// for "groups/g/power", "" for a file of the tree's root (ctl).
func ownerPath(path string) string {
	parts := strings.Split(path, "/")
	if len(parts) < 2 {
		return ""
	}
	switch parts[0] {
	case "groups":
		return "groups/" + parts[1]
	case "hosts":
		p := "hosts/" + parts[1]
		for i := 2; i+1 < len(parts) && parts[i] == "subhosts"; i += 2 {
			p += "/subhosts/" + parts[i+1]
		}
		return p
	}
	return ""
}
