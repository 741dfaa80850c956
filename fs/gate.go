package fs

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel holds a FUSE file's inode lock for the whole of a WRITE, and
// every other write to the file needs it too: the truncation of `>` takes
// it in the VFS before any request reaches us (do_truncate), with or
// without atomic O_TRUNC, and so does a write with FOPEN_PARALLEL_DIRECT_WRITES
// whenever the file is also open cached (any reader of power), appends or
// extends (measured on 6.18). A write that waits in the daemon (`on wait`)
// would so keep every other writer of the file in uninterruptible sleep
// until it ends: `off force` could not override it, a second command could
// not get EBUSY, Ctrl-C did nothing, and the notifier's own one-byte write
// stalled every notification of the tree.
//
// So a write that blocks steps aside when others want the file: it answers
// the kernel with a short count, which releases the lock; the writing
// program sends the rest at once, and that rest picks up the same run where
// it was instead of running anything again. A short count of 1 byte is
// retried by every program (stdio, Go, Python, coreutils, Rust); a write
// has only so many bytes, so once all but its last are taken, it steps
// aside with 0 bytes taken, which glibc's stdio (bash, echo, printf) and
// Python retry too, but Go, Rust and coreutils' cat report as an error.
// To step aside seldom, the gate lets openers in in batches: while a write
// blocks, an open for writing waits in the daemon (an OPEN holds no lock,
// and the opener can be interrupted there), and the held openers go
// together, at growing intervals; the blocked write steps aside once they
// had time to reach the lock, and once more for their write after their
// truncation (`>` takes the lock twice).
type writeGate struct {
	mu      sync.Mutex
	runs    int                // runs that block writes: holding or stepped aside
	holders int                // writes blocked in the daemon, holding the lock
	held    map[any]struct{}   // openers waiting for a batch
	batch   chan struct{}      // closed when the held openers may go
	transit map[any]*transiter // let through (or stepped aside), not yet back
	last    time.Time          // when the last batch went
	spacing time.Duration      // the least time until the next batch
}

// transiter is a writer on its way to the lock.
type transiter struct {
	first time.Time // let through
	since time.Time // let through, or last stepped aside for
	steps int       // times a holder stepped aside for it
	self  bool      // the notifier's write
}

const (
	// gateSettle is how long a writer let through is given to reach the
	// kernel's lock before the holder steps aside for it.
	gateSettle = 30 * time.Millisecond
	// gateFirst and gateMaxSpacing bound the intervals between batches.
	gateFirst      = 20 * time.Millisecond
	gateMaxSpacing = 250 * time.Millisecond
	// gateTTL: a writer let through that has not written or closed since
	// (a shell's `exec 3> power`) stops counting; it is not at the lock.
	gateTTL = 5 * time.Second
	// gateTick is how often a blocked write looks at the gate.
	gateTick = 5 * time.Millisecond
)

// enter is called by an open for writing. While a write blocks on the file,
// it waits for its batch; it fails with EINTR when the opener is
// interrupted and ESHUTDOWN when the daemon stops.
func (g *writeGate) enter(ctx context.Context, key any, stop <-chan struct{}) syscall.Errno {
	g.mu.Lock()
	if g.runs == 0 {
		g.mu.Unlock()
		return 0
	}
	if g.holders == 0 {
		// A run stepped aside and its rest is on its way to the lock:
		// the opener goes, and the rest steps aside for it in turn.
		g.addTransitLocked(key, time.Now())
		g.mu.Unlock()
		return 0
	}
	if g.held == nil {
		g.held = map[any]struct{}{}
	}
	if g.batch == nil {
		g.batch = make(chan struct{})
	}
	g.held[key] = struct{}{}
	b := g.batch
	g.mu.Unlock()
	select {
	case <-b:
		return 0
	case <-ctx.Done():
		g.mu.Lock()
		delete(g.held, key)
		g.mu.Unlock()
		return syscall.EINTR
	case <-stop:
		g.mu.Lock()
		delete(g.held, key)
		g.mu.Unlock()
		return syscall.ESHUTDOWN
	}
}

// releaseLocked lets every held opener go.
func (g *writeGate) releaseLocked(now time.Time) {
	if len(g.held) == 0 {
		return
	}
	for k := range g.held {
		g.addTransitLocked(k, now)
	}
	clear(g.held)
	close(g.batch)
	g.batch = nil
	g.last = now
}

func (g *writeGate) addTransitLocked(key any, now time.Time) {
	if g.transit == nil {
		g.transit = map[any]*transiter{}
	}
	_, self := key.(*gatedSelf)
	g.transit[key] = &transiter{first: now, since: now, self: self}
}

