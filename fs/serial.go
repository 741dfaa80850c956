package fs

import (
	"context"
	"io"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// serialFile is a host's serial console (IPMI Serial-over-LAN): each open
// file is a stream; reads block for output, writes send input. Hosts whose
// drivers have no serial console refuse the open with ENOTSUP.
type serialFile struct{ sessionFile }

func (s *serialFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY && s.fsys.isSelf(ctx) {
		return selfOpen()
	}
	rwc, err := s.host.OpenSerial(ctx)
	if err != nil {
		return nil, 0, errno(err)
	}
	st := &serialStream{fsys: s.fsys, rwc: rwc, out: make(chan []byte, 16), quit: make(chan struct{})}
	go st.pump()
	return st, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_STREAM | fuse.FOPEN_NONSEEKABLE, 0
}

// serialStream copies the driver's output through a channel so a blocked
// read can be interrupted (Ctrl-C) without closing the stream.
type serialStream struct {
	fsys    *FS
	rwc     io.ReadWriteCloser
	out     chan []byte
	quit    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	pending []byte
}

func (s *serialStream) pump() {
	defer close(s.out)
	for {
		buf := make([]byte, 4096)
		n, err := s.rwc.Read(buf)
		if n > 0 {
			select {
			case s.out <- buf[:n]:
			case <-s.quit:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (s *serialStream) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		select {
		case b, ok := <-s.out:
			if !ok {
				return fuse.ReadResultData(nil), 0 // the stream ended: EOF
			}
			s.pending = b
		case <-ctx.Done():
			return nil, syscall.EINTR
		case <-s.fsys.done:
			return fuse.ReadResultData(nil), 0
		}
	}
	n := copy(dest, s.pending)
	s.pending = s.pending[n:]
	return fuse.ReadResultData(dest[:n]), 0
}

func (s *serialStream) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := s.rwc.Write(data)
	if err != nil {
		return uint32(n), syscall.EIO
	}
	return uint32(n), 0
}

func (s *serialStream) Release(ctx context.Context) syscall.Errno {
	s.once.Do(func() {
		close(s.quit)
		s.rwc.Close()
	})
	return 0
}
