package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
)

// Walking the tree finishes. A recursive walker (grep -r, cp -r, tar,
// rsync, find -exec cat, md5sum DIR/*) opens every file it is shown and
// reads it to its end, and it cannot be told from `cat events`, which must
// block for the next event. So the streams that block (events, serial) are
// not listed by readdir, and only reached by name, as ZFS's hidden .zfs
// directory and the thread ids of /proc are: `cat events`, `tail -f
// events.log`, `ls -l events` and `exec 3<serial` work as before, and no
// walker, glob or tab completion ever opens a stream. vswitch/ is listed
// on the local host only, the one host that has switches; on the others it
// is reachable still, so mkdir there gets the ENOTSUP that says why.

// unlisted reports whether a directory's child is reached by name only.
type unlisted func(name string) bool

// listChildren is the readdir of a directory whose files are its children:
// ".", "..", and every child a walker may open.
func listChildren(n *gofs.Inode, hidden unlisted) (gofs.DirStream, syscall.Errno) {
	entries := dots(n)
	for name, ch := range n.Children() {
		if hidden != nil && hidden(name) {
			continue
		}
		entries = append(entries, fuse.DirEntry{Name: name, Mode: ch.Mode(), Ino: ch.StableAttr().Ino})
	}
	return gofs.NewListDirStream(entries), 0
}

// dots are the "." and ".." entries every directory lists.
func dots(n *gofs.Inode) []fuse.DirEntry {
	self := n.StableAttr().Ino
	up := self
	if _, p := n.Parent(); p != nil {
		up = p.StableAttr().Ino
	}
	return []fuse.DirEntry{{Name: ".", Mode: syscall.S_IFDIR, Ino: self}, {Name: "..", Mode: syscall.S_IFDIR, Ino: up}}
}

func isStream(name string) bool { return name == "events" || name == "serial" }

var (
	_ gofs.NodeReaddirer = (*rootDir)(nil)
	_ gofs.NodeReaddirer = (*hostDir)(nil)
	_ gofs.NodeReaddirer = (*groupDir)(nil)
	_ gofs.NodeReaddirer = (*switchDir)(nil)
)

func (r *rootDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return listChildren(&r.Inode, isStream)
}

func (hd *hostDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	local := hd.host.HasSwitches()
	return listChildren(&hd.Inode, func(name string) bool {
		switch name {
		case "vswitch":
			return !local
		case "subhosts":
			// Listed once there is one: `md5sum hosts/*/*` and
			// `head hosts/*/*` then meet only files on a flat tree.
			return len(hd.fsys.tree.Hosts(hd.host)) == 0
		case "serial.log", "serial.log.1":
			return !hd.has(name)
		}
		return isStream(name)
	})
}

func (gd *groupDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return listChildren(&gd.Inode, isStream)
}

func (sd *switchDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return listChildren(&sd.Inode, nil)
}

// rootIno is the root directory's inode number, as on most filesystems.
const rootIno = 1

// Statfs reports what the tree holds, so df lists the mount: the event
// logs are its data (blocks, all used: nothing can be stored), its files
// are inodes (all used). Every directory and file answers alike.
func (f *FS) statfs(out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	used := int64(0)
	files := uint64(6 + 2) // README, version, ctl, check, events, events.log(.1); hosts/, groups/
	var walk func(parent *model.Host)
	walk = func(parent *model.Host) {
		for _, h := range f.tree.Hosts(parent) {
			used += int64(h.Log().Size())
			if p := h.Log().Previous(); p != nil {
				used += int64(p.Size())
			}
			files += 13
			walk(h)
		}
	}
	walk(nil)
	for _, g := range f.tree.Groups() {
		used += int64(g.Log().Size())
		if p := g.Log().Previous(); p != nil {
			used += int64(p.Size())
		}
		files += 7
	}
	used += int64(f.tree.Log().Size())
	if p := f.tree.Log().Previous(); p != nil {
		used += int64(p.Size())
	}
	blocks := uint64((used+bsize-1)/bsize) + 1
	*out = fuse.StatfsOut{}
	out.Blocks = blocks
	out.Bfree, out.Bavail = 0, 0
	out.Files, out.Ffree = files, 0
	out.Bsize, out.Frsize = bsize, bsize
	out.NameLen = 255
	return 0
}

func (r *rootDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return r.fsys.statfs(out)
}
func (d *listDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return d.fsys.statfs(out)
}
func (hd *hostDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return hd.fsys.statfs(out)
}
func (d *groupsDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return d.fsys.statfs(out)
}
func (gd *groupDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return gd.fsys.statfs(out)
}
func (d *vswitchDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return d.fsys.statfs(out)
}
func (sd *switchDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return sd.fsys.statfs(out)
}
func (e *eventsFile) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return e.fsys.statfs(out)
}
func (s *sessionFile) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return s.fsys.statfs(out)
}

// The ctl files read back what they take: a walker copies them like any
// other file (a write-only file stops grep -r, tar, rsync and cp -r with
// EACCES, even for root), and `cat ctl` says how to use it: the help made
// from the file's command table.
var (
	ctlUsage        = model.CtlTable.Help()
	vswitchCtlUsage = model.SwitchesCtlTable.Help()
	switchCtlUsage  = model.SwitchCtlTable.Help()
)
