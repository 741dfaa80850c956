package fs

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
)

// Editing the way tools edit. Editors and config-management tools (sed -i,
// perl -pi, vim, install, ansible's copy, template and lineinfile) write a
// temporary file beside the target, fsync it and rename it over the target.
// In a host, subhost, group or switch directory such a file is kept in
// memory only: it is never a host, a key or a command by itself, is bounded
// (maxTemp bytes, maxTemps per directory), and disappears on unlink, on
// rename, or after tempIdle without use. Renaming it over a tree file is
// one validated step: over config it replaces the whole config
// (Host.ReplaceConfig), over power, members or ctl its content runs as one
// write of it would. Renaming over any other tree file fails (EPERM).
//
// The tree's own files cannot be deleted or replaced by accident: unlink
// of a tree file and rmdir of a host's vswitch/ or subhosts/ fail with
// EPERM, except inside a recursive removal (below).
const (
	maxTemp  = 1 << 20
	maxTemps = 16
	tempIdle = time.Minute
)

// temps are the temporary files of one directory.
type temps struct {
	mu    sync.Mutex
	files map[string]*tempFile
}

// tempDir is a directory that takes temporary files: a host's, a group's
// or a switch's. Each keeps its own, so they go with its node.
type tempDir interface{ tempFiles() *temps }

func (hd *hostDir) tempFiles() *temps   { return &hd.temps }
func (gd *groupDir) tempFiles() *temps  { return &gd.temps }
func (sd *switchDir) tempFiles() *temps { return &sd.temps }

// dirTemps are the temporary files of dir, one of the tempDirs.
func dirTemps(dir *gofs.Inode) *temps {
	return dir.Operations().(tempDir).tempFiles()
}

func (t *temps) get(name string) *tempFile {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.files[name]
}

// tempFile is a temporary file: bytes in memory and the attributes tools
// set (mode, owner, times).
type tempFile struct {
	gofs.Inode
	fsys *FS
	dir  *gofs.Inode

	mu                  sync.Mutex
	name                string
	data                []byte
	held                int // len(data) as counted in the mount's heldBytes
	mode                uint32
	uid, gid            uint32
	atime, mtime, ctime time.Time
	used                time.Time
	timer               *time.Timer
	gone                bool
	// alias is the tree file this one was renamed over: the kernel keeps
	// the renamed inode under the target's name until its entry is
	// invalidated (restoreChild), and until then it acts as the target.
	alias writableFile
}

var (
	_ gofs.NodeGetattrer = (*tempFile)(nil)
	_ gofs.NodeSetattrer = (*tempFile)(nil)
	_ gofs.NodeOpener    = (*tempFile)(nil)
	_ gofs.NodeReader    = (*tempFile)(nil)
	_ gofs.NodeWriter    = (*tempFile)(nil)
	_ gofs.NodeFsyncer   = (*tempFile)(nil)
)

// createTemp creates a temporary file name in dir.
func (f *FS) createTemp(ctx context.Context, dir *gofs.Inode, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if f.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	if dir.GetChild(name) != nil {
		return nil, nil, 0, syscall.EEXIST
	}
	t := dirTemps(dir)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.files[name] != nil {
		return nil, nil, 0, syscall.EEXIST
	}
	if t.files == nil {
		t.files = map[string]*tempFile{}
	}
	if len(t.files) >= maxTemps {
		// "No space left on device": what a tool expects when a
		// directory cannot take another file.
		return nil, nil, 0, syscall.ENOSPC
	}
	c := caller(ctx)
	now := time.Now()
	tf := &tempFile{fsys: f, dir: dir, name: name, mode: mode & 0o7777, uid: c.Uid, gid: c.Gid,
		atime: now, mtime: now, ctime: now, used: now}
	tf.timer = time.AfterFunc(tempIdle, tf.expire)
	t.files[name] = tf
	ch := dir.NewInode(ctx, tf, gofs.StableAttr{Mode: syscall.S_IFREG})
	tf.fill(&out.Attr)
	return ch, nil, fuse.FOPEN_DIRECT_IO, 0
}

