package vswitch

import (
	"os/user"
	"strconv"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// lookupID resolves the owner or group of a TAP as the operator wrote it:
// a number, or a user or group name of this machine. "" is NoID (unset).
func lookupID(v string, group bool) (uint32, error) {
	if v == "" {
		return NoID, nil
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil && n != uint64(NoID) {
		return uint32(n), nil
	}
	id, kind := "", "user"
	if group {
		kind = "group"
		if g, err := user.LookupGroup(v); err == nil {
			id = g.Gid
		}
	} else if u, err := user.Lookup(v); err == nil {
		id = u.Uid
	}
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil {
		return 0, machine.Errorf(syscall.EINVAL, "vswitch: no %s %q", kind, v)
	}
	return uint32(n), nil
}
