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

// File indexes within a host directory; with the host id they make stable
// inode numbers.
const (
	idxDir = iota
	idxPower
	idxState
	idxConsole
	idxConfig
	idxEvents
	idxEventsLog
	idxVswitch
	idxSubhosts
	idxSerial
	idxCheck
)

func hostIno(h *model.Host, idx uint64) uint64 { return (h.ID()+1)<<4 | idx }

// rootDir is the mount's root: README, version, ctl, events, events.log,
// hosts/ and groups/.
type rootDir struct {
	gofs.Inode
	fsys *FS
	log  *logFiles // the tree's events.log
}

var _ gofs.NodeOnAdder = (*rootDir)(nil)

func (r *rootDir) OnAdd(ctx context.Context) {
	f := r.fsys
	add := func(name string, n gofs.InodeEmbedder, mode uint32) {
		r.AddChild(name, r.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: mode}), false)
	}
	add("README", &statusFile{fileAttrs: f.attrs(0o444), render: static(f.opts.README)}, syscall.S_IFREG)
	add("version", &statusFile{fileAttrs: f.attrs(0o444), render: static(f.opts.Version + "\n")}, syscall.S_IFREG)
	add("ctl", f.newCommandFile(f.attrs(f.writable(0o664)), static(ctlUsage), wholeText(func(ctx context.Context, text string) error {
		return f.tree.Ctl(ctx, text, caller(ctx))
	})), syscall.S_IFREG)
	add("events", &eventsFile{fsys: f, prefix: ""}, syscall.S_IFREG)
	add("check", f.treeCheckFile(), syscall.S_IFREG)
	r.log = f.addLogs(ctx, &r.Inode, f.tree.Log(), "")
	add("hosts", &listDir{fsys: f}, syscall.S_IFDIR)
	add("groups", &groupsDir{fsys: f}, syscall.S_IFDIR)
}

func (r *rootDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	r.fsys.setTimes(&out.Attr)
	out.Ino = rootIno
	return 0
}

// listDir is hosts/ or a host's subhosts/: its entries are the model's
// hosts. mkdir adds one, rmdir removes one.
type listDir struct {
	gofs.Inode
	fsys   *FS
	parent *model.Host // nil for hosts/
}

var (
	_ gofs.NodeLookuper  = (*listDir)(nil)
	_ gofs.NodeReaddirer = (*listDir)(nil)
	_ gofs.NodeMkdirer   = (*listDir)(nil)
	_ gofs.NodeRmdirer   = (*listDir)(nil)
)

func (d *listDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | d.fsys.writable(0o775)
	d.fsys.setTimes(&out.Attr)
	return 0
}

func (d *listDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	h := d.fsys.tree.Child(d.parent, name)
	if ino, e, ok := selfLookup(ctx, d.fsys, &d.Inode, d.childPath(name), h != nil, out); ok {
		return ino, e // the poker raising IN_CREATE or IN_DELETE (entries.go)
	}
	if h == nil {
		return nil, syscall.ENOENT
	}
	ch := d.hostInode(ctx, name, h)
	ch.Operations().(*hostDir).fill(&out.Attr)
	return ch, 0
}

// hostInode returns the directory inode of h, creating it on first use.
func (d *listDir) hostInode(ctx context.Context, name string, h *model.Host) *gofs.Inode {
	if ch := d.GetChild(name); ch != nil {
		if hd, ok := ch.Operations().(*hostDir); ok && hd.host == h {
			return ch
		}
		// A host of the same name was removed and re-added.
		d.RmChild(name)
	}
	hd := &hostDir{fsys: d.fsys, host: h}
	return d.NewPersistentInode(ctx, hd, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: hostIno(h, idxDir)})
}

func (d *listDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	hosts := d.fsys.tree.Hosts(d.parent)
	entries := append(make([]fuse.DirEntry, 0, len(hosts)+2), dots(&d.Inode)...)
	for _, h := range hosts {
		entries = append(entries, fuse.DirEntry{Name: h.Name(), Mode: syscall.S_IFDIR, Ino: hostIno(h, idxDir)})
	}
	return gofs.NewListDirStream(entries), 0
}

func (d *listDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if d.fsys.isSelf(ctx) {
		return d.selfMkdir(ctx, name, out)
	}
	done := d.fsys.notify.throughKernel(d.childPath(name))
	h, err := d.fsys.tree.Add(ctx, d.parent, name, nil, caller(ctx))
	done()
	if err != nil {
		return nil, errno(err)
	}
	ch := d.hostInode(ctx, name, h)
	ch.Operations().(*hostDir).fill(&out.Attr)
	return ch, 0
}

func (d *listDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if d.fsys.isSelf(ctx) {
		return 0 // the poker raising IN_DELETE for a host that went (entries.go)
	}
	h := d.fsys.tree.Child(d.parent, name)
	if h == nil {
		return syscall.ENOENT
	}
	if e := d.fsys.recursiveBusy(ctx, d.Path(nil)); e != 0 {
		return e // inside `rm -rf` of a busy host (tempfile.go)
	}
	done := d.fsys.notify.throughKernel(h.Path())
	err := d.fsys.tree.Remove(ctx, h, caller(ctx))
	done()
	if err != nil {
		return errno(err)
	}
	return 0 // go-fuse drops the host's inode from the tree
}