// drop forgets tf: unlinked, renamed or idle.
func (tf *tempFile) drop() {
	t := dirTemps(tf.dir)
	t.mu.Lock()
	tf.mu.Lock()
	if t.files[tf.name] == tf {
		delete(t.files, tf.name)
	}
	tf.gone = true
	tf.timer.Stop()
	tf.data = nil
	tf.fsys.held.account(&tf.held, 0)
	tf.mu.Unlock()
	t.mu.Unlock()
}

// expire removes a temporary file left unused for tempIdle (a tool that
// died between writing and renaming).
func (tf *tempFile) expire() {
	tf.mu.Lock()
	if tf.gone {
		tf.mu.Unlock()
		return
	}
	if idle := time.Since(tf.used); idle < tempIdle {
		tf.timer.Reset(tempIdle - idle)
		tf.mu.Unlock()
		return
	}
	name := tf.name
	tf.mu.Unlock()
	tf.drop()
	if tf.dir.GetChild(name) == tf.EmbeddedInode() {
		tf.dir.RmChild(name)
	}
	// From a timer, not a request: the kernel drops the name and tells
	// watchers (IN_DELETE).
	tf.dir.NotifyDelete(name, tf.EmbeddedInode())
}

func (tf *tempFile) touch() { tf.used = time.Now() }

func (tf *tempFile) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | tf.mode
	a.Size = uint64(len(tf.data))
	a.Uid, a.Gid = tf.uid, tf.gid
	a.Nlink = 1
	a.SetTimes(&tf.atime, &tf.mtime, &tf.ctime)
}

func (tf *tempFile) aliased() writableFile {
	tf.mu.Lock()
	defer tf.mu.Unlock()
	return tf.alias
}

func (tf *tempFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if a := tf.aliased(); a != nil {
		return a.Getattr(ctx, fh, out)
	}
	tf.mu.Lock()
	defer tf.mu.Unlock()
	tf.fill(&out.Attr)
	return 0
}

// Setattr does what tools do to the file before they rename it: truncate,
// chmod, chown (the kernel checks who may), set times.
func (tf *tempFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if a := tf.aliased(); a != nil {
		return a.Setattr(ctx, fh, in, out)
	}
	tf.mu.Lock()
	defer tf.mu.Unlock()
	tf.touch()
	now := time.Now()
	if size, ok := in.GetSize(); ok {
		if size > maxTemp {
			return syscall.EFBIG
		}
		if int(size) > len(tf.data) && !tf.fsys.held.room() {
			return syscall.ENOBUFS
		}
		if int(size) <= len(tf.data) {
			tf.data = tf.data[:size]
		} else {
			tf.data = append(tf.data, make([]byte, int(size)-len(tf.data))...)
		}
		tf.fsys.held.account(&tf.held, len(tf.data))
		tf.mtime = now
	}
	if mode, ok := in.GetMode(); ok {
		tf.mode = mode & 0o7777
	}
	if uid, ok := in.GetUID(); ok {
		tf.uid = uid
	}
	if gid, ok := in.GetGID(); ok {
		tf.gid = gid
	}
	if t, ok := in.GetATime(); ok {
		tf.atime = t
	}
	if t, ok := in.GetMTime(); ok {
		tf.mtime = t
	}
	tf.ctime = now
	tf.fill(&out.Attr)
	return 0
}

