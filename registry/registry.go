// Package registry lists the drivers machinefs is built with. It is the
// one place a driver is registered: the daemon builds hosts from it, and
// the documentation tests check the man page and README against it.
// Adding a driver is a new package under drivers/ plus one line here.
package registry

import (
	"github.com/machinefs/machinefs/drivers/ipmi"
	"github.com/machinefs/machinefs/drivers/local"
	"github.com/machinefs/machinefs/drivers/ns"
	"github.com/machinefs/machinefs/drivers/qemu"
	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/drivers/ssh"
	"github.com/machinefs/machinefs/drivers/uml"
	"github.com/machinefs/machinefs/drivers/wol"
	"github.com/machinefs/machinefs/machine"
)

// Drivers returns every driver, in the order `help` and the documentation
// list them.
func Drivers() []machine.DriverSpec {
	return []machine.DriverSpec{
		sim.Spec,
		ipmi.Spec,
		wol.Spec,
		ssh.Spec,
		local.Spec,
		ns.Spec,
		uml.Spec,
		qemu.Spec,
	}
}
