package fs

import (
	"context"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The tree's regular files are small node types, one per kind of file:
//
//   - statusFile: rendered from the model (state, README, version), served
//     from the one snapshot the kernel may cache (snapshot.go) and
//     refreshed by the notifier.
//   - commandFile: a statusFile whose writes are commands (power, config,
//     members, ctl, the switches' ctl files), taken by the shared lineWriter
//     (commands.go).
//   - liveFile: asked of a driver on every read (a switch's ports and info,
//     vswitch/all); liveCommandFile is one that takes commands too (a
//     switch's config).
//   - logFile: a generation of events.log (logfile.go).
//   - eventsFile and serialFile: blocking streams (streams.go, serial.go);
//     consoleFile: a session per open (console.go).

// Bounds on what writers can make the daemon hold. Every write is at most
// the kernel's max_write (128 KiB), so what is kept is bounded by these.
const (
	// maxLine bounds a command line (power, ctl, config, members,
	// console): a writer that never sends a newline cannot grow the daemon
	// without end. A longer line fails with EINVAL, and so does every
	// write up to and including the one that ends it, so no tail of it
	// ever runs as a command of its own.
	maxLine = 64 << 10
	// maxText bounds what one open file of a file that takes a whole text
	// (config, members, a switch's config, ctl) takes: past it, writes
	// fail with EFBIG ("File too large"), as past a file size limit. It
	// stops `yes KEY=VALUE > config` from saving the config forever.
	maxText = 1 << 20
	// maxHeld bounds what a mount keeps for all its writers together
	// (console transcripts, partial lines): each open file is bounded,
	// but a user may open many. Past it, writes that would keep more
	// fail with ENOBUFS until readers read or files are closed.
	maxHeld = 32 << 20
)

// heldBytes counts the bytes a mount keeps for its writers, against maxHeld.
// Each holder adds the change of its own size (account).
type heldBytes struct{ n atomic.Int64 }

// room reports whether writers may keep more.
func (h *heldBytes) room() bool { return h.n.Load() < maxHeld }

// account records that a holder that had *had bytes now has now.
func (h *heldBytes) account(had *int, now int) {
	h.n.Add(int64(now - *had))
	*had = now
}

// fileAttrs are what stat shows of a tree file.
type fileAttrs struct {
	fsys *FS
	ino  uint64 // a stable inode number (a host's files); 0: go-fuse's
	// perm gives the permission bits (config's depend on its secrets).
	perm func() uint32
	// changed is the time of the last change: the mtime and ctime
	// (times.go).
	changed func() time.Time
}

// attrs are the attributes of a file that does not change: perm bits, the
// mount's start as its times.
func (f *FS) attrs(perm uint32) fileAttrs {
	return fileAttrs{fsys: f, perm: fixed(perm), changed: f.startTime}
}

func fixed(perm uint32) func() uint32 { return func() uint32 { return perm } }

func (f *FS) startTime() time.Time { return f.started }

func (a *fileAttrs) fill(out *fuse.Attr, size uint64) {
	out.Mode = syscall.S_IFREG | a.perm()
	out.Size = size
	out.Ino = a.ino
	a.fsys.setTimes(out)
	setChanged(out, a.changed())
}

// Fsync succeeds on every tree file: a write has taken effect when it
// returns (on config, it is on disk: the model saves it before).
func (a *fileAttrs) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return 0
}

func (a *fileAttrs) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return a.fsys.statfs(out)
}

// refuseTruncate answers a truncation of a file that takes no writes:
// EACCES, but for the poker, whose writes wake watchers.
func (a *fileAttrs) refuseTruncate(ctx context.Context, in *fuse.SetAttrIn) syscall.Errno {
	if _, ok := in.GetSize(); ok && !a.fsys.isSelf(ctx) {
		return syscall.EACCES
	}
	return 0
}

// openRefused opens a file that takes no writes for writing: only the
// poker may (selfOpen).
func (a *fileAttrs) openRefused(ctx context.Context) (gofs.FileHandle, uint32, syscall.Errno) {
	if a.fsys.isSelf(ctx) {
		return selfOpen()
	}
	return nil, 0, syscall.EACCES
}

// setattrTimeout gives a SETATTR reply the attribute timeout GETATTR and
// LOOKUP replies get. go-fuse sends it with none, so the kernel asked
// again (GETATTR) before the write that follows the truncation of `>`.
// The reply carries what a GETATTR would (a status file's: the size of the
// snapshot it renews), so the kernel may keep it as long. The kernel takes
// a SETATTR reply without checking it against invalidations that came
// while it was on its way, which a GETATTR reply is checked against: the
// notifier invalidates a file again once its SETATTRs are settled
// (notify.go, setattrUnsettled).
func (f *FS) setattrTimeout(out *fuse.AttrOut) { out.SetTimeout(f.attrTimeout) }

// static renders a text that never changes.
func static(text string) func() []byte {
	b := []byte(text)
	return func() []byte { return b }
}

// statusFile is a file the model renders (state, README, version). Reads
// come from one snapshot (snapshot.go); the notifier invalidates the
// kernel's copy and pokes watchers after every change (notify.go). Only the
// poker writes to it.
type statusFile struct {
	gofs.Inode
	fileAttrs
	render func() []byte
	rc     readCache // the one snapshot the kernel may hold (snapshot.go)
	seen   kernelSeen
}

