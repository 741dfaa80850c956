package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/statusdir"
)

// checkStatusDir refuses a status-dir that is the mountpoint, inside it,
// or holds it: one mount would hide the other. mountopts.Validate checked
// that it is a directory.
func checkStatusDir(cfg config) error {
	dir := cfg.opts.StatusDir
	if dir == "" {
		return nil
	}
	mnt, err := filepath.Abs(cfg.mountpoint)
	if err != nil {
		return err
	}
	within := func(a, b string) bool { return a == b || strings.HasPrefix(a, b+"/") || b == "/" }
	if within(dir, mnt) || within(mnt, dir) {
		return fmt.Errorf("status-dir=%s: must be outside the mountpoint %s, and not hold it", dir, mnt)
	}
	return nil
}

// statusCopy is the status directory of a running daemon: its tmpfs and
// the copy kept in it.
type statusCopy struct {
	dir    string
	mirror *statusdir.Dir
	log    *slog.Logger
}

// startStatusDir mounts the tmpfs at dir and writes the whole copy into
// it, before the FUSE mount appears. Other users may read it only if they
// may read the mount (shared: allow_other).
func startStatusDir(tree *model.Tree, dir string, shared bool, log *slog.Logger) (*statusCopy, error) {
	if err := statusdir.Mount(dir, shared, log); err != nil {
		return nil, err
	}
	c, err := statusdir.Start(tree, dir, log)
	if err != nil {
		statusdir.Unmount(dir, log)
		return nil, err
	}
	log.Info("status files copied", "status-dir", dir)
	return &statusCopy{dir: dir, mirror: c, log: log}, nil
}

// sync is fs's AfterWrite; nil without a status directory.
func (s *statusCopy) sync() func(string) {
	if s == nil {
		return nil
	}
	return s.mirror.Sync
}

// stop stops the copy and unmounts the tmpfs, after the tree closed.
func (s *statusCopy) stop() {
	if s == nil {
		return
	}
	s.mirror.Close()
	if err := statusdir.Unmount(s.dir, s.log); err != nil {
		s.log.Error("status-dir", "err", err)
	}
}
