package fs

import (
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
	// retries are invalidations to send again: ones the kernel refused
	// with ENOENT, and ones a SETATTR reply may undo (see inval);
	// retryTimer wakes the worker for them.
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
	// stores are files just looked up for the first time, whose
	// snapshot the worker hands the kernel's page cache (storecache.go).
	stores     map[*gofs.Inode]bool
	storeTimer *time.Timer
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
// are sent again (for an inode looked up within lookupRace).
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
		if n.storeTimer != nil {
			n.storeTimer.Stop()
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
		stores := n.stores
		n.stores = nil
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
		// After this pass's invalidations: see storecache.go.
		for ino := range stores {
			n.store(ino)
		}
	}
}

// inval drops the kernel's cached content and attributes of ino.
//
// Only an inode the kernel may know is invalidated (kernelSeen): most
// files the notifier marks were never looked up (events.log of every host
// an event passes through), and the kernel refuses their invalidation
// with ENOENT, a write to /dev/fuse for nothing.
//
// The kernel also answers ENOENT for an inode whose first LOOKUP reply is
// still on its way, computed before the change: that reply would then keep
// the old size for the attribute timeout, and reads stop there. So an
// ENOENT for an inode looked up within lookupRace is tried again a little
// later (retryDelays); one looked up before that was forgotten by the
// kernel (FORGET), and is not invalidated again until its next lookup.
func (n *notifier) inval(ino *gofs.Inode) { n.invalAttempt(ino, 0) }

func (n *notifier) invalAttempt(ino *gofs.Inode, attempt int) {
	var seen *kernelSeen
	var stamp int64
	if s, ok := ino.Operations().(seenByKernel); ok {
		seen = s.kernelSeen()
		if stamp = seen.at.Load(); stamp == 0 {
			return // never looked up, or forgotten: the kernel has nothing of it
		}
	}
	switch ino.NotifyContent(0, 0) {
	case 0:
		// A SETATTR reply on its way would put back what this dropped
		// (files.go, setattrTimeout): invalidate again once it landed.
		if u, ok := ino.Operations().(setattrRacer); ok {
			if due, racing := u.setattrUnsettled(); racing {
				n.later(retry{ino: ino, attempt: attempt, due: due})
			}
		}
	case syscall.ENOENT:
		if seen != nil && time.Since(time.Unix(0, stamp)) > lookupRace {
			seen.at.CompareAndSwap(stamp, 0) // not if a lookup came since
			return
		}
		if attempt < len(retryDelays) {
			n.later(retry{ino: ino, attempt: attempt + 1, due: time.Now().Add(retryDelays[attempt])})
		}
	}
}

// later queues an invalidation to send again at r.due.
func (n *notifier) later(r retry) {
	n.mu.Lock()
	n.retries = append(n.retries, r)
	n.armLocked()
	n.mu.Unlock()
}

// lookupRace bounds how long after its lookup an inode the kernel does not
// know may still have its LOOKUP reply on the way (retryDelays' sum, and
// some).
const lookupRace = time.Second

// kernelSeen records whether the kernel may know an inode: the time of its
// last LOOKUP or GETATTR (both reach the node's Getattr, READDIRPLUS too),
// 0 for never or forgotten. go-fuse keeps the kernel's lookup count but
// does not show it, and tells nodes that stay in the tree (persistent
// ones) nothing of a FORGET.
type kernelSeen struct{ at atomic.Int64 }

// note records a lookup, and says whether the kernel had nothing of the
// inode before it (never looked up, or forgotten). It comes before the
// node renders its reply: a change the notifier did not see the note of is
// one the reply shows.
func (k *kernelSeen) note() (first bool) { return k.at.Swap(time.Now().UnixNano()) == 0 }

// seenByKernel is a file the notifier invalidates (statusFile, logFile).
type seenByKernel interface{ kernelSeen() *kernelSeen }

func (s *statusFile) kernelSeen() *kernelSeen { return &s.seen }
func (l *logFile) kernelSeen() *kernelSeen    { return &l.seen }

// setattrRacer is a file whose SETATTR replies carry an attribute timeout
// (statusFile): setattrUnsettled says whether one may still be on its way,
// and when it will have landed.
type setattrRacer interface {
	setattrUnsettled() (due time.Time, racing bool)
}

func (s *statusFile) setattrUnsettled() (time.Time, bool) {
	s.rc.mu.Lock()
	defer s.rc.mu.Unlock()
	now := time.Now()
	if s.rc.setattrs > 0 {
		return now.Add(settle), true
	}
	if due := s.rc.setattrEnd.Add(settle); now.Before(due) {
		return due, true
	}
	return time.Time{}, false
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
