package local

import (
	"fmt"
	"regexp"
	"syscall"

	"github.com/machinefs/machinefs/drivers/internal/wolarm"
	"github.com/machinefs/machinefs/machine"
)

// Config keys read by the driver.
const (
	KeyHostname     = "local.hostname"
	KeyWoLInterface = "local.wol-interface"
)

// Spec registers the local driver with the model.
var Spec = machine.DriverSpec{
	Name: "local",
	Doc:  "this machine: poweroff, reboot, init N and suspend through its own init system, WoL armed first",
	Keys: keys,
	New:  New,
}

// keys are the driver's config keys. Both are privileged: local.hostname
// decides which machine a power verb may take down (in a cluster every
// agent reads the same config, and only the machine of that name acts),
// local.wol-interface names a device the daemon configures.
var keys = []machine.KeySpec{
	{Name: KeyHostname, Doc: "the name of the machine this host is (uname -n, as `hostname` prints it); required. Every power verb first compares it with the name of the machine machinefs runs on and is EPERM when they differ, so a config shared by a cluster's agents powers off only the machine it names", Kind: hostnameKind, Privileged: true},
	{Name: KeyWoLInterface, Doc: "network interface on which Wake-on-LAN (magic packet) is armed through ethtool's netlink interface before poweroff, off, init 0 and suspend, so that wol can wake the machine again; empty: not armed. A NIC without WoL is a warning with the reason, not a refusal", Kind: ifaceKind, Privileged: true},
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9_-]{0,62}))*$`)

// hostnameKind is a host name as uname reports it (at most 64 bytes).
var hostnameKind = machine.CheckedKind("host name", func(v string) error {
	if len(v) > 64 || !hostnameRE.MatchString(v) {
		return fmt.Errorf("%q: want the machine's host name as `uname -n` prints it", v)
	}
	return nil
})

// ifaceKind is a network interface name (wolarm.CheckName), or empty.
var ifaceKind = machine.CheckedKind("interface name", func(v string) error {
	if v == "" {
		return nil
	}
	return wolarm.CheckName(v)
})

// settings is the parsed configuration of one host.
type settings struct {
	hostname string
	wolIface string
}

func parseConfig(c machine.Config) (settings, error) {
	v := machine.ReadConfig(c, keys)
	s := settings{hostname: v.String(KeyHostname), wolIface: v.String(KeyWoLInterface)}
	if err := v.Err(); err != nil {
		return s, machine.Errorf(syscall.EINVAL, "local: %v", err)
	}
	if s.hostname == "" {
		return s, machine.Errorf(syscall.EINVAL, "local: %s is not set: name the machine this host is (uname -n), so that no other machine acts on its power verbs", KeyHostname)
	}
	return s, nil
}
