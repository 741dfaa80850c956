package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
)

// vswitchDir is hosts/NAME/vswitch/: one directory per managed switch, the
// file all (every bridge, listall) and ctl ("cancel NAME..." deletes many
// switches in one kernel request). mkdir creates a switch, rmdir cancels it. Only the local host has live switches; elsewhere mkdir gets
// ENOTSUP with the reason.
type vswitchDir struct {
	gofs.Inode
	fsys *FS
	host *model.Host
}

var (
	_ gofs.NodeLookuper  = (*vswitchDir)(nil)
	_ gofs.NodeReaddirer = (*vswitchDir)(nil)
	_ gofs.NodeMkdirer   = (*vswitchDir)(nil)
	_ gofs.NodeRmdirer   = (*vswitchDir)(nil)
)

func (d *vswitchDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.knowSwitches()
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return 0
}

func (d *vswitchDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !d.host.HasSwitches() {
		return nil, syscall.ENOENT
	}
	if name == "ctl" || name == "all" {
		ch := d.GetChild(name)
		if ch == nil {
			ch = d.NewPersistentInode(ctx, d.newFile(name), gofs.StableAttr{Mode: syscall.S_IFREG})
		}
		var a fuse.AttrOut
		ch.Operations().(gofs.NodeGetattrer).Getattr(ctx, nil, &a)
		out.Attr = a.Attr
		return ch, 0
	}
	has := d.host.HasSwitch(ctx, name)
	if ino, e, ok := selfLookup(ctx, d.fsys, &d.Inode, d.host.Path()+"/vswitch/"+name, has, out); ok {
		return ino, e // the poker raising IN_CREATE or IN_DELETE (entries.go)
	}
	if !has {
		return nil, syscall.ENOENT
	}
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return d.switchInode(ctx, name), 0
}

// newFile makes vswitch/ctl or vswitch/all.
func (d *vswitchDir) newFile(name string) gofs.InodeEmbedder {
	f, h := d.fsys, d.host
	if name == "ctl" {
		return f.newCommandFile(f.attrs(f.writable(0o664)), static(vswitchCtlUsage), eachLine{
			do: func(ctx context.Context, line string) error { return h.SwitchesCtl(ctx, line, caller(ctx)) },
		})
	}
	return &liveFile{fileAttrs: f.attrs(0o444), ask: func(ctx context.Context) ([]byte, error) {
		s, err := h.SwitchText(ctx, "", "all")
		return []byte(s), err
	}}
}

func (d *vswitchDir) switchInode(ctx context.Context, name string) *gofs.Inode {
	if ch := d.GetChild(name); ch != nil {
		return ch
	}
	return d.NewPersistentInode(ctx, &switchDir{fsys: d.fsys, host: d.host, name: name}, gofs.StableAttr{Mode: syscall.S_IFDIR})
}

func (d *vswitchDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	entries := dots(&d.Inode)
	if d.host.HasSwitches() {
		entries = append(entries, fuse.DirEntry{Name: "all", Mode: syscall.S_IFREG}, fuse.DirEntry{Name: "ctl", Mode: syscall.S_IFREG})
		names := d.host.SwitchNames()
		d.fsys.notify.knowSwitches(d.host.Path(), names)
		for _, n := range names {
			entries = append(entries, fuse.DirEntry{Name: n, Mode: syscall.S_IFDIR})
		}
	}
	return gofs.NewListDirStream(entries), 0
}

func (d *vswitchDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if d.fsys.isSelf(ctx) {
		return d.selfMkdir(ctx, name, out)
	}
	done := d.fsys.notify.throughKernel(d.host.Path() + "/vswitch/" + name)
	err := d.host.CreateSwitch(ctx, name, caller(ctx))
	done()
	if err != nil {
		return nil, errno(err)
	}
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return d.switchInode(ctx, name), 0
}

func (d *vswitchDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if d.fsys.isSelf(ctx) {
		return 0 // the poker raising IN_DELETE for a switch that went (entries.go)
	}
	done := d.fsys.notify.throughKernel(d.host.Path() + "/vswitch/" + name)
	err := d.host.DeleteSwitch(ctx, name, caller(ctx))
	done()
	if err != nil {
		return errno(err)
	}
	return 0 // go-fuse drops the switch's inode from the tree
}

// switchDir is vswitch/NAME: config (uplink), ctl, ports, info.
type switchDir struct {
	gofs.Inode
	fsys *FS
	host *model.Host
	name string

	ports, info *gofs.Inode
	temps       temps // temporary files (tempfile.go)
}

func (sd *switchDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | sd.fsys.writable(0o775) // temporary files (tempfile.go)
	sd.fsys.setTimes(&out.Attr)
	return 0
}

func (sd *switchDir) OnAdd(ctx context.Context) {
	f, h, name := sd.fsys, sd.host, sd.name
	add := func(file string, n gofs.InodeEmbedder) *gofs.Inode {
		ch := sd.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG})
		sd.AddChild(file, ch, false)
		return ch
	}
	ask := func(file string) func(ctx context.Context) ([]byte, error) {
		return func(ctx context.Context) ([]byte, error) {
			s, err := h.SwitchText(ctx, name, file)
			return []byte(s), err
		}
	}
	add("config", f.newLiveCommandFile(f.attrs(f.writable(0o664)), ask("config"),
		wholeText(func(ctx context.Context, text string) error { return h.SwitchConfig(ctx, name, text, caller(ctx)) })))
	add("ctl", f.newCommandFile(f.attrs(f.writable(0o664)), static(switchCtlUsage),
		eachLine{do: func(ctx context.Context, line string) error { return h.SwitchCtl(ctx, name, line, caller(ctx)) }}))
	sd.ports = add("ports", &liveFile{fileAttrs: f.attrs(0o444), ask: ask("ports")})
	sd.info = add("info", &liveFile{fileAttrs: f.attrs(0o444), ask: ask("info")})
}
