package fs

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
)

// The console is a session file, not a commandFile: each open is a
// conversation of its own whose replies are read back at the offsets of
// the lines written, so it has no shared line writer and no write gate (a
// console command never waits for a machine to reach a state). It shares
// the line bounds (maxLine, tooLong, skip) and the mount's heldBytes.

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
	c.Getattr(ctx, fh, out)
	c.fsys.setattrTimeout(out) // size 0 for ever: nothing to go stale
	return 0
}

func (c *consoleFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY && c.fsys.isSelf(ctx) {
		return selfOpen()
	}
	// No close sends a FLUSH (a round trip to the daemon, twice for a
	// shell's `echo CMD > console`: bash closes the descriptor it dup'ed
	// first). Every line that ends in a newline has run, and a
	// write-only session's reply is in, when its WRITE is answered; a
	// last line without one runs at release, just after close returns
	// (`printf version > console`).
	//
	// Only a session that can read has a transcript: what a write-only
	// session writes and the replies it gets could never be read, so it
	// keeps nothing (`yes version > console` runs in constant memory).
	return &consoleSession{file: c, keep: flags&syscall.O_ACCMODE == syscall.O_RDWR}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
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

// awaitReply waits for the reply to a write-only session's last line:
// nobody reads that session, but a reader that opens console after the
// write returns must see the reply (`echo version > console; cat
// console`). A signal ends the wait, never the command: the reply is
// recorded as the console's last when it comes (the query is bounded by
// the host's timeout). s.mu is held.
func (s *consoleSession) awaitReply(ctx context.Context) {
	reply := s.reply
	s.reply = nil
	got := make(chan struct{})
	go func() {
		defer close(got)
		reply()
	}()
	select {
	case <-got:
	case <-ctx.Done():
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
	if !s.keep && s.reply != nil {
		s.awaitReply(ctx)
	}
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

// Release runs a last line written without a newline, and gives back
// what the session kept.
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
