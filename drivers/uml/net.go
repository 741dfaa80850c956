package uml

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/machinefs/machinefs/nodes"
)

// createTap creates the guest's TAP (named after the host) and attaches it
// to the bridge named in uml.net. The bridge must exist: the vswitch owns
// it. A TAP left by an earlier run of this host is reused.
func (m *Machine) createTap() (string, error) {
	name := m.umid
	br, err := netlink.LinkByName(m.net.bridge)
	if err != nil {
		return "", nodes.Errorf(syscall.ENODEV, "uml.net: switch %s: %v (create the switch first)", m.net.bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return "", nodes.Errorf(syscall.EINVAL, "uml.net: %s is a %s, not a bridge", m.net.bridge, br.Type())
	}
	tap, err := netlink.LinkByName(name)
	if err != nil {
		t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE}
		if err := netlink.LinkAdd(t); err != nil {
			return "", nodes.Errorf(syscall.EIO, "uml.net: creating TAP %s: %v", name, err)
		}
		for _, f := range t.Fds {
			f.Close()
		}
		if tap, err = netlink.LinkByName(name); err != nil {
			return "", nodes.Errorf(syscall.EIO, "uml.net: TAP %s: %v", name, err)
		}
	} else if _, ok := tap.(*netlink.Tuntap); !ok {
		return "", nodes.Errorf(syscall.EEXIST, "uml.net: %s exists and is a %s, not a TAP", name, tap.Type())
	}
	if err := netlink.LinkSetMaster(tap, br); err != nil {
		m.deleteTap(name)
		return "", nodes.Errorf(syscall.EIO, "uml.net: attaching %s to %s: %v", name, m.net.bridge, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		m.deleteTap(name)
		return "", nodes.Errorf(syscall.EIO, "uml.net: %s up: %v", name, err)
	}
	return name, nil
}

// deleteTap removes a TAP this driver created ("" does nothing).
func (m *Machine) deleteTap(name string) {
	if name == "" {
		return
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return
	}
	if _, ok := l.(*netlink.Tuntap); !ok {
		return
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		m.log.Warn("uml: removing TAP", "tap", name, "err", fmt.Sprint(err))
	}
}
