package uml

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Spec registers the uml driver.
var Spec = machine.DriverSpec{
	Name: "uml",
	Doc:  "User Mode Linux guest: a linux process with its management console (mconsole) as the console file",
	Keys: keys,
	New:  New,
}

// keys are the driver's config keys (Spec.Keys), with their defaults.
var keys = []machine.KeySpec{
	{Name: "uml.kernel", Default: "/usr/bin/linux", Doc: "UML kernel binary to run (absolute path)", Kind: cmdlinePathKind, Privileged: true},
	{Name: "uml.mem", Default: "128M", Doc: "guest memory: a number with K, M or G (16M to 64G)", Kind: machine.CheckedKind("size 16M-64G", checkMem)},
	{Name: "uml.root", Doc: "root file system (required): hostfs:/DIR (a host directory), or ubd0=/IMAGE or ubd0=/COW,/BACKING (a disk image, copy-on-write allowed)", Kind: machine.CustomKind("hostfs:/DIR, ubd0=/IMAGE or ubd0=/COW,/BACKING", parseRoot), Privileged: true},
	{Name: "uml.init", Doc: "init program in the guest (absolute path in the guest; default: the kernel's choice, /sbin/init first)", Kind: cmdlinePathKind},
	{Name: "uml.net", Doc: "network: SWITCH:MAC, a TAP named after the host attached to the Linux bridge SWITCH (a virtual switch, which must exist), guest MAC MAC on eth0", Kind: machine.BridgeMACKind, Privileged: true},
	{Name: "uml.dir", Default: "/run/machinefs/uml", Doc: "uml_dir: where the guest's umid directory, mconsole and notify sockets, console log and pid record live (absolute path, at most 64 bytes: the sockets inside must fit a socket address)", Kind: machine.CheckedKind("absolute path, at most 64 bytes", checkDir), Privileged: true},
	{Name: "uml.backup-dir", Default: "/var/lib/machinefs/backup", Doc: "the console's backup DEST must be a new file or directory in this directory or below it (a relative DEST is taken in it; the daemon writes it as root)", Kind: machine.PathKind, Privileged: true},
	{Name: "uml.poweroff-timeout", Default: "30s", Doc: "poweroff sends ctrl-alt-del, then halts the guest if it is still up after this", Kind: machine.DurationKind(100*time.Millisecond, time.Hour)},
	{Name: "uml.mconsole-timeout", Default: "5s", Doc: "bound on one mconsole request; a guest that does not answer within it is killed by off", Kind: machine.DurationKind(10*time.Millisecond, 10*time.Minute)},
}

// cmdlinePathKind is an absolute path that can go on the kernel command
// line.
var cmdlinePathKind = machine.CheckedKind("absolute path", checkAbsPath)

// maxSocketPath is the longest path a unix socket address takes.
const maxSocketPath = 107

var safePathRE = regexp.MustCompile(`^/[A-Za-z0-9._+/@:-]*$`)

func checkAbsPath(v string) error {
	switch {
	case !filepath.IsAbs(v):
		return fmt.Errorf("%q: want an absolute path", v)
	case !safePathRE.MatchString(v):
		return fmt.Errorf("%q: use letters, digits and . _ + - @ : / only (the path goes on the kernel command line)", v)
	case strings.Contains(v, ","):
		return fmt.Errorf("%q: no commas (the path goes on the kernel command line)", v)
	}
	return nil
}

func checkDir(v string) error {
	if err := checkAbsPath(v); err != nil {
		return err
	}
	// DIR/UMID/mconsole must fit a unix socket address.
	if len(v) > 64 {
		return fmt.Errorf("%q is %d bytes: keep it at most 64, the mconsole socket inside must fit 107", v, len(v))
	}
	return nil
}

var memRE = regexp.MustCompile(`^([0-9]+)([KkMmGg])$`)

