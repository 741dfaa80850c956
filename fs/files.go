package fs

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// Bounds on what writers can make the daemon hold. Every write is at most
// the kernel's max_write (128 KiB), so what is kept is bounded by these.
const (
	// maxLine bounds a command line (power, ctl, config, members,
	// console): a writer that never sends a newline cannot grow the daemon
	// without end. A longer line fails with EINVAL, and so does every
	// write up to and including the one that ends it, so no tail of it
	// ever runs as a command of its own.
	maxLine = 64 << 10
	// maxText bounds what one open file of a file that takes a whole text
	// (config, members, a switch's config, ctl) takes: past it, writes
	// fail with EFBIG ("File too large"), as past a file size limit. It
	// stops `yes KEY=VALUE > config` from saving the config forever.
	maxText = 1 << 20
	// maxHeld bounds what a mount keeps for all its writers together
	// (console transcripts, partial lines): each open file is bounded,
	// but a user may open many. Past it, writes that would keep more
	// fail with ENOBUFS until readers read or files are closed.
	maxHeld = 32 << 20
)

// heldBytes counts the bytes a mount keeps for its writers, against maxHeld.
// Each holder adds the change of its own size (account).
type heldBytes struct{ n atomic.Int64 }

// room reports whether writers may keep more.
func (h *heldBytes) room() bool { return h.n.Load() < maxHeld }

// account records that a holder that had *had bytes now has now.
func (h *heldBytes) account(had *int, now int) {
	h.n.Add(int64(now - *had))
	*had = now
}

// contentFile is a file whose content the model renders on every read
// (power, state, config, README, events.log) and that may take line
// commands on write (power, config, ctl).
type contentFile struct {
	gofs.Inode
	fsys   *FS
	ino    uint64
	mode   uint32
	modeFn func() uint32    // overrides mode when set (config: secrets)
	mtime  func() time.Time // last change, for mtime and ctime (times.go)

	read func() []byte
	log  *model.EventLog // events.log: read from the log directly
	// live renders content that the model asks a driver for on every read
	// (a switch's ports); such files are direct I/O with size 0, like /proc.
	live func(ctx context.Context) ([]byte, error)

	// check validates a complete line before anything runs (EINVAL).
	check func(ctx context.Context, line string) error
	// write runs one line; writeBatch runs all complete lines of a write
	// at once (config: checked and saved together).
	write      func(ctx context.Context, line string) error
	writeBatch func(ctx context.Context, text string) error
	// writeList takes all complete lines like writeBatch and is told
	// whether the file was truncated first (`>` replaces, `>>` adds).
	writeList func(ctx context.Context, text string, replace bool) error

	// truncatedBy records processes that truncated the file (the SETATTR
	// of `>`, which the kernel sends without the file handle) until their
	// first write.
	truncMu     sync.Mutex
	truncatedBy map[uint32]time.Time

	rc readCache // the one snapshot the kernel may hold (snapshot.go)

	gate writeGate // writers of the file while a write blocks (gate.go)
}

func (c *contentFile) markTruncated(pid uint32) {
	c.truncMu.Lock()
	defer c.truncMu.Unlock()
	if c.truncatedBy == nil {
		c.truncatedBy = map[uint32]time.Time{}
	}
	now := time.Now()
	// A process that truncates and never writes (`truncate -s 0` in a
	// loop) would leave its entry forever; the write of a `>` follows
	// its truncation at once, so old entries can go.
	if len(c.truncatedBy) >= 64 {
		for p, at := range c.truncatedBy {
			if now.Sub(at) > 10*time.Second {
				delete(c.truncatedBy, p)
			}
		}
	}
	c.truncatedBy[pid] = now
}

func (c *contentFile) takeTruncated(pid uint32) bool {
	c.truncMu.Lock()
	defer c.truncMu.Unlock()
	_, t := c.truncatedBy[pid]
	delete(c.truncatedBy, pid)
	return t
}

var (
	_ gofs.NodeGetattrer = (*contentFile)(nil)
	_ gofs.NodeSetattrer = (*contentFile)(nil)
	_ gofs.NodeOpener    = (*contentFile)(nil)
	_ gofs.NodeReader    = (*contentFile)(nil)
)

