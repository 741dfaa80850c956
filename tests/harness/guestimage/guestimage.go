// Package guestimage builds the QEMU test guest: Debian's kernel
// (linux-image-amd64) and a busybox initramfs written here, in Go, as a
// cpio "newc" archive. It is built once per process and cached in
// os.TempDir()/machinefs-guestimage-HASH, HASH covering every input (the
// kernel, busybox, the modules, the init script and this package's format
// version), so every test package and every run on the host share it.
//
// The guest (see Init):
//   - mounts /proc, /sys, /dev (devtmpfs) and /dev/pts;
//   - loads the modules in Modules (virtio PCI, virtio-net with its
//     failover modules, virtio-blk, pvpanic for the ISA and PCI devices,
//     the ACPI button, evdev), copied uncompressed from
//     /lib/modules/VERSION with their dependencies from modules.dep;
//   - brings lo up, and eth0 when the kernel command line has
//     mfs.ip=ADDR/PREFIX (e.g. Image.Append+" mfs.ip=10.0.0.2/24");
//   - powers off (poweroff -f) on the ACPI power button (QEMU's
//     system_powerdown): a reader of the "Power Button" input device;
//   - prints ReadyLine on the console (ttyS0), then runs a root shell on
//     ttyS0 (prompt "guest# ", echo on, restarted when it exits), so a test
//     types commands through the serial console. Networking by hand:
//     "ip link set eth0 up; ip addr add 10.0.0.2/24 dev eth0".
//
// Panics: "echo c > /proc/sysrq-trigger" panics the kernel; Append sets no
// panic= so the kernel hangs rather than reboots, and with a pvpanic device
// (-device pvpanic or pvpanic-pci) QEMU reports GUEST_PANICKED (QEMU's
// default -action panic=shutdown then powers off; panic=pause keeps it in
// state guest-panicked).
//
// Devices the guest drives: virtio-net-pci, virtio-blk-pci (/dev/vda),
// pvpanic or pvpanic-pci, the ACPI power button, the 8250 serial port.
package guestimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ReadyLine is printed on the console when the guest has booted, loaded
// its modules and configured its network: the shell on ttyS0 follows.
const ReadyLine = "machinefs-guest: ready"

// Prompt is the guest shell's prompt.
const Prompt = "guest# "

// Busybox is the static busybox the initramfs is made of (busybox-static).
const Busybox = "/bin/busybox"

// Modules are the modules the guest loads (by module name, dependencies
// added from modules.dep and loaded first).
var Modules = []string{
	"virtio_pci", "virtio_net", "virtio_blk",
	"pvpanic_mmio", "pvpanic_pci", // -device pvpanic (ACPI QEMU0001) and pvpanic-pci
	"evdev", "button", // the power button's input events, read by /init
}

// format changes whenever the image's layout changes, so the cache key
// does too.
const format = "5"

// Init is the guest's /init.
const Init = `#!/bin/sh
export PATH=/bin HOME=/ TERM=dumb PS1='` + Prompt + `'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
while read -r m; do insmod "/lib/modules/$m" || echo "machinefs-guest: insmod $m failed"; done < /etc/modules
ip link set lo up
for w in $(cat /proc/cmdline); do
	case $w in mfs.ip=*) ip link set eth0 up && ip addr add "${w#mfs.ip=}" dev eth0 ;; esac
done
# The ACPI power button (QEMU's system_powerdown) is an input device; its
# first event powers the guest off, as acpid would.
for e in /sys/class/input/event*; do
	[ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
	# Opened here, before the ready line: an event sent before a reader
	# has the device open is lost.
	exec 3<"/dev/input/${e##*/}"
	(dd of=/dev/null bs=24 count=1 <&3 2>/dev/null; echo "machinefs-guest: power button"; poweroff -f) &
	exec 3<&-
done
echo "` + ReadyLine + `"
while :; do setsid cttyhack sh; done
`

// Image is a built guest: paths to pass as -kernel, -initrd and -append.
type Image struct {
	Kernel  string   // the uncompressed vmlinux (PVH entry) of /boot/vmlinuz-VERSION, or a copy of that bzImage
	Initrd  string   // uncompressed cpio (unpacking is faster than gunzip under TCG)
	Append  string   // kernel command line: console=ttyS0 and quieter, faster boot
	Version string   // the kernel's version, e.g. 6.1.0-56-amd64
	Modules []string // module files in the image, in load order
	Dir     string   // the cache directory holding Kernel and Initrd
}

