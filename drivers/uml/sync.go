package uml

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// How a backup makes the guest's writes reach its root before the copy.
//
// mconsole offers no synchronous sync: "sysrq s" only queues the kernel's
// emergency sync on a workqueue, which runs while the guest runs (a
// stopped guest runs nothing but mconsole, so a sync sent after "stop"
// ran only after "go", after the copy). The sync's one report of its end
// is the kernel message "Emergency Sync complete", printed to the
// guest's console, which its holder writes to the console log. So:
//
//  1. The console log level is raised (sysrq 0-9) if the guest's
//     /proc/sys/kernel/printk would hide that message (a Debian guest sets
//     "4 4 1 7": messages of level 4 are not shown), and restored after.
//  2. "sysrq s" is sent to the running guest and its "Emergency Sync
//     complete" is awaited in the console log, after the log's length at
//     the send.
//  3. The emergency sync writes every dirty page and waits for the data,
//     but it only starts a journalling file system's commit (ext4's
//     sync_fs runs with wait=0) and the writeback of metadata. For an
//     image root the sync is therefore repeated until two whole syncs in
//     a row wrote nothing: the root disk's completed writes and flushes
//     (/proc/diskstats, ubda) are the same as after the sync before and
//     none is in flight. A commit still running would have completed a
//     write in between; one quiet sync was not enough on a loaded host,
//     where the commit's thread may run late.
//  4. The guest is stopped, and the check is made once more while it is
//     stopped (nothing in flight, nothing written since): UML's I/O
//     thread finishes requests on its own, so a request in flight at the
//     stop could still change the image during the copy.
//
// Every write that completed before the backup was asked for is then in
// the image; so are writes made since, up to the stop. A guest can hide
// the sync report (then the backup fails on its timeout and says why) or
// forge it (then only its own backup is worse off).
const (
	syncDone      = "Emergency Sync complete"
	syncTimeout   = 30 * time.Second // one sync, from "sysrq s" to its report
	maxSyncRounds = 20               // syncs that wrote something before one that did not
)

// syncAndStop syncs the running guest's root and stops it (see above).
// On success the guest is stopped and syncs says how many syncs it took;
// on failure the guest is running.
func (m *Machine) syncAndStop(ctx context.Context, g *guest) (syncs int, err error) {
	restore, err := m.showSyncReport(ctx, g)
	if err != nil {
		return 0, err
	}
	defer restore()
	image := m.root.hostfs == ""
	// The first sync is checked by a second one at least: a commit it
	// started may not have begun writing when it reports its end. And a
	// quiet round must follow another quiet round: ext4's commit runs in
	// its own kernel thread, which on a loaded host (CI runs QEMU guests
	// beside this) may not have written a block by the end of the next
	// sync; the backup then lacked the last write.
	var prev diskStats
	quiet := 0
	for round := 1; ; round++ {
		if round > maxSyncRounds {
			return round - 1, machine.Errorf(syscall.EBUSY, "the guest kept writing to its root through %d syncs; no consistent copy can be made while it does", maxSyncRounds)
		}
		if err := m.syncOnce(ctx, g); err != nil {
			return round, err
		}
		if !image {
			// hostfs writes reach the host's files at once; the
			// sync wrote what mmap left dirty, and waited for it.
			_, err := m.request(ctx, g, "stop")
			return round, err
		}
		cur, err := m.rootDiskStats(ctx, g)
		if err != nil {
			return round, err
		}
		if !cur.quiet(prev) || round == 1 {
			quiet = 0
			prev = cur
			continue
		}
		if quiet++; quiet < 2 {
			prev = cur
			continue
		}
		if _, err := m.request(ctx, g, "stop"); err != nil {
			return round, err
		}
		stopped, err := m.rootDiskStats(ctx, g)
		if err == nil && stopped.quiet(cur) {
			return round, nil
		}
		// Written between the check and the stop: run again.
		quiet = 0
		if _, gerr := m.request(ctx, g, "go"); gerr != nil {
			return round, fmt.Errorf("resuming after a stop with writes in flight: %w", gerr)
		}
		if err != nil {
			return round, err
		}
		prev = stopped
	}
}

