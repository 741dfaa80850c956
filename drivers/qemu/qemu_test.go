package qemu_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/drivers/qemu"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/guestimage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Reporter that keeps what the driver said.
type recorder struct {
	mu       sync.Mutex
	statuses []machine.Status
	events   [][2]string
}

func (r *recorder) Report(st machine.Status) {
	r.mu.Lock()
	r.statuses = append(r.statuses, st)
	r.mu.Unlock()
}

func (r *recorder) Event(kind machine.EventKind, detail string) {
	r.mu.Lock()
	r.events = append(r.events, [2]string{string(kind), detail})
	r.mu.Unlock()
}

// last is the last report that carried a power state.
func (r *recorder) last() machine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.statuses) - 1; i >= 0; i-- {
		if r.statuses[i].Power != "" {
			return r.statuses[i]
		}
	}
	return machine.Status{}
}

// mark is where reports after now begin, for waitPower.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.statuses)
}

// waitPower waits for a report of power p after mark whose reason holds
// reason, and returns it.
func (r *recorder) waitPower(t *testing.T, from int, p machine.Power, reason string) machine.Status {
	t.Helper()
	var found *machine.Status
	waitFor(t, "power "+string(p)+" ("+reason+")", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, st := range r.statuses[from:] {
			if st.Power == p && strings.Contains(st.Reason, reason) {
				found = &st
				return true
			}
		}
		return false
	})
	return *found
}

func (r *recorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, st := range r.statuses {
		b.WriteString(string(st.Power) + ": " + st.Reason + "\n")
	}
	return b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type config map[string]string

func (c config) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// console is the guest's serial line as the model would read it: drained
// all the time, kept for the test to look at.
type console struct {
	rw   io.ReadWriteCloser
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func openConsole(t *testing.T, d *qemu.Machine) *console {
	t.Helper()
	rw, err := d.Serial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := &console{rw: rw, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		buf := make([]byte, 4096)
		for {
			n, err := rw.Read(buf)
			c.mu.Lock()
			c.out.Write(buf[:n])
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return c
}

func (c *console) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Len()
}

// wait waits for text in the output after offset from.
func (c *console) wait(t *testing.T, from int, text string) {
	t.Helper()
	waitFor(t, "serial output "+strconv.Quote(text), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return bytes.Contains(c.out.Bytes()[min(from, c.out.Len()):], []byte(text))
	})
}

// run types a shell line on the serial console and waits for its marker.
func (c *console) run(t *testing.T, line, marker string) {
	t.Helper()
	from := c.len()
	if _, err := c.rw.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("serial write %q: %v", line, err)
	}
	c.wait(t, from, marker)
}

type guest struct {
	t       *testing.T
	cfg     config
	r       *recorder
	d       *qemu.Machine
	con     *console
	dir     string
	backups string
}

func newDriver(t *testing.T, cfg config, r *recorder) *qemu.Machine {
	t.Helper()
	d, err := qemu.New(context.Background(), machine.DriverEnv{Path: "hosts/lab01/subhosts/q1", Config: cfg, Report: r})
	if err != nil {
		t.Fatal(err)
	}
	return d.(*qemu.Machine)
}

func (g *guest) power(verb string) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.d.Power(ctx, machine.Command{Verb: verb}); err != nil {
		g.t.Fatalf("%s: %v\n%s", verb, err, g.r.dump())
	}
}

func (g *guest) console(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return g.d.Console(ctx, name, args)
}

// boot powers the guest on and waits for its init's ready line.
func (g *guest) boot() {
	g.t.Helper()
	from, m := g.con.len(), g.r.mark()
	g.power("on")
	g.r.waitPower(g.t, m, machine.PowerOn, "guest started")
	g.con.wait(g.t, from, guestimage.ReadyLine)
}

