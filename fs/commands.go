package fs

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// commands are what a writable file does with the complete lines written
// to it. Every writable tree file (power, config, members, the ctl files,
// a switch's config) takes its writes through the one lineWriter below:
// lines split over writes, the bounds (maxLine, maxText, maxHeld), the
// write gate (gate.go) and the last line at close are the same for all.
// The lines are handed to the model as they are: the model parses them.
type commands interface {
	// run runs text, one or more complete lines; replace says that the
	// file was truncated first (`>`, as opposed to `>>`).
	run(ctx context.Context, text string, replace bool) error
	// whole reports whether the file takes a whole text that is checked
	// and saved at once: what one open writes is then bounded by maxText.
	whole() bool
	// list reports whether truncating the file empties it: a list
	// truncated and never written (`: > members`) becomes empty.
	list() bool
}

// eachLine runs every line of a write on its own, once all of them are
// checked, so a bad line fails the write before anything runs (power, a
// switch's ctl, vswitch/ctl).
type eachLine struct {
	// check refuses a line before any line runs; nil when do refuses
	// every bad line before it does anything.
	check func(ctx context.Context, line string) error
	do    func(ctx context.Context, line string) error
}

func (c eachLine) whole() bool { return false }
func (c eachLine) list() bool  { return false }

func (c eachLine) run(ctx context.Context, text string, replace bool) error {
	var lines []string
	for l := range strings.SplitSeq(text, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if c.check != nil {
		for _, l := range lines {
			if err := c.check(ctx, l); err != nil {
				return err
			}
		}
	}
	for _, l := range lines {
		if err := c.do(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// wholeText takes all complete lines of a write as one text, checked and
// saved together (config, ctl, a switch's config).
type wholeText func(ctx context.Context, text string) error

func (c wholeText) whole() bool { return true }
func (c wholeText) list() bool  { return false }

func (c wholeText) run(ctx context.Context, text string, replace bool) error { return c(ctx, text) }

// memberList takes lines like wholeText and is told whether the file was
// truncated first: `>` replaces the list, `>>` adds to it (members).
type memberList func(ctx context.Context, text string, replace bool) error

func (c memberList) whole() bool { return true }
func (c memberList) list() bool  { return true }

func (c memberList) run(ctx context.Context, text string, replace bool) error {
	return c(ctx, text, replace)
}

// commandSink is the writing half of a file that takes commands: its
// commands, its write gate and the truncations it was sent.
type commandSink struct {
	fsys *FS
	node *gofs.Inode // the file (its path is logged)
	cmds commands

	// truncatedBy records processes that truncated the file (the SETATTR
	// of `>`, which the kernel sends without the file handle) until their
	// first write.
	truncMu     sync.Mutex
	truncatedBy map[uint32]time.Time

	gate writeGate // writers of the file while a write blocks (gate.go)
}

func (s *commandSink) run(ctx context.Context, text string, replace bool) error {
	return s.cmds.run(ctx, text, replace)
}

// ran tells Options.AfterWrite that a run of the file ended, before its
// writer is answered.
func (s *commandSink) ran() {
	if f := s.fsys.opts.AfterWrite; f != nil {
		f(s.node.Path(nil))
	}
}

// openWrite opens the file for writing: a lineWriter, or the poker's
// one-byte write.
func (s *commandSink) openWrite(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if s.fsys.isSelf(ctx) {
		// The notifier's write needs the inode lock like any other.
		g := &gatedSelf{gate: &s.gate}
		if e := s.gate.enter(ctx, g, s.fsys.stopping.Done()); e != 0 {
			return nil, 0, e
		}
		return g, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
	}
	if s.fsys.opts.ReadOnly {
		return nil, 0, syscall.EROFS
	}
	// Direct I/O for writers: written bytes must never land in the page
	// cache, where readers would see them as content.
	// The opener is the writer until a write says otherwise: `: > members`
	// truncates and closes without writing, and its release must find
	// the truncation (takeTruncated).
	w := &lineWriter{file: s, truncated: flags&syscall.O_TRUNC != 0, writer: caller(ctx).Pid}
	// While a write blocks on the file, openers wait for their turn
	// here, where they can be interrupted (gate.go).
	if e := s.gate.enter(ctx, w, s.fsys.stopping.Done()); e != 0 {
		return nil, 0, e
	}
	return w, fuse.FOPEN_DIRECT_IO, 0
}

// truncation takes the truncation `echo x > file` sends before writing:
// commands do not replace content, so nothing is truncated, but a list
// remembers that the next write replaces it.
func (s *commandSink) truncation(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn) {
	size, ok := in.GetSize()
	if !ok || size != 0 {
		return
	}
	if w, isWriter := fh.(*lineWriter); isWriter {
		w.truncate()
	} else if s.cmds.list() {
		s.markTruncated(caller(ctx).Pid)
	}
}

func (s *commandSink) markTruncated(pid uint32) {
	s.truncMu.Lock()
	defer s.truncMu.Unlock()
	if s.truncatedBy == nil {
		s.truncatedBy = map[uint32]time.Time{}
	}
	now := time.Now()
	// A process that truncates and never writes (`truncate -s 0` in a
	// loop) would leave its entry forever; the write of a `>` follows
	// its truncation at once, so old entries can go.
	if len(s.truncatedBy) >= 64 {
		for p, at := range s.truncatedBy {
			if now.Sub(at) > 10*time.Second {
				delete(s.truncatedBy, p)
			}
		}
	}
	s.truncatedBy[pid] = now
}

func (s *commandSink) takeTruncated(pid uint32) bool {
	s.truncMu.Lock()
	defer s.truncMu.Unlock()
	_, t := s.truncatedBy[pid]
	delete(s.truncatedBy, pid)
	return t
}

// writableFile is a tree file that takes commands (commandFile,
// liveCommandFile). A temporary file renamed over one runs as one write of
// it, and then acts as it until the kernel looks the name up again
// (tempfile.go).
type writableFile interface {
	gofs.InodeEmbedder
	gofs.NodeGetattrer
	gofs.NodeSetattrer
	gofs.NodeOpener
	gofs.NodeReader
	sink() *commandSink
	// openDetached opens the file for reading through an inode that is
	// not the file's own: its reads take a snapshot of their own, with
	// direct I/O, since that inode's size and pages are not the file's.
	openDetached() (gofs.FileHandle, uint32, syscall.Errno)
}

var (
	_ writableFile = (*commandFile)(nil)
	_ writableFile = (*liveCommandFile)(nil)
)

// lineWriter buffers what one open file writes until a newline, so a
// command split over several write calls works. A last line without a
// newline runs at close.
type lineWriter struct {
	file      *commandSink
	mu        sync.Mutex
	buf       []byte
	writer    uint32 // pid of the last write
	truncated bool   // opened with O_TRUNC or truncated since: the next batch replaces
	wrote     bool   // a write came, taken or refused: release empties nothing
	skipping  bool   // within a line longer than maxLine: drop up to its newline
	total     int    // bytes taken, for maxText
	held      int    // len(buf) as counted in the mount's heldBytes
	// pending is a run this writer's last write stepped aside from
	// (gate.go): the rest of that write picks it up.
	pending *pendingRun
	// stepped is what steps aside took of a write that then failed
	// (EINTR): a program that retries sends only the rest, which these
	// bytes begin. A flush drops them: they ran already.
	stepped []byte
}

func (w *lineWriter) truncate() {
	w.mu.Lock()
	w.truncated = true
	w.mu.Unlock()
}

// take returns whether the next batch replaces, and clears it.
func (w *lineWriter) take() bool {
	t := w.truncated || w.file.takeTruncated(w.writer)
	w.truncated = false
	return t
}

var (
	_ gofs.FileWriter   = (*lineWriter)(nil)
	_ gofs.FileFlusher  = (*lineWriter)(nil)
	_ gofs.FileReleaser = (*lineWriter)(nil)
)

func (w *lineWriter) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.file.gate.back(w)
	if p := w.pending; p != nil {
		w.pending = nil
		if string(data) == p.rest() {
			return w.await(ctx, p, len(data))
		}
		// Not the rest: the program gave that write up. Its wait ends;
		// the command goes on.
		p.cancel()
		if p.gated {
			w.file.gate.end()
		}
	}
	defer func() { w.file.fsys.held.account(&w.held, len(w.buf)) }()
	w.writer = caller(ctx).Pid
	w.wrote = true
	prefix := w.stepped
	if prefix != nil {
		w.buf = append(prefix, w.buf...)
		w.stepped = nil
	}
	if skip(&w.skipping, data) {
		return 0, syscall.EINVAL
	}
	if w.file.cmds.whole() {
		if w.total+len(data) > maxText {
			// The start of a line in buf would end in this write: it
			// must not run at close as a line of its own.
			w.buf = nil
			return 0, syscall.EFBIG
		}
		w.total += len(data)
	}
	if tooLong(w.buf, data) {
		// Nothing of this write runs: its lines before the long one are
		// dropped with it, so a failed write has done nothing.
		w.buf, w.skipping = nil, true
		return 0, syscall.EINVAL
	}
	if lineTail(w.buf, data) > 0 && !w.file.fsys.held.room() {
		return 0, syscall.ENOBUFS
	}
	w.buf = append(w.buf, data...)
	i := bytes.LastIndexByte(w.buf, '\n')
	if i < 0 {
		return uint32(len(data)), 0
	}
	text := string(w.buf[:i+1])
	w.buf = append(w.buf[:0], w.buf[i+1:]...)
	replace := w.take()
	p := w.file.fsys.startRun(ctx, text, func(ctx context.Context) error { return w.file.run(ctx, text, replace) })
	p.accepted = len(prefix) // what the program sends is the rest
	if text != string(prefix)+string(data) {
		// Lines begun by an earlier write, or a line left open after
		// them: the byte counts of a step aside would not match the
		// program's, so this write never steps aside.
		p.accepted = -1
	}
	return w.await(ctx, p, len(data))
}

// await waits for p, the run of a write of n bytes, and answers the write:
// n when it succeeded, its errno when it failed. While it waits it holds the
// file's inode lock in the kernel, so it steps aside for other writers
// (gate.go): it answers 1 byte taken, and the program sends the rest of the
// write at once. It fails with EINTR when the writer is interrupted (the
// command goes on) and ESHUTDOWN when the daemon stops.
func (w *lineWriter) await(ctx context.Context, p *pendingRun, n int) (uint32, syscall.Errno) {
	answer := func(err error) (uint32, syscall.Errno) {
		w.file.ran()
		if err != nil {
			return 0, errno(err)
		}
		return uint32(n), 0
	}
	select {
	case err := <-p.res:
		return answer(err) // most runs end at once: no gate
	default:
	}
	g := &w.file.gate
	if !p.gated {
		p.gated = true
		g.begin()
	}
	g.hold()
	tick := time.NewTicker(gateTick)
	defer tick.Stop()
	for {
		select {
		case err := <-p.res:
			g.unhold(nil)
			g.end()
			return answer(err)
		case <-ctx.Done():
			// Interrupted (Ctrl-C): the wait ends, never the command.
			p.cancel()
			err := <-p.res
			g.unhold(nil)
			g.end()
			if err != nil && p.accepted > 0 {
				w.stepped = []byte(p.text[:p.accepted])
			}
			return answer(err)
		case <-w.file.fsys.stopping.Done():
			g.unhold(nil)
			g.end()
			w.file.fsys.opts.Log.Info("machinefs stops: a wait in flight ends with ESHUTDOWN (the command goes on)",
				"file", w.file.node.Path(nil), "command", strings.TrimSpace(p.text), "pid", w.writer)
			return 0, syscall.ESHUTDOWN
		case <-tick.C:
			if p.accepted < 0 || !g.stepAside(len(p.text)-1-p.accepted) {
				continue
			}
			// 1 byte while more than the last is left, then 0.
			step := 0
			if p.accepted < len(p.text)-1 {
				step = 1
			}
			p.accepted += step
			w.pending = p
			g.unhold(w)
			return uint32(step), 0
		}
	}
}

// dropPending ends the wait of a run stepped aside from whose rest never
// came (the writer closed or died): the command goes on.
func (w *lineWriter) dropPending() {
	if p := w.pending; p != nil {
		p.cancel()
		if p.gated {
			w.file.gate.end()
		}
		w.pending = nil
	}
}

// releasePending is dropPending at the last close, which also ends the
// writer's way to the lock (gate.go). A flush does not: shells close the
// descriptor they opened once it is dup'ed, before they write.
func (w *lineWriter) releasePending() {
	w.dropPending()
	w.file.gate.back(w)
}

// Flush runs a last line written without a newline (`printf on > power`)
// when the process that wrote it closes the file. The kernel flushes on
// every close of every copy of the fd: a child that inherited it (sleep
// in `{ printf o; sleep 1; printf 'n\n'; } > power`) must not cut the line.
// Shell builtins ignore errors at close, so the outcome is in state and
// events too.
func (w *lineWriter) Flush(ctx context.Context) syscall.Errno {
	w.mu.Lock()
	defer w.mu.Unlock()
	if caller(ctx).Pid != w.writer {
		return 0
	}
	w.dropPending()
	w.stepped = nil
	defer w.file.fsys.held.account(&w.held, 0)
	w.skipping = false // a long last line ends at close; its writes failed
	if len(bytes.TrimSpace(w.buf)) == 0 {
		w.buf = nil
		return 0
	}
	text := string(w.buf)
	w.buf = nil
	replace := w.take()
	// A FLUSH holds no inode lock, so it need not step aside; it still
	// ends with EINTR when interrupted and ESHUTDOWN when the daemon stops.
	p := w.file.fsys.startRun(ctx, text, func(ctx context.Context) error { return w.file.run(ctx, text, replace) })
	select {
	case err := <-p.res:
		w.file.ran()
		return errno(err)
	case <-ctx.Done():
		p.cancel()
		err := <-p.res
		w.file.ran()
		return errno(err)
	case <-w.file.fsys.stopping.Done():
		w.file.fsys.opts.Log.Info("machinefs stops: a wait in flight ends with ESHUTDOWN (the command goes on)",
			"file", w.file.node.Path(nil), "command", strings.TrimSpace(text), "pid", w.writer)
		return syscall.ESHUTDOWN
	}
}

// Release gives back what a line left without its writer's flush holds.
func (w *lineWriter) Release(ctx context.Context) syscall.Errno {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.releasePending()
	left := len(bytes.TrimSpace(w.buf)) > 0
	w.buf = nil
	w.file.fsys.held.account(&w.held, 0)
	// A list truncated and never written (`: > members`) is empty, as a
	// regular file would be. At the last close, not at a flush: dd and
	// shells close the fd they opened once it is dup'ed, before writing.
	if w.file.cmds.list() && !w.wrote && !left && w.take() {
		return errno(w.file.run(ctx, "", true))
	}
	return 0
}

// lineTail is the length of the unfinished line that buf and data leave.
func lineTail(buf, data []byte) int {
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		return len(data) - i - 1
	}
	return len(buf) + len(data)
}

// tooLong reports whether buffered text (the start of a line) and data
// hold a line longer than maxLine, complete or not.
func tooLong(buf, data []byte) bool {
	n := len(buf)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return n+len(data) > maxLine
		}
		if n+i > maxLine {
			return true
		}
		n, data = 0, data[i+1:]
	}
}

// skip drops data that continues a line longer than maxLine and reports
// whether it did. The write that ends the line is dropped whole too and
// fails like the others; the next write starts a new line.
func skip(skipping *bool, data []byte) bool {
	if !*skipping {
		return false
	}
	if bytes.IndexByte(data, '\n') >= 0 {
		*skipping = false
	}
	return true
}