var (
	_ gofs.NodeGetattrer = (*statusFile)(nil)
	_ gofs.NodeSetattrer = (*statusFile)(nil)
	_ gofs.NodeOpener    = (*statusFile)(nil)
	_ gofs.NodeReader    = (*statusFile)(nil)
	_ gofs.NodeFsyncer   = (*statusFile)(nil)
	_ gofs.NodeStatfser  = (*statusFile)(nil)
)

func (s *statusFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	first := s.seen.note() // before the rendering (notify.go)
	s.fill(&out.Attr, s.cachedSize())
	if first {
		// The kernel has no page of the file: hand it the snapshot
		// this reply gives the size of (storecache.go).
		s.fsys.notify.wantStore(&s.Inode)
	}
	return 0
}

func (s *statusFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer s.rc.setattrBegin()() // its reply sets the kernel's size unconditionally (snapshot.go)
	if e := s.refuseTruncate(ctx, in); e != 0 {
		return e
	}
	s.fill(&out.Attr, s.cachedSize())
	s.fsys.setattrTimeout(out)
	return 0
}

func (s *statusFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return s.openRead()
	}
	return s.openRefused(ctx)
}

func (s *statusFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return s.readExact(fh, dest, off)
}

// commandFile is a status file whose writes are commands: power, config,
// members, ctl and the switches' ctl files.
type commandFile struct {
	statusFile
	commandSink
}

var (
	_ gofs.NodeSetattrer = (*commandFile)(nil)
	_ gofs.NodeOpener    = (*commandFile)(nil)
)

func (f *FS) newCommandFile(a fileAttrs, render func() []byte, cmds commands) *commandFile {
	c := &commandFile{statusFile: statusFile{fileAttrs: a, render: render}}
	c.commandSink.fsys, c.commandSink.node, c.cmds = f, &c.Inode, cmds
	return c
}

// Setattr accepts the truncation `echo x > file` sends before writing.
func (c *commandFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer c.rc.setattrBegin()() // its reply sets the kernel's size unconditionally (snapshot.go)
	c.truncation(ctx, fh, in)
	c.fill(&out.Attr, c.cachedSize())
	c.fsys.setattrTimeout(out)
	return 0
}

func (c *commandFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return c.openRead()
	}
	return c.openWrite(ctx, flags)
}

func (c *commandFile) sink() *commandSink { return &c.commandSink }

func (c *commandFile) openDetached() (gofs.FileHandle, uint32, syscall.Errno) {
	return &snapHandle{data: c.render(), loaded: true}, fuse.FOPEN_DIRECT_IO, 0
}

// liveFile is a file whose content a driver is asked for on every read (a
// switch's ports and info, vswitch/all): direct I/O with size 0, like
// /proc. The notifier pokes it when the model says it changed.
type liveFile struct {
	gofs.Inode
	fileAttrs
	ask func(ctx context.Context) ([]byte, error)
}

var (
	_ gofs.NodeGetattrer = (*liveFile)(nil)
	_ gofs.NodeSetattrer = (*liveFile)(nil)
	_ gofs.NodeOpener    = (*liveFile)(nil)
	_ gofs.NodeReader    = (*liveFile)(nil)
)

func (l *liveFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.fill(&out.Attr, 0)
	return 0
}

func (l *liveFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if e := l.refuseTruncate(ctx, in); e != 0 {
		return e
	}
	l.fill(&out.Attr, 0)
	l.fsys.setattrTimeout(out)
	return 0
}

func (l *liveFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return l.openRead()
	}
	return l.openRefused(ctx)
}

func (l *liveFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return l.readLive(ctx, fh, dest, off)
}

// liveCommandFile is a live file that takes commands (a switch's config).
type liveCommandFile struct {
	liveFile
	commandSink
}

var (
	_ gofs.NodeSetattrer = (*liveCommandFile)(nil)
	_ gofs.NodeOpener    = (*liveCommandFile)(nil)
)

func (f *FS) newLiveCommandFile(a fileAttrs, ask func(context.Context) ([]byte, error), cmds commands) *liveCommandFile {
	c := &liveCommandFile{liveFile: liveFile{fileAttrs: a, ask: ask}}
	c.commandSink.fsys, c.commandSink.node, c.cmds = f, &c.Inode, cmds
	return c
}

// Setattr accepts the truncation `echo x > file` sends before writing.
func (c *liveCommandFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	c.truncation(ctx, fh, in)
	c.fill(&out.Attr, 0)
	c.fsys.setattrTimeout(out)
	return 0
}

func (c *liveCommandFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return c.openRead()
	}
	return c.openWrite(ctx, flags)
}

func (c *liveCommandFile) sink() *commandSink { return &c.commandSink }

func (c *liveCommandFile) openDetached() (gofs.FileHandle, uint32, syscall.Errno) {
	return c.openRead()
}

// window is the part of data a read at off asks for: a reply longer than
// the request fails in the kernel (EINVAL, and the reader gets EIO), as
// the state of a group of some thousands of members did.
func window(data, dest []byte, off int64) []byte {
	return data[off:min(int64(len(data)), off+int64(len(dest)))]
}

// selfOpen opens a file for the notifier's one-byte write. Direct I/O
// keeps the byte out of the page cache. No FLUSH at close: a daemon killed
// between its open and close would otherwise wait, while exiting, for its
// own answer to that FLUSH and never finish dying.
func selfOpen() (gofs.FileHandle, uint32, syscall.Errno) {
	return selfWrite{}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

// selfWrite takes the notifier's one-byte writes and drops them.
type selfWrite struct{}

func (selfWrite) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return uint32(len(data)), 0
}

func (selfWrite) Flush(ctx context.Context) syscall.Errno { return 0 }
