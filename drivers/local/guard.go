package local

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// nodename is the name of the machine this process runs on, as uname(2)
// reports it in the process's UTS namespace.
func nodename() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Nodename[:]), nil
}

// checkMachine refuses a power verb unless this machine is the one the
// host names (local.hostname). In a cluster every agent reads the same
// config: only the machine of that name may act on it.
func checkMachine(want string) error {
	have, err := nodename()
	if err != nil {
		return machine.Errorf(syscall.EIO, "local: cannot read this machine's name (uname): %v", err)
	}
	if have != want {
		return machine.Errorf(syscall.EPERM, "local: this machine is %s, not %s (local.hostname): refusing to act on it", have, want)
	}
	return nil
}
