package vswitch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
)

// DefaultVDESwitch is Debian's vde_switch (package vde2).
const DefaultVDESwitch = "/usr/bin/vde_switch"

// vdeRecord is what machinefs remembers of the VDE switch it runs on a
// switch: enough to find the process again after a restart (pid, start
// time and command line must all match /proc) and to remove everything.
type vdeRecord struct {
	Tap   string   `json:"tap"`
	Uid   uint32   `json:"uid"`
	Gid   uint32   `json:"gid"`
	Mode  uint32   `json:"mode"`
	Pid   int      `json:"pid"`
	Start uint64   `json:"start"`
	Argv  []string `json:"argv"`
}

func (m *Manager) vdeSock(name string) string { return filepath.Join(m.vdeDir, name) }
func (m *Manager) vdeMgmt(name string) string { return filepath.Join(m.vdeDir, name+".mgmt") }
func (m *Manager) vdePid(name string) string  { return filepath.Join(m.vdeDir, name+".pid") }

// vdeSpec is a resolved `add vde` request.
type vdeSpec struct {
	uid, gid uint32
	// The TAP's owner and group: NoID where neither was given (root runs
	// the switch).
	tapOwner, tapGroup uint32
	mode               uint32
}

// resolveVDE turns owner, group and mode as written into ids and a mode.
// No owner: root runs the switch. No group: the owner's primary group.
// Mode: the data socket's permissions, 0600 by default, 0660 with a group.
func resolveVDE(owner, group, mode string) (vdeSpec, error) {
	uid, err := lookupID(owner, false)
	if err != nil {
		return vdeSpec{}, err
	}
	s := vdeSpec{uid: uid, tapOwner: uid, tapGroup: NoID, mode: 0o600}
	if uid == NoID {
		s.uid = 0
	}
	if s.gid, err = lookupID(group, true); err != nil {
		return vdeSpec{}, err
	}
	if s.gid == NoID {
		u, err := userByID(s.uid)
		if err != nil {
			return vdeSpec{}, machine.Errorf(syscall.EINVAL, "vswitch: uid %d has no passwd entry: give group=", s.uid)
		}
		s.gid = u
	} else {
		s.mode, s.tapGroup = 0o660, s.gid
	}
	if s.tapOwner != NoID {
		s.tapGroup = s.gid
	}
	if mode != "" {
		n, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || n&^0o666 != 0 || n&0o600 != 0o600 {
			return vdeSpec{}, machine.Errorf(syscall.EINVAL, "vswitch: mode %q: give octal permissions of the data socket, at least 600, no x bits (660: owner and group)", mode)
		}
		s.mode = uint32(n)
	}
	return s, nil
}

// dirMode is the data socket directory's mode for socket mode: clients
// create their own sockets in it, so whoever may connect must be able to
// write it; with a group, set-group-ID keeps every socket in the group
// (ctys's -g); shared with others, sticky.
func dirMode(mode uint32) uint32 {
	d := uint32(0o700)
	if mode&0o060 != 0 {
		d |= 0o2070
	}
	if mode&0o006 != 0 {
		d |= 0o1007
	}
	return d
}

