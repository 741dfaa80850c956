// Package ns runs subhosts as sandboxed machines on the local host: the
// subhost's own init as PID 1 in fresh mount, pid, uts and ipc namespaces,
// chrooted into its root tree, in a named network namespace (visible to
// `ip netns`) cabled to Linux bridges with veth pairs, in a cgroup v2 group
// of its own for accounting and freezing.
//
// Power off goes through the init: machinefs writes to /run/initctl (a FIFO
// inside the subhost) and kills the subhost if it has not ended within
// ns.poweroff-timeout. What it writes is ns.initctl's: "line" (a line, which
// the subhost scripts' init takes as power off; init 1-5 are ENOTSUP) or
// "sysvinit" (sysvinit's binary run level request, as telinit sends it:
// poweroff is level 0, reboot level 6, init N level N).
//
// An init may end the subhost itself: reboot(2) inside a PID namespace ends
// the namespace's init, which its parent sees killed by SIGHUP (restart) or
// SIGINT (power off, halt); no other signal can kill it that way but
// SIGKILL. An init that ends by SIGHUP without a command of machinefs's is
// the guest rebooting itself: the subhost is started again (rebooting,
// then on). SIGINT is the guest powering itself off: off, not an error.
//
// A line written to /run/machinefs/notify by any
// process inside becomes a "notify" event. Exits are seen through a pidfd at
// once.
//
// Closing the driver (daemon exit, reconfiguration) leaves running subhosts
// running: what was set up is recorded in ns.state-dir, and the next driver
// for the same subhost adopts it (same pid and start time).
package ns

import (
	"cmp"
	"fmt"
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
	Keys: keys,
	New:  New,
}

// keys are the driver's config keys (Spec.Keys), with their defaults.
var keys = []machine.KeySpec{
	{Name: "ns.root", Doc: "the subhost's root tree (a directory, bind-mounted); with ns.base the overlay's upper layer. Set this or ns.disks", Kind: machine.PathKind, Privileged: true},
	{Name: "ns.base", Doc: "optional read-only lower layer: the root becomes an overlay of ns.root (upper, work dir ROOT.work beside it) over it", Kind: machine.PathKind, Privileged: true},
	{Name: "ns.disks", Doc: "disks as DEV:PART:IMAGE, space separated (\"vda:1:/disks/root.raw vdb:1:/disks/data.raw\"); the first is the root file system, loop-mounted; PART N is partition N of an MBR (primary, 1-4) or GPT disk image, attached as a loop device at its offset; 1 is the whole image when it has no partition table (an image made by mkfs); 0 is always the whole image. Not together with ns.root", Kind: machine.CustomKind("DEV:PART:IMAGE ...", parseDisks), Privileged: true},
	{Name: "ns.bridges", Doc: "network cables as BRIDGE:MAC, space separated (\"sw0:06:a7:dd:b4:02:f2\"): eth0, eth1... inside, NAME0, NAME1... on the host bridge (a virtual switch)", Kind: machine.BridgeMACListKind, Privileged: true},
	{Name: "ns.hostname", Doc: "the subhost's host name (default: its name)", Kind: machine.CheckedKind("host name", checkHostname)},
	{Name: "ns.state-dir", Default: "/run/machinefs/ns", Doc: "where running subhosts are recorded and mounted (NAME.json, NAME/live), for adoption after a restart", Kind: machine.PathKind, Privileged: true},
	{Name: "ns.cgroup", Default: "machinefs", Doc: "cgroup v2 group (under the cgroup2 mount) that holds one group per subhost", Kind: machine.CheckedKind("cgroup path", checkCgroup), Privileged: true},
	{Name: "ns.initctl", Default: initctlLine, Doc: "what the subhost's init reads on /run/initctl: line (any line powers it off, as the subhost scripts' init does; init 1-5 are ENOTSUP) or sysvinit (sysvinit's init_request, as telinit writes it: poweroff is run level 0, reboot 6, init N level N)", Kind: machine.EnumKind(initctlLine, initctlSysV)},
	{Name: "ns.poweroff-timeout", Default: "10s", Doc: "how long poweroff, reboot and stop wait for the init to end after /run/initctl before SIGKILL", Kind: machine.DurationKind(time.Millisecond, time.Hour)},
}

var (
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$`)
	devRE      = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)
)

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
			return nil, machine.Errorf(syscall.EINVAL, "disk %q: want DEV:PART:IMAGE", f)
		}
		if !devRE.MatchString(parts[0]) {
			return nil, machine.Errorf(syscall.EINVAL, "disk %q: device name %q: want lower case letters and digits", f, parts[0])
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil || n < 0 || n > 128 {
			return nil, machine.Errorf(syscall.EINVAL, "disk %q: partition %q: want 0 (the whole image) or a partition number 1-128", f, parts[1])
		}
		if !strings.HasPrefix(parts[2], "/") {
			return nil, machine.Errorf(syscall.EINVAL, "disk %q: image %q is not an absolute path", f, parts[2])
		}
		ds = append(ds, disk{Dev: parts[0], Part: n, Image: parts[2]})
	}
	return ds, nil
}

// cable is one element of ns.bridges.
type cable = machine.BridgeMAC

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
	initctl       string // initctlLine or initctlSysV
}

// The ns.initctl protocols.
const (
	initctlLine = "line"
	initctlSysV = "sysvinit"
)

func parseSettings(env machine.DriverEnv) (settings, error) {
	v := machine.ReadConfig(env.Config, keys)
	name := env.Path[strings.LastIndex(env.Path, "/")+1:]
	s := settings{
		name:          name,
		path:          env.Path,
		root:          v.String("ns.root"),
		base:          v.String("ns.base"),
		disks:         machine.Value[[]disk](v, "ns.disks"),
		cables:        v.BridgeMACs("ns.bridges"),
		hostname:      cmp.Or(v.String("ns.hostname"), name),
		stateDir:      v.String("ns.state-dir"),
		cgroup:        v.String("ns.cgroup"),
		poweroffAfter: v.Duration("ns.poweroff-timeout"),
		initctl:       v.String("ns.initctl"),
	}
	if err := v.Err(); err != nil {
		return s, err
	}
	if !nameRE.MatchString(name) {
		return s, machine.Errorf(syscall.EINVAL, "subhost name %q: want letters, digits, '_' and '-' (it names the netns, the veths and the cgroup)", name)
	}
	if last := name + strconv.Itoa(max(len(s.cables)-1, 0)); len(last) > 15 {
		return s, machine.Errorf(syscall.EINVAL, "subhost name %q is too long: host side interface %q exceeds 15 bytes", name, last)
	}
	if hostnameRE.MatchString(name) && !hostnameRE.MatchString(s.hostname) {
		return s, machine.Errorf(syscall.EINVAL, "ns.hostname %q", s.hostname)
	}
	if s.root == "" && len(s.disks) == 0 {
		return s, machine.Errorf(syscall.EINVAL, "set ns.root or ns.disks")
	}
	if s.root != "" && len(s.disks) > 0 {
		return s, machine.Errorf(syscall.EINVAL, "ns.root and ns.disks both set: the first disk is the root")
	}
	return s, nil
}
