package qemu

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Spec registers the qemu driver.
var Spec = machine.DriverSpec{
	Name: "qemu",
	Doc:  "QEMU/KVM guest: a qemu-system-x86_64 process spoken to over QMP (power, console, backup), its serial port as the serial file",
	Keys: keys,
	New:  New,
}

// keys are the driver's config keys (Spec.Keys). A key that names a file
// QEMU opens (QEMU runs as root, as the daemon does), a program or a
// directory the daemon writes in is Privileged.
var keys = []machine.KeySpec{
	{Name: "qemu.binary", Default: "/usr/bin/qemu-system-x86_64", Doc: "the QEMU system emulator to run", Kind: pathKind, Privileged: true},
	{Name: "qemu.kernel", Doc: "Linux kernel to boot directly (-kernel); this or qemu.disk is required", Kind: pathKind, Privileged: true},
	{Name: "qemu.initrd", Doc: "initial ramdisk for qemu.kernel (-initrd)", Kind: pathKind, Privileged: true},
	{Name: "qemu.append", Doc: "kernel command line for qemu.kernel (-append), e.g. console=ttyS0 for the serial file", Kind: machine.StringKind},
	{Name: "qemu.disk", Doc: "disk images, separated by spaces, attached as virtio disks disk0, disk1...: [raw:|qcow2:]/PATH, the format from the prefix or else from the name (.qcow2 is qcow2, anything else raw; never probed); a qcow2 may have a backing file", Kind: disksKind, Privileged: true},
	{Name: "qemu.mem", Default: "256M", Doc: "guest memory: a number with M or G (16M to 1024G)", Kind: memKind},
	{Name: "qemu.cpus", Default: "1", Doc: "virtual CPUs", Kind: machine.IntKind(1, 256)},
	{Name: "qemu.accel", Default: "auto", Doc: "accelerator: kvm, tcg (emulation), or auto: kvm where /dev/kvm can be opened, tcg otherwise; state says which and why", Kind: machine.EnumKind("auto", "kvm", "tcg")},
	{Name: "qemu.net", Doc: "network: SWITCH:MAC, a TAP named after the host on the Linux bridge SWITCH (a virtual switch, which must exist), or vde:SWITCH:MAC, a port of the VDE switch SWITCH; the guest's NIC (virtio) has address MAC", Kind: netKind, Privileged: true},
	{Name: "qemu.dir", Default: "/run/machinefs/qemu", Doc: "runtime directory: the guest's QMP and serial sockets, pid file and QEMU's log are in DIR/NAME (at most 64 bytes: the sockets must fit a socket address)", Kind: dirKind, Privileged: true},
	{Name: "qemu.backup-dir", Default: "/var/lib/machinefs/backup", Doc: "backup DEST must be a new file in this directory or below it (the daemon writes it as root)", Kind: pathKind, Privileged: true},
	{Name: "qemu.monitor", Default: "no", Doc: "yes allows the console's hmp and qmp commands and device_add of any device: QEMU's monitor can run programs and open files as root, so whoever may write the console is then as root", Kind: machine.BoolKind, Privileged: true},
	{Name: "qemu.poweroff-timeout", Default: "30s", Doc: "poweroff presses the ACPI power button, then quits QEMU if the guest is still up after this", Kind: machine.DurationKind(100*time.Millisecond, time.Hour)},
	{Name: "qemu.qmp-timeout", Default: "5s", Doc: "bound on one QMP command and on connecting to QMP; a guest whose QEMU does not answer within it is killed by off", Kind: machine.DurationKind(10*time.Millisecond, 10*time.Minute)},
}

// safePathRE keeps paths out of QEMU's option syntax: no commas (a
// separator in -drive and -chardev), no '=' surprises, nothing a reader
// of the command line could misread.
var safePathRE = regexp.MustCompile(`^/[A-Za-z0-9._+/@:-]*$`)

func checkPath(v string) error {
	switch {
	case !filepath.IsAbs(v):
		return fmt.Errorf("%q: want an absolute path", v)
	case !safePathRE.MatchString(v):
		return fmt.Errorf("%q: use letters, digits and . _ + - @ : / only (no commas: the path goes into QEMU's options)", v)
	}
	return nil
}

var pathKind = machine.CheckedKind("absolute path", checkPath)

// maxSocketPath is the longest path a unix socket address takes.
const maxSocketPath = 107

var dirKind = machine.CheckedKind("absolute path, at most 64 bytes", func(v string) error {
	if err := checkPath(v); err != nil {
		return err
	}
	if len(v) > 64 {
		return fmt.Errorf("%q is %d bytes: keep it at most 64, the sockets inside must fit %d", v, len(v), maxSocketPath)
	}
	return nil
})

var memRE = regexp.MustCompile(`^([0-9]+)([MmGg])$`)