func qemuPids(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if bytes.Contains(b, []byte(dir)) && bytes.Contains(b, []byte("qemu-system")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestQEMUGuest boots one guest (TCG here: seconds per boot) and takes it
// through what a host shows: power through QMP and through the guest's own
// doing, the console, a backup, adoption by a new driver and removal. The
// guest is the shared test guest (tests/harness/guestimage). Each boot to
// the ready line costs seconds under TCG, so the subtests are ordered to
// need as few as the guest's lives take: one per end of a life the guest
// must see coming (its own reboot, a panic, its own poweroff, the ACPI
// power button); a reset and a removal need no guest at its prompt.
func TestQEMUGuest(t *testing.T) {
	img := guestimage.Skip(t)
	tmp := t.TempDir()
	data := filepath.Join(tmp, "data.raw")
	if err := os.WriteFile(data, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// A second disk: a qcow2 overlay whose backing file holds a marker.
	overlay, base := qcow2Overlay(t, tmp)
	// What the daemon holds that no guest may get, inheritable, as a
	// direct FUSE mount leaves it: opened before QEMU starts.
	held := holdInheritable(t, tmp)
	g := &guest{t: t, r: &recorder{}, dir: filepath.Join(tmp, "run"), backups: filepath.Join(tmp, "backup")}
	os.Mkdir(g.backups, 0o700)
	g.cfg = config{
		"qemu.kernel": img.Kernel, "qemu.initrd": img.Initrd, "qemu.append": img.Append,
		"qemu.disk": data + " " + overlay, "qemu.mem": "128M", "qemu.dir": g.dir, "qemu.backup-dir": g.backups,
		"qemu.poweroff-timeout": "20s",
	}
	g.d = newDriver(t, g.cfg, g.r)
	g.con = openConsole(t, g.d)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.d.Remove(ctx)
		g.d.Close()
		<-g.con.done
		if t.Failed() {
			g.con.mu.Lock()
			t.Logf("reports:\n%s\nconsole:\n%s", g.r.dump(), g.con.out.String())
			g.con.mu.Unlock()
		}
	}()
	if st := g.r.last(); st.Power != machine.PowerOff {
		t.Fatalf("new driver, nothing running: %+v", st)
	}

	start := time.Now()
	g.boot()
	t.Logf("boot to ready: %s", time.Since(start))
	if desc := describe(g.d); !strings.Contains(desc["qemu-accel"], "tcg (no /dev/kvm)") && !strings.HasPrefix(desc["qemu-accel"], "kvm") {
		t.Errorf("describe: %v", desc)
	}

	t.Run("Descriptors", func(t *testing.T) {
		pid, err := strconv.Atoi(describe(g.d)["qemu-pid"])
		if err != nil {
			t.Fatal(err)
		}
		// QEMU keeps its pid file open (locked) and may open /dev/kvm;
		// an overlay's backing file is opened as its header says.
		pidFile := filepath.Join(g.dir, "q1", "qemu.pid")
		checkDescriptors(t, pid, held, map[string]bool{data: true, overlay: true, base: true, pidFile: true, "/dev/kvm": true})
	})

	t.Run("InfoStatus", func(t *testing.T) {
		out, err := g.console("info", "status")
		if err != nil || !strings.Contains(out, "VM status: running") {
			t.Fatalf("info status: %q %v", out, err)
		}
		if _, err := g.console("hmp", "info status"); machine.ErrnoOf(err) != syscall.EACCES {
			t.Fatalf("hmp without qemu.monitor: %v, want EACCES", err)
		}
	})

	t.Run("PauseResume", func(t *testing.T) {
		m := g.r.mark()
		g.power("pause")
		g.r.waitPower(t, m, machine.PowerPaused, "guest paused (stop)")
		if out, _ := g.console("info", "status"); !strings.Contains(out, "paused") {
			t.Fatalf("info status while paused: %q", out)
		}
		m = g.r.mark()
		g.power("resume")
		g.r.waitPower(t, m, machine.PowerOn, "guest resumed")
		g.con.run(t, "echo alive-$((40+2))", "alive-42")
	})

	t.Run("Backup", func(t *testing.T) {
		marker := "machinefs-backup-marker-" + strconv.Itoa(os.Getpid())
		g.con.run(t, "echo "+marker+" | dd of=/dev/vda bs=512 seek=100 conv=fsync 2>/dev/null; echo wrote-$((1+1))", "wrote-2")
		dest := filepath.Join(g.backups, "data.copy")
		msg, err := g.console("backup", dest)
		if err != nil {
			t.Fatalf("backup: %v", err)
		}
		b, err := os.ReadFile(dest)
		if err != nil || len(b) != 1<<20 || !bytes.Contains(b[100*512:101*512], []byte(marker)) {
			t.Fatalf("backup %q: %d bytes, marker there: %v, err %v", msg, len(b), err == nil && bytes.Contains(b, []byte(marker)), err)
		}
		if _, err := g.console("backup", dest); machine.ErrnoOf(err) != syscall.EEXIST {
			t.Errorf("backup to an existing file: %v, want EEXIST", err)
		}
		if _, err := g.console("backup", filepath.Join(tmp, "elsewhere")); machine.ErrnoOf(err) != syscall.EACCES {
			t.Errorf("backup outside qemu.backup-dir: %v, want EACCES", err)
		}
	})

	// The guest reads its backing file through the overlay, and its
	// writes go to the overlay, never to the backing file.
	t.Run("QCOW2Backing", func(t *testing.T) {
		g.con.run(t, "echo base-$(dd if=/dev/vdb bs=512 skip=7 count=1 2>/dev/null | grep -c machinefs-base-marker)", "base-1")
		g.con.run(t, "echo machinefs-overlay-write | dd of=/dev/vdb bs=512 seek=7 conv=fsync 2>/dev/null; echo done-$((2+1))", "done-3")
		g.con.run(t, "echo overlay-$(dd if=/dev/vdb bs=512 skip=7 count=1 2>/dev/null | grep -c machinefs-overlay-write)", "overlay-1")
		b, err := os.ReadFile(base)
		if err != nil || !bytes.Contains(b, []byte("machinefs-base-marker")) || bytes.Contains(b, []byte("machinefs-overlay-write")) {
			t.Fatalf("backing file after a guest write through the overlay: marker kept %v, write leaked %v, err %v",
				bytes.Contains(b, []byte("machinefs-base-marker")), bytes.Contains(b, []byte("machinefs-overlay-write")), err)
		}
	})

	t.Run("Devices", func(t *testing.T) {
		if _, err := g.console("device_add", "virtio-rng-pci,id=rng0"); err != nil {
			t.Fatalf("device_add: %v", err)
		}
		if out, _ := g.console("info", "qtree"); !strings.Contains(out, `id "rng0"`) {
			t.Fatalf("info qtree after device_add lacks rng0")
		}
		if _, err := g.console("device_del", "rng0"); err != nil {
			t.Fatalf("device_del: %v", err)
		}
		if _, err := g.console("device_add", "loader,file=/etc/shadow"); machine.ErrnoOf(err) != syscall.EACCES {
			t.Fatalf("device_add loader: %v, want EACCES", err)
		}
		// QEMU takes the last of a repeated key: a safe name first does
		// not make the loader safe, nor does a path without a slash.
		for _, line := range []string{"virtio-rng-pci,id=r1,driver=loader,file=vmlinuz", "virtio-net-pci,id=n1,romfile=efi-virtio.rom"} {
			if _, err := g.console("device_add", line); machine.ErrnoOf(err) != syscall.EACCES {
				t.Fatalf("device_add %s: %v, want EACCES", line, err)
			}
		}
	})

	t.Run("Adoption", func(t *testing.T) {
		pid := describe(g.d)["qemu-pid"]
		g.d.Close()
		<-g.con.done
		g.r = &recorder{}
		g.d = newDriver(t, g.cfg, g.r)
		g.con = openConsole(t, g.d)
		st := g.r.last()
		if st.Power != machine.PowerOn || !strings.Contains(st.Reason, "adopted guest pid "+pid) {
			t.Fatalf("after a new driver: %+v, want on, adopted pid %s", st, pid)
		}
		if got := describe(g.d)["qemu-pid"]; got != pid+" (adopted)" {
			t.Fatalf("qemu-pid %q, want %s (adopted)", got, pid)
		}
		g.con.run(t, "echo adopted-$((2+3))", "adopted-5")
		if st, err := g.d.Status(context.Background()); err != nil || st.Power != machine.PowerOn {
			t.Fatalf("status: %+v %v", st, err)
		}
	})

	// The guest reboots itself, then the driver resets it while it boots
	// again: QEMU reports each reset at once (RESET, guest true or false),
	// and one boot to the prompt shows the guest runs on after both.
	t.Run("Reboot", func(t *testing.T) {
		m := g.r.mark()
		g.con.rw.Write([]byte("reboot -f\n"))
		g.r.waitPower(t, m, machine.PowerOn, "guest rebooted itself")
		from, m := g.con.len(), g.r.mark()
		g.power("reboot")
		g.r.waitPower(t, m, machine.PowerOn, "guest reset (reboot: system_reset)")
		g.con.wait(t, from, guestimage.ReadyLine)
		g.con.run(t, "echo rebooted-$((3+4))", "rebooted-7")
	})

	t.Run("Panic", func(t *testing.T) {
		m := g.r.mark()
		g.con.rw.Write([]byte("echo c > /proc/sysrq-trigger\n"))
		st := g.r.waitPower(t, m, machine.PowerCrashed, "guest panicked")
		if machine.ErrnoOf(st.Err) != syscall.EIO {
			t.Errorf("panic report: %+v", st)
		}
		if s, _ := g.d.Status(context.Background()); s.Power != machine.PowerCrashed {
			t.Errorf("status after panic: %+v", s)
		}
		from, m := g.con.len(), g.r.mark()
		g.power("on")
		g.r.waitPower(t, m, machine.PowerOn, "guest reset (on after a panic) and running")
		g.con.wait(t, from, guestimage.ReadyLine)
	})

	// The guest the panic's "on" brought back powers itself off.
	t.Run("GuestPowersOff", func(t *testing.T) {
		m := g.r.mark()
		g.con.rw.Write([]byte("poweroff -f\n"))
		st := g.r.waitPower(t, m, machine.PowerOff, "guest powered off")
		if st.Err != nil {
			t.Errorf("guest's own poweroff: %+v", st)
		}
	})

	// The guest's init powers off on the ACPI power button: QEMU exits
	// (status 0) long before qemu.poweroff-timeout would quit it.
	t.Run("PowerOffACPI", func(t *testing.T) {
		g.boot()
		m := g.r.mark()
		from := g.con.len()
		g.power("poweroff")
		st := g.r.waitPower(t, m, machine.PowerOff, "guest stopped (poweroff): QEMU exited with status 0")
		if st.Err != nil {
			t.Errorf("poweroff: %+v", st)
		}
		g.con.wait(t, from, "machinefs-guest: power button")
	})

	// Removal kills QEMU and leaves nothing: it needs a QEMU process, not
	// a guest at its prompt.
	t.Run("Remove", func(t *testing.T) {
		m := g.r.mark()
		g.power("on")
		g.r.waitPower(t, m, machine.PowerOn, "guest started")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.d.Remove(ctx); err != nil {
			t.Fatalf("remove: %v", err)
		}
		if pids := qemuPids(g.dir); len(pids) != 0 {
			t.Fatalf("QEMU left running: %v", pids)
		}
		if ents, _ := os.ReadDir(g.dir); len(ents) != 0 {
			t.Fatalf("left in qemu.dir: %v", ents)
		}
	})
}

func describe(d *qemu.Machine) map[string]string {
	out := map[string]string{}
	for _, kv := range d.Describe() {
		out[kv[0]] = kv[1]
	}
	return out
}

// fileID names an open file: its device and inode.
type fileID struct{ dev, ino uint64 }

// fdID is the open file behind path, a /proc/PID/fd entry, when sharing
// it means inheritance: not for devices (every open of /dev/null is one
// inode; they are checked by name) nor anonymous inodes (one inode for
// every eventfd, epoll and pidfd).
func fdID(path string) (fileID, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, false
	}
	target, _ := os.Readlink(path)
	if st.Mode&syscall.S_IFMT == syscall.S_IFCHR || st.Mode&syscall.S_IFMT == syscall.S_IFBLK || strings.HasPrefix(target, "anon_inode:") {
		return fileID{}, false
	}
	return fileID{st.Dev, st.Ino}, true
}

// holdInheritable opens what the daemon holds and no guest may get, the
// way a careless opener would, without close-on-exec: the FUSE channel
// (go-fuse's direct mount opens /dev/fuse so) and a listening unix socket
// standing for the daemon's own sockets. It returns their descriptors.
func holdInheritable(t *testing.T, dir string) []int {
	t.Helper()
	var fds []int
	if fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR, 0); err == nil {
		fds = append(fds, fd)
	} else {
		t.Logf("no /dev/fuse (%v): checking the socket only", err)
	}
	s, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	fds = append(fds, s)
	if err := syscall.Bind(s, &syscall.SockaddrUnix{Name: filepath.Join(dir, "daemon.sock")}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(s, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	})
	return fds
}