// AddVDE runs a vde_switch on switch name, attached to a new TAP on the
// bridge (NAMEv, in the switch's interface group): its data socket
// directory is VDEDir/NAME (what QEMU's -netdev vde,sock= takes) and its
// management socket VDEDir/NAME.mgmt. The process runs as owner (root when
// unset) with group as its group, so its sockets are theirs and its
// management console (which can load plugins and scripts) gives no one
// more than the owner's rights. A switch has at most one VDE switch: a
// live one is EEXIST; the remains of a dead one are cleared first.
func (m *Manager) AddVDE(ctx context.Context, name, owner, group, mode string) (tap string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	spec, err := resolveVDE(owner, group, mode)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, rec, err := m.portBridge(name, true)
	if err != nil {
		return "", err
	}
	defer func() { m.dropEmpty(rec, err) }()
	if v := rec.VDE; v != nil {
		if m.vdeAlive(v) {
			return "", machine.Errorf(syscall.EEXIST, "vswitch: %s already has a VDE switch (pid %d, %s); remove vde first", name, v.Pid, m.vdeSock(name))
		}
		if err := m.stopVDE(ctx, rec); err != nil {
			return "", err
		}
	}
	groups := userGroups(spec.uid, spec.gid)
	if err := tunAccess(m.tunPath, spec.uid, groups); err != nil {
		return "", machine.Errorf(syscall.EACCES, "vswitch: %s: vde_switch runs as its owner and attaches to its TAP: %v", name, err)
	}
	if err := m.vdeFiles(name, spec.uid); err != nil {
		return "", err
	}
	tap = name + "v"
	if l, err := m.link(tap); err != nil {
		return "", err
	} else if l != nil {
		if !ownTap(l, rec) {
			return "", machine.Errorf(syscall.EEXIST, "vswitch: %s exists and is not a TAP machinefs made for %s", tap, name)
		}
		_ = m.h.LinkDel(l) // a TAP a dead VDE switch left
	}
	if err := m.makeTap(tap, spec.tapOwner, spec.tapGroup, br.Attrs().Index, rec.Group, aliasPrefix+name); err != nil {
		return "", machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: add TAP %s to %s: %v", tap, name, err)
	}
	v, err := m.startVDE(ctx, name, tap, spec, groups)
	if err != nil {
		if l, _ := m.link(tap); l != nil && ownTap(l, rec) {
			_ = m.h.LinkDel(l)
		}
		m.removeVDEFiles(name)
		return "", err
	}
	rec.VDE = v
	return tap, m.save(rec)
}

// userByID returns uid's primary group.
func userByID(uid uint32) (uint32, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return 0, err
	}
	g, err := strconv.ParseUint(u.Gid, 10, 32)
	return uint32(g), err
}

// vdeFiles prepares VDEDir for switch name: the directory is world-writable
// and sticky (as ctys's /var/tmp), because vde_switch runs as the owner
// and creates its sockets there itself, and its parent must be searchable.
// Leftovers of an earlier switch of that name are removed if they belong
// to root or uid; anyone else's are EEXIST.
func (m *Manager) vdeFiles(name string, uid uint32) error {
	if err := os.MkdirAll(m.vdeDir, 0o755); err != nil {
		return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: %s: %v", m.vdeDir, err)
	}
	if err := os.Chmod(m.vdeDir, os.ModeSticky|0o777); err != nil {
		return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: %s: %v", m.vdeDir, err)
	}
	parent := filepath.Dir(m.vdeDir)
	if fi, err := os.Stat(parent); err == nil && fi.Mode().Perm()&0o001 == 0 {
		_ = os.Chmod(parent, fi.Mode()|0o011)
	}
	for _, p := range []string{m.vdeSock(name), m.vdeMgmt(name), m.vdePid(name)} {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			continue
		}
		if st.Uid != 0 && st.Uid != uid {
			return machine.Errorf(syscall.EEXIST, "vswitch: %s exists and belongs to uid %d", p, st.Uid)
		}
		if err := os.RemoveAll(p); err != nil {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: remove stale %s: %v", p, err)
		}
	}
	return nil
}

// removeVDEFiles removes switch name's sockets and pidfile. RemoveAll
// never follows a symlink, so whatever the owner put there goes and
// nothing else does.
func (m *Manager) removeVDEFiles(name string) {
	for _, p := range []string{m.vdeSock(name), m.vdeMgmt(name), m.vdePid(name)} {
		_ = os.RemoveAll(p)
	}
}

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	bytes.Buffer
	max int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// startVDE starts vde_switch as spec's owner, in the Manager's namespace
