package ns

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck"
	"github.com/machinefs/machinefs/drivers/internal/ptyhold"
	"github.com/machinefs/machinefs/internal/atomicfile"
	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
)

// record is what a subhost holds, saved in STATE-DIR/NAME.json so that the
// next driver (after a daemon restart) can adopt or release it.
type record struct {
	Path    string   `json:"path"`
	Name    string   `json:"name"`
	Live    string   `json:"live"`              // the subhost's root as mounted
	Mounts  []string `json:"mounts,omitempty"`  // in mount order; unmounted in reverse
	Loops   []string `json:"loops,omitempty"`   // loop devices attached
	Nodes   []string `json:"nodes,omitempty"`   // device nodes and FIFOs created in the root
	Netns   string   `json:"netns,omitempty"`   // name under /run/netns
	Veths   []string `json:"veths,omitempty"`   // host side
	Cgroup  string   `json:"cgroup,omitempty"`  // absolute directory
	Init    string   `json:"init,omitempty"`    // path inside the root
	Pid     int      `json:"pid,omitempty"`     // 0: not running
	Start   uint64   `json:"start,omitempty"`   // start time in clock ticks (/proc/PID/stat field 22)
	Started string   `json:"started,omitempty"` // RFC 3339
	Ended   string   `json:"ended,omitempty"`   // how the last run ended

	// The running init's console holder (ptyhold): its socket, pid and
	// start time.
	Console     string `json:"console,omitempty"`
	Holder      int    `json:"holder,omitempty"`
	HolderStart uint64 `json:"holder_start,omitempty"`
}

func recordPath(stateDir, name string) string { return filepath.Join(stateDir, name+".json") }

func loadRecord(stateDir, name string) (*record, error) {
	data, err := os.ReadFile(recordPath(stateDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", recordPath(stateDir, name), err)
	}
	return &r, nil
}

// save writes the record atomically.
func (r *record) save(stateDir string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	// No fsync: the record names processes and devices of the running
	// kernel, which a reboot ends anyway.
	return atomicfile.Write(recordPath(stateDir, r.Name), append(data, '\n'), 0o600, atomicfile.ProcessCrash)
}

// procStart returns the start time of pid in clock ticks, 0 if it is gone
// or has ended (a zombie).
func procStart(pid int) uint64 {
	st, err := procfs.ReadStat(pid)
	if err != nil || !st.Live() {
		return 0
	}
	return st.Start
}

// cgroup2Root is where the cgroup v2 hierarchy is mounted ("" if nowhere).
func cgroup2Root() string { return hostcheck.Cgroup2Root() }

// prepare sets up everything the subhost needs before its init runs: the
// root, the disks, the FIFOs, the network namespace with its cables and
// the cgroup. What it did is in rec as it goes, so a failure halfway is
// undone by release(rec).
func prepare(s settings, rec *record) error {
	dir := filepath.Join(s.stateDir, s.name)
	rec.Live = filepath.Join(dir, "live")
	if err := os.MkdirAll(rec.Live, 0o755); err != nil {
		return err
	}
	rootDir := s.root
	extents := make([]extent, len(s.disks))
	if len(s.disks) > 0 {
		// Every image and partition is checked before anything is
		// attached.
		for i, d := range s.disks {
			st, err := os.Stat(d.Image)
			if err != nil {
				return machine.Errorf(syscall.ENOENT, "disk %s: image %s not found", d.Dev, d.Image)
			}
			if !st.Mode().IsRegular() {
				return machine.Errorf(syscall.EINVAL, "disk %s: image %s is not a regular file", d.Dev, d.Image)
			}
			if d.Part == 0 {
				extents[i] = extent{0, st.Size()}
			} else if extents[i], err = findPartition(d.Image, d.Part); err != nil {
				return fmt.Errorf("disk %s: %w", d.Dev, err)
			}
		}
		loop, err := attachLoop(s.disks[0].Image, extents[0])
		if err != nil {
			return fmt.Errorf("disk %s: %w", s.disks[0].Dev, err)
		}
		rec.Loops = append(rec.Loops, loop)
		target := rec.Live
		if s.base != "" {
			target = filepath.Join(dir, "disk")
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		}
		if err := mountImage(loop, target); err != nil {
			return fmt.Errorf("disk %s (%s): %w", s.disks[0].Dev, s.disks[0].Image, err)
		}
		rec.Mounts = append(rec.Mounts, target)
		rootDir = target
	} else {
		st, err := os.Stat(s.root)
		if err != nil {
			return machine.Errorf(syscall.ENOENT, "ns.root %s does not exist", s.root)
		}
		if !st.IsDir() {
			return machine.Errorf(syscall.EINVAL, "ns.root %s is not a directory", s.root)
		}
	}
	switch {
	case s.base != "":
		if st, err := os.Stat(s.base); err != nil || !st.IsDir() {
			return machine.Errorf(syscall.ENOENT, "ns.base %s is not a directory", s.base)
		}
		upper, work := rootDir, rootDir+".work"
		if len(s.disks) > 0 {
			upper, work = filepath.Join(rootDir, "root"), filepath.Join(rootDir, "work")
			if _, err := os.Stat(upper); err != nil {
				return machine.Errorf(syscall.EINVAL, "with ns.base, the root image needs /root and /work directories")
			}
		}
		if err := os.MkdirAll(work, 0o755); err != nil {
			return err
		}
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.base, upper, work)
		if err := unix.Mount("overlay", rec.Live, "overlay", 0, opts); err != nil {
			return fmt.Errorf("overlay %s over %s: %w", upper, s.base, err)
		}
		rec.Mounts = append(rec.Mounts, rec.Live)
	case len(s.disks) == 0:
		if err := unix.Mount(s.root, rec.Live, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", s.root, err)
		}
		rec.Mounts = append(rec.Mounts, rec.Live)
	}
	// The subhost's own mounts (proc...) must not come back out to the host.
	if err := unix.Mount("", rec.Live, "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", rec.Live, err)
	}
	rec.Init = ""
	for _, p := range []string{"init", "sbin/init"} {
		if _, err := os.Lstat(filepath.Join(rec.Live, p)); err == nil {
			rec.Init = "/" + p
			break
		}
	}
	if rec.Init == "" {
		return machine.Errorf(syscall.ENOENT, "the root has neither /init nor /sbin/init")
	}
	for i, d := range s.disks {
		if i == 0 {
			continue // the root, mounted above
		}
		loop, err := attachLoop(d.Image, extents[i])
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Dev, err)
		}
		rec.Loops = append(rec.Loops, loop)
		var st unix.Stat_t
		if err := unix.Stat(loop, &st); err != nil {
			return err
		}
		node := filepath.Join(rec.Live, "dev", d.Dev)
		if err := os.MkdirAll(filepath.Dir(node), 0o755); err != nil {
			return err
		}
		_ = os.Remove(node)
		if err := unix.Mknod(node, unix.S_IFBLK|0o660, int(st.Rdev)); err != nil {
			return fmt.Errorf("disk %s: mknod: %w", d.Dev, err)
		}
		rec.Nodes = append(rec.Nodes, node)
	}
	for _, f := range []string{initctlPath, notifyPath} {
		p := filepath.Join(rec.Live, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if st, err := os.Lstat(p); err == nil && st.Mode()&fs.ModeNamedPipe != 0 {
			continue
		}
		_ = os.Remove(p)
		if err := unix.Mkfifo(p, 0o622); err != nil {
			return fmt.Errorf("mkfifo %s: %w", f, err)
		}
		rec.Nodes = append(rec.Nodes, p)
	}
	if err := setupNet(s, rec); err != nil {
		return err
	}
	if root := cgroup2Root(); root != "" {
		cg := filepath.Join(root, s.cgroup, s.name)
		if err := os.MkdirAll(filepath.Dir(cg), 0o755); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
		if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cgroup: %w", err)
		}
		rec.Cgroup = cg
	}
	return nil
}

