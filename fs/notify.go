package fs

import (
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// What changed in a host directory.
const (
	dirtyPower = 1 << iota
	dirtyState
	dirtyConfig
	dirtyLog
	dirtyPowerQuiet // invalidate power's cache without waking watchers
)

// notifier turns model events into fresh reads and inotify events. The
// model calls onEvent synchronously, so it only records what is dirty; a
// single worker goroutine does the kernel calls, never from inside a FUSE
// request (that deadlocks).
type notifier struct {
	fsys    *FS
	treeLog *logFiles

	mu       sync.Mutex
	dirty    map[string]int // host path ("" = tree) -> dirty bits
	entries  map[string]bool
	switches map[string]bool // switch dirs whose ports/info changed
	// groupsDirty: some host's power changed; refresh every group.
	groupsDirty bool
	wake        chan struct{}
	quit        chan struct{}
	done        chan struct{}
	unwatch     func()
	once        sync.Once
	poker       *poker
	// retries are invalidations the kernel refused with ENOENT, to send
	// again (see inval); retryTimer wakes the worker for them.
	retries    []retry
	retryTimer *time.Timer
	// times are the change times of live files by directory path
	// (times.go); powered are hosts whose power changed, for the
	// change times of their groups.
	times   map[string]*stamps
	powered map[string]time.Time
	// Directory entries that appear or go (entries.go): kernelOps are
	// paths a mkdir or rmdir through the mount is changing, entryOps
	// the changes for the poker to raise, creating the names its next
	// LOOKUP must not find; switchLists are local hosts whose switches
	// may have changed, switchNames their switches as last seen.
	kernelOps   map[string]int
	entryOps    []entryOp
	creating    map[string]time.Time
	switchLists map[string]bool
	switchNames map[string][]string
	kernelDone  map[string]bool // switches whose mkdir or rmdir came through the mount
}

// retry is an invalidation to send again.
type retry struct {
	ino     *gofs.Inode
	attempt int
	due     time.Time
}

// retryDelays are the waits before the invalidations an ENOENT refused
// are sent again.
var retryDelays = []time.Duration{20 * time.Millisecond, 500 * time.Millisecond}

func newNotifier(f *FS) *notifier {
	return &notifier{
		fsys:     f,
		dirty:    map[string]int{},
		entries:  map[string]bool{},
		switches: map[string]bool{},
		wake:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
}

func (n *notifier) start(unwatch func(), p *poker) {
	n.unwatch = unwatch
	n.poker = p
	go n.run()
}

func (n *notifier) stop() {
	n.once.Do(func() {
		if n.unwatch != nil {
			n.unwatch()
		}
		close(n.quit)
		<-n.done
		n.mu.Lock()
		if n.retryTimer != nil {
			n.retryTimer.Stop()
		}
		n.mu.Unlock()
		if n.poker != nil {
			n.poker.stop()
		}
	})
}

// onEvent marks the files an event changes. Every event grows events.log
// of its host, the host's ancestors and the tree.
func (n *notifier) onEvent(e model.Event) {
	n.mu.Lock()
	n.dirty[""] |= dirtyLog
	if strings.HasPrefix(e.Path, "groups/") {
		bits := dirtyLog | dirtyState | dirtyPower
		if e.Kind == machine.EventMembers && !strings.Contains(e.Detail, " refused: ") {
			bits |= dirtyConfig
		}
		n.dirty[e.Path] |= bits
		n.stampLocked(e.Path, bits, e.Time)
		if e.Kind == machine.EventRemoved {
			n.forgetLocked(e.Path)
		}
		if e.Kind == machine.EventAdded || e.Kind == machine.EventRemoved {
			n.entryLocked(e.Path, e.Kind == machine.EventAdded)
		}
	} else if e.Path != "" {
		if e.Kind == machine.EventPower {
			// A member's power changes its groups' power and state.
			n.groupsDirty = true
		}
		bits := dirtyLog | dirtyState
		switch e.Kind {
		case machine.EventConsole, machine.EventSerial:
			// A console session changes nothing that state shows:
			// only the event logs grow. Anything the command did to
			// the machine comes as an event of its own (power).
			bits = dirtyLog
		case machine.EventPower:
			bits |= dirtyPower
		case machine.EventCommand:
			// A writer's direct write may have grown the kernel's idea
			// of power's size; refresh it without waking watchers.
			bits |= dirtyPowerQuiet
		case machine.EventConfig, machine.EventDrivers:
			bits |= dirtyConfig | dirtyPower
		case machine.EventAdded, machine.EventRemoved:
			n.entries[e.Path] = true
			n.entryLocked(e.Path, e.Kind == machine.EventAdded)
		case machine.EventVSwitch:
			// The switch's live files (ports, info) changed; state
			// shows no switches.
			bits = dirtyLog
			n.switches[e.Path+"/vswitch/"+e.Item] = true
			n.noteSwitchesLocked(e.Path, e.Item)
		}
		n.dirty[e.Path] |= bits
		n.stampLocked(e.Path, bits, e.Time)
		if e.Kind == machine.EventPower {
			if n.powered == nil {
				n.powered = map[string]time.Time{}
			}
			n.powered[e.Path] = e.Time
		}
		if e.Kind == machine.EventRemoved {
			n.forgetLocked(e.Path)
		}
		for p := parentPath(e.Path); p != ""; p = parentPath(p) {
			n.dirty[p] |= dirtyLog
			if e.Kind == machine.EventAdded || e.Kind == machine.EventRemoved {
				n.dirty[p] |= dirtyState
				n.stampLocked(p, dirtyState, e.Time)
			}
		}
	}
	n.mu.Unlock()
	n.kick()
}

// parentPath is the host a subhost runs on ("" for a top-level host).
func parentPath(path string) string {
	i := strings.LastIndex(path, "/subhosts/")
	if i < 0 {
		return ""
	}
	return path[:i]
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.quit:
			return
		case <-n.wake:
		}
		n.mu.Lock()
		dirty, entries, groups, switches := n.dirty, n.entries, n.groupsDirty, n.switches
		n.dirty, n.entries, n.groupsDirty, n.switches = map[string]int{}, map[string]bool{}, false, map[string]bool{}
		ops, lists := n.entryOps, n.switchLists
		n.entryOps, n.switchLists = nil, nil
		var due []retry
		now := time.Now()
		kept := n.retries[:0]
		for _, r := range n.retries {
			if now.Before(r.due) {
				kept = append(kept, r)
			} else {
				due = append(due, r)
			}
		}
		n.retries = kept
		n.armLocked()
		n.mu.Unlock()
		for _, r := range due {
			n.invalAttempt(r.ino, r.attempt)
		}
		for p := range switches {
			n.refreshSwitch(p)
		}
		if groups {
			n.fsys.mu.Lock()
			for p := range n.fsys.groupDirs {
				dirty[p] |= dirtyPower | dirtyState
			}
			n.fsys.mu.Unlock()
			n.stampGroups()
		}
		for path := range entries {
			n.refreshEntry(path)
		}
		n.raiseEntries(ops)
		n.raiseEntries(n.switchOps(lists))
		for path, bits := range dirty {
			n.refresh(path, bits)
		}
	}
}

