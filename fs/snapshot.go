package fs

import (
	"bytes"
	"context"
	"os"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Reads are exact: every reader sees the size and the bytes of one
// snapshot of a file, never NUL padding and never a reply longer than it
// asked for.
//
// The kernel caches a status file's size (i_size) and its pages apart, and
// go-fuse runs it with explicit invalidation: a GETATTR that reports a new
// size does not drop the cached pages. Size and pages that the kernel got
// at different moments are how a reader saw a new, longer size over the
// old page, whose tail is zeros. So the kernel is only ever given one
// snapshot per file, readCache.snap: GETATTR reports its size and every
// READ through the page cache is served from it. The snapshot changes
// only when the kernel holds nothing of the old one (switchSnapshot): the
// daemon invalidates the file and takes the new snapshot only if no
// GETATTR or READ was answered from the old one during the invalidation.
//
// An open is always fresh: when the content differs from the snapshot, or
// is larger than one page (a long config, the state of a large group,
// which a reader may read in pieces while it changes), the open gets a
// snapshot of its own and direct I/O, so its reads ignore the page cache
// and read exactly that snapshot to its end. The page cache serves the
// common case: a small file that has not changed since the kernel last
// read it, as cheap to re-read as tmpfs.
type readCache struct {
	mu      sync.Mutex
	snap    []byte
	valid   bool // snap holds a rendering
	touched bool // the kernel was answered from snap during a switch
	queued  bool // a switch is running
	// setattrAt is when a SETATTR was last answered. The kernel takes a
	// SETATTR reply's size even when it arrives after an invalidation
	// (unlike GETATTR and LOOKUP replies, which it then drops), so no
	// switch invalidates within setattrSettle of one.
	setattrAt time.Time
}

// setattrSettle is how long a SETATTR reply may take to reach the kernel.
const setattrSettle = 20 * time.Millisecond

func (rc *readCache) setattr() {
	rc.mu.Lock()
	rc.setattrAt = time.Now()
	rc.mu.Unlock()
}

// pageSize bounds what a cached open may read: a file within one page is
// read by the kernel in a single READ, so no reader can get pages of two
// snapshots.
var pageSize = os.Getpagesize()

// cached reports whether c is a file rendered from the model on every
// change (power, state, config, members, README), as opposed to a live
// file (a driver asked on every read) or a log.
func (c *contentFile) cached() bool {
	return c.live == nil && c.log == nil && c.read != nil
}

// cachedSize is the size the kernel gets: that of the kernel's snapshot.
// A content that differs starts a switch, so the next stat sees it.
func (c *contentFile) cachedSize() uint64 {
	if c.read == nil {
		return 0 // write-only (ctl)
	}
	fresh := c.read()
	c.rc.mu.Lock()
	if !c.rc.valid {
		c.rc.snap, c.rc.valid = fresh, true
	}
	c.rc.touched = true
	n := len(c.rc.snap)
	changed := !bytes.Equal(fresh, c.rc.snap)
	c.rc.mu.Unlock()
	if changed {
		c.requestSwitch()
	}
	return uint64(n)
}

// snapHandle is an open with a snapshot of its own, read with direct I/O.
type snapHandle struct {
	mu     sync.Mutex
	data   []byte
	loaded bool
}

// openRead opens c for reading (see readCache).
func (c *contentFile) openRead(ctx context.Context) (gofs.FileHandle, uint32, syscall.Errno) {
	if c.live != nil {
		// Loaded at the first read: the driver is asked once per open,
		// and small reads (dd bs=16) of one open are of one answer.
		return &snapHandle{}, fuse.FOPEN_DIRECT_IO, 0
	}
	if c.read == nil && c.log == nil {
		return nil, 0, syscall.EACCES
	}
	if c.log != nil {
		return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	fresh := c.read()
	c.rc.mu.Lock()
	if !c.rc.valid {
		c.rc.snap, c.rc.valid = fresh, true
	}
	same := bytes.Equal(fresh, c.rc.snap)
	c.rc.mu.Unlock()
	if same && len(fresh) <= pageSize {
		// Cached: repeated reads cost what tmpfs costs.
		return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	if !same {
		c.requestSwitch()
	}
	return &snapHandle{data: fresh, loaded: true}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

// readExact serves a READ of a cached or live file: at most len(dest)
// bytes, from the open's snapshot, the kernel's snapshot (cached opens),
// or a fresh rendering (a read through a file opened for writing too).
func (c *contentFile) readExact(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var data []byte
	switch h := fh.(type) {
	case *snapHandle:
		h.mu.Lock()
		if !h.loaded {
			if c.live != nil {
				b, err := c.live(ctx)
				if err != nil {
					h.mu.Unlock()
					return nil, errno(err)
				}
				h.data = b
			} else if c.read != nil {
				h.data = c.read()
			}
			h.loaded = true
		}
		data = h.data
		h.mu.Unlock()
	case nil:
		if !c.cached() {
			return fuse.ReadResultData(nil), 0
		}
		c.rc.mu.Lock()
		if !c.rc.valid {
			c.rc.snap, c.rc.valid = c.read(), true
		}
		c.rc.touched = true
		data = c.rc.snap
		c.rc.mu.Unlock()
	default:
		// An open for reading and writing: direct I/O, fresh.
		if c.live != nil {
			b, err := c.live(ctx)
			if err != nil {
				return nil, errno(err)
			}
			data = b
		} else {
			data = c.content()
		}
	}
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(window(data, dest, off)), 0
}

// requestSwitch starts a switch of the kernel's snapshot unless one runs.
func (c *contentFile) requestSwitch() {
	c.rc.mu.Lock()
	if c.rc.queued {
		c.rc.mu.Unlock()
		return
	}
	c.rc.queued = true
	c.rc.mu.Unlock()
	// Never from inside the FUSE request: an invalidation waits for
	// the pages that requests hold.
	go c.switchSnapshot()
}

// switchSnapshot gives the kernel a new snapshot: it invalidates the
// file's pages and attributes, and the new snapshot is taken only if the
// kernel was answered nothing from the old one in the meantime (else the
// answer might be cached still, and it tries again). Readers meanwhile
// read exact snapshots of their own (openRead).
func (c *contentFile) switchSnapshot() {
	defer func() {
		c.rc.mu.Lock()
		c.rc.queued = false
		c.rc.mu.Unlock()
	}()
	ino := c.EmbeddedInode()
	for round := 0; round < 10; round++ {
		fresh := c.read()
		c.rc.mu.Lock()
		if bytes.Equal(fresh, c.rc.snap) {
			c.rc.mu.Unlock()
			return
		}
		settling := time.Since(c.rc.setattrAt) < setattrSettle
		c.rc.touched = false
		c.rc.mu.Unlock()
		if settling {
			select {
			case <-c.fsys.done:
				return
			case <-time.After(setattrSettle):
			}
			continue
		}
		// Replies computed from the old snapshot before this point are
		// harmless once the kernel has taken the invalidation: it drops
		// a GETATTR or LOOKUP reply older than an invalidation
		// (attr_version), and the invalidation waits for pages being
		// read. An inode the kernel does not know (ENOENT) may have its
		// first LOOKUP reply, with the old size, still on the way, for
		// as long as the kernel takes to evict the inode it had: only
		// an invalidation the kernel took lets the snapshot change.
		st := ino.NotifyContent(0, 0)
		c.rc.mu.Lock()
		if !c.rc.touched && st == 0 {
			c.rc.snap = fresh
			c.rc.mu.Unlock()
			return
		}
		c.rc.mu.Unlock()
		select {
		case <-c.fsys.done:
			return
		case <-time.After(time.Millisecond << round):
		}
	}
	// Busy readers kept the old snapshot in use: opens stay direct and
	// exact; the next open or stat that sees the change tries again.
}
