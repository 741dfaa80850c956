package fs

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Every way a host, subhost, group or switch appears or goes raises
// IN_CREATE or IN_DELETE on its parent directory, as mkdir and rmdir do.
// A mkdir or rmdir through the mount raises them in the kernel itself. For
// the other ways (ctl add and remove, SIGHUP reload, vswitch ctl cancel, a
// bridge made outside), the kernel knows nothing, and an invalidation of
// the entry raises no inotify event. So the notifier has the poker make
// the same mkdir or rmdir through the mount: the directories answer the
// poker without touching the model (its mkdir gets the new directory, its
// rmdir succeeds), and the kernel raises the events for them.
//
// For the poker's mkdir to reach the daemon, its LOOKUP of the new name
// must fail: a name it is told to create answers ENOENT once. For its
// rmdir, the LOOKUP must succeed: a name that is gone answers the poker
// with an empty placeholder directory that the kernel does not cache.

// entryOp is a directory entry that appeared or went behind the kernel's
// back.
type entryOp struct {
	path  string // in the mount: hosts/a, hosts/a/subhosts/b, groups/g, hosts/a/vswitch/s
	added bool
}

// throughKernel marks path as being added or removed by a mkdir or rmdir
// through the mount, whose events the kernel raises itself; done unmarks it.
// The model publishes the change synchronously within the call, so the
// notifier sees the mark.
func (n *notifier) throughKernel(path string) (done func()) {
	n.mu.Lock()
	if n.kernelOps == nil {
		n.kernelOps = map[string]int{}
	}
	n.kernelOps[path]++
	n.mu.Unlock()
	return func() {
		n.mu.Lock()
		if n.kernelOps[path]--; n.kernelOps[path] <= 0 {
			delete(n.kernelOps, path)
		}
		n.mu.Unlock()
	}
}

// entryLocked queues an entry change for the poker unless the kernel
// raises its events itself. n.mu is held.
func (n *notifier) entryLocked(path string, added bool) {
	if n.kernelOps[path] > 0 {
		return
	}
	n.entryOps = append(n.entryOps, entryOp{path: path, added: added})
}

// takeCreating reports whether the poker is about to mkdir path, and
// clears it: only its first LOOKUP must fail.
func (n *notifier) takeCreating(path string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.creating[path]; !ok {
		return false
	}
	delete(n.creating, path)
	return true
}

// raiseEntries has the poker mkdir or rmdir what changed, in order. It
// runs in the notifier's worker after the kernel's entries were dropped
// (refreshEntry), so the poker's LOOKUP reaches the daemon.
func (n *notifier) raiseEntries(ops []entryOp) {
	if n.poker == nil || n.fsys.opts.ReadOnly {
		return
	}
	now := time.Now()
	for _, op := range ops {
		name := filepath.Join(n.fsys.mountpoint, op.path)
		if op.added {
			n.mu.Lock()
			if n.creating == nil {
				n.creating = map[string]time.Time{}
			}
			// A mark the poker never used (its mkdir met a cached
			// entry) must not make the name vanish for it later.
			for p, at := range n.creating {
				if now.Sub(at) > 10*time.Second {
					delete(n.creating, p)
				}
			}
			n.creating[op.path] = now
			n.mu.Unlock()
			n.poker.dirOp('+', name)
		} else {
			n.poker.dirOp('-', name)
		}
	}
}

// selfLookup answers the poker's LOOKUP of a directory that appeared or
// went: ENOENT for one it is about to create, a placeholder for one that is
// gone. ok is false when the poker gets the normal answer.
func selfLookup(ctx context.Context, f *FS, parent *gofs.Inode, path string, exists bool, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno, bool) {
	if !f.isSelf(ctx) {
		return nil, 0, false
	}
	if f.notify.takeCreating(path) {
		return nil, syscall.ENOENT, true
	}
	if exists {
		return nil, 0, false
	}
	out.Mode = syscall.S_IFDIR | 0o755
	f.setTimes(&out.Attr)
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	return parent.NewInode(ctx, &goneDir{fsys: f}, gofs.StableAttr{Mode: syscall.S_IFDIR}), 0, true
}

// goneDir is what the poker finds at the name of a directory that went: an
// empty directory for its rmdir to remove.
type goneDir struct {
	gofs.Inode
	fsys *FS
}