// begin and end bracket a run that blocks a write (from its first wait
// to its outcome, or until its writer gives it up).
func (g *writeGate) begin() {
	g.mu.Lock()
	g.runs++
	g.mu.Unlock()
}

func (g *writeGate) end() {
	g.mu.Lock()
	g.runs--
	g.mu.Unlock()
}

// back says that a writer let through (or stepped aside) reached the daemon
// again, or closed: it holds the lock no more than a request does.
func (g *writeGate) back(key any) {
	g.mu.Lock()
	if g.transit != nil {
		delete(g.transit, key)
	}
	g.mu.Unlock()
}

// hold registers a write that is about to block in the daemon.
func (g *writeGate) hold() {
	g.mu.Lock()
	if g.holders == 0 {
		g.spacing = gateFirst
		g.last = time.Now()
	}
	g.holders++
	g.mu.Unlock()
}

// unhold ends a blocked write; stepped says it stepped aside for key (its
// own rest is on its way). Held openers go when no write blocks any more.
func (g *writeGate) unhold(stepped any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holders--
	now := time.Now()
	if stepped != nil {
		g.addTransitLocked(stepped, now)
	}
	if g.holders == 0 {
		g.releaseLocked(now)
	}
}

// stepAside is asked by a blocked write every gateTick; left is how many
// more times it can step aside with 1 byte. It lets a batch of held openers
// go when their time has come, and says whether the write should step
// aside now: some writer let through has had time to reach the lock and
// has not come back yet. The notifier's writes are not worth a step with
// 0 bytes (which Go and Rust programs take for an error): when few bytes
// are left, they wait for the end of the wait, as all writers did before.
func (g *writeGate) stepAside(left int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if len(g.held) > 0 && now.Sub(g.last) >= g.spacing {
		g.releaseLocked(now)
		g.spacing = min(2*g.spacing, gateMaxSpacing)
		return false
	}
	due := false
	for k, t := range g.transit {
		// A writer takes the lock once or twice (truncation, write)
		// and is back within a step or two; one that is not, may be
		// slow to reach the lock (a loaded machine) or may sit on an
		// open descriptor (`exec 3> power`): it is given steps at
		// doubling intervals, and none once it is gateTTL old.
		if now.Sub(t.first) > gateTTL {
			delete(g.transit, k)
			continue
		}
		if now.Sub(t.since) >= gateSettle<<min(t.steps, 5) && (!t.self || left > 2) {
			due = true
		}
	}
	if !due {
		return false
	}
	for _, t := range g.transit {
		t.steps++
		t.since = now
	}
	return true
}

// pendingRun is a write's run that goes on after the write stepped aside:
// the rest of the write, sent again by the program, picks it up.
type pendingRun struct {
	gated    bool   // counted in the gate's runs
	text     string // what the write carried (complete lines)
	accepted int    // bytes of text the kernel was told were taken
	res      chan error
	cancel   context.CancelFunc // ends the wait (never the command)
}

// rest is what the program still has to send of the write.
func (p *pendingRun) rest() string { return p.text[p.accepted:] }

// startRun runs text in a goroutine of its own, detached from the FUSE
// request: the request may step aside and end while the run goes on. The
// run's context keeps the caller and ends when cancel is called or when the
// daemon stops.
func (f *FS) startRun(ctx context.Context, text string, run func(context.Context) error) *pendingRun {
	base := context.WithoutCancel(ctx)
	if c, ok := fuse.FromContext(ctx); ok {
		// go-fuse reuses a request's caller once it is answered.
		cp := *c
		base = fuse.NewContext(base, &cp)
	}
	rctx, cancel := context.WithCancel(base)
	stopAfter := context.AfterFunc(f.stopping, cancel)
	p := &pendingRun{text: text, res: make(chan error, 1), cancel: cancel}
	go func() {
		err := run(rctx)
		stopAfter()
		cancel()
		p.res <- err
	}()
	return p
}

// gatedSelf is the notifier's write to a file with a gate: it comes back to
// the gate with its write or its close.
type gatedSelf struct {
	gate *writeGate
}

func (s *gatedSelf) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	s.gate.back(s)
	return uint32(len(data)), 0
}

func (s *gatedSelf) Flush(ctx context.Context) syscall.Errno {
	s.gate.back(s)
	return 0
}

func (s *gatedSelf) Release(ctx context.Context) syscall.Errno {
	s.gate.back(s)
	return 0
}
