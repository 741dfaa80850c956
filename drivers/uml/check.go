package uml

import (
	"context"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// check reports what a guest needs of the host: the UML kernel (an
// executable), its root (a hostfs directory or ubd images), and for
// uml.net a TAP on a bridge (/dev/net/tun, CAP_NET_ADMIN, the bridge).
// The driver speaks mconsole itself: uml_mconsole is not needed. Nothing
// is started.
func check(_ context.Context, env machine.CheckEnv) []machine.Requirement {
	v := machine.ReadConfig(env.Config, keys)
	kernel := v.String("uml.kernel")
	root := machine.Value[rootSpec](v, "uml.root")
	var out []machine.Requirement
	if err := v.Err(); err != nil {
		out = append(out, machine.Lack("config", err.Error()))
	}
	out = append(out, hostcheck.Binary(kernel))
	switch {
	case !v.IsSet("uml.root"):
		out = append(out, machine.Lack("root file system", "uml.root is not set"))
	case root.hostfs != "":
		out = append(out, hostcheck.Dir("root hostfs "+root.hostfs, root.hostfs))
	case root.backing != "":
		// UML creates a missing COW file over its backing file.
		out = append(out, hostcheck.File("backing file "+root.backing, root.backing),
			hostcheck.Dir("directory of COW file "+root.image, filepath.Dir(root.image)))
	default:
		out = append(out, hostcheck.File("root image "+root.image, root.image))
	}
	if v.IsSet("uml.net") {
		bridge := v.BridgeMAC("uml.net").Bridge
		out = append(out,
			hostcheck.Device("/dev/net/tun"),
			hostcheck.Capability(unix.CAP_NET_ADMIN, "creates the guest's TAP and attaches it to "+bridge),
			hostcheck.Interface("bridge "+bridge, bridge))
	}
	return out
}