func (tf *tempFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if a := tf.aliased(); a != nil {
		if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
			return a.openDetached()
		}
		return a.Open(ctx, flags)
	}
	tf.mu.Lock()
	defer tf.mu.Unlock()
	tf.touch()
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		tf.data = tf.data[:0]
		tf.fsys.held.account(&tf.held, 0)
	}
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (tf *tempFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if a := tf.aliased(); a != nil {
		return a.Read(ctx, fh, dest, off)
	}
	tf.mu.Lock()
	defer tf.mu.Unlock()
	tf.touch()
	if off >= int64(len(tf.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(append([]byte(nil), window(tf.data, dest, off)...)), 0
}

func (tf *tempFile) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if a := tf.aliased(); a != nil {
		if w, ok := fh.(gofs.FileWriter); ok {
			return w.Write(ctx, data, off)
		}
		return 0, syscall.EBADF
	}
	tf.mu.Lock()
	defer tf.mu.Unlock()
	tf.touch()
	end := off + int64(len(data))
	if end > maxTemp {
		return 0, syscall.EFBIG
	}
	if int(end) > len(tf.data) {
		if !tf.fsys.held.room() {
			return 0, syscall.ENOBUFS
		}
		tf.data = append(tf.data, make([]byte, int(end)-len(tf.data))...)
	}
	copy(tf.data[off:], data)
	tf.fsys.held.account(&tf.held, len(tf.data))
	tf.mtime = time.Now()
	tf.ctime = tf.mtime
	return uint32(len(data)), 0
}

// Fsync succeeds: a temporary file lives in memory, and what it becomes
// takes effect at the rename.
func (tf *tempFile) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return 0
}

// Fsync succeeds on console and serial sessions: their writes are sent
// when they return.
func (c *sessionFile) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return 0
}

// replaceTarget says what renaming a temporary file over the tree file
// child of a directory does: apply runs its text; nil apply means the
// file cannot be replaced.
type replaceTarget func(child *gofs.Inode, name string) func(ctx context.Context, text string) error

// asWrite applies text to a writable tree file as one write of it would
// (the rename replaces the file: lists are replaced, as by `>`).
func asWrite(child *gofs.Inode, name string) func(ctx context.Context, text string) error {
	c, ok := child.Operations().(writableFile)
	if !ok {
		return nil
	}
	return func(ctx context.Context, text string) error {
		err := c.sink().run(ctx, text, true)
		c.sink().ran()
		return err
	}
}

// renameTemp renames the temporary file name of dir to newName.
func (f *FS) renameTemp(ctx context.Context, dir *gofs.Inode, name string, newParent gofs.InodeEmbedder, newName string, flags uint32, target replaceTarget) syscall.Errno {
	t := dirTemps(dir)
	tf := t.get(name)
	if tf == nil {
		if dir.GetChild(name) != nil {
			// A tree file cannot move away: vim then copies it to
			// its backup instead.
			return syscall.EPERM
		}
		return syscall.ENOENT
	}
	if newParent.EmbeddedInode() != dir {
		return syscall.EXDEV // mv then copies and unlinks
	}
	if flags&^uint32(fuseRenameNoreplace) != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT
	}
	if name == newName {
		return 0
	}
	if other := t.get(newName); other != nil {
		if flags&fuseRenameNoreplace != 0 {
			return syscall.EEXIST
		}
		other.drop()
	}
	child := dir.GetChild(newName)
	if child == nil || t.get(newName) != nil || child.Operations() == tf {
		// Another temporary name.
		t.mu.Lock()
		tf.mu.Lock()
		delete(t.files, tf.name)
		tf.name = newName
		t.files[newName] = tf
		tf.touch()
		tf.mu.Unlock()
		t.mu.Unlock()
		return 0
	}
	if _, isTemp := child.Operations().(*tempFile); isTemp {
		return syscall.EBUSY // a renamed one, still under its target's name
	}
	if flags&fuseRenameNoreplace != 0 {
		return syscall.EEXIST
	}
	apply := target(child, newName)
	if apply == nil {
		return syscall.EPERM
	}
	tf.mu.Lock()
	text := string(tf.data)
	tf.touch()
	tf.mu.Unlock()
	if tooLong(nil, []byte(text)) {
		return syscall.EINVAL
	}
	if err := apply(ctx, text); err != nil {
		return errno(err)
	}
	tf.drop()
	tf.mu.Lock()
	tf.alias, _ = child.Operations().(writableFile)
	tf.mu.Unlock()
	f.restoreChild(dir, newName, child)
	return 0
}

// fuseRenameNoreplace is RENAME_NOREPLACE.
const fuseRenameNoreplace = 1

