// Package fs maps the machine model (package model) onto a FUSE filesystem
// with go-fuse: directories for hosts, control files that take commands,
// status files that are always fresh, event streams, and notifications that
// wake inotify watchers. It holds no machine logic: every write becomes a
// call into the model, every read renders the model's current state.
//
// Each kind of file is a small node type (files.go): statusFile (rendered
// from the model, served from one snapshot), commandFile (a status file
// whose writes are commands, through the shared lineWriter of
// commands.go), liveFile (asked of a driver on every read), logFile
// (events.log and events.log.1), and the streams and sessions (events,
// serial, console). Directories are node types of their own (dirs.go,
// groups.go, vswitch.go).
//
// Freshness follows the /proc and sysfs model. Status files are opened with
// FOPEN_KEEP_CACHE so repeated reads cost what tmpfs costs, and a worker
// invalidates their cache (NotifyContent) after every change the model
// reports; eventChanges (changes.go) says which files each kind of event
// changes. Because the kernel raises no inotify event for an invalidation,
// the worker also has the poker, a child process, write one byte to each
// changed file through the mount (poker.go); the file recognises the
// poker's thread and drops the byte, and watchers get IN_MODIFY and
// IN_CLOSE_WRITE as for any write.
package fs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/internal/cloexec"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// Options configure a mount.
type Options struct {
	// Owner owns every file; Group is the operators group, whose members
	// may write control files.
	Owner, Group uint32
	// AllowOther lets every user reach the mount; the kernel checks the
	// file modes (default_permissions is always set).
	AllowOther bool
	// ReadOnly mounts read-only.
	ReadOnly bool
	// Debug logs every FUSE request.
	Debug bool
	// FsName is the source shown in /proc/mounts.
	FsName string
	// Version is the text of the version file.
	Version string
	// README is the text of the README file.
	README string
	// Log receives the layer's own log.
	Log *slog.Logger
	// MaxReaders caps the events streams open at once, all events files
	// together; more opens fail with EBUSY. 0: DefaultMaxReaders.
	MaxReaders int
	// AfterWrite, when set, is called once a command written to a file
	// ran (or failed), before the WRITE (or the FLUSH of a last line) is
	// answered, with the file's path in the tree ("hosts/lab01/power"):
	// a view of the tree kept elsewhere (the status directory) brings
	// itself up to date there, so the writer reads its outcome in it.
	AfterWrite func(path string)
}

// FS is a mounted machine tree.
type FS struct {
	tree       *model.Tree
	opts       Options
	mountpoint string
	server     *fuse.Server
	started    time.Time
	done       chan struct{} // closed at unmount: releases blocked streams
	// stopping ends at unmount, first thing: writes that wait in the
	// daemon fail with ESHUTDOWN and openers held by a write gate go.
	stopping context.Context
	stop     context.CancelFunc

	// root is the tree of inodes go-fuse keeps: the notifier finds the
	// directories the kernel looked up in it (nodeAt), by their path.
	root *rootDir

	// attrTimeout is how long the kernel may keep attributes it got
	// (GETATTR, LOOKUP and SETATTR replies alike).
	attrTimeout time.Duration

	notify  *notifier
	poker   *poker
	readers readerSlots // open events streams (files.go)
	held    heldBytes   // bytes kept for writers (files.go)
}

// Mount mounts tree at mountpoint and returns once the kernel serves it.
func Mount(tree *model.Tree, mountpoint string, o Options) (*FS, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	f := &FS{
		tree:       tree,
		opts:       o,
		mountpoint: mountpoint,
		started:    time.Now(),
		done:       make(chan struct{}),
	}
	f.stopping, f.stop = context.WithCancel(context.Background())
	f.notify = newNotifier(f)
	// Cached entries and attributes are safe because every change is
	// invalidated by the notifier (NotifyContent also drops attributes,
	// NotifyEntry names); a long timeout saves two LOOKUPs per open.
	// Negative entries are not cached, so a host added by ctl or SIGHUP
	// appears at once.
	entry, attr, negative := time.Minute, time.Minute, time.Duration(0)
	f.attrTimeout = attr
	mo := fuse.MountOptions{
		AllowOther:    o.AllowOther,
		DirectMount:   os.Geteuid() == 0,
		FsName:        o.FsName,
		Name:          "machinefs",
		Debug:         o.Debug,
		MaxReadAhead:  128 << 10,
		DisableSplice: true,
		// No file of the tree has extended attributes (a temporary
		// file's setxattr was EOPNOTSUPP already). ENOSYS to the first
		// GETXATTR, SETXATTR or REMOVEXATTR makes the kernel stop asking
		// for the whole connection and answer EOPNOTSUPP itself: every
		// write had cost a GETXATTR of security.capability (the kernel
		// checks it before it truncates or writes), and `ls -l` one or
		// two per file listed.
		DisableXAttrs: true,
		Options:       []string{"default_permissions"},
	}
	if o.FsName == "" {
		mo.FsName = "machinefs"
	}
	if o.ReadOnly {
		mo.Options = append(mo.Options, "ro")
	}
	// The poker exists before the first request, so requests can tell it.
	p, err := startPoker()
	if err != nil {
		f.stop()
		return nil, err
	}
	f.poker = p
	server, err := f.mountChannel(&gofs.Options{
		MountOptions:    mo,
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		RootStableAttr:  &gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: rootIno},
		UID:             o.Owner,
		GID:             o.Group,
	})
	if err != nil {
		p.stop()
		f.stop()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	f.server = server
	stop := tree.Watch(f.notify.onEvent)
	f.notify.start(stop, f.poker)
	return f, nil
}