// hostDir is hosts/NAME (or a subhost): power, state, console, config,
// events, events.log, vswitch/ and subhosts/.
type hostDir struct {
	gofs.Inode
	fsys *FS
	host *model.Host
	liveFiles
	temps temps // temporary files (tempfile.go)
	// serialLog is serial.log, there while the host records its console.
	serialLog *logFiles
}

// liveFiles are the files of a directory whose content changes under the
// reader: the notifier invalidates and pokes them.
type liveFiles struct {
	power, state, config *gofs.Inode
	log                  *logFiles
}

var _ gofs.NodeOnAdder = (*hostDir)(nil)

func (hd *hostDir) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFDIR | hd.fsys.writable(0o775) // operators create temporary files (tempfile.go)
	a.Ino = hostIno(hd.host, idxDir)
	hd.fsys.setTimes(a)
}

func (hd *hostDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	hd.fill(&out.Attr)
	return 0
}

func (hd *hostDir) OnAdd(ctx context.Context) {
	f, h := hd.fsys, hd.host
	add := func(name string, idx uint64, n gofs.InodeEmbedder, mode uint32) *gofs.Inode {
		ch := hd.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: mode, Ino: hostIno(h, idx)})
		hd.AddChild(name, ch, false)
		return ch
	}
	// attrs of the host's file idx, changed as when says.
	attrs := func(idx uint64, perm func() uint32, when func(*stamps) time.Time) fileAttrs {
		return fileAttrs{fsys: f, ino: hostIno(h, idx), perm: perm, changed: f.mtimeOf(h.Path(), when)}
	}
	hd.power = add("power", idxPower, f.newCommandFile(attrs(idxPower, fixed(f.writable(0o664)), powerTime),
		func() []byte { return []byte(view.Power(h)) },
		eachLine{
			check: func(ctx context.Context, line string) error { return h.CheckCommand(line, caller(ctx)) },
			do:    func(ctx context.Context, line string) error { return h.Exec(ctx, line, caller(ctx)) },
		}), syscall.S_IFREG)
	hd.state = add("state", idxState, &statusFile{fileAttrs: attrs(idxState, fixed(f.statusMode()), stateTime),
		render: func() []byte { return []byte(view.State(h)) }}, syscall.S_IFREG)
	add("console", idxConsole, &consoleFile{sessionFile{fsys: f, host: h, idx: idxConsole}}, syscall.S_IFREG)
	configPerm := func() uint32 {
		if h.HasSecrets() {
			return f.writable(0o620)
		}
		return f.writable(0o664)
	}
	hd.config = add("config", idxConfig, f.newCommandFile(attrs(idxConfig, configPerm, configTime),
		func() []byte { return []byte(view.Config(f.tree, h)) },
		wholeText(func(ctx context.Context, text string) error { return h.SetConfig(ctx, text, caller(ctx)) }),
	), syscall.S_IFREG)
	add("serial", idxSerial, &serialFile{sessionFile{fsys: f, host: h, idx: idxSerial}}, syscall.S_IFREG)
	add("events", idxEvents, &eventsFile{fsys: f, prefix: h.Path()}, syscall.S_IFREG)
	add("check", idxCheck, f.hostCheckFile(h), syscall.S_IFREG)
	hd.log = f.addLogs(ctx, &hd.Inode, h.Log(), h.Path())
	// serial.log shows what serial shows: for the owner and group only.
	hd.serialLog = f.addLogNamed(ctx, &hd.Inode, h.SerialLog(), h.Path(), "serial.log", 0o440)
	add("vswitch", idxVswitch, &vswitchDir{fsys: f, host: h}, syscall.S_IFDIR)
	add("subhosts", idxSubhosts, &listDir{fsys: f, parent: h}, syscall.S_IFDIR)
}

func (f *FS) setTimes(a *fuse.Attr) {
	t := f.started
	a.SetTimes(&t, &t, &t)
	a.Uid, a.Gid = f.opts.Owner, f.opts.Group
	a.Nlink = 1
	if a.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		a.Nlink = 2
	}
}

var _ gofs.NodeLookuper = (*hostDir)(nil)

// Lookup finds the host's files as go-fuse would, but serial exists only
// while the host's drivers have a serial console (`test -e serial` says
// whether there is one), and serial.log while it is recorded.
func (hd *hostDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch := hd.GetChild(name)
	if ch == nil || !hd.has(name) {
		return nil, syscall.ENOENT
	}
	if ga, ok := ch.Operations().(gofs.NodeGetattrer); ok {
		var a fuse.AttrOut
		if ga.Getattr(ctx, nil, &a) == 0 {
			out.Attr = a.Attr
		}
	}
	return ch, 0
}

// has says whether a file that comes and goes with the host's config is
// there now.
func (hd *hostDir) has(name string) bool {
	switch name {
	case "serial":
		return hd.host.HasSerial()
	case "serial.log", "serial.log.1":
		return hd.host.SerialLogging()
	}
	return true
}
