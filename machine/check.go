package machine

import (
	"context"
	"log/slog"
)

// Requirement is one thing a driver needs to run its machine, and whether
// the host machinefs runs on has it: a program, a device and its mode, a
// capability, a kernel feature, a BMC that takes the configured
// credentials, an SSH server with the known host key (ctys-plugins' tool
// report). The model shows a host's requirements in its check file and
// warns once of each missing one, before the first command needs it.
type Requirement struct {
	// What names the need in words, its kind first: "binary
	// qemu-system-x86_64", "device /dev/kvm rw", "capability
	// CAP_NET_ADMIN", "cgroup v2 controller cpu", "BMC authentication",
	// "ssh host key".
	What string
	// Present says whether the need is met.
	Present bool
	// Reason says why, in words: where the binary was found, the
	// device's mode, the error that shows it is missing ("not in PATH").
	Reason string
	// Optional marks a need the driver works without, with less (QEMU
	// without /dev/kvm emulates): shown, but neither warned of nor
	// counted as missing.
	Optional bool
}

// Have is a requirement that is met, for the reason given.
func Have(what, reason string) Requirement {
	return Requirement{What: what, Present: true, Reason: reason}
}

// Lack is a requirement that is not met, for the reason given.
func Lack(what, reason string) Requirement {
	return Requirement{What: what, Reason: reason}
}

// Need is a requirement met or not as present says.
func Need(what string, present bool, reason string) Requirement {
	return Requirement{What: what, Present: present, Reason: reason}
}

// CheckEnv is what a driver's Check gets: the host's path and config, as
// New gets them, and the driver New built, if it built one.
type CheckEnv struct {
	// Path is the host's path in the tree.
	Path string
	// Config is a snapshot of the host's configuration; read it through
	// the spec's keys (ReadConfig), as New does.
	Config Config
	// Log is a logger tagged with the host's path.
	Log *slog.Logger
	// Driver is the driver New built for the host, nil when New failed
	// (a host whose driver cannot start gets a report all the same).
	Driver Driver
}

// Checker is the optional DriverSpec.Check: it says what the driver needs
// for the host described by env and whether each need is met. It must end
// by ctx's deadline (the host's timeout): a network check (a BMC session,
// an SSH handshake) is bounded by it, the rest should be cheap (a stat, a
// look at /proc). It must not call the host's Reporter: the model emits
// the missing requirements as warnings itself.
type Checker func(ctx context.Context, env CheckEnv) []Requirement

// Requirer is a part of machinefs that is not a host's driver but has
// needs of its own (the virtual switches of the machine machinefs runs
// on): the model adds its requirements to that host's report.
type Requirer interface {
	Requirements(ctx context.Context) []Requirement
}
