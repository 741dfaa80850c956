package ns

import (
	"context"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// check reports what a subhost needs of the host: CAP_SYS_ADMIN (the
// namespaces and mounts), a root with an init in it (or disk images),
// for ns.bridges CAP_NET_ADMIN and the bridges, and the cgroup v2
// hierarchy, which the subhost does without (it then has no cgroup of
// its own to kill at removal). Nothing is mounted or started.
func check(_ context.Context, env machine.CheckEnv) []machine.Requirement {
	s, err := parseSettings(machine.DriverEnv{Path: env.Path, Config: env.Config})
	var out []machine.Requirement
	if err != nil {
		out = append(out, machine.Lack("config", err.Error()))
	}
	out = append(out, hostcheck.Capability(unix.CAP_SYS_ADMIN, "creates the subhost's namespaces and mounts its root"))
	out = append(out, rootNeeds(s)...)
	if len(s.cables) > 0 {
		out = append(out, hostcheck.Capability(unix.CAP_NET_ADMIN, "creates the subhost's veth pairs and attaches them"))
		for _, c := range s.cables {
			out = append(out, hostcheck.Interface("bridge "+c.Bridge, c.Bridge))
		}
	}
	return append(out, hostcheck.Cgroup2(true, "the subhost runs without a cgroup of its own")...)
}

// rootNeeds: the disk images, or a root directory (or the overlay's base)
// holding /init or /sbin/init.
func rootNeeds(s settings) []machine.Requirement {
	if len(s.disks) > 0 {
		var out []machine.Requirement
		for _, d := range s.disks {
			out = append(out, hostcheck.File("disk "+d.Dev+" "+d.Image, d.Image))
		}
		return out
	}
	if s.root == "" {
		return []machine.Requirement{machine.Lack("root", "neither ns.root nor ns.disks is set")}
	}
	out := []machine.Requirement{hostcheck.Dir("root "+s.root, s.root)}
	for _, dir := range []string{s.root, s.base} {
		if dir == "" {
			continue
		}
		for _, p := range []string{"init", "sbin/init"} {
			if _, err := os.Lstat(filepath.Join(dir, p)); err == nil {
				return append(out, machine.Have("init", filepath.Join(dir, p)))
			}
		}
	}
	return append(out, machine.Lack("init", "the root has neither /init nor /sbin/init"))
}