// (the TAP is found by name in the namespace of the process that opens
// /dev/net/tun). The switch daemonizes (-d): the process started here
// exits once the sockets are bound, and its stderr, bounded, is the reason
// when it fails. The daemon's pid comes from its pidfile and is accepted
// only if /proc shows that very command line run by the owner. Go's exec
// passes no descriptor but stdin, stdout and stderr (everything else is
// close-on-exec), and the environment is a fixed minimal one.
func (m *Manager) startVDE(ctx context.Context, name, tap string, spec vdeSpec, groups []uint32) (*vdeRecord, error) {
	argv := []string{m.vdeBin, "-d", "-f", "/dev/null",
		"-s", m.vdeSock(name), "-m", fmt.Sprintf("%o", spec.mode), "--dirmode", fmt.Sprintf("%o", dirMode(spec.mode)),
		"-M", m.vdeMgmt(name), "--mgmtmode", "600", "-p", m.vdePid(name), "-t", tap}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/"}
	cmd.Dir = "/"
	out := &boundedBuffer{max: 2048}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if spec.uid != 0 || spec.gid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: spec.uid, Gid: spec.gid, Groups: groups}
	}
	if err := m.inNS(cmd.Run); err != nil {
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: %s: vde_switch: %v: %s", name, err, printable(out.String()))
	}
	v := &vdeRecord{Tap: tap, Uid: spec.uid, Gid: spec.gid, Mode: spec.mode, Argv: argv}
	for {
		if pid, err := readPid(m.vdePid(name)); err == nil {
			v.Pid = pid
			if st, err := procfs.ReadStat(pid); err == nil {
				v.Start = st.Start
			}
			if m.vdeAlive(v) {
				return v, nil
			}
		}
		select {
		case <-ctx.Done():
			if v.Pid != 0 && m.vdeAlive(v) {
				return v, nil
			}
			return nil, machine.Errorf(syscall.EIO, "vswitch: %s: vde_switch started but no process of uid %d with its command line is named by %s (pid %d): %s",
				name, spec.uid, m.vdePid(name), v.Pid, printable(out.String()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// readPid reads a pidfile the switch's owner wrote: opened without
// following a symlink or blocking on a FIFO, and read at most 32 bytes.
func readPid(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, errors.New("not a regular file")
	}
	buf := make([]byte, 32)
	n, _ := unix.Read(fd, buf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:max(n, 0)])))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile %s: no pid", path)
	}
	return pid, nil
}

// vdeAlive reports whether v's process runs: same pid, start time, owner
// and command line as when it was started.
func (m *Manager) vdeAlive(v *vdeRecord) bool {
	if v.Pid <= 1 {
		return false
	}
	st, err := procfs.ReadStat(v.Pid)
	if err != nil || !st.Live() || st.Start != v.Start {
		return false
	}
	var pst unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d", v.Pid), &pst) != nil || pst.Uid != v.Uid {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.Pid))
	if err != nil {
		return false
	}
	return slices.Equal(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), v.Argv)
}

// vdePorts reads the switch's ports from its management socket. A
// client's endpoint that outlived its client is left out (see
// vdeClientGone). It is not closed (port/epclose): the switch would also
// close the descriptor number the endpoint names, which by now may be
// another connection's.
func (m *Manager) vdePorts(ctx context.Context, name string, v *vdeRecord) ([]vdePort, error) {
	lines, err := mgmtQuery(ctx, m.vdeMgmt(name), v.Uid, "port/allprint")
	if err != nil {
		return nil, err
	}
	ports := parsePorts(lines)
	for i := range ports {
		p := &ports[i]
		kept := p.Endpoints[:0]
		for _, e := range p.Endpoints {
			if e.Module != "tuntap" && vdeClientGone(v.Pid, e.ID, filepath.Join(m.vdeSock(name), "ctl")) {
				continue
			}
			kept = append(kept, e)
		}
		p.Endpoints = kept
	}
	return ports, nil
}

// vdeClientGone reports whether a client's endpoint in the VDE switch pid
// outlived its client. The endpoint's ID is the switch's descriptor of
// the client's control connection, accepted on the data socket ctl: gone
// when the switch no longer holds that descriptor, or holds something
// else under its number. vde_switch 2.3.2 (Debian's vde2) drops the
// descriptor of a client that closed but, now and then under load, keeps
// the endpoint and so the client's port: a guest long gone would keep its
// switch busy forever (TestVDESwitchLifecycle saw it: the plug's
// descriptor closed, its endpoint still listed). When it cannot tell (no
// /proc, a socket it does not find), the client counts as there: closing
// a live guest's endpoint would cut it off its network.
func vdeClientGone(pid, id int, ctl string) bool {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, id))
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	if err != nil {
		return false
	}
	ino, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		return true
	}
	ino = strings.TrimSuffix(ino, "]")
	// The switch's own namespace's sockets: Num RefCount Protocol Flags
	// Type St Inode Path. An accepted connection shows its listener's path.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n")[1:] {
		if f := strings.Fields(l); len(f) >= 7 && f[6] == ino {
			return len(f) < 8 || (f[7] != ctl && f[7] != realCtl(ctl))
		}
	}
	return false
}

