package vswitch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/machinefs/machinefs/machine"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NoID leaves a TAP's owner or group unset (anyone with CAP_NET_ADMIN may
// attach; AddTap).
const NoID = ^uint32(0)

// DefaultGroup is the interface group base used when Options.Group is 0.
// Switches get the groups DefaultGroup+1, +2, ...; the base itself is the
// scratch group of a multi-switch Delete.
const DefaultGroup uint32 = 0x6d660000

// maxGroups bounds how many switches one Manager allocates groups for.
const maxGroups = 1 << 16

// Alias values written to IFLA_IFALIAS.
const (
	aliasManaged = "machinefs:managed" // on a bridge machinefs created
	aliasPrefix  = "machinefs:"        // + switch name, on its TAPs
)

// Options configure a Manager.
type Options struct {
	// Netns is the network namespace to work in. Values <= 0 mean unset;
	// the Manager keeps its own duplicate, so the caller may close it.
	Netns netns.NsHandle
	// NetnsPath names the namespace by path (/run/netns/NAME,
	// /proc/PID/ns/net) when Netns is unset. Both unset: the namespace of
	// the thread calling New.
	NetnsPath string
	// Group is the private interface group base (see DefaultGroup).
	Group uint32
	// StateDir keeps one NAME.json per switch machinefs created. Empty:
	// records live in memory and the bridge alias alone survives restarts.
	StateDir string
	// VDEDir holds the VDE switches' sockets (machine.VDEDir when empty;
	// tests use their own), VDESwitch is the vde_switch program
	// (DefaultVDESwitch) and TunPath the TUN clone device whose mode says
	// whether a TAP's owner can use it (DefaultTunPath).
	VDEDir, VDESwitch, TunPath string
}

// Manager creates and manages switches in one network namespace. Its
// methods are safe for concurrent use; changes are serialized.
type Manager struct {
	ns       netns.NsHandle
	base     uint32
	stateDir string

	vdeDir, vdeBin, tunPath string

	h     *netlink.Handle // queries and simple changes
	raw   *nl.NetlinkSocket
	socks map[int]*nl.SocketHandle // raw, for hand-built requests

	mu   sync.Mutex
	recs map[string]*record
	seen map[uint32]bool // groups in use when New listed the devices

	// failAfter, for tests, fails Create after the named step.
	failAfter string
	// dels counts delete requests sent to the kernel (tests).
	dels atomic.Int64
}

// New opens a Manager in the namespace opts name, loads StateDir and adopts
// bridges that carry the managed alias.
func New(ctx context.Context, opts Options) (*Manager, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var ns netns.NsHandle
	var err error
	switch {
	case opts.Netns > 0:
		var fd int
		fd, err = unix.FcntlInt(uintptr(opts.Netns), unix.F_DUPFD_CLOEXEC, 0)
		ns = netns.NsHandle(fd)
	case opts.NetnsPath != "":
		ns, err = netns.GetFromPath(opts.NetnsPath)
	default:
		ns, err = netns.Get()
	}
	if err != nil {
		return nil, machine.Errorf(errnoOf(err, syscall.ENOENT), "vswitch: open network namespace: %v", err)
	}
	m := &Manager{ns: ns, base: opts.Group, stateDir: opts.StateDir, recs: map[string]*record{},
		vdeDir: cmp.Or(opts.VDEDir, machine.VDEDir), vdeBin: cmp.Or(opts.VDESwitch, DefaultVDESwitch), tunPath: cmp.Or(opts.TunPath, DefaultTunPath)}
	if m.base == 0 {
		m.base = DefaultGroup
	}
	if uint64(m.base)+maxGroups > 1<<32-1 {
		_ = ns.Close()
		return nil, machine.Errorf(syscall.EINVAL, "vswitch: group base %d too high", m.base)
	}
	m.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		_ = ns.Close()
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: netlink: %v", err)
	}
	m.raw, err = nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		m.h.Close()
		_ = ns.Close()
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: netlink: %v", err)
	}
	_ = m.raw.SetExtAck(true)
	m.socks = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: m.raw}}
	if err := m.loadState(); err != nil {
		m.Close()
		return nil, err
	}
	links, err := m.links()
	if err != nil {
		m.Close()
		return nil, err
	}
	m.seen = map[uint32]bool{}
	for _, l := range links {
		a := l.Attrs()
		m.seen[a.Group] = true
		if isBridge(l) && a.Alias == aliasManaged && m.recs[a.Name] == nil {
			m.recs[a.Name] = &record{Name: a.Name, Group: a.Group}
			_ = m.save(m.recs[a.Name])
		}
	}
	return m, nil
}

