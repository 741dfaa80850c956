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
	{Cmd: cmdtab.Cmd{Name: "backup", Args: "DEST", Min: 1, Max: 1, Raw: true, Help: "online backup: sync (sysrq s) until done, stop, copy the root tree or image to DEST (new path), go"}},
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
func (m *Machine) backup(ctx context.Context, args []string) (string, error) {
	dest := filepath.Clean(args[0])
	if !filepath.IsAbs(dest) {
		return "", machine.Errorf(syscall.EINVAL, "backup: %q is not an absolute path", args[0])
	}
	if _, err := os.Lstat(dest); err == nil {
		return "", machine.Errorf(syscall.EEXIST, "backup: %s exists; give a new path", dest)
	}
	if fi, err := os.Stat(filepath.Dir(dest)); err != nil || !fi.IsDir() {
		return "", machine.Errorf(syscall.ENOENT, "backup: directory %s does not exist", filepath.Dir(dest))
	}
	src := m.root.hostfs
	if src == "" {
		src = m.root.image
	}
	if rel, err := filepath.Rel(src, dest); err == nil && !strings.HasPrefix(rel, "..") {
		return "", machine.Errorf(syscall.EINVAL, "backup: %s is inside the guest's root %s", dest, src)
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
	started := time.Now()
	// A paused guest runs for the sync (a stopped kernel runs nothing
	// but mconsole) and is paused again for the copy.
	if wasPaused {
		if _, err := m.request(ctx, g, "go"); err != nil {
			return "", fmt.Errorf("backup: go (to sync the paused guest): %w", err)
		}
		m.setPaused(g, false, "guest resumed to sync for a backup to "+dest)
	}
	syncs, err := m.syncAndStop(ctx, g)
	if err != nil {
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
	files, size, err := copyTree(ctx, src, dest)
	if err != nil {
		os.RemoveAll(dest)
		return fail("copy", err)
	}
	if err := resume(); err != nil {
		return fail("go", err)
	}
	msg := fmt.Sprintf("backup of %s to %s: %d files, %d bytes in %s (after %d syncs)", src, dest, files, size, time.Since(started).Round(time.Millisecond), syncs)
	m.report.Event(machine.EventBackup, msg)
	return msg, nil
}

// copyTree copies a file or a directory tree (regular files, directories,
// symlinks; modes and owners kept; device nodes, fifos and sockets
// skipped).
func copyTree(ctx context.Context, src, dest string) (files int, size int64, err error) {
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dest, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, fi.Mode().Perm()|0o700); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(l, target); err != nil {
				return err
			}
		case d.Type().IsRegular():
			n, err := copyFile(p, target, fi.Mode().Perm())
			if err != nil {
				return err
			}
			size += n
		default:
			return nil
		}
		files++
		if st != nil {
			os.Lchown(target, int(st.Uid), int(st.Gid))
		}
		if d.IsDir() {
			os.Chmod(target, fi.Mode().Perm())
		}
		return nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		err = machine.Errorf(syscall.ETIMEDOUT, "copy took longer than the host's timeout")
	}
	return files, size, err
}

func copyFile(src, dest string, perm fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
