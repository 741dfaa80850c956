package fs

import (
	"context"
	"sync"
	"syscall"
	"weak"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
)

// logFile is one generation of an event log: events.log while it is the
// current one, then events.log.1, then no name at all while a reader still
// holds it open (see model.EventLog). Each generation is an inode of its
// own, so a rotation looks to tail -F, less +F and log shippers like
// logrotate's rename: the name gets a new inode that starts empty, and the
// open file of the old one ends where it ended.
type logFile struct {
	gofs.Inode
	fsys *FS
	gen  *model.LogGen
	perm uint32
	seen kernelSeen
}

var (
	_ gofs.NodeGetattrer = (*logFile)(nil)
	_ gofs.NodeSetattrer = (*logFile)(nil)
	_ gofs.NodeOpener    = (*logFile)(nil)
	_ gofs.NodeReader    = (*logFile)(nil)
)

func (l *logFile) fill(a *fuse.Attr) {
	size, mtime := l.gen.Stat()
	a.Mode = syscall.S_IFREG | l.perm
	a.Size = uint64(size)
	a.Ino = l.StableAttr().Ino
	l.fsys.setTimes(a)
	a.SetTimes(nil, &mtime, &mtime)
}

func (l *logFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.seen.note() // before the size is read (notify.go)
	l.fill(&out.Attr)
	return 0
}

// Setattr refuses truncation: the log is the daemon's.
func (l *logFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if _, ok := in.GetSize(); ok {
		return syscall.EACCES
	}
	l.fill(&out.Attr)
	return 0
}

func (l *logFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	// Cached like the status files: the notifier invalidates the cache
	// whenever the generation grows (a new line, or a lost line).
	return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

func (l *logFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := l.gen.ReadAt(dest, off)
	return fuse.ReadResultData(dest[:n]), 0
}

// logFiles are a directory's events.log and events.log.1: it follows the
// rotations of its model.EventLog.
type logFiles struct {
	fsys *FS
	dir  *gofs.Inode
	log  *model.EventLog
	name string // events.log, serial.log
	perm uint32 // 0444; serial.log 0440, as serial (a console shows what users type)

	mu        sync.Mutex
	cur, prev *logFile
	gone      []weak.Pointer[logFile] // generations without a name, maybe still open
	ctx       context.Context
}

// addLogs puts the log's files into dir (in its OnAdd).
func (f *FS) addLogs(ctx context.Context, dir *gofs.Inode, log *model.EventLog, owner string) *logFiles {
	return f.addLogNamed(ctx, dir, log, owner, "events.log", 0o444)
}

// addLogNamed shows log as name (events.log, serial.log) and name.1, with
// permissions perm.
func (f *FS) addLogNamed(ctx context.Context, dir *gofs.Inode, log *model.EventLog, owner, name string, perm uint32) *logFiles {
	log.SetOwner(owner)
	lf := &logFiles{fsys: f, dir: dir, log: log, ctx: context.Background(), name: name, perm: perm}
	lf.cur = lf.newFile(log.Current())
	dir.AddChild(name, &lf.cur.Inode, false)
	if p := log.Previous(); p != nil {
		lf.prev = lf.newFile(p)
		dir.AddChild(name+".1", &lf.prev.Inode, false)
	}
	return lf
}

// newFile makes the inode of a generation. It is persistent while it has a
// name (the kernel may forget it and look it up again); once it has none,
// it lives as long as the kernel holds it (an open file).
func (lf *logFiles) newFile(g *model.LogGen) *logFile {
	l := &logFile{fsys: lf.fsys, gen: g, perm: lf.perm}
	lf.dir.NewPersistentInode(lf.ctx, l, gofs.StableAttr{Mode: syscall.S_IFREG})
	return l
}

// sync brings the directory's names up to the log's generations and drops
// the kernel's cache of what changed. The notifier calls it, outside any
// FUSE request, after every event the log got.
func (lf *logFiles) sync() {
	lf.mu.Lock()
	cur, prev := lf.log.Current(), lf.log.Previous()
	var inval []*gofs.Inode
	var names []string
	if cur != lf.cur.gen {
		// Rotated (maybe more than once since the last sync): events.log
		// and events.log.1 get new inodes; what they showed loses its
		// name and lives on while it is open.
		old := []*logFile{lf.cur}
		if lf.prev != nil {
			old = append(old, lf.prev)
		}
		var newPrev *logFile
		for _, o := range old {
			if o.gen == prev {
				newPrev = o
			}
		}
		if newPrev == nil && prev != nil {
			newPrev = lf.newFile(prev)
		}
		newCur := lf.newFile(cur)
		for _, o := range old {
			if o != newPrev {
				lf.gone = append(lf.gone, weak.Make(o))
			}
		}
		if newPrev != nil {
			lf.dir.AddChild(lf.name+".1", &newPrev.Inode, true)
		}
		lf.dir.AddChild(lf.name, &newCur.Inode, true)
		for _, o := range old {
			if o != newPrev {
				o.ForgetPersistent()
			}
		}
		lf.cur, lf.prev = newCur, newPrev
		names = []string{lf.name, lf.name + ".1"}
		// Rotations append lost lines to the generations readers hold.
		kept := lf.gone[:0]
		for _, w := range lf.gone {
			if o := w.Value(); o != nil {
				inval = append(inval, &o.Inode)
				kept = append(kept, w)
			}
		}
		lf.gone = kept
		if newPrev != nil {
			inval = append(inval, &newPrev.Inode)
		}
	}
	inval = append(inval, &lf.cur.Inode)
	lf.mu.Unlock()
	for _, n := range names {
		lf.dir.NotifyEntry(n)
	}
	for _, ino := range inval {
		lf.fsys.notify.inval(ino)
	}
}
