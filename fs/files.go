package fs

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/nodes"
)

// maxLine bounds a buffered command line; a writer that never sends a
// newline cannot grow the daemon without end.
const maxLine = 64 << 10

// contentFile is a file whose content the model renders on every read
// (power, state, config, README, events.log) and that may take line
// commands on write (power, config, ctl).
type contentFile struct {
	gofs.Inode
	fsys   *FS
	ino    uint64
	mode   uint32
	modeFn func() uint32 // overrides mode when set (config: secrets)

	read func() []byte
	log  *nodes.EventLog // events.log: read from the log directly
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
	truncatedBy map[uint32]bool
}

func (c *contentFile) markTruncated(pid uint32) {
	c.truncMu.Lock()
	defer c.truncMu.Unlock()
	if c.truncatedBy == nil {
		c.truncatedBy = map[uint32]bool{}
	}
	c.truncatedBy[pid] = true
}

func (c *contentFile) takeTruncated(pid uint32) bool {
	c.truncMu.Lock()
	defer c.truncMu.Unlock()
	t := c.truncatedBy[pid]
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
	return uint64(len(c.content()))
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
}

func (c *contentFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	c.fill(&out.Attr)
	return 0
}

// Setattr accepts the truncation `echo x > file` sends before writing:
// commands do not replace content, so there is nothing to truncate.
func (c *contentFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
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
		if c.live != nil {
			return nil, fuse.FOPEN_DIRECT_IO, 0
		}
		if c.read == nil && c.log == nil {
			return nil, 0, syscall.EACCES
		}
		// Cached: repeated reads cost what tmpfs costs; the notifier
		// invalidates the cache after every change.
		return nil, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
	}
	if c.fsys.isSelf(ctx) {
		return selfOpen()
	}
	if !c.writable() {
		return nil, 0, syscall.EACCES
	}
	if c.fsys.opts.ReadOnly {
		return nil, 0, syscall.EROFS
	}
	// Direct I/O for writers: written bytes must never land in the page
	// cache, where readers would see them as content.
	return &lineWriter{file: c, truncated: flags&syscall.O_TRUNC != 0}, fuse.FOPEN_DIRECT_IO, 0
}

func (c *contentFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if c.live != nil {
		data, err := c.live(ctx)
		if err != nil {
			return nil, errno(err)
		}
		if off >= int64(len(data)) {
			return fuse.ReadResultData(nil), 0
		}
		return fuse.ReadResultData(data[off:]), 0
	}
	if c.log != nil {
		n := c.log.ReadAt(dest, off)
		return fuse.ReadResultData(dest[:n]), 0
	}
	data := c.content()
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(data[off:]), 0
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
	_ gofs.FileWriter  = (*lineWriter)(nil)
	_ gofs.FileFlusher = (*lineWriter)(nil)
)

func (w *lineWriter) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writer = caller(ctx).Pid
	w.buf = append(w.buf, data...)
	i := bytes.LastIndexByte(w.buf, '\n')
	if i < 0 {
		if len(w.buf) > maxLine {
			w.buf = nil
			return 0, syscall.EINVAL
		}
		return uint32(len(data)), 0
	}
	text := string(w.buf[:i+1])
	w.buf = append(w.buf[:0], w.buf[i+1:]...)
	if err := w.file.run(ctx, text, w.take()); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), 0
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
	if len(bytes.TrimSpace(w.buf)) == 0 {
		w.buf = nil
		return 0
	}
	text := string(w.buf)
	w.buf = nil
	return errno(w.file.run(ctx, text, w.take()))
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
	host *nodes.Host
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
	return &consoleSession{file: c}, fuseFlags, 0
}

// transcriptKeep bounds what a console session keeps behind its reader: a
// session that stays open (a monitoring script) must not grow forever.
const transcriptKeep = 64 << 10

type consoleSession struct {
	file    *consoleFile
	mu      sync.Mutex
	pending []byte
	// transcript holds the session from offset base on: the lines written
	// and the replies.
	transcript []byte
	base       int64
	wrote      bool
	writer     nodes.Caller // of the last write: RELEASE carries no caller
	// reply reads the reply to the last line written, nil when it is in
	// the transcript already. A query is sent when its line is written
	// and its reply read at the next request of the session (the read,
	// usually), so the machine answers while that request is on its way.
	reply func() string
}

// settle puts the reply to the last line into the transcript.
func (s *consoleSession) settle() {
	if s.reply != nil {
		s.transcript = append(s.transcript, s.reply()...)
		s.reply = nil
	}
}

func (s *consoleSession) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settle()
	s.wrote = true
	s.writer = caller(ctx)
	// The lines go in at the writer's position, ahead of replies it has
	// not read yet: a session that writes twice before it reads (dash's
	// printf writes line by line), or reads the first line of a longer
	// reply and writes again, then reads on where it is.
	if rel := off - s.base; rel >= 0 && rel < int64(len(s.transcript)) {
		s.transcript = slices.Insert(s.transcript, int(rel), data...)
	} else {
		s.transcript = append(s.transcript, data...)
	}
	s.pending = append(s.pending, data...)
	for {
		i := bytes.IndexByte(s.pending, '\n')
		if i < 0 {
			break
		}
		line := string(s.pending[:i])
		s.pending = s.pending[i+1:]
		s.settle()
		s.reply = s.file.host.StartConsole(ctx, line, caller(ctx))
	}
	if len(s.pending) > maxLine {
		s.pending = nil
		return 0, syscall.EINVAL
	}
	return uint32(len(data)), 0
}

func (s *consoleSession) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
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

// Release runs a last line of a read-write session, which gets no Flush.
func (s *consoleSession) Release(ctx context.Context) syscall.Errno {
	s.runPending(ctx)
	return 0
}

func (s *consoleSession) runPending(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settle()
	if len(bytes.TrimSpace(s.pending)) > 0 {
		line := string(s.pending)
		s.pending = nil
		s.transcript = append(s.transcript, '\n')
		s.transcript = append(s.transcript, s.file.host.Console(ctx, line, s.writer)...)
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
	sub := e.fsys.tree.Subscribe(e.prefix)
	return &eventStream{fsys: e.fsys, sub: sub}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_STREAM | fuse.FOPEN_NONSEEKABLE, 0
}

type eventStream struct {
	fsys    *FS
	sub     *nodes.Subscription
	mu      sync.Mutex
	pending []byte
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

func (s *eventStream) add(ev nodes.Event) {
	if lost := s.sub.Lost(); lost > 0 {
		s.pending = append(s.pending, nodes.Event{Time: ev.Time, Path: s.sub.Prefix(), Kind: "lost", Detail: strconv.FormatInt(lost, 10) + " events (reader too slow)"}.Line()...)
	}
	s.pending = append(s.pending, ev.Line()...)
}

func (s *eventStream) Release(ctx context.Context) syscall.Errno {
	s.sub.Close()
	return 0
}
