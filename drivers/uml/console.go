package uml

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/drivers/internal/backupdest"
	"github.com/machinefs/machinefs/machine"
)

// consoleCommands are UML's mconsole commands (help is the tree's own),
// plus backup. Each mconsole command is one request bounded by its
// context (Bounded); backup copies without bound. UML parses its own
// lines, so each gets the rest of the line as written (Raw).
var consoleCommands = []machine.ConsoleCommand{
	{Cmd: mconsole("version", "", "the UML kernel version"), Query: machine.AlwaysQuery, Bounded: true},
	{Cmd: mconsole("halt", "", "halt at once, no sync, no clean shutdown"), Bounded: true},
	{Cmd: mconsole("reboot", "", "reboot at once, no sync, no clean shutdown"), Bounded: true},
	{Cmd: mconsole("config", "DEV=CONFIG | DEV", "add a device (ubd3=/img, eth1=...) or show a device's configuration"), Query: configQuery, Bounded: true},
	{Cmd: mconsole("remove", "DEV", "remove an idle device"), Bounded: true},
	{Cmd: mconsole("sysrq", "LETTER", "a SysRq command (s sync, c crash, t tasks...)"), Bounded: true},
	{Cmd: mconsole("cad", "", "ctrl-alt-del: what init makes of it"), Bounded: true},
	{Cmd: mconsole("stop", "", "pause the guest (it then only answers mconsole)"), Bounded: true},
	{Cmd: mconsole("go", "", "resume a stopped guest"), Bounded: true},
	{Cmd: mconsole("log", "TEXT", "printk TEXT in the guest's kernel log"), Bounded: true},
	{Cmd: mconsole("proc", "FILE", "the guest's /proc/FILE"), Query: machine.AlwaysQuery, Bounded: true},
	{Cmd: mconsole("stack", "PID", "stack of the guest process PID (to the guest's kernel log)"), Bounded: true},
	{Cmd: cmdtab.Cmd{Name: "backup", Args: "DEST", Min: 1, Max: 1, Raw: true, Help: "online backup: sync (sysrq s) until done, stop, copy the root tree or image to DEST (a new path in uml.backup-dir; relative: in it), go"}},
}

// mconsole is the table entry of an mconsole command: UML checks its own
// arguments, so the line goes on as written (Raw), whatever follows the
// command.
func mconsole(name, args, help string) cmdtab.Cmd {
	return cmdtab.Cmd{Name: name, Args: args, Max: 1, Raw: true, Help: help}
}

// configQuery: "config DEV" shows a device, "config DEV=..." adds one.
func configQuery(args []string) bool {
	return len(args) == 1 && !strings.Contains(args[0], "=")
}

// ConsoleCommands implements machine.Consoler.
func (m *Machine) ConsoleCommands() []machine.ConsoleCommand { return consoleCommands }

// Console implements machine.Consoler: the command goes to UML as written and
// the reply keeps UML's words. An "ERR" reply of UML is an error whose text
// is UML's reply.
func (m *Machine) Console(ctx context.Context, name string, args []string) (string, error) {
	if name == "backup" {
		return m.backup(ctx, args)
	}
	known := false
	for _, c := range consoleCommands {
		known = known || c.Name == name
	}
	if !known {
		return "", machine.Errorf(syscall.ENOTSUP, "not an mconsole command: %q", name)
	}
	g, err := m.running()
	if err != nil {
		return "", err
	}
	line := strings.Join(append([]string{name}, args...), " ")
	m.mu.Lock()
	if name == "halt" {
		g.expect = "console halt"
	}
	m.mu.Unlock()
	text, err := m.request(ctx, g, line)
	if err != nil {
		return "", err
	}
	switch name {
	case "stop":
		m.setPaused(g, true, "guest paused (console stop)")
	case "go":
		m.setPaused(g, false, "guest resumed (console go)")
	case "reboot":
		g.mc.reset() // UML re-executes itself: a new socket
		m.mu.Lock()
		g.booted, g.paused = false, false
		m.mu.Unlock()
		m.writeRecord(g)
		m.report.Report(machine.Status{Power: machine.PowerRebooting, Reachable: true, Reason: "guest rebooting (console reboot)"})
	}
	return text, nil
}

var _ machine.QueryStarter = (*Machine)(nil)

// StartQuery implements machine.QueryStarter for the mconsole queries
// (version, proc FILE, config DEV): it sends the request and leaves the
// reply to be read.
func (m *Machine) StartQuery(ctx context.Context, name string, args []string) (func() (string, error), error) {
	g, err := m.running()
	if err != nil {
		return nil, err
	}
	return g.mc.start(ctx, strings.Join(append([]string{name}, args...), " "))
}