// Close releases the Manager's sockets and namespace handle. Devices stay.
func (m *Manager) Close() {
	m.h.Close()
	m.raw.Close()
	_ = m.ns.Close()
}

// Info describes one bridge.
type Info struct {
	Name    string
	MTU     int
	State   string // "up" or "down" (administrative)
	Oper    string // operational state as the kernel reports it
	MAC     string
	Uplink  string // "" when none is attached
	Managed bool   // created by machinefs
	Group   uint32 // interface group
	Ports   int
	Counters
	// External: someone else's bridge that machinefs added ports to.
	External bool
	// VDE describes the VDE switch on it: "" none, "running", or why it
	// is broken (check's reason); VDESock and VDEMgmt are its sockets.
	VDE, VDESock, VDEMgmt string
	VDEPid                int
	// Tun is "" or why a TAP's owner cannot use it (/dev/net/tun's mode).
	Tun string
}

// Counters are a device's traffic counters.
type Counters struct {
	RxBytes, TxBytes, RxPackets, TxPackets, RxErrors, TxErrors uint64
}

// Port is one device attached to a bridge.
type Port struct {
	Name  string
	Kind  string // "tap", "veth", "uplink" or "other"
	MAC   string
	State string // "up" or "down" (administrative)
	Oper  string
	// Owner and Group of a TAP; NoID when unset or not a TAP.
	Owner, Group uint32
	// Managed is true for TAPs machinefs created for this switch.
	Managed bool
}

// Change is a link change seen by Watch.
type Change struct {
	Switch string // bridge name
	Link   string // device that changed (== Switch for the bridge itself)
	What   string // created, deleted, up, down, port-added, port-removed
}

// Create makes a bridge named name, up, in a private interface group, and
// records it as managed. An existing bridge is reused (created false): a
// managed one that is down is brought up again; an unmanaged one is left as
// it is and stays "managed: no". A name held by another kind of device is
// EEXIST. A create that fails halfway removes what it made.
func (m *Manager) Create(ctx context.Context, name string) (created bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := validName(name); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l, err := m.link(name)
	if err != nil {
		return false, err
	}
	if l != nil {
		if !isBridge(l) {
			return false, machine.Errorf(syscall.EEXIST, "vswitch: %s exists and is a %s device, not a bridge", name, kindOf(l))
		}
		if m.managed(l) && l.Attrs().Flags&net.FlagUp == 0 {
			if err := m.h.LinkSetUp(l); err != nil {
				return false, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: bring %s up: %v", name, err)
			}
		}
		return false, nil
	}
	group, err := m.allocGroup()
	if err != nil {
		return false, err
	}
	rec := &record{Name: name, Group: group}
	// The record comes first: a crash after this point leaves a half-made
	// switch that Delete recognises and clears.
	m.recs[name] = rec
	rollback := func(step string, cause error) (bool, error) {
		if l, _ := m.link(name); l != nil && l.Attrs().Group == group {
			_ = m.h.LinkDel(l)
		}
		delete(m.recs, name)
		m.unsave(name)
		return false, machine.Errorf(errnoOf(cause, syscall.EIO), "vswitch: create %s: %s: %v", name, step, cause)
	}
	if err := m.save(rec); err != nil {
		return rollback("state", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, Group: group, Flags: net.FlagUp}}
	if err := m.h.LinkAdd(br); err != nil {
		return rollback("add bridge", err)
	}
	if err := m.fail("bridge"); err != nil {
		return rollback("after bridge", err)
	}
	if err := m.h.LinkSetAlias(br, aliasManaged); err != nil {
		return rollback("alias", err)
	}
	return true, nil
}

// fail is the test hook behind Manager.failAfter.
func (m *Manager) fail(step string) error {
	if m.failAfter == step {
		return fmt.Errorf("injected failure after %s: %w", step, syscall.EIO)
	}
	return nil
}

