package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// backupSeq numbers backup jobs and their target nodes in QEMU.
var backupSeq atomic.Uint64

// backup copies a drive, the guest running, to a new raw file: QMP
// blockdev-backup with sync=full copies the drive as it was when the job
// started (QEMU copies a block before the guest overwrites it), so the
// copy holds every write the guest completed before the command, and
// none it makes after. The daemon makes DEST itself (new, not a symlink,
// mode 0600, the drive's size) inside qemu.backup-dir, and QEMU writes
// into it. On failure DEST is removed.
func (m *Machine) backup(ctx context.Context, args []string) (string, error) {
	dest, err := m.backupDest(args[0])
	if err != nil {
		return "", err
	}
	drive := "disk0"
	if len(args) > 1 {
		drive = args[1]
	}
	g, err := m.running()
	if err != nil {
		return "", err
	}
	started := time.Now()
	size, err := driveSize(ctx, g.qmp, drive)
	if err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	if err := createTarget(dest, size); err != nil {
		return "", err
	}
	if err := m.copyDrive(ctx, g, drive, dest); err != nil {
		os.Remove(dest)
		err = fmt.Errorf("backup of %s to %s failed: %w", drive, dest, err)
		m.report.Event(machine.EventBackup, err.Error())
		return "", err
	}
	msg := fmt.Sprintf("backup of %s to %s: %d bytes in %s", drive, dest, size, time.Since(started).Round(time.Millisecond))
	m.report.Event(machine.EventBackup, msg)
	return msg, nil
}

// backupDest checks DEST: an absolute path to a new file inside
// qemu.backup-dir, symbolic links in its directory resolved. The daemon
// writes it as root and anyone who may write the console may name it, so
// it may not land where root's files are (a guest's disk copied to
// /etc/cron.d would run as root).
func (m *Machine) backupDest(arg string) (string, error) {
	if !filepath.IsAbs(arg) {
		return "", machine.Errorf(syscall.EINVAL, "backup: %q is not an absolute path", arg)
	}
	dest := filepath.Clean(arg)
	root, err := filepath.EvalSymlinks(m.s.backupDir)
	if err != nil {
		return "", machine.Errorf(syscall.ENOENT, "backup: qemu.backup-dir %s: %v (an admin creates it)", m.s.backupDir, err)
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(dest))
	if err != nil {
		return "", machine.Errorf(syscall.ENOENT, "backup: directory %s: %v", filepath.Dir(dest), err)
	}
	if rel, err := filepath.Rel(root, dir); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", machine.Errorf(syscall.EACCES, "backup: %s is outside qemu.backup-dir %s", dest, m.s.backupDir)
	}
	dest = filepath.Join(dir, filepath.Base(dest))
	if _, err := os.Lstat(dest); err == nil {
		return "", machine.Errorf(syscall.EEXIST, "backup: %s exists; give a new path", dest)
	}
	return dest, nil
}

// createTarget makes the backup's file, as large as the drive:
// blockdev-backup wants a target of the source's size.
func createTarget(dest string, size int64) error {
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return machine.Errorf(machine.ErrnoOf(err), "backup: %v", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dest)
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

// driveSize is the virtual size of a drive QEMU has.
func driveSize(ctx context.Context, q *qmpConn, drive string) (int64, error) {
	ret, err := q.execute(ctx, "query-block", nil)
	if err != nil {
		return 0, err
	}
	var devs []struct {
		Device   string `json:"device"`
		Inserted *struct {
			Image struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(ret, &devs); err != nil {
		return 0, fmt.Errorf("query-block: %w", err)
	}
	var names []string
	for _, d := range devs {
		if d.Device == drive && d.Inserted != nil {
			return d.Inserted.Image.VirtualSize, nil
		}
		names = append(names, d.Device)
	}
	return 0, machine.Errorf(syscall.ENODEV, "no drive %q (drives: %s)", drive, strings.Join(names, ", "))
}

// copyDrive runs the backup job into dest and waits for its end: a target
// node for dest, blockdev-backup, BLOCK_JOB_COMPLETED. When ctx ends
// first the job is cancelled.
func (m *Machine) copyDrive(ctx context.Context, g *guest, drive, dest string) error {
	q := g.qmp
	node := fmt.Sprintf("machinefs-backup%d", backupSeq.Add(1))
	if _, err := q.execute(ctx, "blockdev-add", map[string]any{
		"driver": "raw", "node-name": node,
		"file": map[string]any{"driver": "file", "filename": dest},
	}); err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.s.qmpTimeout)
		defer cancel()
		if _, err := q.execute(dctx, "blockdev-del", map[string]any{"node-name": node}); err != nil {
			m.log.Warn("qemu: removing the backup's target node", "node", node, "err", err)
		}
	}()
	done := q.subscribe("BLOCK_JOB_COMPLETED")
	defer q.unsubscribe(done)
	cancelled := q.subscribe("BLOCK_JOB_CANCELLED")
	defer q.unsubscribe(cancelled)
	if _, err := q.execute(ctx, "blockdev-backup", map[string]any{"job-id": node, "device": drive, "target": node, "sync": "full"}); err != nil {
		return err
	}
	for {
		select {
		case ev := <-done.ch:
			var d struct {
				Device string `json:"device"`
				Error  string `json:"error"`
			}
			json.Unmarshal(ev.Data, &d)
			if d.Device != node {
				continue
			}
			if d.Error != "" {
				return machine.Errorf(syscall.EIO, "block job: %s", d.Error)
			}
			return syncFile(dest)
		case ev := <-cancelled.ch:
			if strings.Contains(string(ev.Data), `"`+node+`"`) {
				return machine.Errorf(syscall.ECANCELED, "block job %s was cancelled", node)
			}
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.s.qmpTimeout)
			q.execute(cctx, "block-job-cancel", map[string]any{"device": node, "force": true})
			cancel()
			return machine.Errorf(syscall.ETIMEDOUT, "the copy took longer than the host's timeout; cancelled")
		case <-q.done:
			return machine.Errorf(syscall.EHOSTDOWN, "QEMU ended during the backup")
		}
	}
}

// syncFile makes the finished copy durable before it is reported done.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