// Args are the QEMU arguments that boot the image.
func (i Image) Args() []string {
	return []string{"-kernel", i.Kernel, "-initrd", i.Initrd, "-append", i.Append}
}

// Append is the kernel command line. quiet keeps kernel messages off the
// console (a panic still prints); 8250.nr_uarts=1 probes one serial port,
// not four; no panic=, so a panicked guest stays panicked.
const Append = "console=ttyS0 quiet 8250.nr_uarts=1 mitigations=off"

var (
	once     sync.Once
	built    Image
	buildErr error
)

// Build returns the image, building it the first time in this process
// unless another process (or run) left it in the cache.
func Build() (Image, error) {
	once.Do(func() { built, buildErr = build() })
	return built, buildErr
}

// Skip skips the test unless root, QEMU, the Debian kernel and a static
// busybox are there, and returns the built image.
func Skip(t testing.TB) Image {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("QEMU guest tests run as root")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, _, err := Kernel(); err != nil {
		t.Skip(err.Error())
	}
	if _, err := os.Stat(Busybox); err != nil {
		t.Skip("no " + Busybox + " (apt-get install busybox-static)")
	}
	img, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Kernel returns the newest /boot/vmlinuz-*-amd64 that has its modules
// in /lib/modules, and its version.
func Kernel() (path, version string, err error) {
	all, _ := filepath.Glob("/boot/vmlinuz-*-amd64")
	var versions []string
	for _, p := range all {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return "", "", errors.New("no /boot/vmlinuz-*-amd64 with modules (apt-get install linux-image-amd64)")
	}
	sort.Slice(versions, func(a, b int) bool { return versionLess(versions[a], versions[b]) })
	v := versions[len(versions)-1]
	return "/boot/vmlinuz-" + v, v, nil
}

// versionLess compares versions as sort -V does for Debian kernel
// versions: runs of digits by value, other runs as text.
func versionLess(a, b string) bool {
	pa, pb := versionParts(a), versionParts(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		na, ea := strconv.Atoi(pa[i])
		nb, eb := strconv.Atoi(pb[i])
		if ea == nil && eb == nil {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

func versionParts(s string) []string {
	var parts []string
	for len(s) > 0 {
		digit := s[0] >= '0' && s[0] <= '9'
		n := 1
		for n < len(s) && (s[n] >= '0' && s[n] <= '9') == digit {
			n++
		}
		parts = append(parts, s[:n])
		s = s[n:]
	}
	return parts
}

// moduleOrder resolves names to module files (relative to
// /lib/modules/VERSION) with their dependencies, each after what it needs.
func moduleOrder(modDir string, names []string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("guest modules: %w", err)
	}
	deps := map[string][]string{} // file -> files it needs
	byName := map[string]string{} // module name -> file
	for _, l := range strings.Split(string(data), "\n") {
		file, rest, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		deps[file] = strings.Fields(rest)
		byName[moduleName(file)] = file
	}
	var order []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(f string) {
		if seen[f] {
			return
		}
		seen[f] = true
		// modules.dep lists a module's dependencies, each before the ones
		// it needs: load them in reverse.
		d := deps[f]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, f)
	}
	for _, n := range names {
		f, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("guest modules: no module %s in %s/modules.dep", n, modDir)
		}
		visit(f)
	}
	return order, nil
}

// moduleName is the kernel's name for a module file: basename without
// .ko[.xz|.zst|.gz], dashes as underscores.
func moduleName(file string) string {
	b := filepath.Base(file)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// readModule returns a module's bytes uncompressed: busybox insmod loads
// plain .ko files only.
func readModule(path string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(path, ".ko.zst"):
		tool = "zstd"
	case strings.HasSuffix(path, ".ko.gz"):
		tool = "gzip"
	default:
		return nil, fmt.Errorf("guest module %s: unknown compression", path)
	}
	out, err := exec.Command(tool, "-dc", path).Output()
	if err != nil {
		return nil, fmt.Errorf("guest module %s: %s -dc: %w", path, tool, err)
	}
	return out, nil
}

type input struct {
	kernel, busybox []byte
	applets         []string
	modules         []string // flat names, in load order
	moduleData      map[string][]byte
	version         string
}

func gather() (*input, error) {
	kpath, version, err := Kernel()
	if err != nil {
		return nil, err
	}
	in := &input{version: version, moduleData: map[string][]byte{}}
	if in.kernel, err = os.ReadFile(kpath); err != nil {
		return nil, fmt.Errorf("guest kernel: %w", err)
	}
	if in.busybox, err = os.ReadFile(Busybox); err != nil {
		return nil, fmt.Errorf("guest busybox: %w", err)
	}
	out, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("guest busybox --list: %w", err)
	}
	in.applets = strings.Fields(string(out))
	modDir := filepath.Join("/lib/modules", version)
	files, err := moduleOrder(modDir, Modules)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		data, err := readModule(filepath.Join(modDir, f))
		if err != nil {
			return nil, err
		}
		name := moduleName(f) + ".ko"
		in.modules = append(in.modules, name)
		in.moduleData[name] = data
	}
	return in, nil
}

