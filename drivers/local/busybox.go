package local

import (
	"fmt"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// busybox init has no run levels and no control socket: its halt, reboot
// and poweroff applets signal PID 1, which runs the inittab's shutdown
// entries, stops every process and calls reboot(2). The driver sends the
// same signals.
const (
	busyboxPoweroff = syscall.SIGUSR2
	busyboxReboot   = syscall.SIGTERM
)

// busyboxSignal returns the signal that carries out cmd on busybox init,
// or ENOTSUP with the reason for run levels 1-5.
func busyboxSignal(cmd machine.Command) (syscall.Signal, error) {
	switch {
	case cmd.Verb == "poweroff", cmd.Verb == "init" && cmd.InitLevel == 0:
		return busyboxPoweroff, nil
	case cmd.Verb == "reboot", cmd.Verb == "init" && cmd.InitLevel == 6:
		return busyboxReboot, nil
	case cmd.Verb == "init":
		return 0, machine.Errorf(syscall.ENOTSUP, "local: init %d: this machine's init is busybox, which has no run levels (init 0 and init 6 are its poweroff and reboot)", cmd.InitLevel)
	}
	return 0, machine.Errorf(syscall.ENOTSUP, "local: %s: not a verb busybox init carries out", cmd.Verb)
}

// signalInit sends sig to PID 1 of the driver's PID namespace, the init
// detection looked at.
func signalInit(sig syscall.Signal) error {
	if err := syscall.Kill(1, sig); err != nil {
		code := syscall.EIO
		if err == syscall.EPERM {
			code = syscall.EPERM
		}
		return machine.Errorf(code, "local: signal %s to PID 1 (busybox init): %v (machinefs must run as root)", sigName(sig), err)
	}
	return nil
}

func sigName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGUSR1:
		return "SIGUSR1"
	case syscall.SIGUSR2:
		return "SIGUSR2"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return fmt.Sprint(int(sig))
}
