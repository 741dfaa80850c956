// Package wolarm arms Wake-on-LAN on a network interface of the machine
// it runs on, through the kernel's ethtool netlink interface (as `ethtool
// -s IFACE wol g` does), and reads the setting back to confirm it: a
// machine powered off or suspended with WoL armed can be woken by a magic
// packet (drivers/wol). A NIC that cannot wake the machine gets a reason a
// person can act on, never a silent skip.
package wolarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/ethtool"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// Result is what arming found: the interface, its kernel driver and the
// Wake-on-LAN modes the read-back shows.
type Result struct {
	Interface string
	Driver    string // the NIC's kernel driver ("e1000e"), "" when unknown
	Modes     string // modes enabled after arming, as ethtool names them ("g", "pg")
	At        time.Time
}

// String is the state line of an armed interface: "armed (magic, modes
// g) on eth0 at 15:04:05".
func (r Result) String() string {
	return fmt.Sprintf("armed (magic, modes %s) on %s at %s", r.Modes, r.Interface, r.At.Format("15:04:05"))
}

// CheckName checks an interface name: 1-15 bytes (the kernel's limit),
// not "." or "..", not starting with '-' (an option to ethtool), of letters, digits, '.', '_' and '-' only. The kernel
// allows more, but a name also reaches a command line over SSH, which the
// remote shell reads: a name that could mean anything to a shell is
// refused, not quoted. Real names (eth0, enp0s31f6, br-lan.10) pass.
func CheckName(name string) error {
	if name == "" || len(name) > unix.IFNAMSIZ-1 || name == "." || name == ".." || name[0] == '-' {
		return fmt.Errorf("%q: want an interface name of 1 to %d bytes, not starting with '-'", name, unix.IFNAMSIZ-1)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("%q: want an interface name of letters, digits, '.', '_' and '-'", name)
		}
	}
	return nil
}

// Arm enables magic-packet wake on iface in the network namespace of the
// calling thread and reads it back. Other modes the NIC had enabled are
// left as they were. The error is a *machine.Error whose text is the
// reason: ENODEV (no such interface), EOPNOTSUPP (the driver supports no
// Wake-on-LAN, as veth), EINVAL (it supports WoL, but not magic packets),
// EPERM (CAP_NET_ADMIN missing), EIO (the read-back disagrees).
func Arm(ctx context.Context, iface string) (Result, error) {
	res := Result{Interface: iface}
	if err := CheckName(iface); err != nil {
		return res, machine.Errorf(syscall.EINVAL, "wol: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return res, machine.Errorf(syscall.ETIMEDOUT, "%s: not armed: %v", iface, err)
	}
	res.Driver = driverName(iface)
	c, err := ethtool.New()
	if err != nil {
		return res, machine.Errorf(syscall.EOPNOTSUPP, "%s: the kernel's ethtool netlink interface is not available (Linux 5.6 or later): %v", iface, err)
	}
	defer c.Close()
	ifi := ethtool.Interface{Name: iface}
	err = c.SetWakeOnLAN(ethtool.WakeOnLAN{Interface: ifi, Modes: ethtool.Magic})
	if err != nil {
		return res, setError(c, res, err)
	}
	if err := ctx.Err(); err != nil {
		return res, machine.Errorf(syscall.ETIMEDOUT, "%s: set, but not read back: %v", iface, err)
	}
	w, err := c.WakeOnLAN(ifi)
	if err != nil {
		return res, machine.Errorf(syscall.EIO, "%s: set, but the read-back failed: %v", iface, err)
	}
	res.Modes = Letters(w.Modes)
	if w.Modes&ethtool.Magic == 0 {
		return res, machine.Errorf(syscall.EIO, "%s: the driver%s accepted the setting, but the read-back shows Wake-on: %s (no magic packet)", iface, driverWords(res.Driver), res.Modes)
	}
	res.At = time.Now()
	return res, nil
}

// setError turns a refused ETHTOOL_MSG_WOL_SET into the reason.
func setError(c *ethtool.Client, res Result, err error) error {
	iface, drv := res.Interface, driverWords(res.Driver)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		// The kernel refuses WOL_SET when the driver has no
		// get_wol/set_wol: veth, bridges, most virtual devices.
		return machine.Errorf(syscall.EOPNOTSUPP, "%s: the driver%s supports no Wake-on-LAN modes", iface, drv)
	case errors.Is(err, unix.ENODEV), errors.Is(err, os.ErrNotExist):
		return machine.Errorf(syscall.ENODEV, "%s: no such network interface", iface)
	case errors.Is(err, os.ErrPermission):
		return machine.Errorf(syscall.EPERM, "%s: arming Wake-on-LAN needs CAP_NET_ADMIN", iface)
	case errors.Is(err, unix.EINVAL):
		// The kernel checks the asked modes against the supported
		// ones: the NIC wakes on something, not on magic packets.
		now := "unknown"
		if w, gerr := c.WakeOnLAN(ethtool.Interface{Name: iface}); gerr == nil {
			now = Letters(w.Modes)
		}
		return machine.Errorf(syscall.EINVAL, "%s: the driver%s does not support magic-packet wake (Wake-on: %s): %v", iface, drv, now, err)
	}
	return machine.Errorf(syscall.EIO, "%s: setting Wake-on-LAN failed: %v", iface, err)
}

func driverWords(drv string) string {
	if drv == "" {
		return ""
	}
	return " (" + drv + ")"
}

// driverName asks the NIC's kernel driver name with ETHTOOL_GDRVINFO, for
// reasons only: "" when the ioctl fails.
func driverName(iface string) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, iface)
	if err != nil {
		return ""
	}
	return strings.TrimRight(string(info.Driver[:]), "\x00")
}

// Letters renders modes as ethtool's Wake-on letters: p u m b a g s f, or
// d for none.
func Letters(m ethtool.WOLMode) string {
	const letters = "pumbagsf"
	var b strings.Builder
	for i := range len(letters) {
		if m&(1<<i) != 0 {
			b.WriteByte(letters[i])
		}
	}
	if b.Len() == 0 {
		return "d"
	}
	return b.String()
}