// realCtl is ctl with symbolic links resolved, as vde_switch names its
// socket (it takes the real path of its directory).
func realCtl(ctl string) string {
	if dir, err := filepath.EvalSymlinks(filepath.Dir(ctl)); err == nil {
		return filepath.Join(dir, filepath.Base(ctl))
	}
	return ctl
}

// vdeBusy is EBUSY, naming the client, when anything but the switch's TAP
// is plugged into rec's VDE switch (a running guest). A switch whose
// process is gone has no clients.
func (m *Manager) vdeBusy(ctx context.Context, rec *record) error {
	v := rec.VDE
	if v == nil || !m.vdeAlive(v) {
		return nil
	}
	ports, err := m.vdePorts(ctx, rec.Name, v)
	if err != nil {
		// No management socket to ask: a client has a socket of its own
		// in the data directory, beside ctl.
		if n := m.vdeClientSockets(rec.Name); n > 0 {
			return machine.Errorf(syscall.EBUSY, "vswitch: %s may be in use: %d client sockets in %s, and its ports cannot be read (%v)", rec.Name, n, m.vdeSock(rec.Name), err)
		}
		return nil
	}
	for _, p := range ports {
		for _, e := range p.Endpoints {
			if e.Module != "tuntap" {
				return machine.Errorf(syscall.EBUSY, "vswitch: %s is in use: VDE port %d has a client (user %s, %s); stop its guests first",
					rec.Name, p.N, printable(p.User), strconv.QuoteToASCII(e.Descr))
			}
		}
	}
	return nil
}

// vdeClientSockets counts the sockets clients made in switch name's data
// directory.
func (m *Manager) vdeClientSockets(name string) int {
	ents, _ := os.ReadDir(m.vdeSock(name))
	n := 0
	for _, e := range ents {
		if e.Name() != "ctl" && e.Type()&os.ModeSocket != 0 {
			n++
		}
	}
	return n
}

// removeVDE stops rec's VDE switch unless guests use it (EBUSY).
func (m *Manager) removeVDE(ctx context.Context, rec *record) error {
	if err := m.vdeBusy(ctx, rec); err != nil {
		return err
	}
	if err := m.stopVDE(ctx, rec); err != nil {
		return err
	}
	return m.save(rec)
}

// stopVDE ends rec's vde_switch (SIGTERM, SIGKILL after 3 s) through a
// pidfd taken after the identity check, so a recycled pid is never
// signalled; then removes its sockets, pidfile and TAP.
func (m *Manager) stopVDE(ctx context.Context, rec *record) error {
	v := rec.VDE
	if v == nil {
		return nil
	}
	if m.vdeAlive(v) {
		pfd, err := unix.PidfdOpen(v.Pid, 0)
		if err == nil {
			defer unix.Close(pfd)
			if m.vdeAlive(v) {
				if err := killWait(ctx, pfd); err != nil {
					return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: %s: stop vde_switch pid %d: %v", rec.Name, v.Pid, err)
				}
			}
		}
	}
	m.removeVDEFiles(rec.Name)
	if l, _ := m.link(v.Tap); l != nil && ownTap(l, rec) {
		if err := m.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: delete %s: %v", v.Tap, err)
		}
	}
	rec.VDE = nil
	return nil
}

// killWait sends SIGTERM through pidfd and waits for the exit, then SIGKILL.
func killWait(ctx context.Context, pfd int) error {
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGKILL} {
		if err := unix.PidfdSendSignal(pfd, sig, nil, 0); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return nil
			}
			return err
		}
		fds := []unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			n, err := unix.Poll(fds, 100)
			if err == nil && n > 0 {
				return nil
			}
		}
	}
	return errors.New("it did not exit after SIGKILL")
}