// inval drops the kernel's cached content and attributes of ino. The
// kernel answers ENOENT for an inode it does not know, and that includes
// one whose first LOOKUP reply is still on its way, computed before the
// change: that reply would then keep the old size for the attribute
// timeout, and reads stop there. So an ENOENT is tried again a little
// later (retryDelays); for an inode the kernel really does not know, that
// costs two more writes to /dev/fuse.
func (n *notifier) inval(ino *gofs.Inode) { n.invalAttempt(ino, 0) }

func (n *notifier) invalAttempt(ino *gofs.Inode, attempt int) {
	if ino.NotifyContent(0, 0) != syscall.ENOENT || attempt >= len(retryDelays) {
		return
	}
	n.mu.Lock()
	n.retries = append(n.retries, retry{ino: ino, attempt: attempt + 1, due: time.Now().Add(retryDelays[attempt])})
	n.armLocked()
	n.mu.Unlock()
}

// armLocked sets the retry timer to the earliest retry due.
func (n *notifier) armLocked() {
	if len(n.retries) == 0 {
		return
	}
	first := n.retries[0].due
	for _, r := range n.retries[1:] {
		if r.due.Before(first) {
			first = r.due
		}
	}
	d := max(time.Until(first), time.Millisecond)
	if n.retryTimer == nil {
		n.retryTimer = time.AfterFunc(d, n.kick)
	} else {
		n.retryTimer.Reset(d)
	}
}