const (
	initctlPath = "run/initctl"
	notifyPath  = "run/machinefs/notify"
)

// setupNet creates the named network namespace and one veth pair per
// cable: eth<i> created directly inside it with the configured MAC,
// NAME<i> on the host, enslaved to the bridge.
func setupNet(s settings, rec *record) error {
	// Check every bridge and host side name before creating anything.
	for i, c := range s.cables {
		l, err := netlink.LinkByName(c.Bridge)
		if err != nil {
			return machine.Errorf(syscall.ENOENT, "bridge %s not found", c.Bridge)
		}
		if l.Type() != "bridge" {
			return machine.Errorf(syscall.EINVAL, "%s is a %s, not a bridge", c.Bridge, l.Type())
		}
		host := s.name + strconv.Itoa(i)
		if _, err := netlink.LinkByName(host); err == nil {
			return machine.Errorf(syscall.EEXIST, "interface %s exists already", host)
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", s.name)); err == nil {
		return machine.Errorf(syscall.EEXIST, "network namespace %s exists and is not recorded as this subhost's", s.name)
	}
	h, err := newNamedNetns(s.name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", s.name, err)
	}
	defer h.Close()
	rec.Netns = s.name
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer nh.Close()
	if lo, err := nh.LinkByName("lo"); err == nil {
		_ = nh.LinkSetUp(lo)
	}
	for i, c := range s.cables {
		br, err := netlink.LinkByName(c.Bridge)
		if err != nil {
			return machine.Errorf(syscall.ENOENT, "bridge %s not found", c.Bridge)
		}
		host, inside := s.name+strconv.Itoa(i), "eth"+strconv.Itoa(i)
		v := &netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: host, MasterIndex: br.Attrs().Index},
			PeerName:         inside,
			PeerHardwareAddr: c.MAC,
			PeerNamespace:    netlink.NsFd(int(h)),
		}
		if err := netlink.LinkAdd(v); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return machine.Errorf(syscall.EEXIST, "interface %s exists already", host)
			}
			return fmt.Errorf("veth %s: %w", host, err)
		}
		rec.Veths = append(rec.Veths, host)
		hl, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(hl); err != nil {
			return err
		}
		il, err := nh.LinkByName(inside)
		if err != nil {
			return err
		}
		if err := nh.LinkSetUp(il); err != nil {
			return err
		}
	}
	return nil
}

