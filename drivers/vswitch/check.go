package vswitch

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/machine"
)

var _ machine.Requirer = (*Manager)(nil)

// Requirements reports what the switches need of the machine machinefs
// runs on (shown in the local host's check file): CAP_NET_ADMIN for
// bridges, TAPs and uplinks, the TUN clone device for TAPs, and the
// vde_switch program, which only `add vde` needs (optional: bridges and
// TAPs work without it).
func (m *Manager) Requirements(context.Context) []machine.Requirement {
	vde := hostcheck.Binary(m.vdeBin)
	vde.Optional = true
	if !vde.Present {
		vde.Reason += " (only `add vde` needs it: Debian package vde2)"
	}
	return []machine.Requirement{
		hostcheck.Capability(unix.CAP_NET_ADMIN, "creates bridges and TAPs and sets uplinks"),
		hostcheck.Device(m.tunPath),
		vde,
	}
}