// SetUplink attaches the existing interface iface to switch name as its
// uplink, replacing (detaching) a previous uplink; "" detaches. Only iface
// and the previous uplink are touched; their groups and up state stay.
func (m *Manager) SetUplink(ctx context.Context, name, iface string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, rec, err := m.managedBridge(name)
	if err != nil {
		return err
	}
	var up netlink.Link
	if iface != "" {
		if up, err = m.link(iface); err != nil {
			return err
		}
		if up == nil {
			return machine.Errorf(syscall.ENOENT, "vswitch: uplink %s: no such interface", iface)
		}
		a := up.Attrs()
		switch {
		case isBridge(up):
			return machine.Errorf(syscall.EINVAL, "vswitch: uplink %s is a bridge", iface)
		case a.Group == rec.Group:
			return machine.Errorf(syscall.EINVAL, "vswitch: %s belongs to switch %s", iface, name)
		case a.MasterIndex != 0 && a.MasterIndex != br.Attrs().Index:
			return machine.Errorf(syscall.EBUSY, "vswitch: %s is already a port of another device", iface)
		}
	}
	if rec.Uplink != "" && rec.Uplink != iface {
		if old, _ := m.link(rec.Uplink); old != nil && old.Attrs().MasterIndex == br.Attrs().Index {
			if err := m.h.LinkSetNoMaster(old); err != nil {
				return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: detach uplink %s: %v", rec.Uplink, err)
			}
		}
	}
	if up != nil && up.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.h.LinkSetMasterByIndex(up, br.Attrs().Index); err != nil {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: attach uplink %s to %s: %v", iface, name, err)
		}
	}
	rec.Uplink = iface
	return m.save(rec)
}

// AddTap creates a persistent TAP (no packet info, one queue) owned by
// owner and group (user and group names or numbers as the operator wrote
// them; "" leaves one unset), attached to switch name, up and in the
// switch's interface group. It is named NAMEt0, NAMEt1, ... (the first free).
func (m *Manager) AddTap(ctx context.Context, name, owner, group string) (tapName string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	uid, err := lookupID(owner, false)
	if err != nil {
		return "", err
	}
	gid, err := lookupID(group, true)
	if err != nil {
		return "", err
	}
	return m.addTap(name, uid, gid)
}

// addTap is AddTap with the owner and group resolved (NoID: unset).
func (m *Manager) addTap(name string, owner, group uint32) (tapName string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	br, rec, err := m.portBridge(name, true)
	if err != nil {
		return "", err
	}
	defer func() { m.dropEmpty(rec, err) }()
	for i := 0; i < 1000; i++ {
		tap := fmt.Sprintf("%st%d", name, i)
		if len(tap) > unix.IFNAMSIZ-1 {
			return "", machine.Errorf(syscall.ENAMETOOLONG, "vswitch: TAP name %s is longer than %d bytes", tap, unix.IFNAMSIZ-1)
		}
		if l, err := m.link(tap); err != nil {
			return "", err
		} else if l != nil {
			continue
		}
		err := m.makeTap(tap, owner, group, br.Attrs().Index, rec.Group, aliasPrefix+name)
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EEXIST) {
			continue // appeared meanwhile
		}
		if err != nil {
			return "", machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: add TAP %s to %s: %v", tap, name, err)
		}
		return tap, nil
	}
	return "", machine.Errorf(syscall.ENOSPC, "vswitch: no free TAP name for %s", name)
}

// RemovePort removes port from switch name: a TAP machinefs made for it is
// deleted, the uplink is detached (and forgotten), any other port (added by
// hand) is detached and left alone.
func (m *Manager) RemovePort(ctx context.Context, name, port string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, rec, err := m.portBridge(name, false)
	if err != nil {
		return err
	}
	if port == "vde" || rec.VDE != nil && port == rec.VDE.Tap {
		if rec.VDE == nil {
			return machine.Errorf(syscall.ENOENT, "vswitch: %s has no VDE switch", name)
		}
		return m.removeVDE(ctx, rec)
	}
	p, err := m.link(port)
	if err != nil {
		return err
	}
	if p == nil {
		return machine.Errorf(syscall.ENOENT, "vswitch: %s: no such port", port)
	}
	if ownTap(p, rec) {
		if err := m.h.LinkDel(p); err != nil {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: delete %s: %v", port, err)
		}
		return nil
	}
	if p.Attrs().MasterIndex != br.Attrs().Index {
		return machine.Errorf(syscall.ENOENT, "vswitch: %s is not a port of %s", port, name)
	}
	if err := m.h.LinkSetNoMaster(p); err != nil {
		return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: detach %s: %v", port, err)
	}
	if rec.Uplink == port {
		rec.Uplink = ""
		return m.save(rec)
	}
	return nil
}