// checkDescriptors asserts that QEMU process pid holds /dev/null as stdin,
// its log as stdout and stderr, and beyond those only what QEMU opened
// itself: its sockets, pipes, eventfds and the like, and the files and
// devices in files (its disks, /dev/kvm). No socket, pipe or file may be
// one this process (the daemon) has open, above all none of held; a
// device not in files (/dev/fuse, a second /dev/null) is refused by name.
func checkDescriptors(t *testing.T, pid int, held []int, files map[string]bool) {
	t.Helper()
	ours := map[fileID]string{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p := "/proc/self/fd/" + e.Name()
		if id, ok := fdID(p); ok {
			ours[id], _ = os.Readlink(p)
		}
	}
	for _, fd := range held {
		if _, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err != nil {
			t.Fatalf("held descriptor %d: %v", fd, err)
		}
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err = os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var logPath string
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		args := strings.Split(string(b), "\x00")
		if i := slices.Index(args, "-pidfile"); i >= 0 && i+1 < len(args) {
			logPath = filepath.Join(filepath.Dir(args[i+1]), "qemu.log")
		}
	}
	var all []string
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		p := filepath.Join(dir, e.Name())
		target, err := os.Readlink(p)
		if err != nil {
			continue // closed meanwhile
		}
		all = append(all, e.Name()+" -> "+target)
		switch {
		case fd == 0:
			if target != "/dev/null" {
				t.Errorf("QEMU's stdin is %s, want /dev/null", target)
			}
			continue
		case fd <= 2:
			if target != logPath {
				t.Errorf("QEMU's fd %d is %s, want its log %s", fd, target, logPath)
			}
			continue
		}
		if id, ok := fdID(p); ok {
			if what, ok := ours[id]; ok {
				t.Errorf("QEMU holds fd %d -> %s: an open file of the daemon's (%s)", fd, target, what)
				continue
			}
		}
		switch {
		case target == "/dev/fuse":
			t.Errorf("QEMU holds fd %d -> /dev/fuse", fd)
		case strings.HasPrefix(target, "socket:["), strings.HasPrefix(target, "pipe:["), strings.HasPrefix(target, "anon_inode:"):
			// QEMU's own: not one of this process's (checked above).
		case files[target]:
		default:
			t.Errorf("QEMU holds fd %d -> %s: not a file it was given", fd, target)
		}
	}
	t.Logf("QEMU pid %d descriptors: %s", pid, strings.Join(all, ", "))
}

// qcow2Overlay makes base.raw (1 MiB, a marker at sector 7) and a qcow2
// overlay backed by it, with qemu-img as an operator would.
func qcow2Overlay(t *testing.T, dir string) (overlay, base string) {
	t.Helper()
	base = filepath.Join(dir, "base.raw")
	b := make([]byte, 1<<20)
	copy(b[7*512:], "machinefs-base-marker\n")
	if err := os.WriteFile(base, b, 0o600); err != nil {
		t.Fatal(err)
	}
	overlay = filepath.Join(dir, "overlay.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	return overlay, base
}
