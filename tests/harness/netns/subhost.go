package netns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// Bridge creates a Linux bridge named name in the caller's network
// namespace (the host's), up, without addresses and with IPv6 off, so it
// carries only what its ports send; it is deleted at cleanup. Use a short
// test prefix ("mfnbr0").
func Bridge(t testing.TB, name string) {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete bridge %s: %v", name, err)
			}
		}
	})
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
}

// BusyboxInit is an /init for subhost roots: it mounts proc, sources
// /etc/net.conf (ADDR=10.x.y.z/24 puts that address on eth0), writes
// "booted" to /run/machinefs/notify, exits with the status in /etc/crash if
// that file exists, and otherwise waits for a line on /run/initctl and
// exits 0 (a clean power off).
const BusyboxInit = `#!/bin/sh
mount -t proc proc /proc
[ -f /etc/net.conf ] && . /etc/net.conf
[ -n "$ADDR" ] && ip addr add "$ADDR" dev eth0
echo booted > /run/machinefs/notify
[ -f /etc/crash ] && exit "$(cat /etc/crash)"
read line < /run/initctl
exit 0
`

// BusyboxRoot populates dir as a minimal subhost root: /bin/busybox (from
// Debian's busybox-static) with a symlink per applet, /init (BusyboxInit),
// and empty proc, run, etc, tmp and var directories. It skips the test
// without busybox-static.
func BusyboxRoot(t testing.TB, dir string) {
	t.Helper()
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skip("needs busybox-static (/bin/busybox)")
	}
	for _, d := range []string{"bin", "sbin", "proc", "run", "etc", "tmp", "var/log", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" || a == "init" {
			continue
		}
		_ = os.Symlink("busybox", filepath.Join(dir, "bin", a))
	}
	if err := os.WriteFile(filepath.Join(dir, "init"), []byte(BusyboxInit), 0o755); err != nil {
		t.Fatal(err)
	}
}

// WaitFor polls cond every 10ms until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CopyProgram copies the program bin into the root tree root, at dst
// inside it (bin's own path when dst is ""), with the shared libraries
// ldd says it links, at their own paths: enough for a dynamically linked
// program to run in a subhost whose root is a busybox tree.
func CopyProgram(t testing.TB, root, bin, dst string) {
	t.Helper()
	if dst == "" {
		dst = bin
	}
	copyExec(t, bin, filepath.Join(root, dst))
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			copyExec(t, f, filepath.Join(root, f))
		}
	}
}

// copyExec copies the file src to dst, mode 0755, making dst's directory.
func copyExec(t testing.TB, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}