// syncOnce sends "sysrq s" and waits for the guest's report that the
// emergency sync ended.
func (m *Machine) syncOnce(ctx context.Context, g *guest) error {
	f, err := os.Open(m.ConsoleLog())
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	defer f.Close()
	pos, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	if _, err := m.request(ctx, g, "sysrq s"); err != nil {
		return err
	}
	deadline := time.Now().Add(syncTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	// The log is read from its length at the send, a chunk at a time;
	// whatever the guest prints, memory stays bounded (syncScan).
	buf := make([]byte, 64<<10)
	var scan syncScan
	for {
		n, err := f.Read(buf)
		pos += int64(n)
		if n > 0 {
			if scan.feed(buf[:n]) {
				return nil
			}
			continue
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("console log: %w", err)
		}
		// The console's holder starts the log again from empty when it
		// reaches its limit: read on from the start.
		if fi, err := f.Stat(); err == nil && fi.Size() < pos {
			if pos, err = f.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("console log: %w", err)
			}
			scan.tail = scan.tail[:0]
			continue
		}
		if time.Now().After(deadline) {
			return machine.Errorf(syscall.ETIMEDOUT, "the guest did not report its sync done (no %q in %s within %s)", syncDone, m.ConsoleLog(), syncTimeout)
		}
		select {
		case <-ctx.Done():
			return ctxErr(ctx, ctx.Err())
		case <-g.ctx.Done():
			return ctxErr(g.ctx, g.ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// syncEchoes are the kernel's echo of "sysrq s" on the console, printed
// when the request is handled (at the default console level, whatever
// the guest's): "sysrq: Emergency Sync" since Linux 5.x, "SysRq :
// Emergency Sync" before. The line's end is left out: the console is a
// pty, which ends lines with CR LF.
var syncEchoes = [][]byte{[]byte("sysrq: Emergency Sync"), []byte("SysRq : Emergency Sync")}

// syncScan finds, in console output, the end of the sync one request
// started: the kernel's echo of that sysrq, then syncDone after it. The
// console log is written by the guest's console holder, a little behind
// the guest, so a report of an earlier sync can land in the log after
// the length read at the send; it comes before this sync's echo, and is
// not taken for this sync's end (a backup then copied a disk its last
// write had not reached). It keeps only enough of the last chunk to find
// a line across two reads.
type syncScan struct {
	echoed bool
	tail   []byte
}

func (s *syncScan) feed(p []byte) bool {
	data := append(s.tail, p...)
	if !s.echoed {
		for _, echo := range syncEchoes {
			if i := bytes.Index(data, echo); i >= 0 {
				s.echoed = true
				data = data[i+len(echo):]
				break
			}
		}
	}
	if s.echoed && bytes.Contains(data, []byte(syncDone)) {
		return true
	}
	keep := min(len(data), len(syncEchoes[1])-1)
	s.tail = append(s.tail[:0], data[len(data)-keep:]...)
	return false
}

// showSyncReport makes the console show the sync's report: the kernel
// prints it at the default message level, shown only when the console
// level is above it. It returns what restores the guest's level.
func (m *Machine) showSyncReport(ctx context.Context, g *guest) (restore func(), err error) {
	noop := func() {}
	text, err := m.request(ctx, g, "proc sys/kernel/printk")
	if err != nil {
		return noop, fmt.Errorf("reading the guest's printk levels: %w", err)
	}
	f := strings.Fields(text)
	if len(f) < 2 {
		return noop, fmt.Errorf("the guest's printk levels: %q", text)
	}
	console, err1 := strconv.Atoi(f[0])
	msg, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return noop, fmt.Errorf("the guest's printk levels: %q", text)
	}
	if console > msg {
		return noop, nil
	}
	if msg+1 > 9 {
		return noop, machine.Errorf(syscall.EOPNOTSUPP, "the guest's default message level %d hides the sync report from its console at any level sysrq can set", msg)
	}
	if _, err := m.request(ctx, g, fmt.Sprintf("sysrq %d", msg+1)); err != nil {
		return noop, fmt.Errorf("raising the guest's console log level: %w", err)
	}
	return func() {
		if console < 0 || console > 9 {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.reqTimeout)
		defer cancel()
		if _, err := m.request(rctx, g, fmt.Sprintf("sysrq %d", console)); err != nil {
			m.log.Warn("uml: restoring the guest's console log level", "level", console, "err", err)
		}
	}, nil
}

// diskStats is the root disk's line of the guest's /proc/diskstats.
type diskStats struct {
	ok       bool
	writes   uint64 // writes completed
	flushes  uint64 // flushes completed (kernels since 5.5)
	inFlight uint64
}

// quiet says that nothing is in flight and nothing was written or
// flushed since prev.
func (s diskStats) quiet(prev diskStats) bool {
	return s.ok && prev.ok && s.inFlight == 0 && s.writes == prev.writes && s.flushes == prev.flushes
}

// rootDiskStats reads the root disk's (ubda's) I/O counters.
func (m *Machine) rootDiskStats(ctx context.Context, g *guest) (diskStats, error) {
	text, err := m.request(ctx, g, "proc diskstats")
	if err != nil {
		return diskStats{}, fmt.Errorf("reading the guest's disk statistics: %w", err)
	}
	for l := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(l)
		if len(f) < 14 || f[2] != "ubda" {
			continue
		}
		num := func(i int) uint64 {
			if i >= len(f) {
				return 0
			}
			n, _ := strconv.ParseUint(f[i], 10, 64)
			return n
		}
		// major minor name, then reads completed, merged, sectors,
		// ms; writes completed (7), merged, sectors, ms; in flight
		// (11); ...; flushes completed (18).
		return diskStats{ok: true, writes: num(7), inFlight: num(11), flushes: num(18)}, nil
	}
	return diskStats{}, fmt.Errorf("no ubda in the guest's /proc/diskstats")
}
