package ns

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
	"golang.org/x/sys/unix"
)

// ConsoleCommands implements machine.Consoler (mconsole's commands, as far as
// they apply to a namespace sandbox).
func (d *Subhost) ConsoleCommands() []machine.ConsoleCommand {
	return []machine.ConsoleCommand{
		{Cmd: cmdtab.Cmd{Name: "version", Help: "kernel and subhost init"}, Query: machine.AlwaysQuery},
		{Cmd: cmdtab.Cmd{Name: "proc", Args: "FILE", Min: 1, Max: 1, Help: "a file of the subhost's /proc"}, Query: machine.AlwaysQuery},
		{Cmd: cmdtab.Cmd{Name: "stop", Help: "freeze the subhost (cgroup freezer)"}},
		{Cmd: cmdtab.Cmd{Name: "go", Help: "thaw a frozen subhost"}},
		{Cmd: cmdtab.Cmd{Name: "halt", Help: "kill the subhost at once and release it"}},
		{Cmd: cmdtab.Cmd{Name: "reboot", Help: "orderly reboot through /run/initctl"}},
		{Cmd: cmdtab.Cmd{Name: "cad", Help: "orderly power off through /run/initctl"}},
		{Cmd: cmdtab.Cmd{Name: "log", Args: "TEXT", Min: 1, Max: 1, Raw: true, Help: "append TEXT to the subhost's /var/log/machinefs.log and the events"}},
		// mconsole's other commands, listed so that help shows them and
		// any line of theirs gets the driver's ENOTSUP.
		{Cmd: cmdtab.Cmd{Name: "sysrq", Args: "LETTER", Max: cmdtab.Many, Help: "not supported by ns subhosts"}},
		{Cmd: cmdtab.Cmd{Name: "config", Max: cmdtab.Many, Help: "not supported by ns subhosts"}},
		{Cmd: cmdtab.Cmd{Name: "remove", Max: cmdtab.Many, Help: "not supported by ns subhosts"}},
		{Cmd: cmdtab.Cmd{Name: "stack", Max: cmdtab.Many, Help: "not supported by ns subhosts"}},
	}
}

// Console implements machine.Consoler.
func (d *Subhost) Console(ctx context.Context, name string, args []string) (string, error) {
	run := func(verb string) (string, error) {
		if err := d.Power(ctx, machine.Command{Verb: verb, Line: verb}); err != nil {
			return "", err
		}
		return verb + " accepted", nil
	}
	if verb, ok := machine.ConsolePowerVerb(name); ok {
		return run(verb)
	}
	switch name {
	case "version":
		var u unix.Utsname
		_ = unix.Uname(&u)
		d.mu.Lock()
		defer d.mu.Unlock()
		init, pid := "not running", 0
		if d.rec != nil && d.p != nil {
			init, pid = d.rec.Init, d.p.pid
		}
		return fmt.Sprintf("machinefs ns subhost %s: kernel %s %s, init %s (pid %d)", d.s.name,
			unix.ByteSliceToString(u.Sysname[:]), unix.ByteSliceToString(u.Release[:]), init, pid), nil
	case "proc":
		file := filepath.Clean("/" + args[0])
		d.mu.Lock()
		pid := 0
		if d.p != nil {
			pid = d.p.pid
		}
		d.mu.Unlock()
		if pid == 0 {
			return "", machine.Errorf(syscall.EINVAL, "proc: the subhost is not running")
		}
		// The subhost's own /proc (mounted by its init), seen through its
		// root; without one, the pid's view of the host's proc.
		data, err := readLimited(fmt.Sprintf("/proc/%d/root/proc%s", pid, file))
		if err != nil {
			data, err = readLimited(fmt.Sprintf("/proc/%d%s", pid, file))
		}
		if err != nil {
			return "", machine.Errorf(syscall.ENOENT, "proc %s: %v", args[0], err)
		}
		return "\n" + strings.TrimRight(data, "\n"), nil
	case "log":
		text := args[0] // the table: one Raw argument
		d.mu.Lock()
		live := ""
		if d.rec != nil {
			live = d.rec.Live
		}
		d.mu.Unlock()
		if live == "" {
			return "", machine.Errorf(syscall.EINVAL, "log: the subhost holds no root (start it first)")
		}
		p := filepath.Join(live, "var/log/machinefs.log")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return "", err
		}
		_, err = fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), text)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", err
		}
		d.report.Event(machine.EventLog, text)
		return "", nil
	}
	return "", machine.Errorf(syscall.ENOTSUP, "%s: not supported by ns subhosts", name)
}

func readLimited(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := f.Read(buf)
	if n == 0 && err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Describe implements machine.Describer.
func (d *Subhost) Describe() [][2]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out [][2]string
	add := func(k, v string) { out = append(out, [2]string{k, v}) }
	if d.p != nil {
		add("pid", strconv.Itoa(d.p.pid))
		add("started", d.since.UTC().Format(time.RFC3339))
	} else {
		add("pid", "")
	}
	if d.rec != nil {
		add("root", d.rec.Live)
		add("netns", d.rec.Netns)
		add("cgroup", d.rec.Cgroup)
		if d.rec.Cgroup != "" {
			add("cpu", cpuText(d.rec.Cgroup))
			add("memory", memText(d.rec.Cgroup))
		}
		if d.p == nil {
			add("held", "mounts and netns kept (hibernated)")
		}
	}
	add("last-run", d.lastRun)
	return out
}

func cpuText(cg string) string {
	data, err := os.ReadFile(filepath.Join(cg, "cpu.stat"))
	if err != nil {
		return "unavailable"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return (time.Duration(n) * time.Microsecond).String()
		}
	}
	return "unavailable"
}

func memText(cg string) string {
	data, err := os.ReadFile(filepath.Join(cg, "memory.current"))
	if err != nil {
		return "unavailable (no memory controller in the cgroup v2 hierarchy)"
	}
	return strings.TrimSpace(string(data)) + " bytes"
}