// Check reports what is missing or broken: ENOENT when the bridge, the
// uplink or a TAP is gone, ENETDOWN when one of them is down, EIO when a
// device is there but detached or of the wrong kind. nil: healthy.
func (m *Manager) Check(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.links()
	if err != nil {
		return err
	}
	rec := m.recs[name]
	br := byName(links, name)
	switch {
	case br == nil && rec != nil:
		return machine.Errorf(syscall.ENOENT, "vswitch: bridge %s is gone (half-made switch; delete clears the rest)", name)
	case br == nil:
		return machine.Errorf(syscall.ENOENT, "vswitch: no bridge %s", name)
	case !isBridge(br):
		return machine.Errorf(syscall.EIO, "vswitch: %s is a %s device, not a bridge", name, kindOf(br))
	case br.Attrs().Flags&net.FlagUp == 0:
		return machine.Errorf(syscall.ENETDOWN, "vswitch: bridge %s is down", name)
	}
	idx := br.Attrs().Index
	if rec != nil && rec.Uplink != "" {
		up := byName(links, rec.Uplink)
		switch {
		case up == nil:
			return machine.Errorf(syscall.ENOENT, "vswitch: uplink %s of %s is gone", rec.Uplink, name)
		case up.Attrs().MasterIndex != idx:
			return machine.Errorf(syscall.EIO, "vswitch: uplink %s is detached from %s", rec.Uplink, name)
		case up.Attrs().Flags&net.FlagUp == 0:
			return machine.Errorf(syscall.ENETDOWN, "vswitch: uplink %s of %s is down", rec.Uplink, name)
		}
	}
	if rec == nil {
		return nil
	}
	if err := m.vdeCheck(ctx, links, br, rec); err != nil {
		return err
	}
	for _, l := range links {
		if !ownTap(l, rec) {
			continue
		}
		a := l.Attrs()
		switch {
		case a.MasterIndex != idx:
			return machine.Errorf(syscall.EIO, "vswitch: TAP %s is detached from %s", a.Name, name)
		case a.Flags&net.FlagUp == 0:
			return machine.Errorf(syscall.ENETDOWN, "vswitch: TAP %s of %s is down", a.Name, name)
		}
	}
	return m.tunProblem(links, rec)
}

// Info describes switch name (any bridge, managed or not).
func (m *Manager) Info(ctx context.Context, name string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.links()
	if err != nil {
		return Info{}, err
	}
	br := byName(links, name)
	if br == nil || !isBridge(br) {
		return Info{}, machine.Errorf(syscall.ENOENT, "vswitch: no bridge %s", name)
	}
	in := m.info(links, br)
	if rec := m.recs[name]; rec != nil && (in.Managed || rec.External) {
		in.External = rec.External
		if rec.VDE != nil {
			in.VDE, in.VDESock, in.VDEMgmt, in.VDEPid = "running", m.vdeSock(name), m.vdeMgmt(name), rec.VDE.Pid
			if err := m.vdeCheck(ctx, links, br, rec); err != nil {
				in.VDE = err.Error()
			}
		}
		if err := m.tunProblem(links, rec); err != nil {
			in.Tun = err.Error()
		}
	}
	return in, nil
}

func (m *Manager) info(links []netlink.Link, br netlink.Link) Info {
	a := br.Attrs()
	in := Info{
		Name: a.Name, MTU: a.MTU, State: upDown(a.Flags), Oper: a.OperState.String(),
		MAC: a.HardwareAddr.String(), Managed: m.managed(br), Group: a.Group,
	}
	if s := a.Statistics; s != nil {
		in.Counters = Counters{s.RxBytes, s.TxBytes, s.RxPackets, s.TxPackets, s.RxErrors, s.TxErrors}
	}
	rec := m.recs[a.Name]
	for _, l := range links {
		if l.Attrs().MasterIndex == a.Index {
			in.Ports++
			if rec != nil && rec.Uplink == l.Attrs().Name {
				in.Uplink = rec.Uplink
			}
		}
	}
	return in
}

