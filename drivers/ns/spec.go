// Package ns runs subhosts as sandboxed machines on the local host: the
// subhost's own init as PID 1 in fresh mount, pid, uts and ipc namespaces,
// chrooted into its root tree, in a named network namespace (visible to
// `ip netns`) cabled to Linux bridges with veth pairs, in a cgroup v2 group
// of its own for accounting and freezing.
//
// Power off goes through the init: machinefs writes a line to /run/initctl
// (a FIFO inside the subhost) and kills the subhost if it has not ended
// within ns.poweroff-timeout. A line written to /run/machinefs/notify by any
// process inside becomes a "notify" event. Exits are seen through a pidfd at
// once.
//
// Closing the driver (daemon exit, reconfiguration) leaves running subhosts
// running: what was set up is recorded in ns.state-dir, and the next driver
// for the same subhost adopts it (same pid and start time).
package ns

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Spec registers the ns driver.
var Spec = machine.DriverSpec{
	Name: "ns",
	Doc:  "namespace subhost: the subhost's init in its own mount, pid, uts, ipc and net namespaces and cgroup",
	Keys: []machine.KeySpec{
		{Name: "ns.root", Doc: "the subhost's root tree (a directory, bind-mounted); with ns.base the overlay's upper layer", Check: checkAbs, Privileged: true},
		{Name: "ns.base", Doc: "optional read-only lower layer: the root becomes an overlay of ns.root (upper, work dir ROOT.work beside it) over it", Check: checkAbs, Privileged: true},
		{Name: "ns.disks", Doc: "disks as DEV:PART:IMAGE, space separated (\"vda:1:/disks/root.raw vdb:1:/disks/data.raw\"); the first is the root file system, loop-mounted; PART N = partition N of an MBR or GPT disk image (1 = the whole image when it has no partition table), 0 = the whole image", Check: checkDisks, Privileged: true},
		{Name: "ns.bridges", Doc: "network cables as BRIDGE:MAC, space separated (\"sw0:06:a7:dd:b4:02:f2\"): eth0, eth1... inside, NAME0, NAME1... on the host bridge", Check: checkBridges, Privileged: true},
		{Name: "ns.hostname", Doc: "the subhost's host name (default: its name)", Check: checkHostname},
		{Name: "ns.state-dir", Default: "/run/machinefs/ns", Doc: "where running subhosts are recorded and mounted (NAME.json, NAME/live)", Check: checkAbs, Privileged: true},
		{Name: "ns.cgroup", Default: "machinefs", Doc: "cgroup v2 group (under the cgroup2 mount) that holds one group per subhost", Check: checkCgroup, Privileged: true},
		{Name: "ns.poweroff-timeout", Default: "10s", Doc: "how long poweroff, reboot and stop wait for the init to end after /run/initctl before SIGKILL", Check: checkDuration},
	},
	New: New,
}

