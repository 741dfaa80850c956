package qemu

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// consoleCommands are the console's commands, mconsole style: each is one
// QMP request bounded by its context (Bounded), but backup, which waits
// for its block job. The line after the command goes on as written (Raw):
// QEMU parses its own arguments.
var consoleCommands = []machine.ConsoleCommand{
	{Cmd: raw("info", "WHAT", 1, "HMP info: status, block, pci, qtree, cpus, registers... (info alone lists them)"), Query: machine.AlwaysQuery, Bounded: true},
	{Cmd: raw("device_add", "DRIVER,id=ID[,PROP=VALUE...]", 1, "hot-plug a device (virtio-blk-pci,drive=..., virtio-net-pci, virtio-rng-pci...); needs qemu.monitor = yes for others"), Bounded: true},
	{Cmd: raw("device_del", "ID", 1, "unplug device ID (the guest must let go of it)"), Bounded: true},
	{Cmd: raw("hmp", "LINE", 1, "any HMP command (needs qemu.monitor = yes: the monitor can open files and run programs as root)"), Bounded: true},
	{Cmd: raw("qmp", "COMMAND [JSON-ARGUMENTS]", 1, "any QMP command, its return as JSON (needs qemu.monitor = yes)"), Bounded: true},
	{Cmd: cmdtab.Cmd{Name: "backup", Args: "DEST [DRIVE]", Min: 1, Max: 2, Help: "online backup of DRIVE (default disk0) to the new raw file DEST under qemu.backup-dir, the guest running: a point-in-time copy (QMP blockdev-backup sync=full)"}},
}

// raw is the table entry of a command whose rest of line QEMU parses.
func raw(name, args string, minArgs int, help string) cmdtab.Cmd {
	return cmdtab.Cmd{Name: name, Args: args, Min: minArgs, Max: 1, Raw: true, Help: help}
}

// ConsoleCommands implements machine.Consoler.
func (m *Machine) ConsoleCommands() []machine.ConsoleCommand { return consoleCommands }

// Console implements machine.Consoler. HMP's answer is returned as QEMU
// wrote it; an HMP command that fails says so in its text ("Error: ..."),
// which QMP does not mark as an error: that text becomes the error.
func (m *Machine) Console(ctx context.Context, name string, args []string) (string, error) {
	if name == "backup" {
		return m.backup(ctx, args)
	}
	g, err := m.running()
	if err != nil {
		return "", err
	}
	line := strings.Join(args, " ")
	switch name {
	case "info":
		return hmp(ctx, g.qmp, "info "+line)
	case "device_add":
		if err := m.checkDevice(line); err != nil {
			return "", err
		}
		return hmp(ctx, g.qmp, "device_add "+line)
	case "device_del":
		return hmp(ctx, g.qmp, "device_del "+line)
	case "hmp":
		if err := m.checkMonitor(name); err != nil {
			return "", err
		}
		return hmp(ctx, g.qmp, line)
	case "qmp":
		if err := m.checkMonitor(name); err != nil {
			return "", err
		}
		return rawQMP(ctx, g.qmp, line)
	}
	return "", machine.Errorf(syscall.ENOTSUP, "not a qemu console command: %q", name)
}

// checkMonitor refuses the monitor's raw commands unless an admin allowed
// them: QEMU runs as root, and its monitor can run programs (migrate
// exec:) and read any file into the guest (drive_add, loader).
func (m *Machine) checkMonitor(name string) error {
	if m.s.monitor {
		return nil
	}
	return machine.Errorf(syscall.EACCES, "%s: QEMU's monitor can run programs and open files as root; an admin allows it with qemu.monitor = yes", name)
}

// safeDevices can be hot-plugged by whoever may write the console: they
// open no host file and take no host device; a disk or NIC refers to a
// drive or netdev that is already there.
var safeDevices = map[string]bool{
	"virtio-blk-pci": true, "virtio-net-pci": true, "e1000": true, "virtio-rng-pci": true,
	"virtio-balloon-pci": true, "virtio-serial-pci": true, "virtio-scsi-pci": true, "scsi-hd": true,
}

// hostFileKeys are device properties that name the device or a host file.
var hostFileKeys = map[string]bool{"driver": true, "file": true, "romfile": true}

// checkDevice lets device_add through for a safe device whose properties
// name no host path (romfile=/etc/shadow would load a host file into the
// guest), or for any device with qemu.monitor = yes. QEMU takes the last
// of a repeated key, so a driver= after the safe name would replace it
// (virtio-rng-pci,driver=loader,file=vmlinuz): driver, file and romfile
// are refused as keys, and a file QEMU would find relative to its working
// directory as well as one with a slash.
func (m *Machine) checkDevice(line string) error {
	if m.s.monitor {
		return nil
	}
	props := strings.Split(line, ",")
	if !safeDevices[props[0]] {
		return machine.Errorf(syscall.EACCES, "device_add %s: not one of the devices the console may add (virtio-blk-pci, virtio-net-pci, e1000, virtio-rng-pci...); others need qemu.monitor = yes", props[0])
	}
	for _, p := range props[1:] {
		k, v, _ := strings.Cut(p, "=")
		if k = strings.TrimSpace(k); strings.Contains(v, "/") || hostFileKeys[k] {
			return machine.Errorf(syscall.EACCES, "device_add: %s: host paths need qemu.monitor = yes", p)
		}
	}
	return nil
}

// rawQMP runs "COMMAND [JSON]" and returns the reply's return value.
func rawQMP(ctx context.Context, q *qmpConn, line string) (string, error) {
	cmd, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	var args any
	if rest = strings.TrimSpace(rest); rest != "" {
		var obj map[string]any
		if err := json.Unmarshal([]byte(rest), &obj); err != nil {
			return "", machine.Errorf(syscall.EINVAL, "qmp %s: arguments are not a JSON object: %v", cmd, err)
		}
		args = obj
	}
	ret, err := q.execute(ctx, cmd, args)
	if err != nil {
		return "", err
	}
	return string(ret), nil
}

// hmp runs an HMP command line; a reply that is HMP's error is an error.
func hmp(ctx context.Context, q *qmpConn, line string) (string, error) {
	out, err := q.humanCommand(ctx, line)
	if err != nil {
		return "", err
	}
	if msg, ok := strings.CutPrefix(out, "Error: "); ok {
		return "", machine.Errorf(syscall.EIO, "%s", strings.TrimSpace(msg))
	}
	return out, nil
}
