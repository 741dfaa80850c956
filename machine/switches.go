package machine

import "context"

// Switches manages the virtual switches (bridges, TAP devices and VDE
// switches) of the machine machinefs runs on, ctys-setupVDE style. drivers/vswitch
// implements it with netlink; the model only routes requests to it and
// turns its link changes into events.
type Switches interface {
	Create(ctx context.Context, name string) (created bool, err error)
	Delete(ctx context.Context, names ...string) error
	SetUplink(ctx context.Context, name, iface string) error
	// AddTap adds a persistent TAP owned by owner and group: user and
	// group names or numbers as written, "" for unset. An unknown name is
	// EINVAL.
	AddTap(ctx context.Context, name, owner, group string) (tap string, err error)
	// AddVDE runs a VDE switch (vde_switch) on switch name, attached to
	// a new TAP on the bridge, as owner (root when "") and group, its
	// data socket VDESocket(name) with permissions mode (octal, "" for
	// the default). A live one already there is EEXIST. RemovePort(name,
	// "vde") stops it; like Delete, it is EBUSY while clients use it.
	AddVDE(ctx context.Context, name, owner, group, mode string) (tap string, err error)
	RemovePort(ctx context.Context, name, port string) error
	Check(ctx context.Context, name string) error
	// InfoText, PortsText and AllText render the info, ports and all files.
	InfoText(ctx context.Context, name string) (string, error)
	PortsText(ctx context.Context, name string) (string, error)
	AllText(ctx context.Context) (string, error)
	// Uplink is the switch's uplink interface, "" if none.
	Uplink(ctx context.Context, name string) (string, error)
	// List names the switches machinefs manages, sorted.
	List() []string
	// Exists reports whether a bridge of that name exists, managed or not.
	Exists(ctx context.Context, name string) bool
	// WatchChanges calls fn for every link change in the switches' network
	// namespace, made by anyone, until ctx ends.
	WatchChanges(ctx context.Context, fn func(SwitchChange)) error
}

// SwitchChange is a link change seen on a switch.
type SwitchChange struct {
	Switch, Link, What string
}

// VDEDir holds the sockets of the VDE switches machinefs runs: switch NAME's
// data socket directory is VDEDir/NAME (what vde_switch -s and QEMU's
// -netdev vde,sock= take) and its management socket VDEDir/NAME.mgmt. It is
// here, in the contract, because a guest driver plugs into a switch that
// drivers/vswitch runs, and drivers do not import each other.
const VDEDir = "/run/machinefs/vde"

// VDESocket is the data socket directory of VDE switch name.
func VDESocket(name string) string { return VDEDir + "/" + name }