// Ports lists the devices attached to switch name, sorted by name. TAPs
// machinefs made for it that were detached by hand are listed too.
func (m *Manager) Ports(ctx context.Context, name string) ([]Port, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.links()
	if err != nil {
		return nil, err
	}
	br := byName(links, name)
	if br == nil || !isBridge(br) {
		return nil, machine.Errorf(syscall.ENOENT, "vswitch: no bridge %s", name)
	}
	rec := m.recs[name]
	if !m.managed(br) && (rec == nil || !rec.External) {
		rec = nil
	}
	var ports []Port
	for _, l := range links {
		a := l.Attrs()
		own := rec != nil && ownTap(l, rec)
		if a.MasterIndex != br.Attrs().Index && !own {
			continue
		}
		p := Port{Name: a.Name, Kind: "other", MAC: a.HardwareAddr.String(), State: upDown(a.Flags),
			Oper: a.OperState.String(), Owner: NoID, Group: NoID, Managed: own}
		switch t := l.(type) {
		case *netlink.Tuntap:
			p.Kind = "tap"
			if t.Mode == netlink.TUNTAP_MODE_TUN {
				p.Kind = "tun"
			}
			// netlink reads an absent owner as 0 (root): ask the kernel.
			p.Owner, p.Group = m.tunOwner(a.Index, t.Owner, t.Group)
		case *netlink.Veth:
			p.Kind = "veth"
		}
		if rec != nil && rec.Uplink == a.Name {
			p.Kind = "uplink"
		}
		if own && rec.VDE != nil && rec.VDE.Tap == a.Name {
			p.Kind = "vde-tap"
		}
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i].Name < ports[j].Name })
	return ports, nil
}

// List returns the switches machinefs created (and has not deleted),
// sorted, including half-made ones.
func (m *Manager) List() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.recs))
}

