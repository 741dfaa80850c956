// Package hostcheck holds the checks drivers share for their tool and
// permission reports (machine.Requirement): a program, a file, a device
// and its mode, a capability of the daemon, the cgroup v2 hierarchy, an
// interface. Each is cheap (a stat, an open, a look at /proc) and never
// blocks on the network.
package hostcheck

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// Binary checks a program: an absolute path must be an executable file,
// a bare name must be found in PATH. What is "binary NAME".
func Binary(name string) machine.Requirement {
	what := "binary " + name
	if !strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			return machine.Lack(what, "not in PATH")
		}
		return machine.Have(what, p)
	}
	fi, err := os.Stat(name)
	switch {
	case err != nil:
		return machine.Lack(what, reasonOf(err))
	case fi.IsDir():
		return machine.Lack(what, "a directory, not a program")
	case fi.Mode().Perm()&0o111 == 0:
		return machine.Lack(what, fmt.Sprintf("not executable (%s)", fi.Mode()))
	}
	return machine.Have(what, fmt.Sprintf("%s %s", fi.Mode(), owner(fi)))
}

// File checks that path exists and can be read (opened) by the daemon.
// what names it ("kernel /boot/vmlinuz").
func File(what, path string) machine.Requirement {
	f, err := os.Open(path)
	if err != nil {
		return machine.Lack(what, reasonOf(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return machine.Lack(what, reasonOf(err))
	}
	return machine.Have(what, fmt.Sprintf("%s %s", fi.Mode(), owner(fi)))
}

// Dir checks that path is a directory.
func Dir(what, path string) machine.Requirement {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return machine.Lack(what, reasonOf(err))
	case !fi.IsDir():
		return machine.Lack(what, "not a directory")
	}
	return machine.Have(what, "a directory")
}

// Device checks a character device the daemon opens for reading and
// writing (/dev/kvm, /dev/net/tun): it is opened and closed at once,
// which for these devices creates nothing. What is "device PATH rw".
func Device(path string) machine.Requirement {
	what := "device " + path + " rw"
	fi, err := os.Stat(path)
	if err != nil {
		return machine.Lack(what, reasonOf(err))
	}
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return machine.Lack(what, fmt.Sprintf("not a character device (%s)", fi.Mode()))
	}
	mode := fmt.Sprintf("%s %s", fi.Mode(), owner(fi))
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return machine.Lack(what, fmt.Sprintf("%s: %s", mode, reasonOf(err)))
	}
	f.Close()
	return machine.Have(what, mode)
}

// capNames are the capabilities drivers ask for, by bit.
var capNames = map[int]string{
	unix.CAP_KILL:      "CAP_KILL",
	unix.CAP_NET_ADMIN: "CAP_NET_ADMIN",
	unix.CAP_NET_RAW:   "CAP_NET_RAW",
	unix.CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
	unix.CAP_SYS_BOOT:  "CAP_SYS_BOOT",
}

// Capability checks that the daemon holds capability bit (unix.CAP_*) in
// its effective set (CapEff of /proc/self/status); why says what it is
// for. What is "capability CAP_NAME".
func Capability(bit int, why string) machine.Requirement {
	name, ok := capNames[bit]
	if !ok {
		name = "capability " + strconv.Itoa(bit)
	}
	what := "capability " + name
	eff, err := effective()
	if err != nil {
		return machine.Lack(what, "cannot read /proc/self/status: "+reasonOf(err))
	}
	if eff&(1<<uint(bit)) == 0 {
		return machine.Lack(what, "not in the daemon's effective set: "+why)
	}
	return machine.Have(what, why)
}

// effective reads the effective capability set.
func effective() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line")
}

// Cgroup2Root is where the cgroup v2 hierarchy is mounted, "" if nowhere.
func Cgroup2Root() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		_, after, ok := strings.Cut(l, " - ")
		if ok && strings.HasPrefix(after, "cgroup2 ") {
			if fields := strings.Fields(l); len(fields) > 4 {
				return fields[4]
			}
		}
	}
	return ""
}

// Cgroup2 checks the cgroup v2 hierarchy and, for each controller named,
// that it is available there (cgroup.controllers). what is "cgroup v2"
// and "cgroup v2 controller NAME"; optional marks them all.
func Cgroup2(optional bool, why string, controllers ...string) []machine.Requirement {
	root := Cgroup2Root()
	if root == "" {
		r := machine.Lack("cgroup v2", "not mounted (no cgroup2 in /proc/self/mountinfo): "+why)
		r.Optional = optional
		return []machine.Requirement{r}
	}
	b, _ := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	have := strings.Fields(string(b))
	reason := "mounted on " + root
	if len(have) > 0 {
		reason += ", controllers " + strings.Join(have, " ")
	}
	out := []machine.Requirement{{What: "cgroup v2", Present: true, Reason: reason, Optional: optional}}
	for _, c := range controllers {
		r := machine.Need("cgroup v2 controller "+c, slices.Contains(have, c), "in "+filepath.Join(root, "cgroup.controllers"))
		if !r.Present {
			r.Reason = "not in " + filepath.Join(root, "cgroup.controllers")
		}
		r.Optional = optional
		out = append(out, r)
	}
	return out
}

// Interface checks that a network interface exists in the daemon's
// network namespace. what names it ("bridge sw0", "interface eth1").
func Interface(what, name string) machine.Requirement {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return machine.Lack(what, "no such interface in the daemon's network namespace")
	}
	state := "down"
	if ifc.Flags&net.FlagUp != 0 {
		state = "up"
	}
	return machine.Have(what, fmt.Sprintf("index %d, %s", ifc.Index, state))
}

// owner names a file's owner and group as ls does.
func owner(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	u, g := strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}

// reasonOf says why a file operation failed, without the op and path
// that What already names: "no such file or directory".
func reasonOf(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
