package local

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/mdlayher/ethtool"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/drivers/internal/wolarm"
	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// systemBusSocket is the system bus's socket when DBUS_SYSTEM_BUS_ADDRESS
// does not name another.
const systemBusSocket = "/run/dbus/system_bus_socket"

// check reports what the driver needs on the machine it runs on: that
// it is the machine local.hostname names, which init PID 1 is and the way
// to reach it (the system bus for systemd, the /run/initctl FIFO for
// sysvinit, a signal for busybox), CAP_SYS_BOOT and CAP_KILL, and a NIC
// whose driver supports Wake-on-LAN on local.wol-interface (read through
// ethtool's netlink interface; nothing is set).
func check(_ context.Context, env machine.CheckEnv) []machine.Requirement {
	s, err := parseConfig(env.Config)
	if err != nil {
		return []machine.Requirement{machine.Lack("config", err.Error())}
	}
	var out []machine.Requirement
	if err := checkMachine(s.hostname); err != nil {
		out = append(out, machine.Lack("this machine "+s.hostname, err.Error()))
	} else {
		out = append(out, machine.Have("this machine "+s.hostname, "uname -n matches"))
	}
	out = append(out, initNeeds(detectInit())...)
	out = append(out,
		hostcheck.Capability(unix.CAP_SYS_BOOT, "the kernel's power off and reboot (off, reset, cycle)"),
		hostcheck.Capability(unix.CAP_KILL, "signals PID 1 (busybox init) and ends processes"))
	if s.wolIface != "" {
		out = append(out, wolNeed(s.wolIface))
	}
	return out
}

// initNeeds: a known init, and its control path.
func initNeeds(in initSystem) []machine.Requirement {
	if in.kind == initUnknown {
		return []machine.Requirement{machine.Lack("init system", in.how)}
	}
	out := []machine.Requirement{machine.Have("init system", in.String())}
	switch in.kind {
	case initSystemd:
		out = append(out, busNeed())
	case initSysV:
		out = append(out, machine.Have("initctl FIFO "+in.initctl, "a FIFO"))
	}
	return out
}

// busNeed: the system bus's socket, which systemctl poweroff also uses.
func busNeed() machine.Requirement {
	path := systemBusSocket
	if a, ok := strings.CutPrefix(os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"), "unix:path="); ok {
		path, _, _ = strings.Cut(a, ",")
	}
	what := "system bus " + path
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return machine.Lack(what, err.Error()+": systemd is asked over D-Bus (logind)")
	case fi.Mode()&os.ModeSocket == 0:
		return machine.Lack(what, "not a socket")
	}
	return machine.Have(what, "a socket")
}

// wolNeed reads the interface's Wake-on-LAN setting: a NIC whose driver
// has none (veth, most virtual NICs) cannot be armed.
func wolNeed(iface string) machine.Requirement {
	what := "Wake-on-LAN on " + iface
	c, err := ethtool.New()
	if err != nil {
		return machine.Lack(what, "the kernel's ethtool netlink interface is not available (Linux 5.6 or later): "+err.Error())
	}
	defer c.Close()
	w, err := c.WakeOnLAN(ethtool.Interface{Name: iface})
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return machine.Lack(what, "the NIC's driver supports no Wake-on-LAN")
	case errors.Is(err, unix.ENODEV):
		return machine.Lack(what, "no such interface")
	case err != nil:
		return machine.Lack(what, "cannot read it through ethtool netlink: "+err.Error())
	}
	return machine.Have(what, "supported, now Wake-on: "+wolarm.Letters(w.Modes))
}