// mountChannel mounts the tree and makes sure that no process the daemon
// starts later (subhost init, UML guest, poker, fusermount) inherits the
// FUSE channel. Whoever holds /dev/fuse can read and answer the tree's
// requests in the daemon's place, and keeps the connection alive: after a
// kill -9 of the daemon, the mount would hang every caller (and the next
// daemon's stale-mount check) instead of failing with ENOTCONN.
//
// go-fuse's direct mount (root) opens /dev/fuse without O_CLOEXEC, and its
// poll hack opens a file of the mount the same way. So the direct mount
// runs under syscall.ForkLock's read side, which every fork of the process
// (os/exec, syscall.ForkExec) takes for writing: no child can be forked
// while those descriptors are inheritable, and every descriptor above
// stderr is marked close-on-exec before the lock is released. It is
// strict (no fusermount fallback inside go-fuse): that fallback forks and
// would deadlock on the lock. The fallback is done here instead, outside
// the lock: the fusermount path receives the descriptor with
// MSG_CMSG_CLOEXEC, so it is never inheritable.
func (f *FS) mountChannel(opts *gofs.Options) (*fuse.Server, error) {
	if opts.DirectMount {
		direct := *opts
		direct.DirectMountStrict = true
		f.root = &rootDir{fsys: f}
		syscall.ForkLock.RLock()
		server, err := gofs.Mount(f.mountpoint, f.root, &direct)
		cloexec.AllLocked()
		syscall.ForkLock.RUnlock()
		if err == nil {
			return server, nil
		}
		f.opts.Log.Warn("direct mount failed; trying fusermount3", "mountpoint", f.mountpoint, "err", err)
		opts.DirectMount = false
	}
	// A fresh root: the failed try may have initialised the first one.
	f.root = &rootDir{fsys: f}
	server, err := gofs.Mount(f.mountpoint, f.root, opts)
	cloexec.All()
	return server, err
}

// Wait blocks until the filesystem is unmounted (by Unmount, fusermount -u
// or umount).
func (f *FS) Wait() { f.server.Wait() }

// Unmount ends the waits in flight (ESHUTDOWN), stops the notifier,
// releases blocked readers and unmounts. When
// the mount stays busy (a shell's working directory is in it), it is
// detached lazily after about two seconds: a daemon told to stop stops, and
// the busy users get ENOTCONN once the daemon has exited.
func (f *FS) Unmount() error {
	// Waits in flight end first: each holds its file's inode lock in the
	// kernel, so the notifier's write to that file, and the unmount
	// itself, would wait for the whole of the wait.
	f.stop()
	f.notify.stop()
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	var err error
	for i := 0; i < 5; i++ {
		// Each try of go-fuse's Unmount retries for ~0.3s itself.
		if err = f.server.Unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.opts.Log.Warn("mount busy; detaching it lazily", "mountpoint", f.mountpoint, "err", err)
	if os.Geteuid() == 0 {
		if derr := syscall.Unmount(f.mountpoint, syscall.MNT_DETACH); derr != nil {
			return fmt.Errorf("unmount %s: %w (lazy: %v)", f.mountpoint, err, derr)
		}
		return nil
	}
	if out, derr := exec.Command("fusermount3", "-u", "-z", f.mountpoint).CombinedOutput(); derr != nil {
		return fmt.Errorf("unmount %s: %w (lazy: %v: %s)", f.mountpoint, err, derr, out)
	}
	return nil
}

// modes for the tree's files. Status files carry no write bit, except
// for the owner when the daemon does not run as root: the poker runs as the
// daemon's user and writes to them to wake watchers, and only root needs no
// bit for that.
func (f *FS) statusMode() uint32 {
	if f.opts.Owner == 0 {
		return 0o444
	}
	return 0o644
}

func (f *FS) writable(mode uint32) uint32 {
	if f.opts.ReadOnly {
		return mode &^ 0o222
	}
	return mode
}

// caller returns who is making a request.
func caller(ctx context.Context) model.Caller {
	if c, ok := fuse.FromContext(ctx); ok {
		return model.Caller{Uid: c.Uid, Gid: c.Gid, Pid: c.Pid}
	}
	return model.Caller{}
}

// isSelf reports whether the request comes from the notifier's poker.
// FUSE reports the caller's thread id, so look among the poker's threads.
func (f *FS) isSelf(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 || f.poker == nil {
		return false
	}
	return f.poker.owns(c.Pid)
}

// nodeAt returns the node of the directory at path in the mount ("hosts/a",
// "groups/g", "hosts/a/vswitch/s"), or nil when the kernel never looked it
// up: such a directory has no open files and no watchers to tell.
func (f *FS) nodeAt(path string) gofs.InodeEmbedder {
	ino := f.root.EmbeddedInode()
	for name := range strings.SplitSeq(path, "/") {
		if ino = ino.GetChild(name); ino == nil {
			return nil
		}
	}
	return ino.Operations()
}

// errno turns a model error into the errno the caller gets.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return machine.ErrnoOf(err)
}