var (
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$`)
	devRE      = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)
)

func checkAbs(v string) error {
	if !strings.HasPrefix(v, "/") {
		return fmt.Errorf("%q: want an absolute path", v)
	}
	return nil
}

func checkHostname(v string) error {
	if !hostnameRE.MatchString(v) {
		return fmt.Errorf("%q: want 1-64 letters, digits, '.' or '-'", v)
	}
	return nil
}

func checkCgroup(v string) error {
	for _, p := range strings.Split(v, "/") {
		if !nameRE.MatchString(p) {
			return fmt.Errorf("%q: want cgroup names of letters, digits, '_' and '-' separated by '/'", v)
		}
	}
	return nil
}

func checkDuration(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > time.Hour {
		return fmt.Errorf("%q: want a duration between 1ms and 1h", v)
	}
	return nil
}

// disk is one element of ns.disks.
type disk struct {
	Dev   string // device name inside the subhost (vda)
	Part  int
	Image string
}

func parseDisks(v string) ([]disk, error) {
	var ds []disk
	for _, f := range strings.Fields(v) {
		parts := strings.SplitN(f, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("%w: disk %q: want DEV:PART:IMAGE", syscall.EINVAL, f)
		}
		if !devRE.MatchString(parts[0]) {
			return nil, fmt.Errorf("%w: disk %q: device name %q: want lower case letters and digits", syscall.EINVAL, f, parts[0])
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil || n < 0 || n > 128 {
			return nil, fmt.Errorf("%w: disk %q: partition %q: want 0 (the whole image) or a partition number 1-128", syscall.EINVAL, f, parts[1])
		}
		if !strings.HasPrefix(parts[2], "/") {
			return nil, fmt.Errorf("%w: disk %q: image %q is not an absolute path", syscall.EINVAL, f, parts[2])
		}
		ds = append(ds, disk{Dev: parts[0], Part: n, Image: parts[2]})
	}
	return ds, nil
}

func checkDisks(v string) error { _, err := parseDisks(v); return err }

// cable is one element of ns.bridges.
type cable struct {
	Bridge string
	MAC    net.HardwareAddr
}

func parseBridges(v string) ([]cable, error) {
	var cs []cable
	for _, f := range strings.Fields(v) {
		br, macText, ok := strings.Cut(f, ":")
		if !ok || br == "" || len(br) > 15 {
			return nil, fmt.Errorf("%w: bridge %q: want BRIDGE:MAC (bridge name 1-15 bytes)", syscall.EINVAL, f)
		}
		mac, err := net.ParseMAC(macText)
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("%w: bridge %q: MAC %q is malformed (want 6 hex pairs like 06:a7:dd:b4:02:f2)", syscall.EINVAL, f, macText)
		}
		if mac[0]&1 != 0 {
			return nil, fmt.Errorf("%w: bridge %q: MAC %s is a multicast address", syscall.EINVAL, f, mac)
		}
		cs = append(cs, cable{Bridge: br, MAC: mac})
	}
	return cs, nil
}

func checkBridges(v string) error { _, err := parseBridges(v); return err }

// settings is the parsed config of one subhost.
type settings struct {
	name, path    string
	root, base    string
	disks         []disk
	cables        []cable
	hostname      string
	stateDir      string
	cgroup        string
	poweroffAfter time.Duration
}

func parseSettings(env machine.DriverEnv) (settings, error) {
	get := func(k, def string) string {
		if v, ok := env.Config.Get(k); ok && v != "" {
			return v
		}
		return def
	}
	name := env.Path[strings.LastIndex(env.Path, "/")+1:]
	s := settings{
		name:          name,
		path:          env.Path,
		root:          get("ns.root", ""),
		base:          get("ns.base", ""),
		hostname:      get("ns.hostname", name),
		stateDir:      get("ns.state-dir", "/run/machinefs/ns"),
		cgroup:        get("ns.cgroup", "machinefs"),
		poweroffAfter: env.Config.Duration("ns.poweroff-timeout", 10*time.Second),
	}
	if !nameRE.MatchString(name) {
		return s, fmt.Errorf("%w: subhost name %q: want letters, digits, '_' and '-' (it names the netns, the veths and the cgroup)", syscall.EINVAL, name)
	}
	var err error
	if s.disks, err = parseDisks(get("ns.disks", "")); err != nil {
		return s, err
	}
	if s.cables, err = parseBridges(get("ns.bridges", "")); err != nil {
		return s, err
	}
	if last := name + strconv.Itoa(max(len(s.cables)-1, 0)); len(last) > 15 {
		return s, fmt.Errorf("%w: subhost name %q is too long: host side interface %q exceeds 15 bytes", syscall.EINVAL, name, last)
	}
	if hostnameRE.MatchString(name) && !hostnameRE.MatchString(s.hostname) {
		return s, fmt.Errorf("%w: ns.hostname %q", syscall.EINVAL, s.hostname)
	}
	if s.root == "" && len(s.disks) == 0 {
		return s, fmt.Errorf("%w: set ns.root or ns.disks", syscall.EINVAL)
	}
	if s.root != "" && len(s.disks) > 0 {
		return s, fmt.Errorf("%w: ns.root and ns.disks both set: the first disk is the root", syscall.EINVAL)
	}
	return s, nil
}