// restoreChild puts a tree file back under its name after a request that
// go-fuse answers by moving or removing it in its own tree (a rename over
// it, an unlink accepted inside a recursive removal), and makes the kernel
// look the name up again. It runs after the request is answered: the
// kernel holds the directory locked until then.
func (f *FS) restoreChild(dir *gofs.Inode, name string, child *gofs.Inode) {
	go func() {
		deadline := time.Now().Add(2 * time.Second)
		for dir.GetChild(name) == child && time.Now().Before(deadline) {
			select {
			case <-f.done:
				return
			case <-time.After(time.Millisecond):
			}
		}
		dir.AddChild(name, child, true)
		dir.NotifyEntry(name)
	}()
}

// unlinkTemp removes a temporary file; false if name is none.
func unlinkTemp(dir *gofs.Inode, name string) bool {
	tf := dirTemps(dir).get(name)
	if tf == nil {
		return false
	}
	tf.drop()
	return true
}

// A recursive removal (rm -r, find -delete, Python's shutil.rmtree) holds
// a directory open while it removes its entries, and then removes the
// directory. Inside one, the unlink of a host's own files (and the rmdir
// of its vswitch/ and subhosts/) is accepted and changes nothing, so that
// the rmdir of the host that follows removes it as a plain rmdir would; if
// the host cannot be removed now (it or a subhost runs, or has a command
// in flight), they fail with EBUSY and rm removes nothing. Without a
// directory of the host held open, they fail with EPERM.

// removalGate decides the removal of one of the tree's own entries of the
// directory at path dir. needHost: only the removal of a whole host
// (a held host directory at or above dir) may accept it; else holding dir
// or any directory above it is enough (a group's or a switch's files).
func (f *FS) removalGate(ctx context.Context, dir string, needHost bool) syscall.Errno {
	held := f.heldDirs(ctx)
	var top *model.Host
	inside := false
	for _, p := range held {
		if p != dir && !strings.HasPrefix(dir, p+"/") {
			continue
		}
		inside = true
		if h := f.tree.Host(p); h != nil && (top == nil || len(p) < len(top.Path())) {
			top = h
		}
	}
	if !inside || needHost && top == nil {
		return syscall.EPERM
	}
	if top != nil {
		if err := f.tree.RemoveBusy(top); err != nil {
			return errno(err)
		}
	}
	return 0
}

// recursiveBusy refuses, inside a recursive removal of a busy host, the
// rmdir of one of its subhosts: `rm -rf hosts/X` removes nothing while X
// is busy, not even an idle subhost of it.
func (f *FS) recursiveBusy(ctx context.Context, dir string) syscall.Errno {
	for _, p := range f.heldDirs(ctx) {
		if p == dir || strings.HasPrefix(dir, p+"/") {
			if h := f.tree.Host(p); h != nil {
				if err := f.tree.RemoveBusy(h); err != nil {
					return errno(err)
				}
			}
		}
	}
	return 0
}

// heldDirs lists the directories of the mount the caller's process holds
// open, as paths relative to the mount.
func (f *FS) heldDirs(ctx context.Context) []string {
	c := caller(ctx)
	if c.Pid == 0 {
		return nil
	}
	mnt, err := filepath.Abs(f.mountpoint)
	if err != nil {
		return nil
	}
	fdDir := "/proc/" + strconv.FormatUint(uint64(c.Pid), 10) + "/fd"
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(fdDir + "/" + e.Name())
		if err != nil {
			continue
		}
		rel, ok := strings.CutPrefix(target, mnt+"/")
		if !ok {
			continue
		}
		out = append(out, rel)
	}
	return out
}

// The directories' removal and rename operations.

