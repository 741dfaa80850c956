package vswitch

import (
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/nsthread"
)

// makeTap creates the TAP device name. /dev/net/tun creates devices in the
// namespace of the thread that opens it, so this runs on a thread in the
// Manager's namespace. The device stays non-persistent until it is fully
// set up (master, group, alias, up): if any step fails, closing the file
// makes the kernel remove it, so nothing is left behind.
func (m *Manager) makeTap(name string, owner, group uint32, master int, ifgroup uint32, alias string) error {
	return m.inNS(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		// IFF_TUN_EXCL: never attach to an existing device of that name.
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_ONE_QUEUE | unix.IFF_TUN_EXCL)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return err
		}
		if owner != NoID {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, int(owner)); err != nil {
				return err
			}
		}
		if group != NoID {
			if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, int(group)); err != nil {
				return err
			}
		}
		if err := m.setTap(name, master, ifgroup, alias); err != nil {
			return err
		}
		return unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1)
	})
}

// inNS runs fn on a locked thread in the Manager's namespace.
func (m *Manager) inNS(fn func() error) error { return nsthread.Run(m.ns, fn) }
