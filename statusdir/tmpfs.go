package statusdir

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/internal/procfs"
)

// TmpfsSize bounds the tmpfs. tmpfs charges a whole page (4 KiB) for each
// file that holds data, and a host has two files (power, state; state is
// under a page unless a driver adds long lines), so a host costs 8 KiB and
// 256 MiB holds 32,768 hosts, three times the 10,000 the benchmarks run.
// Pages are used only as files are written: the bound costs nothing, and
// it keeps a runaway (a driver that floods its state lines) from taking
// the machine's memory. Writes beyond it fail with ENOSPC, are logged, and
// the files keep their last content.
const TmpfsSize = "256m"

// sourcePrefix starts the tmpfs's source in /proc/self/mountinfo; the pid
// and start time of the daemon that mounted it follow, so that the next
// daemon tells a live daemon's copy from one a killed daemon left.
const sourcePrefix = "machinefs-status:"

// Mount mounts a tmpfs of its own at dir (nodev, nosuid, noexec,
// TmpfsSize). shared says whether other users may read it (mode 0755):
// only when they may read the mount too (allow_other); otherwise it is
// 0700, its owner's alone, as a mount without allow_other is. A tmpfs a
// killed daemon left there is detached first, as the FUSE mount's stale
// mount is; one of a running daemon is an error.
func Mount(dir string, shared bool, log *slog.Logger) error {
	if err := clearStale(dir, log); err != nil {
		return err
	}
	self, err := procfs.ReadStat(os.Getpid())
	if err != nil {
		return fmt.Errorf("status-dir=%s: %w", dir, err)
	}
	source := fmt.Sprintf("%s%d:%d", sourcePrefix, os.Getpid(), self.Start)
	mode := "0700"
	if shared {
		mode = "0755"
	}
	if err := unix.Mount(source, dir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC,
		"mode="+mode+",size="+TmpfsSize); err != nil {
		return fmt.Errorf("status-dir=%s: mount tmpfs: %w", dir, err)
	}
	return nil
}

// Unmount unmounts the tmpfs at dir. A reader that still holds a file or
// its working directory there makes the unmount busy: it is then detached,
// and the memory goes when the last reader lets go.
func Unmount(dir string, log *slog.Logger) error {
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		log.Warn("status-dir is busy: detaching its tmpfs", "dir", dir)
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("status-dir=%s: unmount: %w", dir, err)
	}
	return nil
}

// clearStale detaches every machinefs status tmpfs at dir whose daemon is
// gone, topmost first.
func clearStale(dir string, log *slog.Logger) error {
	for {
		source, ok := topStatusMount(dir)
		if !ok {
			return nil
		}
		if pid, live := liveOwner(source); live {
			return fmt.Errorf("status-dir=%s: machinefs process %d keeps its status files there", dir, pid)
		}
		log.Warn("clearing a status-dir tmpfs left by a dead daemon", "dir", dir, "source", source)
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("status-dir=%s: clearing a stale tmpfs: %w", dir, err)
		}
	}
}

// liveOwner reports the pid named in source and whether that process, the
// same one (its start time), still runs.
func liveOwner(source string) (int, bool) {
	pidText, startText, _ := strings.Cut(strings.TrimPrefix(source, sourcePrefix), ":")
	pid, err1 := strconv.Atoi(pidText)
	start, err2 := strconv.ParseUint(startText, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return pid, false // gone
	}
	return pid, st.Live() && st.Start == start
}

// topStatusMount returns the source of the topmost mount at dir when it is
// a machinefs status tmpfs.
func topStatusMount(dir string) (source string, ok bool) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(data), "\n") {
		// ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 5 || sep+2 >= len(f) || unescape(f[4]) != dir {
			continue
		}
		// Later lines are mounted later: the last one at dir is on top.
		source = f[sep+2]
		ok = f[sep+1] == "tmpfs" && strings.HasPrefix(source, sourcePrefix)
	}
	return source, ok
}

// unescape undoes the octal escapes of /proc/self/mountinfo (\040 for a
// space, \134 for a backslash).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
