package vswitch

import (
	"fmt"
	"os/user"
	"slices"
	"strconv"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// DefaultTunPath is the clone device a TAP's owner opens to attach to it.
const DefaultTunPath = "/dev/net/tun"

// userGroups returns uid's supplementary groups from the group database,
// with gid added; a uid with no passwd entry has gid alone.
func userGroups(uid, gid uint32) []uint32 {
	gs := []uint32{gid}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return gs
	}
	ids, _ := u.GroupIds()
	if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil && !slices.Contains(gs, uint32(g)) {
		gs = append(gs, uint32(g))
	}
	for _, s := range ids {
		if g, err := strconv.ParseUint(s, 10, 32); err == nil && !slices.Contains(gs, uint32(g)) {
			gs = append(gs, uint32(g))
		}
	}
	return gs
}

// tunAccess reports whether a process of uid with groups can open path
// (the TUN clone device) for reading and writing, by its mode bits: a TAP
// owned by a user who cannot open it is of no use to that user (QEMU's
// -netdev tap, vde_switch -tap). EACCES says who cannot open what, e.g.
// "tun: /dev/net/tun is 0600 root:root: user bob cannot open it". Root
// always can. POSIX ACLs are not read.
func tunAccess(path string, uid uint32, groups []uint32) error {
	if uid == 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return machine.Errorf(errnoOf(err, syscall.ENOENT), "tun: %s: %v", path, err)
	}
	var bits uint32
	switch {
	case st.Uid == uid:
		bits = st.Mode >> 6
	case slices.Contains(groups, st.Gid):
		bits = st.Mode >> 3
	default:
		bits = st.Mode
	}
	if bits&6 == 6 {
		return nil
	}
	return machine.Errorf(syscall.EACCES, "tun: %s is %04o %s:%s: user %s cannot open it",
		path, st.Mode&0o7777, userName(st.Uid), groupName(st.Gid), userName(uid))
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return fmt.Sprint(uid)
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		return g.Name
	}
	return fmt.Sprint(gid)
}

// tunProblem is EACCES with the reason when the owner of one of rec's TAPs
// cannot open the TUN clone device, so cannot use the TAP; nil otherwise.
func (m *Manager) tunProblem(links []netlink.Link, rec *record) error {
	for _, l := range links {
		t, ok := l.(*netlink.Tuntap)
		if !ok || !ownTap(l, rec) {
			continue
		}
		owner, group := m.tunOwner(l.Attrs().Index, t.Owner, t.Group)
		if owner == NoID {
			continue
		}
		if err := tunAccess(m.tunPath, owner, userGroups(owner, group)); err != nil {
			return machine.Errorf(syscall.EACCES, "vswitch: TAP %s of %s: %v", l.Attrs().Name, rec.Name, err)
		}
	}
	return nil
}
