package local

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// hardPowerOff is off: what `poweroff -f` (busybox, sysvinit) and
// `systemctl poweroff --force --force` do whatever the init: flush the
// file systems' dirty data, then reboot(2) LINUX_REBOOT_CMD_POWER_OFF.
// No service is stopped. On the machine it returns only with an error
// (no CAP_SYS_BOOT); in a child PID namespace the kernel kills that
// namespace's init with SIGINT and this process with it.
func hardPowerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		code := syscall.EIO
		if err == unix.EPERM {
			code = syscall.EPERM
		}
		return machine.Errorf(code, "local: off: reboot(2) POWER_OFF: %v (needs CAP_SYS_BOOT)", err)
	}
	return nil
}