// kick wakes the worker.
func (n *notifier) kick() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// refreshEntry makes the kernel forget its dentry for a host that was added
// or removed behind its back (ctl, SIGHUP).
func (n *notifier) refreshEntry(path string) {
	parent := parentPath(path)
	name := path[strings.LastIndex(path, "/")+1:]
	n.fsys.mu.Lock()
	ld := n.fsys.listDirs[parent]
	n.fsys.mu.Unlock()
	if ld == nil {
		return
	}
	if n.fsys.tree.Host(path) == nil {
		if ch := ld.GetChild(name); ch != nil {
			ld.RmChild(name)
			n.fsys.forget(ch.Operations().(*hostDir).host)
		}
	}
	ld.NotifyEntry(name)
}

func (n *notifier) refresh(path string, bits int) {
	if path == "" {
		if n.treeLog != nil {
			n.treeLog.sync()
		}
		return
	}
	var hd *liveFiles
	n.fsys.mu.Lock()
	if d := n.fsys.hostDirs[path]; d != nil {
		hd = &d.liveFiles
	} else if g := n.fsys.groupDirs[path]; g != nil {
		hd = &g.liveFiles
	}
	n.fsys.mu.Unlock()
	if hd == nil || hd.power == nil {
		return // never looked up: nobody can hold it open or watch it
	}
	// Invalidate first, then poke: a watcher woken by the poke must read
	// the new content.
	var poke []*gofs.Inode
	if bits&dirtyLog != 0 && hd.log != nil {
		hd.log.sync()
	}
	if bits&(dirtyPower|dirtyPowerQuiet) != 0 {
		n.inval(hd.power)
	}
	if bits&dirtyPower != 0 {
		poke = append(poke, hd.power)
	}
	if bits&dirtyState != 0 {
		n.inval(hd.state)
		poke = append(poke, hd.state)
	}
	if bits&dirtyConfig != 0 {
		n.inval(hd.config)
		poke = append(poke, hd.config)
	}
	if n.fsys.opts.ReadOnly {
		return
	}
	for _, ino := range poke {
		n.poke(filepath.Join(n.fsys.mountpoint, ino.Path(nil)))
	}
}

// poke has the poker write one byte to a file through the mount, so the
// kernel raises IN_MODIFY and IN_CLOSE_WRITE for its watchers; the file
// knows the poker and drops the byte.
func (n *notifier) poke(name string) {
	if n.poker != nil {
		n.poker.poke(name)
	}
}

// refreshSwitch wakes watchers of a switch's ports and info. They are
// direct I/O files, so there is no cache to invalidate.
func (n *notifier) refreshSwitch(path string) {
	n.fsys.mu.Lock()
	sd := n.fsys.switchDirs[path]
	n.fsys.mu.Unlock()
	if sd == nil || n.fsys.opts.ReadOnly {
		return
	}
	for _, ino := range []*gofs.Inode{sd.ports, sd.info} {
		n.poke(filepath.Join(n.fsys.mountpoint, ino.Path(nil)))
	}
}
