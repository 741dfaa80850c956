package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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

// staleTimeout bounds the stale-mount check: a filesystem whose daemon
// does not answer statfs in that time is taken for dead.
const staleTimeout = 2 * time.Second

// clearStaleMount detects a mount left by a killed daemon ("Transport
// endpoint is not connected") and detaches it, so a restart just works. A
// stat of the mountpoint may still answer from the kernel's cache; statfs
// always asks the daemon, so it tells a dead mount from a live one.
//
// The check never hangs. A connection whose daemon is gone but whose
// /dev/fuse descriptor some other process still holds (a child that
// inherited it) is not closed: statfs on it blocks for ever instead of
// failing. So statfs runs in a goroutine and is waited for staleTimeout;
// when it does not answer, the connection is aborted through fusectl
// (/sys/fs/fuse/connections/N/abort), which fails the blocked statfs and
// every later request, and the mount is detached like any dead one.
func clearStaleMount(mountpoint string, log *slog.Logger) error {
	dev, ok := fuseMountAt(mountpoint)
	if !ok {
		return nil
	}
	done := make(chan error, 1)
	go func() {
		var sfs syscall.Statfs_t
		done <- syscall.Statfs(mountpoint, &sfs)
	}()
	var err error
	select {
	case err = <-done:
		if err == nil {
			return fmt.Errorf("%s: a live FUSE filesystem is mounted there already", mountpoint)
		}
		if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
			return fmt.Errorf("mountpoint %s: %w", mountpoint, err)
		}
	case <-time.After(staleTimeout):
		log.Warn("the FUSE filesystem mounted there does not answer; aborting its connection",
			"mountpoint", mountpoint, "waited", staleTimeout, "connection", dev)
		if err := abortFuseConnection(dev); err != nil {
			return fmt.Errorf("mountpoint %s: a FUSE filesystem that does not answer is mounted there, and aborting its connection failed: %w", mountpoint, err)
		}
		// The abort fails the blocked statfs: its goroutine ends.
		select {
		case <-done:
		case <-time.After(staleTimeout):
			return fmt.Errorf("mountpoint %s: statfs still blocked after aborting FUSE connection %d", mountpoint, dev)
		}
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

// fusectlDir is where the kernel's fusectl filesystem lists FUSE
// connections, one directory per connection named for its device number.
const fusectlDir = "/sys/fs/fuse/connections"

// abortFuseConnection aborts FUSE connection dev, mounting fusectl first
// when nobody has (systemd usually does).
func abortFuseConnection(dev uint64) error {
	abort := filepath.Join(fusectlDir, strconv.FormatUint(dev, 10), "abort")
	if _, err := os.Stat(abort); errors.Is(err, fs.ErrNotExist) {
		if err := syscall.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("mount fusectl at %s: %w", fusectlDir, err)
		}
	}
	if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
		return fmt.Errorf("abort FUSE connection: %w", err)
	}
	return nil
}

// fuseMountAt reports whether /proc/self/mountinfo lists a FUSE mount at
// dir and returns the device number of the topmost one, which names its
// connection under fusectlDir (the kernel's dev_t: major<<20 | minor).
func fuseMountAt(dir string) (dev uint64, ok bool) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		// ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 5 || sep+1 >= len(f) || unescapeMount(f[4]) != dir || !strings.HasPrefix(f[sep+1], "fuse") || f[sep+1] == "fusectl" {
			continue
		}
		var major, minor uint64
		if _, err := fmt.Sscanf(f[2], "%d:%d", &major, &minor); err != nil {
			continue
		}
		// Later lines are mounted later: the last one is on top.
		dev, ok = major<<20|minor, true
	}
	return dev, ok
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for space).
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