func (c *contentFile) content() []byte {
	if c.log != nil {
		return c.log.Bytes()
	}
	if c.read == nil {
		return nil
	}
	return c.read()
}

func (c *contentFile) size() uint64 {
	if c.live != nil {
		return 0
	}
	if c.log != nil {
		return uint64(c.log.Size())
	}
	return c.cachedSize()
}

func (c *contentFile) fill(a *fuse.Attr) {
	mode := c.mode
	if c.modeFn != nil {
		mode = c.modeFn()
	}
	a.Mode = syscall.S_IFREG | mode
	a.Size = c.size()
	a.Ino = c.ino
	c.fsys.setTimes(a)
	if c.mtime != nil {
		setChanged(a, c.mtime())
	}
}

func (c *contentFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	c.fill(&out.Attr)
	return 0
}

// Setattr accepts the truncation `echo x > file` sends before writing:
// commands do not replace content, so there is nothing to truncate.
func (c *contentFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer c.rc.setattrBegin()() // its reply sets the kernel's size unconditionally (snapshot.go)
	if size, ok := in.GetSize(); ok {
		if !c.writable() && !c.fsys.isSelf(ctx) {
			return syscall.EACCES
		}
		if w, isWriter := fh.(*lineWriter); isWriter && size == 0 {
			w.truncate()
		} else if size == 0 && c.writeList != nil {
			c.markTruncated(caller(ctx).Pid)
		}
	}
	c.fill(&out.Attr)
	return 0
}

func (c *contentFile) writable() bool {
	return c.write != nil || c.writeBatch != nil || c.writeList != nil
}

func (c *contentFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return c.openRead(ctx)
	}
	if c.fsys.isSelf(ctx) {
		// The notifier's write needs the inode lock like any other.
		s := &gatedSelf{gate: &c.gate}
		if e := c.gate.enter(ctx, s, c.fsys.stopping.Done()); e != 0 {
			return nil, 0, e
		}
		return s, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
	}
	if !c.writable() {
		return nil, 0, syscall.EACCES
	}
	if c.fsys.opts.ReadOnly {
		return nil, 0, syscall.EROFS
	}
	// Direct I/O for writers: written bytes must never land in the page
	// cache, where readers would see them as content.
	// The opener is the writer until a write says otherwise: `: > members`
	// truncates and closes without writing, and its release must find
	// the truncation (takeTruncated).
	w := &lineWriter{file: c, truncated: flags&syscall.O_TRUNC != 0, writer: caller(ctx).Pid}
	// While a write blocks on the file, openers wait for their turn
	// here, where they can be interrupted (gate.go).
	if e := c.gate.enter(ctx, w, c.fsys.stopping.Done()); e != 0 {
		return nil, 0, e
	}
	return w, fuse.FOPEN_DIRECT_IO, 0
}

func (c *contentFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if c.log != nil {
		n := c.log.ReadAt(dest, off)
		return fuse.ReadResultData(dest[:n]), 0
	}
	return c.readExact(ctx, fh, dest, off)
}

// window is the part of data a read at off asks for: a reply longer than
// the request fails in the kernel (EINVAL, and the reader gets EIO), as
// the state of a group of some thousands of members did.
func window(data, dest []byte, off int64) []byte {
	return data[off:min(int64(len(data)), off+int64(len(dest)))]
}

