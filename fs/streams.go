package fs

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// eventsFile is a blocking stream of events ("cat events" waits for more);
// each open file is a subscription from the moment of opening.
type eventsFile struct {
	gofs.Inode
	fsys   *FS
	prefix string
}

func (e *eventsFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	e.fsys.setTimes(&out.Attr)
	return 0
}

func (e *eventsFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	if !e.fsys.readers.take(e.fsys.maxReaders()) {
		e.fsys.readers.refused(e.fsys, e.prefix, caller(ctx))
		return nil, 0, syscall.EBUSY
	}
	sub := e.fsys.tree.Subscribe(e.prefix)
	return &eventStream{fsys: e.fsys, sub: sub}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_STREAM | fuse.FOPEN_NONSEEKABLE, 0
}

// DefaultMaxReaders is how many `events` streams (of all the mount's events
// files together) may be open at once when Options.MaxReaders is 0.
const DefaultMaxReaders = 64

func (f *FS) maxReaders() int64 {
	if f.opts.MaxReaders > 0 {
		return int64(f.opts.MaxReaders)
	}
	return DefaultMaxReaders
}

// readerSlots counts a mount's open events streams against its cap. Each
// holds a subscription (a bounded queue of events), so the cap bounds what
// idle readers can make the daemon keep. Atomics, not a lock: opens and
// releases must never wait behind the event bus, which holds its own lock
// while it calls the notifier.
type readerSlots struct {
	open     atomic.Int64
	lastWarn atomic.Int64 // unix nanoseconds of the last refusal logged
}

func (r *readerSlots) take(limit int64) bool {
	for {
		n := r.open.Load()
		if n >= limit {
			return false
		}
		if r.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (r *readerSlots) put() { r.open.Add(-1) }

// refused logs a refused open, at most every ten seconds: a script that
// retries in a loop must not flood the log.
func (r *readerSlots) refused(f *FS, prefix string, who model.Caller) {
	now := time.Now().UnixNano()
	last := r.lastWarn.Load()
	if now-last < int64(10*time.Second) || !r.lastWarn.CompareAndSwap(last, now) {
		return
	}
	f.opts.Log.Warn("events: too many readers; open refused with EBUSY", "path", prefix, "max-readers", f.maxReaders(), "caller", who.String())
}

type eventStream struct {
	fsys     *FS
	sub      *model.Subscription
	mu       sync.Mutex
	pending  []byte
	released sync.Once
}

var (
	_ gofs.FileReader   = (*eventStream)(nil)
	_ gofs.FileReleaser = (*eventStream)(nil)
)

// Read blocks until there is an event. An interrupt (Ctrl-C) ends it with
// EINTR, which releases the reader cleanly; unmount ends it with EOF.
func (s *eventStream) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		select {
		case ev := <-s.sub.C:
			s.sub.Received(ev)
			s.add(ev)
		case <-ctx.Done():
			return nil, syscall.EINTR
		case <-s.fsys.done:
			return fuse.ReadResultData(nil), 0
		}
	}
	for len(s.pending) < len(dest) {
		select {
		case ev := <-s.sub.C:
			s.sub.Received(ev)
			s.add(ev)
			continue
		default:
		}
		break
	}
	n := copy(dest, s.pending)
	s.pending = s.pending[n:]
	return fuse.ReadResultData(dest[:n]), 0
}

func (s *eventStream) add(ev model.Event) {
	if lost := s.sub.Lost(); lost > 0 {
		s.pending = append(s.pending, model.Event{Time: ev.Time, Path: s.sub.Prefix(), Kind: machine.EventLost, Detail: strconv.FormatInt(lost, 10) + " events (reader too slow)"}.Line()...)
	}
	s.pending = append(s.pending, ev.Line()...)
}

func (s *eventStream) Release(ctx context.Context) syscall.Errno {
	s.released.Do(func() {
		s.sub.Close()
		s.fsys.readers.put()
	})
	return 0
}
