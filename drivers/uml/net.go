package uml

import (
	"github.com/vishvananda/netlink"

	"github.com/machinefs/machinefs/drivers/internal/tap"
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
	if err := tap.Create("uml.net", m.umid, m.net.bridge, m.tapAlias()); err != nil {
		return "", err
	}
	return m.umid, nil
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
	if err := tap.Delete(name, m.tapAlias()); err != nil {
		m.log.Warn("uml: removing TAP", "tap", name, "err", err)
	}
}
