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

// cachedSize is the size the kernel gets: that of a fresh snapshot, which
// READs through the page cache are served from from now on.
func (s *statusFile) cachedSize() uint64 {
	fresh := s.render()
	s.rc.mu.Lock()
	s.rc.renewLocked(fresh)
	s.rc.mu.Unlock()
	return uint64(len(fresh))
}

// snapHandle is an open with a snapshot of its own, read with direct I/O;
// each read pass from offset 0 takes a new one.
type snapHandle struct {
	mu     sync.Mutex
	data   []byte
	loaded bool
}

// openRead opens s for reading (see readCache).
func (s *statusFile) openRead() (gofs.FileHandle, uint32, syscall.Errno) {
	fresh := s.render()
	s.rc.mu.Lock()
	cached := s.rc.valid && bytes.Equal(fresh, s.rc.snap) && s.rc.settledLocked() && len(fresh) <= pageSize
	s.rc.mu.Unlock()
	if cached {
		return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	return &snapHandle{data: fresh, loaded: true}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

// readExact serves a READ of a status file: at most len(dest) bytes, from
// the open's snapshot, the kernel's snapshot (cached opens), or a fresh
// rendering (a read through a file opened for writing too).
func (s *statusFile) readExact(fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var data []byte
	switch h := fh.(type) {
	case *snapHandle:
		h.mu.Lock()
		// A read from offset 0 starts a new pass, as in seq_file: a
		// monitor that keeps the file open and preads it sees changes.
		if !h.loaded || off == 0 {
			h.data, h.loaded = s.render(), true
		}
		data = h.data
		h.mu.Unlock()
	case nil:
		s.rc.mu.Lock()
		if !s.rc.valid {
			s.rc.renewLocked(s.render())
		}
		data = s.rc.snap
		s.rc.mu.Unlock()
	default:
		// An open for reading and writing: direct I/O, fresh.
		data = s.render()
	}
	return readAt(data, dest, off)
}

// openRead opens a live file for reading. Its content is asked for at the
// first read: the driver is asked once per pass, and small reads (dd
// bs=16) of one pass are of one answer.
func (l *liveFile) openRead() (gofs.FileHandle, uint32, syscall.Errno) {
	return &snapHandle{}, fuse.FOPEN_DIRECT_IO, 0
}

// readLive serves a READ of a live file: from the open's answer, asked
// again at each pass from offset 0, or fresh (an open for writing too).
func (l *liveFile) readLive(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*snapHandle)
	if !ok {
		data, err := l.ask(ctx)
		if err != nil {
			return nil, errno(err)
		}
		return readAt(data, dest, off)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.loaded || off == 0 {
		b, err := l.ask(ctx)
		if err != nil {
			return nil, errno(err)
		}
		h.data, h.loaded = b, true
	}
	return readAt(h.data, dest, off)
}

// readAt answers a READ at off from data.
func readAt(data, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(window(data, dest, off)), 0
}