func (g *goneDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	g.fsys.setTimes(&out.Attr)
	return 0
}

// noteSwitchesLocked asks the worker to compare a local host's switches
// with what it knew. n.mu is held.
func (n *notifier) noteSwitchesLocked(hostPath, item string) {
	if n.switchLists == nil {
		n.switchLists = map[string]bool{}
	}
	n.switchLists[hostPath] = true
	// The worker diffs later, when the mkdir or rmdir that made the
	// event has returned: remember now that the kernel raised it.
	if p := hostPath + "/vswitch/" + item; n.kernelOps[p] > 0 {
		if n.kernelDone == nil {
			n.kernelDone = map[string]bool{}
		}
		n.kernelDone[p] = true
	}
}

// knowSwitches records the switches of the host at hostPath as the kernel
// has seen them (readdir or lookup of vswitch/), the base for later diffs.
func (n *notifier) knowSwitches(hostPath string, names []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.switchNames == nil {
		n.switchNames = map[string][]string{}
	}
	if _, ok := n.switchNames[hostPath]; !ok {
		n.switchNames[hostPath] = slices.Clone(names)
	}
}

// switchOps diffs the switches of the hosts in lists with what was known
// and returns the entries that appeared or went. Hosts nobody looked at
// (vswitch/ never listed) have no base and give none: nobody watches them.
func (n *notifier) switchOps(lists map[string]bool) []entryOp {
	var ops []entryOp
	for hp := range lists {
		h := n.fsys.tree.Host(hp)
		var now []string
		if h != nil {
			now = h.SwitchNames()
		}
		n.mu.Lock()
		was, known := n.switchNames[hp]
		if known {
			n.switchNames[hp] = slices.Clone(now)
		}
		add := func(path string, added bool) {
			if n.kernelOps[path] == 0 && !n.kernelDone[path] {
				ops = append(ops, entryOp{path: path, added: added})
			}
		}
		for _, s := range was {
			if !slices.Contains(now, s) {
				add(hp+"/vswitch/"+s, false)
			}
		}
		for _, s := range now {
			if known && !slices.Contains(was, s) {
				add(hp+"/vswitch/"+s, true)
			}
		}
		// The marks are used: a later event of the same mkdir (the
		// bridge's netlink news) finds no difference, and must not
		// leave a mark behind that hides a later cancel.
		for p := range n.kernelDone {
			if strings.HasPrefix(p, hp+"/vswitch/") {
				delete(n.kernelDone, p)
			}
		}
		n.mu.Unlock()
	}
	return ops
}

// childPath is the path in the mount of the host name in d.
func (d *listDir) childPath(name string) string {
	if d.parent == nil {
		return "hosts/" + name
	}
	return d.parent.Path() + "/subhosts/" + name
}

// selfMkdir answers the poker's mkdir of a host that appeared: the
// host's directory, and nothing changes.
func (d *listDir) selfMkdir(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d.fsys.notify.takeCreating(d.childPath(name))
	h := d.fsys.tree.Child(d.parent, name)
	if h == nil {
		return nil, syscall.ENOENT
	}
	ch := d.hostInode(ctx, name, h)
	ch.Operations().(*hostDir).fill(&out.Attr)
	return ch, 0
}

// selfMkdir answers the poker's mkdir of a switch that appeared.
func (d *vswitchDir) selfMkdir(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	d.fsys.notify.takeCreating(d.host.Path() + "/vswitch/" + name)
	if !d.host.HasSwitch(ctx, name) {
		return nil, syscall.ENOENT
	}
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return d.switchInode(ctx, name), 0
}

// knowSwitches records the local host's switches when the kernel first
// asks for vswitch/ (a watcher's inotify_add_watch looks it up), so later
// changes can be told apart.
func (d *vswitchDir) knowSwitches() {
	if !d.host.HasSwitches() || d.fsys.notify.knowsSwitches(d.host.Path()) {
		return
	}
	d.fsys.notify.knowSwitches(d.host.Path(), d.host.SwitchNames())
}

// knowsSwitches reports whether the switches of hostPath have a base.
func (n *notifier) knowsSwitches(hostPath string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.switchNames[hostPath]
	return ok
}