// ListAll describes every bridge in the namespace, managed or not.
func (m *Manager) ListAll(ctx context.Context) ([]Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.links()
	if err != nil {
		return nil, err
	}
	var all []Info
	for _, l := range links {
		if isBridge(l) {
			all = append(all, m.info(links, l))
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all, nil
}

// Delete (ctys "cancel") removes the named switches: each bridge machinefs
// created and the TAPs it made for it, half-made ones included, in one
// RTM_DELLINK by interface group (one unregister batch in the kernel); the
// uplink and ports added by hand are only released. One switch is deleted
// by its own group; several are first moved into the scratch group (the
// base) and go in one request. A bridge machinefs did not create is EPERM
// and nothing is deleted; an unknown name is ENOENT.
func (m *Manager) Delete(ctx context.Context, names ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.links()
	if err != nil {
		return err
	}
	var victims []netlink.Link
	var vdes []*record
	groups := map[uint32]bool{}
	for _, name := range names {
		rec := m.recs[name]
		br := byName(links, name)
		external := rec != nil && rec.External
		if br != nil && !m.managed(br) && !external {
			return machine.Errorf(syscall.EPERM, "vswitch: %s was not created by machinefs (managed: no); not deleting it", name)
		}
		if rec == nil && br == nil {
			return machine.Errorf(syscall.ENOENT, "vswitch: no switch %s", name)
		}
		if rec == nil { // alias only (another process made it)
			rec = &record{Name: name, Group: br.Attrs().Group}
			m.recs[name] = rec
		}
		if br != nil && !external { // someone else's bridge stays (ctys -b)
			victims = append(victims, br)
		}
		for _, l := range links {
			if ownTap(l, rec) {
				victims = append(victims, l)
			}
		}
		groups[rec.Group] = true
		if rec.VDE != nil {
			// Guests plugged into the VDE switch: EBUSY, nothing deleted.
			if err := m.vdeBusy(ctx, rec); err != nil {
				return err
			}
			vdes = append(vdes, rec)
		}
	}
	for _, rec := range vdes {
		if err := m.stopVDE(ctx, rec); err != nil {
			return err
		}
	}
	if len(victims) > 0 {
		if err := m.deleteLinks(links, victims, groups); err != nil {
			return err
		}
	}
	for _, name := range names {
		delete(m.recs, name)
		m.unsave(name)
	}
	return nil
}

// deleteLinks removes victims in one request when an interface group holds
// exactly them, else one by one.
func (m *Manager) deleteLinks(links, victims []netlink.Link, groups map[uint32]bool) error {
	isVictim := map[int]bool{}
	for _, v := range victims {
		isVictim[v.Attrs().Index] = true
	}
	// only reports whether group g holds nothing but victims.
	only := func(g uint32) bool {
		for _, l := range links {
			if l.Attrs().Group == g && !isVictim[l.Attrs().Index] {
				return false
			}
		}
		return g != 0
	}
	group := uint32(0)
	if len(groups) == 1 {
		for g := range groups {
			if only(g) {
				group = g
			}
		}
	} else if only(m.base) {
		group = m.base
		for _, v := range victims {
			if v.Attrs().Group == group {
				continue
			}
			if err := m.h.LinkSetGroup(v, int(group)); err != nil {
				if errors.Is(err, syscall.ENODEV) {
					continue
				}
				return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: move %s to group %d: %v", v.Attrs().Name, group, err)
			}
		}
	}
	if group != 0 {
		m.dels.Add(1)
		// ENODEV: the group is already empty (stopping a VDE switch
		// deleted its TAP, the only port machinefs had on a bridge).
		if err := m.delGroup(group); err != nil && !errors.Is(err, syscall.ENODEV) {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: delete interface group %d: %v", group, err)
		}
		return nil
	}
	// A foreign device sits in the group: never delete it.
	for _, v := range victims {
		m.dels.Add(1)
		if err := m.h.LinkDel(v); err != nil && !errors.Is(err, syscall.ENODEV) {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: delete %s: %v", v.Attrs().Name, err)
		}
	}
	return nil
}

// delGroup sends RTM_DELLINK with ifindex 0 and IFLA_GROUP: the kernel
// deletes every device of the group in one unregister batch.
func (m *Manager) delGroup(group uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.Sockets = m.socks
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// setTap sends one RTM_NEWLINK (set) for the device named name: master,
// group, alias and IFF_UP together.
func (m *Manager) setTap(name string, master int, group uint32, alias string) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	req.Sockets = m.socks
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// tunOwner returns a TUN/TAP device's owner and group, NoID where unset
// (the kernel then leaves IFLA_TUN_OWNER/GROUP out). owner and group are
// netlink's parse, returned if the query fails.
func (m *Manager) tunOwner(index int, owner, group uint32) (uint32, uint32) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	req.Sockets = m.socks
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil || len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return owner, group
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return owner, group
	}
	o, g := NoID, NoID
	for _, a := range attrs {
		if a.Attr.Type != unix.IFLA_LINKINFO {
			continue
		}
		infos, _ := nl.ParseRouteAttr(a.Value)
		for _, info := range infos {
			if info.Attr.Type != unix.IFLA_INFO_DATA {
				continue
			}
			data, _ := nl.ParseRouteAttr(info.Value)
			for _, d := range data {
				switch {
				case d.Attr.Type == nl.IFLA_TUN_OWNER && len(d.Value) == 4:
					o = nl.NativeEndian().Uint32(d.Value)
				case d.Attr.Type == nl.IFLA_TUN_GROUP && len(d.Value) == 4:
					g = nl.NativeEndian().Uint32(d.Value)
				}
			}
		}
	}
	return o, g
}

// portBridge returns switch name's bridge and record for adding or
// removing machinefs's ports. A bridge machinefs did not create is
// external (ctys -b): with create, the first port gives it a record of its
// own (a fresh interface group for machinefs's ports, the bridge left as
// it is); without, one that has no record is EPERM.
func (m *Manager) portBridge(name string, create bool) (netlink.Link, *record, error) {
	br, err := m.link(name)
	if err != nil {
		return nil, nil, err
	}
	if br == nil || !isBridge(br) {
		return nil, nil, machine.Errorf(syscall.ENOENT, "vswitch: no bridge %s", name)
	}
	if m.managed(br) {
		return m.managedBridge(name)
	}
	if rec := m.recs[name]; rec != nil && rec.External {
		return br, rec, nil
	}
	if !create {
		return nil, nil, machine.Errorf(syscall.EPERM, "vswitch: %s was not created by machinefs (managed: no) and has no ports of machinefs", name)
	}
	group, err := m.allocGroup()
	if err != nil {
		return nil, nil, err
	}
	rec := &record{Name: name, Group: group, External: true}
	if err := m.save(rec); err != nil {
		return nil, nil, err
	}
	m.recs[name] = rec
	return br, rec, nil
}

// dropEmpty forgets an external switch's record when adding its first
// port failed (err), so a failed `add` leaves no trace.
func (m *Manager) dropEmpty(rec *record, err error) {
	if err == nil || !rec.External || rec.VDE != nil {
		return
	}
	links, lerr := m.links()
	if lerr != nil {
		return
	}
	for _, l := range links {
		if ownTap(l, rec) {
			return
		}
	}
	delete(m.recs, rec.Name)
	m.unsave(rec.Name)
}

// managedBridge returns switch name's bridge and record, or ENOENT/EPERM.
func (m *Manager) managedBridge(name string) (netlink.Link, *record, error) {
	br, err := m.link(name)
	if err != nil {
		return nil, nil, err
	}
	if br == nil || !isBridge(br) {
		return nil, nil, machine.Errorf(syscall.ENOENT, "vswitch: no bridge %s", name)
	}
	if !m.managed(br) {
		return nil, nil, machine.Errorf(syscall.EPERM, "vswitch: %s was not created by machinefs (managed: no)", name)
	}
	rec := m.recs[name]
	if rec == nil {
		rec = &record{Name: name, Group: br.Attrs().Group}
		m.recs[name] = rec
	}
	return br, rec, nil
}

// managed reports whether bridge l is one machinefs created: it carries the
// alias, or sits in the group its record names.
func (m *Manager) managed(l netlink.Link) bool {
	a := l.Attrs()
	if a.Alias == aliasManaged {
		return true
	}
	rec := m.recs[a.Name]
	return rec != nil && rec.Group != 0 && a.Group == rec.Group
}

// ownTap reports whether l is a TAP machinefs made for rec's switch.
func ownTap(l netlink.Link, rec *record) bool {
	a := l.Attrs()
	return l.Type() == "tuntap" && a.Group == rec.Group && a.Alias == aliasPrefix+rec.Name
}

// allocGroup picks the lowest group above the base used by no record and
// by no device when New looked. (A stranger who later moves a device into
// a switch's group only slows its Delete down: deleting by group happens
// only when the group holds nothing but the switch's own devices.)
func (m *Manager) allocGroup() (uint32, error) {
	used := map[uint32]bool{}
	for g := range m.seen {
		used[g] = true
	}
	for _, r := range m.recs {
		used[r.Group] = true
	}
	for g := m.base + 1; g < m.base+maxGroups; g++ {
		if !used[g] {
			return g, nil
		}
	}
	return 0, machine.Errorf(syscall.ENOSPC, "vswitch: no free interface group above %d", m.base)
}

// links dumps every device in the namespace.
func (m *Manager) links() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var ls []netlink.Link
		ls, err = m.h.LinkList()
		if err == nil {
			return ls, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: list links: %v", err)
}

// link returns the device named name, nil if there is none.
func (m *Manager) link(name string) (netlink.Link, error) {
	l, err := m.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return nil, nil
		}
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: look up %s: %v", name, err)
	}
	return l, nil
}

func byName(links []netlink.Link, name string) netlink.Link {
	i := slices.IndexFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == name })
	if i < 0 {
		return nil
	}
	return links[i]
}

func isBridge(l netlink.Link) bool { return l.Type() == "bridge" }

func kindOf(l netlink.Link) string {
	if t := l.Type(); t != "" {
		return t
	}
	return "unknown"
}

func upDown(f net.Flags) string {
	if f&net.FlagUp != 0 {
		return "up"
	}
	return "down"
}

// validName applies the kernel's rules for device names (dev_valid_name),
// the same check as a BRIDGE:MAC key's bridge: EINVAL, or ENAMETOOLONG.
func validName(name string) error {
	if err := machine.CheckInterfaceName(name); err != nil {
		return machine.Errorf(machine.ErrnoOf(err), "vswitch: invalid switch name: %v", err)
	}
	return nil
}

// errnoOf returns the errno wrapped in err, or def.
func errnoOf(err error, def syscall.Errno) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return def
}