// vdeCheck is check for rec's VDE switch (ctys's check: a TAP and the
// sockets): ENOENT when its TAP or a socket is gone, EIO when the process
// is not running, the TAP is detached, or the switch has no port on it.
func (m *Manager) vdeCheck(ctx context.Context, links []netlink.Link, br netlink.Link, rec *record) error {
	v := rec.VDE
	if v == nil {
		return nil
	}
	tap := byName(links, v.Tap)
	switch {
	case tap == nil:
		return machine.Errorf(syscall.ENOENT, "vswitch: %s: the VDE switch's TAP %s is gone", rec.Name, v.Tap)
	case tap.Attrs().MasterIndex != br.Attrs().Index:
		return machine.Errorf(syscall.EIO, "vswitch: %s: the VDE switch's TAP %s is detached from the bridge", rec.Name, v.Tap)
	case !m.vdeAlive(v):
		return machine.Errorf(syscall.EIO, "vswitch: %s: vde_switch (pid %d) is not running", rec.Name, v.Pid)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(m.vdeSock(rec.Name), "ctl"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return machine.Errorf(syscall.ENOENT, "vswitch: %s: the VDE data socket %s/ctl is gone", rec.Name, m.vdeSock(rec.Name))
	}
	if err := unix.Lstat(m.vdeMgmt(rec.Name), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return machine.Errorf(syscall.ENOENT, "vswitch: %s: the VDE management socket %s is gone", rec.Name, m.vdeMgmt(rec.Name))
	}
	ports, err := m.vdePorts(ctx, rec.Name, v)
	if err != nil {
		return err
	}
	for _, p := range ports {
		for _, e := range p.Endpoints {
			if e.Module == "tuntap" && e.Descr == v.Tap {
				return nil
			}
		}
	}
	return machine.Errorf(syscall.EIO, "vswitch: %s: vde_switch has no port on its TAP %s", rec.Name, v.Tap)
}

// printable makes process output one safe line: control characters and
// invalid UTF-8 escaped, at most 512 bytes.
func printable(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 512 {
		s = s[:512] + "..."
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// vdeLines are the ports file's lines for switch name's VDE switch: the
// switch itself, then one line per connection on its ports, read from
// its management socket:
//
//	vde vde_switch - up up pid=N owner=UID group=GID mode=0660 sock=DIR
//	vde:1 vde-port - up up tap=sw0v
//	vde:2 vde-port - up up user=alice client="qemu-system-x86_64: ..."
//
// A switch that does not answer shows "down down" and the reason. A
// client's description is its own text, so it is quoted and escaped.
func (m *Manager) vdeLines(ctx context.Context, name string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.recs[name]
	if rec == nil || rec.VDE == nil {
		return nil
	}
	v := rec.VDE
	head := fmt.Sprintf("vde vde_switch - %%s pid=%d owner=%d group=%d mode=%04o sock=%s", v.Pid, v.Uid, v.Gid, v.Mode, m.vdeSock(name))
	var ports []vdePort
	err := machine.Errorf(syscall.EIO, "vde_switch (pid %d) is not running", v.Pid)
	if m.vdeAlive(v) {
		ports, err = m.vdePorts(ctx, name, v)
	}
	if err != nil {
		return []string{fmt.Sprintf(head, "down down") + " error=" + strconv.QuoteToASCII(err.Error())}
	}
	lines := []string{fmt.Sprintf(head, "up up")}
	for _, p := range ports {
		state := "down down"
		if p.Active {
			state = "up up"
		}
		for _, e := range p.Endpoints {
			if e.Module == "tuntap" {
				lines = append(lines, fmt.Sprintf("vde:%d vde-port - %s tap=%s", p.N, state, printable(e.Descr)))
				continue
			}
			lines = append(lines, fmt.Sprintf("vde:%d vde-port - %s user=%s client=%s", p.N, state, printable(p.User), strconv.QuoteToASCII(e.Descr)))
		}
	}
	return lines
}
