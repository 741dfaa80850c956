package qemu_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The guest the tests boot: Debian's kernel with a busybox initramfs made
// here (until tests/harness/guestimage lands). Its init loads the modules
// the tests need, runs acpid (the ACPI power button powers off), prints
// readyLine on ttyS0 and keeps a shell there.

const readyLine = "GUEST-READY"

// modules are loaded in this order (each after what it depends on).
var modules = []string{
	"virtio/virtio_ring.ko", "virtio/virtio.ko", "virtio/virtio_pci_legacy_dev.ko",
	"virtio/virtio_pci_modern_dev.ko", "virtio/virtio_pci.ko", "block/virtio_blk.ko",
	"acpi/button.ko", "input/evdev.ko", "misc/pvpanic/pvpanic.ko", "misc/pvpanic/pvpanic-mmio.ko",
}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m 2>/dev/null; done
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
acpid -f -c /etc/acpi -p /tmp/acpid.pid -l /dev/null &
echo 0 > /proc/sys/kernel/printk
echo ` + readyLine + `
while true; do setsid cttyhack sh; done
`

// buildImage returns the kernel and an initramfs made in dir, or skips
// the test when QEMU, a kernel or busybox is missing.
func buildImage(t testing.TB, dir string) (kernel, initrd string) {
	t.Helper()
	kernels, _ := filepath.Glob("/boot/vmlinuz-*-amd64")
	if len(kernels) == 0 {
		t.Skip("no Debian kernel in /boot (linux-image-amd64)")
	}
	kernel = kernels[len(kernels)-1]
	release := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	for _, p := range []string{"/usr/bin/qemu-system-x86_64", "/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s missing", p)
		}
	}
	root := filepath.Join(dir, "root")
	var loaded []string
	for _, m := range modules {
		src := filepath.Join("/lib/modules", release, "kernel/drivers", m)
		b, err := os.ReadFile(src)
		if err != nil {
			continue // built in, or not there: the guest does without
		}
		writeFile(t, filepath.Join(root, "lib/modules", m), b, 0o644)
		loaded = append(loaded, m)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "bin/busybox"), bb, 0o755)
	writeFile(t, filepath.Join(root, "init"), []byte(initScript), 0o755)
	writeFile(t, filepath.Join(root, "modules"), []byte(strings.Join(loaded, "\n")+"\n"), 0o644)
	for _, d := range []string{"proc", "sys", "dev", "etc", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	initrd = filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | busybox cpio -o -H newc > "+initrd)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	return kernel, initrd
}

func writeFile(t testing.TB, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}
