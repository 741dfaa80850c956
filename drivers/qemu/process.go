package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/internal/cloexec"
	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
)

// chooseAccel picks the accelerator for qemu.accel and says why, as
// state shows it: "tcg (no /dev/kvm)".
func chooseAccel(want string) string {
	if want != "auto" {
		return want + " (qemu.accel)"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|syscall.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "tcg (no /dev/kvm)"
	case err != nil:
		return fmt.Sprintf("tcg (/dev/kvm: %v)", errors.Unwrap(err))
	}
	f.Close()
	return "kvm (/dev/kvm)"
}

// accelName is the accelerator's word in chooseAccel's text.
func accelName(accel string) string {
	name, _, _ := strings.Cut(accel, " ")
	return name
}

// qmpArg is the -qmp option: it also marks the process as this guest's
// (adoption compares it with the process's command line).
func (m *Machine) qmpArg() string { return "unix:" + m.file(qmpSock) + ",server=on,wait=off" }

// argv is QEMU's command line. The guest starts stopped (-S): the driver
// connects QMP and the serial port before the first instruction runs, so
// no console output and no event is lost, then continues it.
func (m *Machine) argv(accel, tap string) []string {
	s := m.s
	a := []string{
		"-name", "guest=" + strings.ReplaceAll(m.name, ",", ",,"),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "pc,accel=" + accelName(accel),
		"-m", strconv.Itoa(s.memMiB), "-smp", strconv.Itoa(s.cpus),
		"-S",
		"-qmp", m.qmpArg(),
		"-chardev", "socket,id=ser0,path=" + m.file(serialSock) + ",server=on,wait=off",
		"-serial", "chardev:ser0",
		"-pidfile", m.file(pidFile),
		// A panicking guest tells QEMU through pvpanic and stays, CPUs
		// stopped, for a look (info registers) until off or on.
		"-device", "pvpanic", "-action", "panic=pause",
	}
	if s.kernel != "" {
		a = append(a, "-kernel", s.kernel)
		if s.initrd != "" {
			a = append(a, "-initrd", s.initrd)
		}
		if s.append != "" {
			a = append(a, "-append", s.append)
		}
	}
	for i, d := range s.disks {
		a = append(a, "-drive", fmt.Sprintf("file=%s,format=%s,if=virtio,id=disk%d", d.path, d.format, i))
	}
	if n := s.net; n != nil {
		if n.vde {
			a = append(a, "-netdev", "vde,id=net0,sock="+machine.VDESocket(n.bridge))
		} else {
			a = append(a, "-netdev", "tap,id=net0,ifname="+tap+",script=no,downscript=no")
		}
		a = append(a, "-device", "virtio-net-pci,netdev=net0,mac="+n.mac.String())
	}
	return a
}

// spawn starts QEMU in a session of its own, with /dev/null as stdin, its
// log as stdout and stderr and no other descriptor, so it neither holds
// the daemon's FUSE channel nor dies with the daemon's session.
func (m *Machine) spawn(args []string) (pid, pidfd int, err error) {
	logf, err := os.OpenFile(m.file(logFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return 0, -1, err
	}
	defer logf.Close()
	if err := cloexec.All(); err != nil {
		return 0, -1, machine.Errorf(syscall.EIO, "starting %s: %v", m.s.binary, err)
	}
	pidfd = -1
	c := exec.Command(m.s.binary, args...)
	c.Dir = m.guestDir()
	c.Stdout, c.Stderr = logf, logf
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR=/tmp"}
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd}
	if err := c.Start(); err != nil {
		return 0, -1, machine.Errorf(syscall.EIO, "starting %s: %v", m.s.binary, err)
	}
	pid = c.Process.Pid
	// The driver reaps it itself, through its pidfd watcher.
	c.Process.Release()
	return pid, pidfd, nil
}

// logTail is the end of QEMU's log, for the reason of a failed start.
func (m *Machine) logTail() string {
	b, _ := os.ReadFile(m.file(logFile))
	b = bytes.TrimSpace(b)
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return strings.ReplaceAll(string(b), "\n", "; ")
}

// isOurs says whether pid is a live QEMU of this guest: its command line
// carries this guest's -qmp option.
func (m *Machine) isOurs(pid int) (procfs.Stat, bool) {
	st, err := procfs.ReadStat(pid)
	if err != nil || !st.Live() {
		return st, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return st, false
	}
	args := strings.Split(string(b), "\x00")
	i := slices.Index(args, "-qmp")
	return st, i >= 0 && i+1 < len(args) && args[i+1] == m.qmpArg()
}

// cmdlineValue finds, in a recorded command line, the value after key=
// in the argument following opt ("-machine", "accel").
func cmdlineValue(pid int, opt, key string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(string(b), "\x00")
	for i, a := range args[:max(len(args)-1, 0)] {
		if a != opt {
			continue
		}
		for f := range strings.SplitSeq(args[i+1], ",") {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
	}
	return ""
}

// readPid reads the pid file QEMU wrote.
func (m *Machine) readPid() (int, error) {
	b, err := os.ReadFile(m.file(pidFile))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("%s: no pid", m.file(pidFile))
	}
	return pid, nil
}
