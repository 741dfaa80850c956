package fs

import (
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/machinefs/machinefs/model"
)

// notifier turns model events into fresh reads and inotify events. The
// model calls onEvent synchronously, so it only records what is dirty
// (eventChanges says what each kind of event changes); a single worker
// goroutine does the kernel calls, never from inside a FUSE request (that
// deadlocks).
type notifier struct {
	fsys *FS

	mu       sync.Mutex
	dirty    map[string]change // host or group path ("" = tree) -> files changed
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
	// change times of their groups. The maps of this struct are keyed by
	// path, not kept on the directories' nodes: events come for
	// directories the kernel has not looked up yet (no node), and
	// what they record must be there when it does (an mtime, a switch
	// list to diff against). Nodes are found in go-fuse's inode tree
	// (FS.nodeAt).
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
		dirty:    map[string]change{},
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

// onEvent marks the files an event changes (eventChanges). It runs in the
// event bus, so it only records; the worker does the rest.
func (n *notifier) onEvent(e model.Event) {
	ch := changesOf(e)
	n.mu.Lock()
	if eventChanges[e.Kind].unlogged {
		n.dirty[e.Path] |= ch // its own files only: no event log grew
	} else {
		n.dirty[""] |= chLog
		if e.Path != "" {
			n.markLocked(e, ch)
		}
	}
	n.mu.Unlock()
	n.kick()
}

// markLocked records what e changes in its directory and above. Every event
// grows the logs of its path's ancestors; one that adds or removes a
// subhost also changes the parent hosts' state (their subhosts line).
// n.mu is held.
func (n *notifier) markLocked(e model.Event, ch change) {
	files := ch & fileChanges
	n.dirty[e.Path] |= files
	n.stampLocked(e.Path, files, e.Time)
	if ch&chGroups != 0 {
		// A member's power changes its groups' power and state.
		n.groupsDirty = true
		if n.powered == nil {
			n.powered = map[string]time.Time{}
		}
		n.powered[e.Path] = e.Time
	}
	if ch&chSwitch != 0 {
		n.switches[e.Path+"/vswitch/"+e.Item] = true
		n.noteSwitchesLocked(e.Path, e.Item)
	}
	entry := ch & (chAppeared | chWent)
	if entry != 0 {
		if !isGroupPath(e.Path) {
			n.entries[e.Path] = true
		}
		n.entryLocked(e.Path, ch&chAppeared != 0)
	}
	if ch&chWent != 0 {
		n.forgetLocked(e.Path)
	}
	for p := parentPath(e.Path); p != ""; p = parentPath(p) {
		n.dirty[p] |= chLog
		if entry != 0 {
			n.dirty[p] |= chState
			n.stampLocked(p, chState, e.Time)
		}
	}
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
		n.dirty, n.entries, n.groupsDirty, n.switches = map[string]change{}, map[string]bool{}, false, map[string]bool{}
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
			// Groups the kernel never looked up are skipped by refresh.
			for _, g := range n.fsys.tree.Groups() {
				dirty[g.Path()] |= chPower | chState
			}
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
	i := strings.LastIndex(path, "/")
	ld, ok := n.fsys.nodeAt(path[:i]).(*listDir) // hosts/ or HOST/subhosts/
	if !ok {
		return // never looked up: the kernel has no entry to forget
	}
	name := path[i+1:]
	if n.fsys.tree.Host(path) == nil && ld.GetChild(name) != nil {
		ld.RmChild(name)
	}
	ld.NotifyEntry(name)
}

// liveDir is a directory whose files the notifier refreshes: a host's or a
// group's.
type liveDir interface{ live() *liveFiles }

func (hd *hostDir) live() *liveFiles  { return &hd.liveFiles }
func (gd *groupDir) live() *liveFiles { return &gd.liveFiles }

func (n *notifier) refresh(path string, bits change) {
	if path == "" {
		n.fsys.root.log.sync()
		return
	}
	d, ok := n.fsys.nodeAt(path).(liveDir)
	if !ok {
		return // never looked up: nobody can hold it open or watch it
	}
	hd := d.live()
	// Invalidate first, then poke: a watcher woken by the poke must read
	// the new content.
	var poke []*gofs.Inode
	if bits&chLog != 0 {
		hd.log.sync()
	}
	if h, ok := d.(*hostDir); ok {
		h.refreshSerial(bits)
	}
	if bits&(chPower|chPowerSize) != 0 {
		n.inval(hd.power)
	}
	if bits&chPower != 0 {
		poke = append(poke, hd.power)
	}
	if bits&chState != 0 {
		n.inval(hd.state)
		poke = append(poke, hd.state)
	}
	if bits&chConfig != 0 {
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
	sd, ok := n.fsys.nodeAt(path).(*switchDir)
	if !ok || n.fsys.opts.ReadOnly {
		return
	}
	for _, ino := range []*gofs.Inode{sd.ports, sd.info} {
		n.poke(filepath.Join(n.fsys.mountpoint, ino.Path(nil)))
	}
}

// refreshSerial follows serial.log as it grows, and drops the kernel's
// names of the files that come and go with the config (hostDir.has): a
// name it cached must not outlive its file.
func (hd *hostDir) refreshSerial(bits change) {
	if bits&chSerialLog != 0 {
		hd.serialLog.sync()
	}
	if bits&chConfig != 0 {
		for _, name := range []string{"serial", "serial.log", "serial.log.1"} {
			hd.NotifyEntry(name)
		}
	}
}