// memKind is a memory size; drivers receive MiB.
var memKind = machine.CustomKind("size 16M-1024G", func(v string) (int, error) {
	m := memRE.FindStringSubmatch(strings.TrimSpace(v))
	if m == nil {
		return 0, fmt.Errorf("%q: want a number and a unit M or G (e.g. 256M)", v)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n > 1<<20 {
		return 0, fmt.Errorf("%q: number too large", v)
	}
	if strings.EqualFold(m[2], "G") {
		n <<= 10
	}
	if n < 16 || n > 1<<20 {
		return 0, fmt.Errorf("%q: want between 16M and 1024G", v)
	}
	return n, nil
})

// disk is one image of qemu.disk.
type disk struct {
	path   string
	format string // raw or qcow2: never probed, a guest could forge a header
}

func parseDisk(v string) (disk, error) {
	d := disk{path: v}
	if f, p, ok := strings.Cut(v, ":"); ok && (f == "raw" || f == "qcow2") {
		d = disk{path: p, format: f}
	}
	if err := checkPath(d.path); err != nil {
		return disk{}, err
	}
	if d.format == "" {
		d.format = "raw"
		if strings.HasSuffix(d.path, ".qcow2") {
			d.format = "qcow2"
		}
	}
	return d, nil
}

var disksKind = machine.CustomKind("[raw:|qcow2:]/PATH ...", func(v string) ([]disk, error) {
	var ds []disk
	for _, f := range strings.Fields(v) {
		d, err := parseDisk(f)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	if len(ds) > 16 {
		return nil, fmt.Errorf("%d disks: at most 16", len(ds))
	}
	return ds, nil
})

// netSpec is a parsed qemu.net.
type netSpec struct {
	vde    bool
	bridge string // the Linux bridge, or the VDE switch's name
	mac    net.HardwareAddr
}

func (n netSpec) String() string {
	if n.vde {
		return "vde:" + n.bridge + ":" + n.mac.String()
	}
	return n.bridge + ":" + n.mac.String()
}

var netKind = machine.CustomKind("SWITCH:MAC or vde:SWITCH:MAC", parseNet)

func parseNet(v string) (netSpec, error) {
	v = strings.TrimSpace(v)
	rest, vde := strings.CutPrefix(v, "vde:")
	if !vde {
		c, err := machine.ParseBridgeMAC(v)
		if err != nil {
			return netSpec{}, err
		}
		return netSpec{bridge: c.Bridge, mac: c.MAC}, nil
	}
	c, err := machine.ParseBridgeMAC(rest)
	if err == nil {
		return netSpec{vde: true, bridge: c.Bridge, mac: c.MAC}, nil
	}
	// A Linux bridge may be called vde: "vde:MAC" is not vde:SWITCH:MAC
	// (the MAC would lose its first byte to the switch's name), and no
	// value reads both ways.
	if b, berr := machine.ParseBridgeMAC(v); berr == nil {
		return netSpec{bridge: b.Bridge, mac: b.MAC}, nil
	}
	if !strings.Contains(rest, ":") {
		return netSpec{}, fmt.Errorf("%q: want vde:SWITCH:MAC (e.g. vde:lab:06:a7:dd:b4:02:f2)", v)
	}
	return netSpec{}, fmt.Errorf("VDE switch %w", err)
}

// settings is one guest's configuration, read through the key specs.
type settings struct {
	binary, kernel, initrd, append string
	disks                          []disk
	memMiB, cpus                   int
	accel                          string
	net                            *netSpec
	dir, backupDir                 string
	monitor                        bool
	poweroffTimeout, qmpTimeout    time.Duration
}

func readSettings(cfg machine.Config) (settings, error) {
	v := machine.ReadConfig(cfg, keys)
	s := settings{
		binary:          v.String("qemu.binary"),
		kernel:          v.String("qemu.kernel"),
		initrd:          v.String("qemu.initrd"),
		append:          v.String("qemu.append"),
		disks:           machine.Value[[]disk](v, "qemu.disk"),
		memMiB:          machine.Value[int](v, "qemu.mem"),
		cpus:            v.Int("qemu.cpus"),
		accel:           v.String("qemu.accel"),
		dir:             filepath.Clean(v.String("qemu.dir")),
		backupDir:       filepath.Clean(v.String("qemu.backup-dir")),
		monitor:         v.Bool("qemu.monitor"),
		poweroffTimeout: v.Duration("qemu.poweroff-timeout"),
		qmpTimeout:      v.Duration("qemu.qmp-timeout"),
	}
	if v.IsSet("qemu.net") {
		n := machine.Value[netSpec](v, "qemu.net")
		s.net = &n
	}
	if err := v.Err(); err != nil {
		return s, err
	}
	switch {
	case s.kernel == "" && len(s.disks) == 0:
		return s, machine.Errorf(syscall.EINVAL, "qemu.kernel or qemu.disk is required: nothing to boot")
	case s.kernel == "" && (s.initrd != "" || s.append != ""):
		return s, machine.Errorf(syscall.EINVAL, "qemu.initrd and qemu.append need qemu.kernel")
	}
	return s, nil
}
