package fs

import (
	"context"
	"errors"
	"io"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/machinefs/machinefs/model"
)

// serialFile is a host's serial console (IPMI Serial-over-LAN, a guest's
// console): each open file is a session of the host's console (see
// model.SerialSession); reads block for output, writes send input. A
// host whose drivers have no serial console has no serial file.
type serialFile struct{ sessionFile }

func (s *serialFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	if write && s.fsys.isSelf(ctx) {
		return selfOpen()
	}
	ss, err := s.host.OpenSerial(ctx, write, caller(ctx))
	if err != nil {
		return nil, 0, errno(err)
	}
	return &serialStream{fsys: s.fsys, ss: ss}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_STREAM | fuse.FOPEN_NONSEEKABLE, 0
}

// serialStream is one open serial file.
type serialStream struct {
	fsys *FS
	ss   *model.SerialSession
}

var (
	_ gofs.FileReader   = (*serialStream)(nil)
	_ gofs.FileWriter   = (*serialStream)(nil)
	_ gofs.FileReleaser = (*serialStream)(nil)
)

// Read blocks until there is output; Ctrl-C (the request's interrupt)
// ends the wait with EINTR, and unmounting with EOF.
func (s *serialStream) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.fsys.stopping, cancel)
	defer stop()
	n, err := s.ss.Read(ctx, dest)
	if errors.Is(err, io.EOF) || (err != nil && s.fsys.stopping.Err() != nil) {
		return fuse.ReadResultData(nil), 0
	}
	if err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write returns when the machine took the input; Ctrl-C ends a wait for a
// machine that does not read its console (EINTR), as unmounting does.
func (s *serialStream) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.fsys.stopping, cancel)
	defer stop()
	n, err := s.ss.Write(ctx, data)
	if err != nil {
		return uint32(n), errno(err)
	}
	return uint32(n), 0
}

func (s *serialStream) Release(ctx context.Context) syscall.Errno {
	s.ss.Close()
	return 0
}
