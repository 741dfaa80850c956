package qemu

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// check reports what a guest needs of the host: the QEMU binary, what it
// boots, /dev/kvm (required for qemu.accel kvm, optional for auto: QEMU
// then emulates), and for qemu.net a TAP on a bridge (/dev/net/tun,
// CAP_NET_ADMIN, the bridge) or a VDE switch's socket. All local: no
// QEMU is started.
func check(_ context.Context, env machine.CheckEnv) []machine.Requirement {
	s, err := readSettings(env.Config)
	var out []machine.Requirement
	if err != nil {
		out = append(out, machine.Lack("config", err.Error()))
	}
	out = append(out, hostcheck.Binary(s.binary))
	if s.kernel != "" {
		out = append(out, hostcheck.File("kernel "+s.kernel, s.kernel))
	}
	if s.initrd != "" {
		out = append(out, hostcheck.File("initrd "+s.initrd, s.initrd))
	}
	for _, d := range s.disks {
		out = append(out, hostcheck.File("disk "+d.path, d.path))
	}
	if s.accel != "tcg" {
		kvm := hostcheck.Device("/dev/kvm")
		kvm.Optional = s.accel == "auto"
		if kvm.Optional && !kvm.Present {
			kvm.Reason += " (qemu.accel auto: the guest is emulated, tcg)"
		}
		out = append(out, kvm)
	}
	return append(out, netNeeds(s.net)...)
}

// netNeeds are what qemu.net needs: a TAP on a Linux bridge, or a port of
// a VDE switch machinefs runs.
func netNeeds(n *netSpec) []machine.Requirement {
	switch {
	case n == nil:
		return nil
	case n.vde:
		sock := machine.VDESocket(n.bridge)
		return []machine.Requirement{hostcheck.Dir("VDE switch "+n.bridge+" socket "+sock, sock)}
	}
	return []machine.Requirement{
		hostcheck.Device("/dev/net/tun"),
		hostcheck.Capability(unix.CAP_NET_ADMIN, "creates the guest's TAP and attaches it to "+n.bridge),
		hostcheck.Interface("bridge "+n.bridge, n.bridge),
	}
}
