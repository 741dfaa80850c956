package uml

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/machinefs/machinefs/machine"
	"github.com/vishvananda/netlink"
)

// tapAliasPrefix marks the TAPs this driver makes, followed by the host's
// path: a TAP of the same name made by anyone else (or for another host) is
// never reused or deleted.
const tapAliasPrefix = "machinefs uml "

// createTap creates the guest's TAP (named after the host) and attaches it
// to the bridge named in uml.net. The bridge must exist: the vswitch owns
// it. A TAP left by an earlier run of this host is reused; one that is not
// this host's is EEXIST.
func (m *Machine) createTap() (string, error) {
	name := m.umid
	br, err := netlink.LinkByName(m.net.bridge)
	if err != nil {
		return "", machine.Errorf(syscall.ENODEV, "uml.net: switch %s: %v (create the switch first)", m.net.bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return "", machine.Errorf(syscall.EINVAL, "uml.net: %s is a %s, not a bridge", m.net.bridge, br.Type())
	}
	tap, err := netlink.LinkByName(name)
	if err != nil {
		t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE}
		if err := netlink.LinkAdd(t); err != nil {
			return "", machine.Errorf(syscall.EIO, "uml.net: creating TAP %s: %v", name, err)
		}
		for _, f := range t.Fds {
			f.Close()
		}
		if tap, err = netlink.LinkByName(name); err != nil {
			return "", machine.Errorf(syscall.EIO, "uml.net: TAP %s: %v", name, err)
		}
		if err := netlink.LinkSetAlias(tap, m.tapAlias()); err != nil {
			m.deleteTap(name)
			return "", machine.Errorf(syscall.EIO, "uml.net: marking TAP %s: %v", name, err)
		}
	} else if _, ok := tap.(*netlink.Tuntap); !ok {
		return "", machine.Errorf(syscall.EEXIST, "uml.net: %s exists and is a %s, not a TAP", name, tap.Type())
	} else if tap.Attrs().Alias != m.tapAlias() {
		return "", machine.Errorf(syscall.EEXIST, "uml.net: a TAP named %s exists and machinefs did not make it for %s (alias %q)", name, m.path, tap.Attrs().Alias)
	}
	if err := netlink.LinkSetMaster(tap, br); err != nil {
		m.deleteTap(name)
		return "", machine.Errorf(syscall.EIO, "uml.net: attaching %s to %s: %v", name, m.net.bridge, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		m.deleteTap(name)
		return "", machine.Errorf(syscall.EIO, "uml.net: %s up: %v", name, err)
	}
	return name, nil
}

func (m *Machine) tapAlias() string { return tapAliasPrefix + m.path }

// claimTap marks an unmarked TAP as this host's (see adopt).
func (m *Machine) claimTap(name string) {
	if name == "" {
		return
	}
	if l, err := netlink.LinkByName(name); err == nil && l.Attrs().Alias == "" {
		if _, ok := l.(*netlink.Tuntap); ok {
			_ = netlink.LinkSetAlias(l, m.tapAlias())
		}
	}
}

// deleteTap removes a TAP this driver created for this host ("" does
// nothing; a TAP of that name that is not this host's stays).
func (m *Machine) deleteTap(name string) {
	if name == "" {
		return
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return
	}
	if _, ok := l.(*netlink.Tuntap); !ok || l.Attrs().Alias != m.tapAlias() {
		return
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		m.log.Warn("uml: removing TAP", "tap", name, "err", fmt.Sprint(err))
	}
}