// key hashes every input of the image.
func (in *input) key() string {
	h := sha256.New()
	for _, s := range []string{format, Init, Append, in.version, strings.Join(in.applets, " "), strings.Join(in.modules, " ")} {
		fmt.Fprintf(h, "%d:%s\n", len(s), s)
	}
	h.Write(in.kernel)
	h.Write(in.busybox)
	for _, m := range in.modules {
		h.Write(in.moduleData[m])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func build() (Image, error) {
	in, err := gather()
	if err != nil {
		return Image{}, err
	}
	dir := filepath.Join(os.TempDir(), "machinefs-guestimage-"+in.key())
	img := Image{
		Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.cpio"),
		Append: Append, Version: in.version, Modules: in.modules, Dir: dir,
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return img, nil
	}
	// Build in a temporary directory and rename it into place: a
	// concurrent builder (another test package) either wins the rename or
	// finds the finished directory.
	tmp, err := os.MkdirTemp(os.TempDir(), "machinefs-guestimage-tmp")
	if err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	defer os.RemoveAll(tmp)
	// 0755: QEMU may run as another user than the one building.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	kernel := in.kernel
	if vmlinux, err := extractPVH(in.kernel); err == nil {
		kernel = vmlinux
	} else {
		slog.Warn("guest image: booting the compressed kernel (slower under TCG)", "err", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "vmlinuz"), kernel, 0o644); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	var cpio bytes.Buffer
	if err := in.initramfs(&cpio); err != nil {
		return Image{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "initrd.cpio"), cpio.Bytes(), 0o644); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "done"), nil, 0o644); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "done")); serr == nil {
			return img, nil // another builder won
		}
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	return img, nil
}

// initramfs writes the cpio archive.
func (in *input) initramfs(w io.Writer) error {
	c := &cpioWriter{w: w}
	for _, d := range []string{"bin", "dev", "etc", "lib", "lib/modules", "proc", "root", "sys", "tmp"} {
		c.entry(d, 0o040755, nil, 0, 0)
	}
	// The kernel opens /dev/console for init before init can mount
	// devtmpfs: it must be in the archive.
	c.entry("dev/console", 0o020600, nil, 5, 1)
	c.entry("sbin", 0o120777, []byte("bin"), 0, 0)
	c.entry("usr", 0o040755, nil, 0, 0)
	c.entry("usr/bin", 0o120777, []byte("../bin"), 0, 0)
	c.entry("usr/sbin", 0o120777, []byte("../bin"), 0, 0)
	c.entry("bin/busybox", 0o100755, in.busybox, 0, 0)
	for _, a := range in.applets {
		if a != "busybox" {
			c.entry("bin/"+a, 0o120777, []byte("busybox"), 0, 0)
		}
	}
	for _, m := range in.modules {
		c.entry("lib/modules/"+m, 0o100644, in.moduleData[m], 0, 0)
	}
	c.entry("etc/modules", 0o100644, []byte(strings.Join(in.modules, "\n")+"\n"), 0, 0)
	c.entry("init", 0o100755, []byte(Init), 0, 0)
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	if c.err != nil {
		return fmt.Errorf("guest initramfs: %w", c.err)
	}
	return nil
}

// cpioWriter writes the "newc" format the kernel unpacks: a 110-byte
// ASCII header, the name and the data, each padded to 4 bytes.
type cpioWriter struct {
	w   io.Writer
	ino int
	off int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rmaj, rmin int) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += n
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
