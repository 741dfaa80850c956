package main

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// childEnv marks the re-executed background daemon. Go cannot fork, so a
// mount helper starts itself again detached and waits for the child to say
// the mount is up (or why it is not) over a pipe.
const childEnv = "MACHINEFS_DAEMON_CHILD"

func background() int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "machinefs:", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "machinefs:", err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.ExtraFiles = []*os.File{w} // fd 3 in the child
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "machinefs:", err)
		return 1
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ok" {
		return 0
	}
	if line == "" {
		line = "daemon exited before mounting"
	}
	fmt.Fprintln(os.Stderr, "machinefs:", line)
	return 1
}

// notifyParent tells a waiting mount helper the outcome, once.
func notifyParent(err error) {
	if os.Getenv(childEnv) == "" {
		return
	}
	f := os.NewFile(3, "parent")
	if f == nil {
		return
	}
	msg := "ok\n"
	if err != nil {
		msg = strings.ReplaceAll(err.Error(), "\n", " ") + "\n"
	}
	f.WriteString(msg)
	f.Close()
	os.Unsetenv(childEnv)
	// Detach from the helper's terminal: stdio goes nowhere from now on;
	// the log goes to the journal when systemd runs us in the foreground.
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		syscall.Dup2(int(null.Fd()), 0)
		syscall.Dup2(int(null.Fd()), 1)
		syscall.Dup2(int(null.Fd()), 2)
	}
}

// sdNotify sends a readiness message to systemd (Type=notify); without
// NOTIFY_SOCKET it does nothing.
func sdNotify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd wants
// with RELOADING=1 (Type=notify-reload) to tell this reload from older ones.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

// clearStaleMount detects a mount left by a killed daemon ("Transport
// endpoint is not connected") and detaches it, so a restart just works. A
// stat of the mountpoint may still answer from the kernel's cache; statfs
// always asks the daemon, so it tells a dead mount from a live one.
func clearStaleMount(mountpoint string, log *slog.Logger) error {
	if !fuseMountedAt(mountpoint) {
		return nil
	}
	var sfs syscall.Statfs_t
	err := syscall.Statfs(mountpoint, &sfs)
	if err == nil {
		return fmt.Errorf("%s: a live FUSE filesystem is mounted there already", mountpoint)
	}
	if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
		return fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	log.Warn("clearing stale mount left by a dead daemon", "mountpoint", mountpoint)
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(mountpoint, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("clearing stale mount %s: %w", mountpoint, err)
		}
		return nil
	}
	out, err := exec.Command("fusermount3", "-u", "-z", mountpoint).CombinedOutput()
	if err != nil {
		return fmt.Errorf("clearing stale mount %s: %v: %s", mountpoint, err, out)
	}
	return nil
}

// fuseMountedAt reports whether /proc/self/mounts lists a FUSE mount at dir.
func fuseMountedAt(dir string) bool {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && unescapeMount(f[1]) == dir && strings.HasPrefix(f[2], "fuse") {
			return true
		}
	}
	return false
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for space).
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