// backup makes an online backup: sync the guest's file systems and wait
// until the sync is done and the root disk quiet (syncAndStop), stop the
// guest, copy the root tree or image to DEST, resume. The copy holds every
// write that completed before the command. The guest is resumed whatever
// fails; a guest that was paused before runs for the sync and is paused
// again.
//
// DEST is a new path in uml.backup-dir (a relative one is taken in it):
// the daemon writes the guest's files as root, and an operator names
// DEST. The daemon makes DEST itself, never through a symbolic link: a
// file of mode 0600 for an image root, a directory of mode 0700 for a
// hostfs root (inside, the guest's owners and modes). On failure DEST is
// removed.
func (m *Machine) backup(ctx context.Context, args []string) (string, error) {
	d, err := backupdest.Resolve("uml.backup-dir", m.backupDir, args[0])
	if err != nil {
		return "", err
	}
	dest := d.Path()
	src := m.root.image
	if m.root.hostfs != "" {
		// The walk starts at the directory a link names.
		if src, err = filepath.EvalSymlinks(m.root.hostfs); err != nil {
			return "", machine.Errorf(syscall.ENOENT, "backup: uml.root: %v", err)
		}
		if rel, err := filepath.Rel(src, dest); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return "", machine.Errorf(syscall.EINVAL, "backup: %s is inside the guest's root %s", dest, src)
		}
	}
	g, err := m.running()
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	wasPaused, booted := g.paused, g.booted
	m.mu.Unlock()
	if !booted {
		return "", machine.Errorf(syscall.EAGAIN, "backup: the guest is still booting")
	}
	// DEST is made before the guest is disturbed: a name taken meanwhile
	// fails here.
	var (
		image *os.File
		tree  *os.Root
	)
	if m.root.hostfs != "" {
		tree, err = d.Mkdir()
	} else {
		image, err = d.CreateFile()
	}
	if err != nil {
		return "", err
	}
	discard := func() {
		if tree != nil {
			tree.Close()
		}
		if image != nil {
			image.Close()
		}
		if err := d.Remove(); err != nil {
			m.log.Warn("uml: removing a failed backup", "dest", dest, "err", err)
		}
	}
	started := time.Now()
	// A paused guest runs for the sync (a stopped kernel runs nothing
	// but mconsole) and is paused again for the copy.
	if wasPaused {
		if _, err := m.request(ctx, g, "go"); err != nil {
			discard()
			return "", fmt.Errorf("backup: go (to sync the paused guest): %w", err)
		}
		m.setPaused(g, false, "guest resumed to sync for a backup to "+dest)
	}
	syncs, err := m.syncAndStop(ctx, g)
	if err != nil {
		discard()
		err = fmt.Errorf("backup to %s failed at sync: %w", dest, err)
		if wasPaused {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.reqTimeout)
			if _, perr := m.request(rctx, g, "stop"); perr != nil {
				err = fmt.Errorf("%w; pausing the guest again failed too: %v", err, perr)
			} else {
				m.setPaused(g, true, "guest paused again after a failed backup")
			}
			cancel()
		}
		m.report.Event(machine.EventBackup, err.Error())
		return "", err
	}
	m.setPaused(g, true, "guest synced and paused for a backup to "+dest)
	resume := func() error {
		if wasPaused {
			return nil
		}
		// Resume even when the caller's time is up.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.reqTimeout)
		defer cancel()
		if _, err := m.request(rctx, g, "go"); err != nil {
			return err
		}
		m.setPaused(g, false, "guest resumed after a backup to "+dest)
		return nil
	}
	fail := func(step string, err error) (string, error) {
		err = fmt.Errorf("backup to %s failed at %s: %w", dest, step, err)
		if rerr := resume(); rerr != nil {
			err = fmt.Errorf("%w; resuming the guest failed too: %v", err, rerr)
		}
		m.report.Event(machine.EventBackup, err.Error())
		return "", err
	}
	var (
		files int
		size  int64
	)
	if tree != nil {
		files, size, err = copyTree(ctx, src, tree)
		if cerr := tree.Close(); err == nil {
			err = cerr
		}
		tree = nil
	} else {
		files = 1
		size, err = copyImage(src, image)
		image = nil
	}
	if err != nil {
		discard()
		return fail("copy", err)
	}
	if err := resume(); err != nil {
		return fail("go", err)
	}
	msg := fmt.Sprintf("backup of %s to %s: %d files, %d bytes in %s (after %d syncs)", src, dest, files, size, time.Since(started).Round(time.Millisecond), syncs)
	m.report.Event(machine.EventBackup, msg)
	return msg, nil
}

// copyImage copies the image src into out, which it closes, and makes the
// copy durable before the backup is reported done.
func copyImage(src string, out *os.File) (int64, error) {
	defer out.Close()
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	n, err := io.Copy(out, in)
	if err != nil {
		return n, err
	}
	if err := out.Sync(); err != nil {
		return n, err
	}
	return n, out.Close()
}

// copyTree copies the directory tree src into dest (regular files,
// directories, symlinks; modes and owners kept, dest's own excepted;
// device nodes, fifos and sockets skipped). It writes through dest, an
// os.Root: nothing it makes, the guest's symlinks included, leads a later
// write out of the backup.
func copyTree(ctx context.Context, src string, dest *os.Root) (files int, size int64, err error) {
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "." {
			// dest, made by backupdest, stays root's and 0700.
			files++
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch {
		case d.IsDir():
			if err := dest.Mkdir(rel, fi.Mode().Perm()|0o700); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := dest.Symlink(l, rel); err != nil {
				return err
			}
		case d.Type().IsRegular():
			n, err := copyFile(p, dest, rel, fi.Mode().Perm())
			if err != nil {
				return err
			}
			size += n
		default:
			return nil
		}
		files++
		if st != nil {
			dest.Lchown(rel, int(st.Uid), int(st.Gid))
		}
		if d.IsDir() {
			dest.Chmod(rel, fi.Mode().Perm())
		}
		return nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		err = machine.Errorf(syscall.ETIMEDOUT, "copy took longer than the host's timeout")
	}
	return files, size, err
}

func copyFile(src string, dest *os.Root, name string, perm fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := dest.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