func memBytes(v string) (uint64, error) {
	m := memRE.FindStringSubmatch(v)
	if m == nil {
		return 0, fmt.Errorf("%q: want a number and a unit K, M or G (e.g. 128M)", v)
	}
	n, err := strconv.ParseUint(m[1], 10, 40)
	if err != nil {
		return 0, fmt.Errorf("%q: number too large", v)
	}
	switch strings.ToUpper(m[2]) {
	case "K":
		n <<= 10
	case "M":
		n <<= 20
	case "G":
		n <<= 30
	}
	return n, nil
}

func checkMem(v string) error {
	n, err := memBytes(v)
	if err != nil {
		return err
	}
	if n < 16<<20 || n > 64<<30 {
		return fmt.Errorf("%q: want between 16M and 64G", v)
	}
	return nil
}

// rootSpec is a parsed uml.root.
type rootSpec struct {
	hostfs  string // directory, for hostfs
	image   string // ubd0 image (the COW file when there is a backing file)
	backing string // ubd0 backing file, for copy-on-write
}

func parseRoot(v string) (rootSpec, error) {
	if dir, ok := strings.CutPrefix(v, "hostfs:"); ok {
		if err := checkAbsPath(dir); err != nil {
			return rootSpec{}, fmt.Errorf("hostfs directory %w", err)
		}
		return rootSpec{hostfs: filepath.Clean(dir)}, nil
	}
	if img, ok := strings.CutPrefix(v, "ubd0="); ok {
		img, backing, cow := strings.Cut(img, ",")
		if err := checkAbsPath(img); err != nil {
			return rootSpec{}, fmt.Errorf("ubd0 image %w", err)
		}
		if cow {
			if err := checkAbsPath(backing); err != nil {
				return rootSpec{}, fmt.Errorf("ubd0 backing file %w", err)
			}
		}
		return rootSpec{image: img, backing: backing}, nil
	}
	return rootSpec{}, fmt.Errorf("%q: want hostfs:/DIR, ubd0=/IMAGE or ubd0=/COW,/BACKING", v)
}

// kernelArgs is the root part of the kernel command line.
func (r rootSpec) kernelArgs() []string {
	if r.hostfs != "" {
		return []string{"root=/dev/root", "rootfstype=hostfs", "hostfs=" + r.hostfs, "rw"}
	}
	ubd := "ubd0=" + r.image
	if r.backing != "" {
		ubd += "," + r.backing
	}
	return []string{ubd, "root=/dev/ubda", "rw"}
}

// netSpec is a parsed uml.net.
type netSpec struct {
	bridge string
	mac    net.HardwareAddr
}

// settings reads the config of one guest through the key specs.
func (m *Machine) settings(env machine.DriverEnv) error {
	v := machine.ReadConfig(env.Config, keys)
	m.dir = filepath.Clean(v.String("uml.dir"))
	m.backupDir = filepath.Clean(v.String("uml.backup-dir"))
	m.kernel = v.String("uml.kernel")
	m.mem = v.String("uml.mem")
	m.init = v.String("uml.init")
	m.poweroffTimeout = v.Duration("uml.poweroff-timeout")
	m.reqTimeout = v.Duration("uml.mconsole-timeout")
	m.root = machine.Value[rootSpec](v, "uml.root")
	if v.IsSet("uml.net") {
		c := v.BridgeMAC("uml.net")
		m.net = &netSpec{bridge: c.Bridge, mac: c.MAC}
	}
	if err := v.Err(); err != nil {
		return err
	}
	if !v.IsSet("uml.root") {
		return machine.Errorf(syscall.EINVAL, "uml.root is required (hostfs:/DIR or ubd0=/IMAGE)")
	}
	if m.net != nil {
		if err := machine.CheckInterfaceName(m.umid); err != nil {
			return machine.Errorf(syscall.EINVAL, "uml.net: the TAP is named after the host: %v", err)
		}
	}
	return nil
}
