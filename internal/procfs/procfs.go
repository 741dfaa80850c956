// Package procfs reads what machinefs and its tests need of /proc: a
// process's name, state, parent, process group and start time
// (/proc/PID/stat), and a thread's process, supplementary groups and
// memory figures (/proc/TID/status). Each is parsed here only.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is what machinefs reads of /proc/PID/stat.
type Stat struct {
	// Comm is field 2, the command name (without its parentheses).
	Comm string
	// State is field 3: R, S, D, Z (zombie), X (dead), ...
	State byte
	// Ppid is field 4, the parent process.
	Ppid int
	// Pgrp is field 5, the process group.
	Pgrp int
	// Start is field 22, the start time in clock ticks since boot. With
	// the pid it names one process: a later process that gets the same
	// pid has a later start.
	Start uint64
}

// Live reports whether the process runs: it is neither a zombie nor dead.
func (s Stat) Live() bool { return s.State != 'Z' && s.State != 'X' }

// ReadStat reads /proc/PID/stat. A process that is gone gives an error
// that is fs.ErrNotExist (ENOENT, or ESRCH while it is being reaped).
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	s, err := ParseStat(b)
	if err != nil {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return s, nil
}

// ParseStat parses the content of /proc/PID/stat.
func ParseStat(b []byte) (Stat, error) {
	// The command name (field 2) is in parentheses and may contain
	// anything, spaces and ')' included: the fields start after the last
	// ')'.
	i := bytes.LastIndexByte(b, ')')
	j := bytes.IndexByte(b, '(')
	if i < 0 || j < 0 || j > i {
		return Stat{}, errors.New("no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3.
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("%d fields", len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Stat{}, fmt.Errorf("parent %q", f[1])
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return Stat{}, fmt.Errorf("process group %q", f[2])
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("start time %q", f[19])
	}
	return Stat{Comm: string(b[j+1 : i]), State: f[0][0], Ppid: ppid, Pgrp: pgrp, Start: start}, nil
}

// Status is what machinefs reads of /proc/TID/status.
type Status struct {
	// Tgid is the thread's process (its thread group).
	Tgid int
	// Groups are the supplementary groups.
	Groups []uint32
	// VmKiB holds the memory figures ("VmRSS", "VmHWM", ...) in KiB.
	VmKiB map[string]uint64
}

// ReadStatus reads /proc/TID/status. A thread id works as well as a pid:
// FUSE requests carry the calling thread's.
func ReadStatus(tid int) (Status, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return Status{}, err
	}
	return ParseStatus(b), nil
}

// ParseStatus parses the content of /proc/TID/status. Lines it does not
// read, and values that do not parse, are skipped.
func ParseStatus(b []byte) Status {
	var st Status
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Tgid:"); ok {
			st.Tgid, _ = strconv.Atoi(strings.TrimSpace(v))
		} else if k, v, ok := strings.Cut(l, ":"); ok && strings.HasPrefix(k, "Vm") {
			f := strings.Fields(v) // "123456 kB"
			if len(f) != 2 || f[1] != "kB" {
				continue
			}
			if n, err := strconv.ParseUint(f[0], 10, 64); err == nil {
				if st.VmKiB == nil {
					st.VmKiB = map[string]uint64{}
				}
				st.VmKiB[k] = n
			}
		} else if v, ok := strings.CutPrefix(l, "Groups:"); ok {
			for _, f := range strings.Fields(v) {
				if n, err := strconv.ParseUint(f, 10, 32); err == nil {
					st.Groups = append(st.Groups, uint32(n))
				}
			}
		}
	}
	return st
}
