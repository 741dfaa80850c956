// Package tap makes and removes the persistent TAP devices guest drivers
// plug into a Linux bridge (a vswitch). A TAP is marked with an alias
// naming the driver and the host it was made for, so a TAP of the same
// name made by anyone else is never reused or deleted.
package tap

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/machinefs/machinefs/machine"
)

// Create makes the TAP name (marked with alias) and attaches it to bridge,
// up. A TAP of that name with the same alias, left by an earlier run, is
// reused; one with another alias, or another kind of link, is EEXIST. The
// bridge must exist (ENODEV): the vswitch owns it. Errors start with what
// (the config key, "qemu.net").
func Create(what, name, bridge, alias string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return machine.Errorf(syscall.ENODEV, "%s: switch %s: %v (create the switch first)", what, bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return machine.Errorf(syscall.EINVAL, "%s: %s is a %s, not a bridge", what, bridge, br.Type())
	}
	link, err := netlink.LinkByName(name)
	switch {
	case err != nil:
		if link, err = add(what, name, alias); err != nil {
			return err
		}
	case link.Type() != "tuntap":
		return machine.Errorf(syscall.EEXIST, "%s: %s exists and is a %s, not a TAP", what, name, link.Type())
	case link.Attrs().Alias != alias:
		return machine.Errorf(syscall.EEXIST, "%s: a TAP named %s exists and machinefs did not make it (%q; alias %q)", what, name, alias, link.Attrs().Alias)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		Delete(name, alias)
		return machine.Errorf(syscall.EIO, "%s: attaching %s to %s: %v", what, name, bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		Delete(name, alias)
		return machine.Errorf(syscall.EIO, "%s: %s up: %v", what, name, err)
	}
	return nil
}

// add creates a persistent TAP and marks it.
func add(what, name, alias string) (netlink.Link, error) {
	t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE}
	if err := netlink.LinkAdd(t); err != nil {
		return nil, machine.Errorf(syscall.EIO, "%s: creating TAP %s: %v", what, name, err)
	}
	// The TAP is persistent: the guest opens it by name.
	for _, f := range t.Fds {
		f.Close()
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, machine.Errorf(syscall.EIO, "%s: TAP %s: %v", what, name, err)
	}
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		netlink.LinkDel(link)
		return nil, machine.Errorf(syscall.EIO, "%s: marking TAP %s: %v", what, name, err)
	}
	return link, nil
}

// Delete removes the TAP name if it carries alias; any other link of that
// name stays. A TAP that is gone is no error.
func Delete(name, alias string) error {
	if name == "" {
		return nil
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	if l.Type() != "tuntap" || l.Attrs().Alias != alias {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("removing TAP %s: %w", name, err)
	}
	return nil
}