var (
	_ gofs.NodeCreater  = (*hostDir)(nil)
	_ gofs.NodeUnlinker = (*hostDir)(nil)
	_ gofs.NodeRenamer  = (*hostDir)(nil)
	_ gofs.NodeRmdirer  = (*hostDir)(nil)
	_ gofs.NodeCreater  = (*groupDir)(nil)
	_ gofs.NodeUnlinker = (*groupDir)(nil)
	_ gofs.NodeRenamer  = (*groupDir)(nil)
	_ gofs.NodeCreater  = (*switchDir)(nil)
	_ gofs.NodeUnlinker = (*switchDir)(nil)
	_ gofs.NodeRenamer  = (*switchDir)(nil)
	_ gofs.NodeUnlinker = (*vswitchDir)(nil)
	_ gofs.NodeUnlinker = (*rootDir)(nil)
	_ gofs.NodeRmdirer  = (*rootDir)(nil)
)

// removeOwn handles the unlink or rmdir of one of the tree's own entries.
func (f *FS) removeOwn(ctx context.Context, dir *gofs.Inode, name string, needHost bool) syscall.Errno {
	child := dir.GetChild(name)
	if child == nil {
		return syscall.ENOENT
	}
	if e := f.removalGate(ctx, dir.Path(nil), needHost); e != 0 {
		return e
	}
	// Accepted inside a recursive removal: go-fuse drops the child on
	// success, so it is put back; the host's rmdir removes it all.
	f.restoreChild(dir, name, child)
	return 0
}

func (hd *hostDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return hd.fsys.createTemp(ctx, &hd.Inode, name, mode, out)
}

func (hd *hostDir) Unlink(ctx context.Context, name string) syscall.Errno {
	if unlinkTemp(&hd.Inode, name) {
		return 0
	}
	return hd.fsys.removeOwn(ctx, &hd.Inode, name, true)
}

func (hd *hostDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	return hd.fsys.removeOwn(ctx, &hd.Inode, name, true)
}

func (hd *hostDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	h := hd.host
	return hd.fsys.renameTemp(ctx, &hd.Inode, name, newParent, newName, flags, func(child *gofs.Inode, target string) func(context.Context, string) error {
		if target == "config" {
			return func(ctx context.Context, text string) error { return h.ReplaceConfig(ctx, text, caller(ctx)) }
		}
		return asWrite(child, target)
	})
}

func (gd *groupDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return gd.fsys.createTemp(ctx, &gd.Inode, name, mode, out)
}

func (gd *groupDir) Unlink(ctx context.Context, name string) syscall.Errno {
	if unlinkTemp(&gd.Inode, name) {
		return 0
	}
	return gd.fsys.removeOwn(ctx, &gd.Inode, name, false)
}

func (gd *groupDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return gd.fsys.renameTemp(ctx, &gd.Inode, name, newParent, newName, flags, asWrite)
}

func (sd *switchDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return sd.fsys.createTemp(ctx, &sd.Inode, name, mode, out)
}

func (sd *switchDir) Unlink(ctx context.Context, name string) syscall.Errno {
	if unlinkTemp(&sd.Inode, name) {
		return 0
	}
	return sd.fsys.removeOwn(ctx, &sd.Inode, name, false)
}

func (sd *switchDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return sd.fsys.renameTemp(ctx, &sd.Inode, name, newParent, newName, flags, asWrite)
}

// Unlink of vswitch/all or vswitch/ctl: a host's own files.
func (d *vswitchDir) Unlink(ctx context.Context, name string) syscall.Errno {
	return d.fsys.removeOwn(ctx, &d.Inode, name, true)
}

// The root's files and hosts/ and groups/ are never removed.
func (r *rootDir) Unlink(ctx context.Context, name string) syscall.Errno {
	if r.GetChild(name) == nil {
		return syscall.ENOENT
	}
	return syscall.EPERM
}

func (r *rootDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	if r.GetChild(name) == nil {
		return syscall.ENOENT
	}
	return syscall.EPERM
}

var _ gofs.NodeSetxattrer = (*tempFile)(nil)

// Setxattr is not supported (EOPNOTSUPP): tools that copy ACLs (sed -i,
// cp -a) take that as "no ACLs here" and set the mode instead, where
// go-fuse's default (ENODATA) made sed warn.
func (tf *tempFile) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EOPNOTSUPP
}
