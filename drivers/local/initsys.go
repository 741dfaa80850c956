package local

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The init systems the driver tells apart.
const (
	initSystemd = "systemd"
	initSysV    = "sysvinit"
	initBusybox = "busybox"
	initUnknown = "unknown"
)

// Where detection looks. /proc must be the proc of the driver's own PID
// namespace: PID 1 there is the init that kill(1, ...) reaches.
const (
	procDir       = "/proc"
	systemdRunDir = "/run/systemd/system"
)

// initctlPaths are where sysvinit's control FIFO lives (/dev/initctl on
// old systems).
var initctlPaths = []string{"/run/initctl", "/dev/initctl"}

// initSystem is what detection found about PID 1.
type initSystem struct {
	kind    string // initSystemd, initSysV, initBusybox or initUnknown
	how     string // the evidence, for state: "PID 1 is /usr/bin/busybox (comm busybox)"
	initctl string // sysvinit: the FIFO to write to
}

// String is the state line: "busybox (PID 1 is /usr/bin/busybox)".
func (s initSystem) String() string { return s.kind + " (" + s.how + ")" }

// detectInit names the init system from PID 1 of the process's own PID
// namespace: its executable (/proc/1/exe, which needs root or the same
// user) or else its comm, and the control paths each init creates.
// systemd's /run/initctl (systemd-initctl) does not make it sysvinit:
// systemd is asked first.
func detectInit() initSystem {
	self, err1 := os.Readlink(filepath.Join(procDir, "self/ns/pid"))
	one, err2 := os.Readlink(filepath.Join(procDir, "1/ns/pid"))
	if err1 != nil || err2 != nil {
		return initSystem{kind: initUnknown, how: fmt.Sprintf("cannot read PID namespaces in %s: %v", procDir, firstErr(err1, err2))}
	}
	if self != one {
		// A /proc mounted for another PID namespace shows another
		// machine's PID 1: nothing read there is about our init.
		return initSystem{kind: initUnknown, how: fmt.Sprintf("%s belongs to another PID namespace (%s, this process is in %s): its PID 1 is not this machine's init", procDir, one, self)}
	}
	comm := readComm(filepath.Join(procDir, "1/comm"))
	exe, err := os.Readlink(filepath.Join(procDir, "1/exe"))
	exe = strings.TrimSuffix(exe, " (deleted)")
	name := filepath.Base(exe)
	pid1 := fmt.Sprintf("PID 1 is %s (comm %s)", exe, strconv.Quote(comm))
	if err != nil {
		name = comm
		pid1 = fmt.Sprintf("PID 1 is comm %s (its executable cannot be read: %v)", strconv.Quote(comm), err)
	}
	switch {
	case name == "systemd" || comm == "systemd":
		if st, err := os.Stat(systemdRunDir); err == nil && st.IsDir() {
			return initSystem{kind: initSystemd, how: pid1 + ", " + systemdRunDir + " exists"}
		}
		return initSystem{kind: initSystemd, how: pid1 + ", but " + systemdRunDir + " is missing"}
	case name == "busybox":
		return initSystem{kind: initBusybox, how: pid1}
	}
	for _, p := range initctlPaths {
		if st, err := os.Stat(p); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
			if name == "init" || comm == "init" {
				return initSystem{kind: initSysV, how: pid1 + ", " + p + " is a FIFO", initctl: p}
			}
			return initSystem{kind: initUnknown, how: pid1 + ": " + p + " is a FIFO, but PID 1 is not sysvinit's init"}
		}
	}
	return initSystem{kind: initUnknown, how: pid1}
}

func readComm(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