// run runs the complete lines of text: all are checked first, so a bad line
// fails the write before anything runs.
func (c *contentFile) run(ctx context.Context, text string, truncated bool) error {
	if c.writeList != nil {
		return c.writeList(ctx, text, truncated)
	}
	if c.writeBatch != nil {
		return c.writeBatch(ctx, text)
	}
	var lines []string
	for _, l := range strings.Split(text, "\n") {
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
		if err := c.write(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// lineWriter buffers what one open file writes until a newline, so a
// command split over several write calls works. A last line without a
// newline runs at close.
type lineWriter struct {
	file      *contentFile
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
	if w.file.writeBatch != nil || w.file.writeList != nil {
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
				"file", w.file.Path(nil), "command", strings.TrimSpace(p.text), "pid", w.writer)
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
		return errno(err)
	case <-ctx.Done():
		p.cancel()
		return errno(<-p.res)
	case <-w.file.fsys.stopping.Done():
		w.file.fsys.opts.Log.Info("machinefs stops: a wait in flight ends with ESHUTDOWN (the command goes on)",
			"file", w.file.Path(nil), "command", strings.TrimSpace(text), "pid", w.writer)
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
	if w.file.writeList != nil && !w.wrote && !left && w.take() {
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

// selfOpen opens a file for the notifier's one-byte write. Direct I/O
// keeps the byte out of the page cache. No FLUSH at close: a daemon killed
// between its open and close would otherwise wait, while exiting, for its
// own answer to that FLUSH and never finish dying.
func selfOpen() (gofs.FileHandle, uint32, syscall.Errno) {
	return selfWrite{}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
}

// selfWrite takes the notifier's one-byte writes and drops them.
type selfWrite struct{}

func (selfWrite) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return uint32(len(data)), 0
}

func (selfWrite) Flush(ctx context.Context) syscall.Errno { return 0 }

// consoleFile is a host's management console: each open file is a
// session whose transcript holds the lines written and the replies, at the
// offsets a reader expects (`exec 3<>console; echo version >&3; read r <&3`).
// A file opened only for reading shows the host's last reply.
type consoleFile struct{ sessionFile }

// sessionFile is a host file where each open is a session of its own
// (console, serial): mode 0660, size 0, content only through the session.
type sessionFile struct {
	gofs.Inode
	fsys *FS
	host *model.Host
	idx  uint64
}

func (c *sessionFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | c.fsys.writable(0o660)
	out.Ino = hostIno(c.host, c.idx)
	c.fsys.setTimes(&out.Attr)
	return 0
}

// Setattr accepts the truncation of `echo x > console`.
func (c *sessionFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return c.Getattr(ctx, fh, out)
}

func (c *consoleFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY && c.fsys.isSelf(ctx) {
		return selfOpen()
	}
	fuseFlags := uint32(fuse.FOPEN_DIRECT_IO)
	if flags&syscall.O_ACCMODE == syscall.O_RDWR {
		// A read-write session reads its replies, so it writes whole
		// lines; a last line without a newline can only run blind.
		// It runs at release, and close needs no round trip to the
		// daemon (FLUSH): one less per `exec 3<>console` session.
		fuseFlags |= fuse.FOPEN_NOFLUSH
	}
	// Only a session that can read has a transcript: what a write-only
	// session writes and the replies it gets could never be read, so it
	// keeps nothing (`yes version > console` runs in constant memory).
	return &consoleSession{file: c, keep: flags&syscall.O_ACCMODE == syscall.O_RDWR}, fuseFlags, 0
}

const (
	// transcriptKeep bounds what a console session keeps behind its
	// reader: a session that stays open (a monitoring script) must not
	// grow forever.
	transcriptKeep = 64 << 10
	// transcriptMax bounds a session's transcript: a read-write session
	// that writes without reading its replies gets ENOBUFS ("No buffer
	// space available") once its transcript holds this much, and can
	// write again once it has read. Nothing is dropped unread: the
	// transcript's offsets are the reader's file positions.
	transcriptMax = 1 << 20
)

type consoleSession struct {
	file    *consoleFile
	mu      sync.Mutex
	pending []byte
	keep    bool // read-write: the session has a transcript
	// skipping: within a line longer than maxLine, dropped up to its end.
	skipping bool
	// transcript holds the session from offset base on: the lines written
	// and the replies.
	transcript []byte
	base       int64
	held       int // len(transcript)+len(pending) as counted in the mount's heldBytes
	wrote      bool
	writer     model.Caller // of the last write: RELEASE carries no caller
	// reply reads the reply to the last line written, nil when it is in
	// the transcript already. A query is sent when its line is written
	// and its reply read at the next request of the session (the read,
	// usually), so the machine answers while that request is on its way.
	reply func() string
}

// settle puts the reply to the last line into the transcript.
func (s *consoleSession) settle() {
	if s.reply != nil {
		reply := s.reply()
		if s.keep {
			s.transcript = append(s.transcript, reply...)
		}
		s.reply = nil
	}
}

// record puts written bytes into the transcript at the writer's position,
// ahead of replies it has not read yet: a session that writes twice before
// it reads (dash's printf writes line by line), or reads the first line of
// a longer reply and writes again, then reads on where it is.
func (s *consoleSession) record(off int64, data []byte) {
	if !s.keep || len(data) == 0 {
		return
	}
	if rel := off - s.base; rel >= 0 && rel < int64(len(s.transcript)) {
		s.transcript = slices.Insert(s.transcript, int(rel), data...)
	} else {
		s.transcript = append(s.transcript, data...)
	}
}

// full reports whether the transcript has no room for another line.
func (s *consoleSession) full() bool {
	return s.keep && (len(s.transcript) >= transcriptMax || !s.file.fsys.held.room())
}

// account counts what the session keeps in the mount's heldBytes.
func (s *consoleSession) account() {
	s.file.fsys.held.account(&s.held, len(s.transcript)+len(s.pending))
}

func (s *consoleSession) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.account()
	s.settle()
	s.wrote = true
	s.writer = caller(ctx)
	if skip(&s.skipping, data) {
		return 0, syscall.EINVAL
	}
	if tooLong(s.pending, data) {
		// What the transcript has of the long line stays, at the
		// offsets the writer was told it took; the next line the
		// writer sends goes on from there.
		s.pending, s.skipping = nil, true
		return 0, syscall.EINVAL
	}
	if s.full() {
		return 0, syscall.ENOBUFS
	}
	done := 0
	for {
		i := bytes.IndexByte(data[done:], '\n')
		if i < 0 {
			break
		}
		// Line by line, so a write that fills the transcript takes the
		// lines before and says so with a short count; the writer's
		// next write gets ENOBUFS.
		s.settle()
		if done > 0 && s.full() {
			return uint32(done), 0
		}
		end := done + i + 1
		s.record(off+int64(done), data[done:end])
		line := string(s.pending) + string(data[done:end-1])
		s.pending = s.pending[:0]
		s.reply = s.file.host.StartConsole(ctx, line, s.writer)
		done = end
	}
	if done < len(data) && !s.file.fsys.held.room() {
		if done > 0 {
			return uint32(done), 0
		}
		return 0, syscall.ENOBUFS
	}
	s.record(off+int64(done), data[done:])
	s.pending = append(s.pending, data[done:]...)
	return uint32(len(data)), 0
}

func (s *consoleSession) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.account()
	s.settle()
	if !s.wrote {
		data := []byte(s.file.host.LastConsoleReply())
		if off >= int64(len(data)) {
			return fuse.ReadResultData(nil), 0
		}
		n := copy(dest, data[off:])
		return fuse.ReadResultData(dest[:n]), 0
	}
	rel := max(off-s.base, 0) // before base: dropped, read on from what is left
	if rel >= int64(len(s.transcript)) {
		return fuse.ReadResultData(nil), 0
	}
	n := copy(dest, s.transcript[rel:])
	// Readers do not go back before their latest read (bash seeks back
	// only within the block it read), so what lies before it can go.
	if rel > transcriptKeep {
		s.transcript = append([]byte(nil), s.transcript[rel:]...)
		s.base += rel
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Flush runs a last command written without a newline, before close
// returns (`printf version > console`).
func (s *consoleSession) Flush(ctx context.Context) syscall.Errno {
	s.runPending(ctx)
	return 0
}

// Release runs a last line of a read-write session, which gets no Flush,
// and gives back what the session kept.
func (s *consoleSession) Release(ctx context.Context) syscall.Errno {
	s.runPending(ctx)
	s.mu.Lock()
	s.transcript, s.pending = nil, nil
	s.account()
	s.mu.Unlock()
	return 0
}

func (s *consoleSession) runPending(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.account()
	s.settle()
	s.skipping = false
	if len(bytes.TrimSpace(s.pending)) > 0 {
		line := string(s.pending)
		s.pending = nil
		reply := s.file.host.Console(ctx, line, s.writer)
		if s.keep {
			s.transcript = append(s.transcript, '\n')
			s.transcript = append(s.transcript, reply...)
		}
	}
}

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
// idle readers can make the daemon keep. Atomics, not FS.mu: the event bus
// calls the notifier, which takes FS.mu, with the bus's lock held.
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
