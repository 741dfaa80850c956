package fs

import (
	"bytes"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// A cold read of a status file costs three round trips to the daemon:
// LOOKUP, OPEN and READ. `cat hosts/*/power` looks every file up first
// (the shell's glob) and reads them afterwards, so the READ can be saved:
// when the kernel looks a status file up for the first time, the notifier
// hands the page cache the snapshot whose size the LOOKUP reply gave
// (NOTIFY_STORE). The open then finds the page and reads nothing from
// the daemon (Benchmark10kHosts, cat-ms).
//
// A stored page must never hold what the file no longer says, nor a size
// other than the kernel's (a page the kernel already holds is overwritten
// only up to the stored length). So the worker stores:
//   - after the invalidations of its pass: a change whose invalidation is
//     taken later comes later, and drops the page;
//   - only the snapshot the kernel has the size of (readCache.snap), and
//     only while it is what the file says now (a fresh rendering equals
//     it: a change since then has its invalidation queued) and settled
//     (no SETATTR or other reply that set another size may still land);
//   - only a file within one page, as cached opens are (openRead).
// Anything else is left to the READ, as before. The store is never made
// inside a FUSE request (it waits for the page lock a READ may hold).

// storeDelay is how long the worker lets stores gather before it makes
// them. Waking it for each LOOKUP cost a cross-CPU wake-up each, as much
// as the READ it saves; and a store sent right away often beat its
// LOOKUP's reply to the kernel, which then does not know the inode yet
// (ENOENT). A glob looks up a file every 100-300 us here, so a pass
// stores some tens of files.
const storeDelay = 2 * time.Millisecond

// wantStore asks the worker to store ino's snapshot in the kernel's page
// cache.
func (n *notifier) wantStore(ino *gofs.Inode) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stores == nil {
		n.stores = map[*gofs.Inode]bool{}
	}
	n.stores[ino] = true
	if len(n.stores) > 1 {
		return // the timer is armed
	}
	if n.storeTimer == nil {
		n.storeTimer = time.AfterFunc(storeDelay, n.kick)
	} else {
		n.storeTimer.Reset(storeDelay)
	}
}

// cacheStorer is a file whose snapshot the kernel may be handed
// (statusFile, and the command files built on it).
type cacheStorer interface{ storable() []byte }

// store hands the kernel ino's snapshot, if it may (see above). A kernel
// that forgot the inode meanwhile answers ENOENT, and nothing is lost.
func (n *notifier) store(ino *gofs.Inode) {
	s, ok := ino.Operations().(cacheStorer)
	if !ok {
		return
	}
	if data := s.storable(); data != nil {
		ino.WriteCache(0, data)
	}
}

// storable is the snapshot the kernel may be handed now, or nil.
func (s *statusFile) storable() []byte {
	fresh := s.render()
	s.rc.mu.Lock()
	defer s.rc.mu.Unlock()
	if !s.rc.valid || len(fresh) == 0 || len(fresh) > pageSize || !s.rc.settledLocked() || !bytes.Equal(fresh, s.rc.snap) {
		return nil
	}
	return s.rc.snap
}
