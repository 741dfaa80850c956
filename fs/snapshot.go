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
// The kernel caches a status file's size (i_size) and its pages apart.
// Size and pages rendered at different moments are how a reader saw a
// size over content that was shorter by then: the kernel fills the rest
// of the page with zeros. So every answer the kernel caches comes from one
// snapshot per file, readCache.snap: a GETATTR (or LOOKUP) renews it and
// reports its size, and every READ through the page cache is served from
// it, never from a newer rendering. A reply that changes the size makes
// the kernel drop the file's pages (go-fuse runs it with auto_inval_data),
// and the notifier's invalidation after every change makes it ask again.
//
// An open takes a snapshot of its own, read with direct I/O (so neither
// the kernel's size nor its pages play a part) unless the file is small
// (one page: the kernel reads it whole in one READ), equal to the kernel's
// snapshot and settled (left alone for a while: no reply to the kernel is
// still on its way). So a file read while it changes (a long config, the
// state of a large group, a status file under a loop of writes) is read
// exactly, from one snapshot to its end, and the page cache serves the
// common case, a file that has not changed, as cheaply as tmpfs.
type readCache struct {
	mu    sync.Mutex
	snap  []byte
	valid bool // snap holds a rendering
	// changedAt is when the snapshot last changed.
	changedAt time.Time
	// SETATTR replies (the truncation of `>`) set the kernel's size
	// too: setattrs are in progress, setattrEnd is when the last ended.
	setattrs   int
	setattrEnd time.Time
}

// settle is how long a file must have been left alone before an open may
// read it through the page cache: replies the kernel may still take, or
// drop in a race with another (attr_version), are gone by then.
const settle = 50 * time.Millisecond

// settledLocked reports whether the kernel's view of the file is settled.
func (rc *readCache) settledLocked() bool {
	return rc.setattrs == 0 && time.Since(rc.setattrEnd) >= settle && time.Since(rc.changedAt) >= settle
}

// setattrBegin marks a SETATTR in progress; the returned func ends it.
func (rc *readCache) setattrBegin() func() {
	rc.mu.Lock()
	rc.setattrs++
	rc.mu.Unlock()
	return func() {
		rc.mu.Lock()
		rc.setattrs--
		rc.setattrEnd = time.Now()
		rc.mu.Unlock()
	}
}

// renewLocked makes fresh the kernel's snapshot. The first one is no
// change: the kernel had nothing of the file before.
func (rc *readCache) renewLocked(fresh []byte) {
	switch {
	case !rc.valid:
		rc.snap, rc.valid = fresh, true
	case !bytes.Equal(fresh, rc.snap):
		rc.snap, rc.changedAt = fresh, time.Now()
	}
}

// pageSize bounds what a cached open may read: a file within one page is
// read by the kernel in a single READ, so no reader gets pages of two
// snapshots.
var pageSize = os.Getpagesize()

// cached reports whether c is a file rendered from the model on every
// change (power, state, config, members, README), as opposed to a live
// file (a driver asked on every read) or a log.
func (c *contentFile) cached() bool {
	return c.live == nil && c.log == nil && c.read != nil
}

// cachedSize is the size the kernel gets: that of a fresh snapshot, which
// READs through the page cache are served from from now on.
func (c *contentFile) cachedSize() uint64 {
	if c.read == nil {
		return 0 // write-only (ctl)
	}
	fresh := c.read()
	c.rc.mu.Lock()
	c.rc.renewLocked(fresh)
	c.rc.mu.Unlock()
	return uint64(len(fresh))
}

// snapHandle is an open with a snapshot of its own, read with direct I/O;
// each read pass from offset 0 takes a new one.
type snapHandle struct {
	mu     sync.Mutex
	data   []byte
	loaded bool
}

// openRead opens c for reading (see readCache).
func (c *contentFile) openRead(ctx context.Context) (gofs.FileHandle, uint32, syscall.Errno) {
	if c.live != nil {
		// Loaded at the first read: the driver is asked once per pass,
		// and small reads (dd bs=16) of one pass are of one answer.
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
	cached := c.rc.valid && bytes.Equal(fresh, c.rc.snap) && c.rc.settledLocked() && len(fresh) <= pageSize
	c.rc.mu.Unlock()
	if cached {
		return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
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
		// A read from offset 0 starts a new pass, as in seq_file: a
		// monitor that keeps the file open and preads it sees changes.
		if !h.loaded || off == 0 {
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
			c.rc.renewLocked(c.read())
		}
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
