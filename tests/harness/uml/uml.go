// Package uml builds what the User Mode Linux tests need: a busybox root
// for hostfs, a short uml_dir (socket paths are limited to 107 bytes), and
// a cleanup that kills any guest left running under that uml_dir.
//
// Debian packages: user-mode-linux (/usr/bin/linux), uml-utilities
// (uml_mconsole, for comparisons), busybox-static.
package uml

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Kernel is the UML kernel the tests run.
const Kernel = "/usr/bin/linux"

// Init is the guest's /init: it mounts /proc and /sys, runs /etc/rc if
// the root has one, tells the host "eth0 MAC" when the guest has an eth0,
// then "booted", through /proc/mconsole (USER_NOTIFY), powers off on
// ctrl-alt-del (the kernel sends init SIGINT) and otherwise waits.
const Init = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 0 > /proc/sys/kernel/ctrl-alt-del
trap 'echo poweroff-by-cad > /proc/mconsole; sync; poweroff -f' INT
[ -x /etc/rc ] && /etc/rc
[ -e /sys/class/net/eth0/address ] && echo "eth0 $(cat /sys/class/net/eth0/address)" > /proc/mconsole
echo booted > /proc/mconsole
while :; do sleep 2147483647 & wait $!; done
`

var applets = []string{"sh", "mount", "sleep", "echo", "cat", "sync", "poweroff", "halt", "reboot", "ls", "mkdir", "ifconfig", "ping"}

// Skip skips the test unless UML and a static busybox are installed and
// the test runs as root.
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("UML tests run as root")
	}
	if _, err := os.Stat(Kernel); err != nil {
		t.Skip("no UML kernel (apt-get install user-mode-linux)")
	}
	if _, err := busybox(); err != nil {
		t.Skip(err.Error())
	}
}

func busybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		out, err := exec.Command("file", "-L", p).Output()
		if err == nil && bytes.Contains(out, []byte("statically linked")) {
			return p, nil
		}
		if err != nil {
			if _, serr := os.Stat(p); serr == nil {
				return p, nil // no file(1): trust busybox-static
			}
		}
	}
	return "", fmt.Errorf("no static busybox (apt-get install busybox-static)")
}

// Root builds a busybox hostfs root in a temporary directory and returns
// its path.
func Root(t testing.TB) string {
	t.Helper()
	bb, err := busybox()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "sbin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(Init), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("guest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// Dir makes a short uml_dir under /tmp and, when the test ends, kills
// every guest still running with that uml_dir (its whole process group)
// and removes the directory.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "mfu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := KillGuests(dir); n > 0 {
			t.Logf("killed %d UML processes left under %s", n, dir)
		}
		os.RemoveAll(dir)
	})
	return dir
}

// Guests lists the pids of linux processes started with uml_dir=dir.
func Guests(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	want := []byte("uml_dir=" + dir + "\x00")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cl, want) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// KillGuests kills the process groups of the guests under dir and returns
// how many processes it found.
func KillGuests(dir string) int {
	pids := Guests(dir)
	for _, pid := range pids {
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid > 1 && pgid != syscall.Getpgrp() {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(Guests(dir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return len(pids)
}

// Config is the config of a UML subhost with a hostfs root and dir.
func Config(root, dir string, extra ...string) string {
	return ConfigRoot("hostfs:"+root, dir, extra...)
}

// ConfigRoot is the config of a UML subhost with uml.root = rootSpec
// (hostfs:/DIR, ubd0=/IMAGE or ubd0=/COW,/BACKING).
func ConfigRoot(rootSpec, dir string, extra ...string) string {
	lines := append([]string{
		"drivers = uml",
		"uml.root = " + rootSpec,
		"uml.dir = " + dir,
		"uml.mem = 64M",
		"uml.init = /init",
	}, extra...)
	return strings.Join(lines, "\n")
}