// newNamedNetns creates /run/netns/NAME from a locked thread that is
// switched back afterwards; a thread that cannot be switched back dies
// with its goroutine instead of returning to the scheduler.
func newNamedNetns(name string) (vnetns.NsHandle, error) {
	type res struct {
		h   vnetns.NsHandle
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{err: err}
			return
		}
		defer orig.Close()
		h, err := vnetns.NewNamed(name)
		if serr := vnetns.Set(orig); serr != nil {
			c <- res{h, errors.Join(err, serr)}
			return // still locked: the thread goes
		}
		runtime.UnlockOSThread()
		c <- res{h, err}
	}()
	r := <-c
	return r.h, r.err
}

// release undoes what prepare did, in reverse, going on past whatever is
// already gone. The processes must have ended.
func release(rec *record) error {
	var errs []error
	for _, n := range rec.Nodes {
		if err := os.Remove(n); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for i := len(rec.Mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(rec.Mounts[i], unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			errs = append(errs, fmt.Errorf("unmount %s: %w", rec.Mounts[i], err))
		}
	}
	for _, l := range rec.Loops {
		if err := detachLoop(l); err != nil {
			errs = append(errs, err)
		}
	}
	for _, v := range rec.Veths {
		if l, err := netlink.LinkByName(v); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	if rec.Netns != "" {
		if err := vnetns.DeleteNamed(rec.Netns); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", rec.Netns, err))
		}
	}
	if rec.Cgroup != "" {
		if err := removeCgroup(rec.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	if rec.Live != "" {
		dir := filepath.Dir(rec.Live)
		_ = os.Remove(rec.Live)
		_ = os.Remove(filepath.Join(dir, "disk"))
		_ = os.Remove(filepath.Join(dir, "console.log")) // written by earlier versions
		_ = os.Remove(filepath.Join(dir, "console.sock"))
		_ = os.Remove(dir)
	}
	return errors.Join(errs...)
}

// removeCgroup removes a cgroup once its last process is gone (which takes
// a moment after the kill).
func removeCgroup(cg string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := unix.Rmdir(cg)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", cg, err)
		}
		_ = os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0)
		time.Sleep(5 * time.Millisecond)
	}
}

// attachLoop attaches the part of image that ext covers (a partition, or
// the whole image) to a free loop device, read-write.
func attachLoop(image string, ext extent) (string, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("loop-control: %w", err)
	}
	defer ctl.Close()
	img, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", image, err)
	}
	defer img.Close()
	for try := 0; try < 10; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("no free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		if _, err := os.Stat(dev); err != nil {
			_ = unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n))))
		}
		lf, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", err
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd())}
		cfg.Info.Offset, cfg.Info.Sizelimit = uint64(ext.Offset), uint64(ext.Size)
		copy(cfg.Info.File_name[:], image)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		lf.Close()
		if err == unix.EBUSY {
			continue // taken by someone else meanwhile
		}
		if err != nil {
			return "", fmt.Errorf("attach %s to %s: %w", image, dev, err)
		}
		return dev, nil
	}
	return "", machine.Errorf(syscall.EBUSY, "no loop device stayed free")
}

func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	// EBUSY right after an unmount: the file system lets go a moment later.
	for i := 0; ; i++ {
		err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		if err == nil || err == unix.ENXIO {
			return nil
		}
		if err != unix.EBUSY || i > 100 {
			return fmt.Errorf("detach %s: %w", dev, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mountImage mounts a loop device, trying the file systems the kernel knows.
func mountImage(dev, target string) error {
	var last error
	for _, t := range []string{"ext4", "ext3", "ext2", "xfs", "btrfs", "vfat"} {
		err := unix.Mount(dev, target, t, 0, "")
		if err == nil {
			return nil
		}
		last = err
	}
	return machine.Errorf(syscall.EINVAL, "no known file system (%v)", last)
}

// ReleaseAll kills every subhost recorded in stateDir and releases what it
// holds: for tests and for an administrator cleaning up after machinefs
// for good (a daemon that stops leaves its subhosts running on purpose).
func ReleaseAll(stateDir string) error {
	recs, _ := filepath.Glob(filepath.Join(stateDir, "*.json"))
	var errs []error
	for _, p := range recs {
		rec, err := loadRecord(stateDir, strings.TrimSuffix(filepath.Base(p), ".json"))
		if err != nil || rec == nil {
			errs = append(errs, err)
			continue
		}
		if rec.Pid > 0 && procStart(rec.Pid) == rec.Start {
			if fd, err := unix.PidfdOpen(rec.Pid, 0); err == nil {
				_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				_, _ = unix.Poll(fds, 5000)
				unix.Close(fd)
			}
		}
		if err := ptyhold.Kill(rec.Holder, rec.HolderStart); err != nil {
			errs = append(errs, err)
		}
		if err := release(rec); err != nil {
			errs = append(errs, err)
		}
		_ = os.Remove(p)
	}
	return errors.Join(errs...)
}
