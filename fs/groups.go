package fs

import (
	"context"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/view"
)

// groupsDir is groups/: one directory per group; mkdir adds one, rmdir
// removes one.
type groupsDir struct {
	gofs.Inode
	fsys *FS
}

var (
	_ gofs.NodeLookuper  = (*groupsDir)(nil)
	_ gofs.NodeReaddirer = (*groupsDir)(nil)
	_ gofs.NodeMkdirer   = (*groupsDir)(nil)
	_ gofs.NodeRmdirer   = (*groupsDir)(nil)
)

func (d *groupsDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return 0
}

func (d *groupsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	g := d.fsys.tree.Group(name)
	if ino, e, ok := selfLookup(ctx, d.fsys, &d.Inode, "groups/"+name, g != nil, out); ok {
		return ino, e // the poker raising IN_CREATE or IN_DELETE (entries.go)
	}
	if g == nil {
		return nil, syscall.ENOENT
	}
	ch := d.groupInode(ctx, name, g)
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return ch, 0
}

func (d *groupsDir) groupInode(ctx context.Context, name string, g *model.Group) *gofs.Inode {
	if ch := d.GetChild(name); ch != nil {
		if gd, ok := ch.Operations().(*groupDir); ok && gd.group == g {
			return ch
		}
		d.RmChild(name)
	}
	return d.NewPersistentInode(ctx, &groupDir{fsys: d.fsys, group: g}, gofs.StableAttr{Mode: syscall.S_IFDIR})
}

func (d *groupsDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	entries := dots(&d.Inode)
	for _, g := range d.fsys.tree.Groups() {
		entries = append(entries, fuse.DirEntry{Name: g.Name(), Mode: syscall.S_IFDIR})
	}
	return gofs.NewListDirStream(entries), 0
}

func (d *groupsDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if d.fsys.isSelf(ctx) {
		d.fsys.notify.takeCreating("groups/" + name)
		if g := d.fsys.tree.Group(name); g != nil {
			out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
			d.fsys.setTimes(&out.Attr)
			return d.groupInode(ctx, name, g), 0
		}
		return nil, syscall.ENOENT
	}
	done := d.fsys.notify.throughKernel("groups/" + name)
	g, err := d.fsys.tree.AddGroup(name, caller(ctx))
	done()
	if err != nil {
		return nil, errno(err)
	}
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return d.groupInode(ctx, name, g), 0
}

func (d *groupsDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if d.fsys.isSelf(ctx) {
		return 0 // the poker raising IN_DELETE for a group that went (entries.go)
	}
	g := d.fsys.tree.Group(name)
	if g == nil {
		return syscall.ENOENT
	}
	done := d.fsys.notify.throughKernel(g.Path())
	err := d.fsys.tree.RemoveGroup(g, caller(ctx))
	done()
	if err != nil {
		return errno(err)
	}
	return 0 // go-fuse drops the group's inode from the tree
}

// groupDir is groups/NAME: members, power, state, events, events.log.
type groupDir struct {
	gofs.Inode
	fsys      *FS
	group     *model.Group
	liveFiles       // config is the members file
	temps     temps // temporary files (tempfile.go)
}

func (gd *groupDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | gd.fsys.writable(0o775) // temporary files (tempfile.go)
	gd.fsys.setTimes(&out.Attr)
	return 0
}

func (gd *groupDir) OnAdd(ctx context.Context) {
	f, g := gd.fsys, gd.group
	add := func(name string, n gofs.InodeEmbedder) *gofs.Inode {
		ch := gd.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG})
		gd.AddChild(name, ch, false)
		return ch
	}
	attrs := func(perm uint32, when func(*stamps) time.Time) fileAttrs {
		return fileAttrs{fsys: f, perm: fixed(perm), changed: f.mtimeOf(g.Path(), when)}
	}
	gd.config = add("members", f.newCommandFile(attrs(f.writable(0o664), configTime),
		func() []byte { return []byte(view.Members(g)) },
		memberList(func(ctx context.Context, text string, replace bool) error {
			return g.SetMembers(ctx, text, replace, caller(ctx))
		})))
	gd.power = add("power", f.newCommandFile(attrs(f.writable(0o664), powerTime),
		func() []byte { return []byte(view.GroupPower(g)) },
		eachLine{do: func(ctx context.Context, line string) error { return g.Exec(ctx, line, caller(ctx)) }}))
	gd.state = add("state", &statusFile{fileAttrs: attrs(f.statusMode(), stateTime),
		render: func() []byte { return []byte(view.GroupState(g)) }})
	add("events", &eventsFile{fsys: f, prefix: g.Path()})
	gd.log = f.addLogs(ctx, &gd.Inode, g.Log(), g.Path())
}
