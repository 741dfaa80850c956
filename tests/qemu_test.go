package tests

// QEMU guests through the mounted tree (issue 18): real qemu-system-x86_64
// (TCG where there is no /dev/kvm) booting Debian's kernel with the
// busybox initramfs of tests/harness/guestimage, driven with bash. Every
// boot costs seconds under TCG, so one test function walks one guest
// through its whole life (power through QMP, through the guest's own
// reboot, panic and halt, console, serial, network), and two more guests
// share a VDE switch.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/guestimage"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// qemuDir makes a short qemu.dir (its sockets must fit a socket address)
// and, at cleanup, kills every QEMU still running for a guest in it (the
// daemon leaves guests running when it stops, by design) and removes it.
// Call it before start, so that the cleanup runs after the unmount.
func qemuDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mfq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, pid := range qemuPids(dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(qemuPids(dir)) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		os.RemoveAll(dir)
	})
	return dir
}

// qemuPids are the live QEMU processes of guests under dir: the pid in a
// guest's pid file, if that process's command line names the directory.
func qemuPids(dir string) []int {
	files, _ := filepath.Glob(filepath.Join(dir, "*", "qemu.pid"))
	var pids []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if strings.Contains(string(cl), dir+"/") && !strings.Contains(string(st), ") Z ") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// qemuConfig is a guest's config: the test image, appendArgs added to its
// kernel command line, extra keys.
func qemuConfig(img guestimage.Image, dir, appendArgs, extra string) string {
	return fmt.Sprintf("drivers = qemu\nqemu.kernel = %s\nqemu.initrd = %s\nqemu.append = %s\nqemu.dir = %s\nqemu.poweroff-timeout = 30s\n%s",
		img.Kernel, img.Initrd, strings.TrimSpace(img.Append+" "+appendArgs), dir, extra)
}

// qemuVDECleanup kills VDE switch name's vde_switch (by its pid file, if
// the process is that switch) and removes its sockets, whatever a failed
// test left. Call it before start.
func qemuVDECleanup(t *testing.T, name string) {
	sock := machine.VDESocket(name)
	pidFile := machine.VDEDir + "/" + name + ".pid"
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); pid > 1 && strings.Contains(string(cl), sock+"\x00") {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for _, p := range []string{sock, machine.VDEDir + "/" + name + ".mgmt", pidFile} {
			os.RemoveAll(p)
		}
	})
}

// qemuGuest is one guest in the tree with a reader on its serial file
// kept open for the whole test: the serial stream goes on across the
// guest's lives, so counting the ready lines in it tells boots apart.
type qemuGuest struct {
	d      *daemon
	path   string // hosts/.../subhosts/NAME
	serial *bg
}

func (d *daemon) qemuGuest(path string) *qemuGuest {
	d.t.Helper()
	return &qemuGuest{d: d, path: path, serial: d.background("exec cat " + path + "/serial")}
}

// waitSerial waits until the serial stream holds text n times. A boot
// under TCG on a loaded machine takes seconds; the deadline is generous.
func (g *qemuGuest) waitSerial(text string, n int) {
	g.d.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for strings.Count(g.serial.output(), text) < n {
		select {
		case <-g.serial.done:
			g.d.t.Fatalf("cat %s/serial ended (err %q) before %d× %q; it printed:\n%s", g.path, g.serial.err, n, text, g.serial.output())
		default:
		}
		if time.Now().After(deadline) {
			g.d.t.Fatalf("%s/serial: no %d× %q within 2 minutes; it printed:\n%s\nstate:\n%s", g.path, n, text, g.serial.output(), g.d.read(g.path+"/state"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *qemuGuest) readies() int { return strings.Count(g.serial.output(), guestimage.ReadyLine) }

// typeLine writes a command line to the guest's shell through serial.
func (g *qemuGuest) typeLine(line string) {
	g.d.t.Helper()
	// Single quotes: the host's bash must not expand what the guest's
	// shell is to expand.
	g.d.ok(fmt.Sprintf("printf '%%s\\n' '%s' > %s/serial", strings.ReplaceAll(line, "'", `'\''`), g.path))
}

// run types a shell command whose output ends with a marker made by
// arithmetic ("mfq-N-$((40+2))" prints mfq-N-42), so the command's own
// echo never matches, and waits for the marker.
func (g *qemuGuest) run(cmd string) {
	g.d.t.Helper()
	qemuMarks++
	g.typeLine(fmt.Sprintf("%s && echo mfq-%d-$((40+2))", cmd, qemuMarks))
	g.waitSerial(fmt.Sprintf("mfq-%d-42", qemuMarks), 1)
}

var qemuMarks int

func (g *qemuGuest) power() string { return strings.TrimSpace(g.d.read(g.path + "/power")) }

func (g *qemuGuest) waitPower(want string) {
	g.d.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for g.power() != want {
		if time.Now().After(deadline) {
			g.d.t.Fatalf("%s: power %q, want %q; state:\n%s\nserial:\n%s", g.path, g.power(), want, g.d.read(g.path+"/state"), g.serial.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// boot powers the guest on and waits for one more ready line.
func (g *qemuGuest) boot() {
	g.d.t.Helper()
	n := g.readies()
	g.d.ok("echo 'on wait timeout=60s' > " + g.path + "/power")
	g.waitSerial(guestimage.ReadyLine, n+1)
}

func (g *qemuGuest) console(line string) string {
	g.d.t.Helper()
	return g.d.ok(fmt.Sprintf("exec 3<>%s/console; printf '%%s\\n' %q >&3; timeout 20 cat <&3", g.path, line))
}

func TestQEMUGuest(t *testing.T) {
	t.Parallel()
	img := guestimage.Skip(t)
	e := newNSEnv(t)
	dir := qemuDir(t)
	qemuVDECleanup(t, "mfqv0")
	ns := netns.New(t, "mfq")
	d := startNS(t, ns)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "*", "qemu.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", l, b)
			}
		}
	})
	d.addHost("lab01", "drivers = sim\nsim.initial = on\nlocal = yes")
	d.ok("mkdir hosts/lab01/vswitch/mfqb0")

	// A subhost made as a user would: mkdir and a config.
	const vm = "hosts/lab01/subhosts/mfq1"
	d.addHost("lab01/subhosts/mfq1", qemuConfig(img, dir, "mfs.ip=10.78.0.1/24", "qemu.net = mfqb0:02:6d:66:71:00:01"))
	g := d.qemuGuest(vm)
	if p := g.power(); p != "off" {
		t.Fatalf("new QEMU subhost: power %q, want off", p)
	}
	d.fails("echo 'qemu.mem = lots' >> "+vm+"/config", "Invalid argument")

	// on, then on wait: starting or on at once, on when QEMU runs.
	d.ok("echo on > " + vm + "/power")
	if p := g.power(); p != "starting" && p != "on" {
		t.Fatalf("right after on: power %q, want starting or on", p)
	}
	d.ok("echo 'on wait timeout=60s' > " + vm + "/power")
	g.waitSerial(guestimage.ReadyLine, 1)
	st := d.read(vm + "/state")
	wantAccel := "tcg"
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		wantAccel = "kvm"
	}
	if !strings.HasPrefix(stateField(st, "qemu-accel"), wantAccel) || stateField(st, "power") != "on" {
		t.Fatalf("state after boot, want power on and accel %s:\n%s", wantAccel, st)
	}
	if qmp := stateField(d.read(vm+"/state"), "qemu-dir"); qmp != filepath.Join(dir, "mfq1") {
		t.Errorf("qemu-dir %q, want %s", qmp, filepath.Join(dir, "mfq1"))
	}

	// The console: QMP/HMP commands, mconsole style.
	if out := g.console("info status"); !strings.Contains(out, "VM status: running") {
		t.Errorf("console info status: %q", out)
	}
	if out := g.console("help"); !strings.Contains(out, "backup") || !strings.Contains(out, "info") {
		t.Errorf("console help: %q", out)
	}

	// Serial both ways: a command typed into serial, its output read back.
	g.run("echo typed-through-serial")

	// A paused guest does not read its console: a writer into serial
	// blocks once QEMU's buffers are full, and Ctrl-C (SIGINT) ends its
	// write with EINTR while the tree goes on.
	d.ok("echo 'pause wait' > " + vm + "/power")
	// dd ends on SIGINT once its write returns (it prints what it
	// copied); a write that cannot be interrupted leaves it to -k's KILL.
	r := d.sh("timeout -k 10 -s INT 3 dd if=/dev/zero of=" + vm + "/serial bs=64k count=256 2>&1")
	if r.code != 124 || !strings.Contains(r.out, "records out") || strings.Contains(r.out, "256+0 records out") {
		t.Fatalf("dd into a paused guest's serial: exit %d, output %q; want it stopped by SIGINT mid-copy", r.code, r.out)
	}
	if p := g.power(); p != "paused" {
		t.Fatalf("power while a serial write waits: %s", p)
	}
	d.ok("echo 'resume wait' > " + vm + "/power")
	g.run("echo after-the-flood")

	// The guest and an ns subhost on the bridge mfqb0 ping each other.
	n := addSub(d, "mfqn1", e.config(fmt.Sprintf("ns.root = %s\nns.bridges = mfqb0:02:6d:66:71:00:02", e.root("10.78.0.2/24"))))
	d.ok("echo 'on wait timeout=20s' > " + n + "/power")
	eventually(t, n+" notify booted", func() bool { return strings.Contains(d.read(n+"/events.log"), "notify booted") })
	pid := stateField(d.read(n+"/state"), "pid")
	if r := runIn(t, "/", "nsenter", "-t", pid, "-n", "-r", "/bin/ping", "-c", "1", "-W", "10", "10.78.0.1"); r.code != 0 {
		t.Fatalf("ping from the ns subhost to the QEMU guest: %s%s\nports:\n%s", r.out, r.err, d.read("hosts/lab01/vswitch/mfqb0/ports"))
	}
	g.run("ping -c 1 -W 10 10.78.0.2 >/dev/null")
	if ports := d.read("hosts/lab01/vswitch/mfqb0/ports"); !strings.Contains(ports, "mfq1 tap") {
		t.Errorf("mfqb0 ports do not list the guest's TAP mfq1:\n%s", ports)
	}
	d.ok("echo 'poweroff wait timeout=10s' > " + n + "/power")

	// The guest reboots itself: power stays on, with the reason, and the
	// guest boots again.
	booted := g.readies()
	g.typeLine("reboot -f")
	g.waitSerial(guestimage.ReadyLine, booted+1)
	if r := stateField(d.read(vm+"/state"), "reason"); !strings.Contains(r, "rebooted itself") || g.power() != "on" {
		t.Errorf("after reboot -f in the guest: power %s, reason %q", g.power(), r)
	}

	// A panic (pvpanic): crashed, with the reason; on resets the guest.
	g.typeLine("echo c > /proc/sysrq-trigger")
	g.waitPower("crashed")
	if r := stateField(d.read(vm+"/state"), "reason"); !strings.Contains(r, "panicked") {
		t.Errorf("after the panic: reason %q", r)
	}
	if out := g.console("info status"); !strings.Contains(out, "guest-panicked") {
		t.Errorf("info status of a panicked guest: %q", out)
	}
	g.boot()
	if g.power() != "on" {
		t.Fatalf("on after the panic: power %s", g.power())
	}

	// The guest halts on its own: off at once, QEMU gone.
	g.typeLine("poweroff -f")
	g.waitPower("off")
	eventually(t, "QEMU to exit after the guest's halt", func() bool { return len(qemuPids(dir)) == 0 })

	// poweroff through QMP (the ACPI power button): the guest powers off.
	g.boot()
	d.ok("echo 'poweroff wait timeout=60s' > " + vm + "/power")
	if p := g.power(); p != "off" {
		t.Fatalf("after poweroff wait: power %s", p)
	}
	if !strings.Contains(g.serial.output(), "machinefs-guest: power button") {
		t.Errorf("the guest did not see the ACPI power button:\n%s", g.serial.output())
	}

	// Two guests on a VDE switch (on its own bridge) ping each other.
	d.ok("mkdir hosts/lab01/vswitch/mfqv0 && echo 'add vde' > hosts/lab01/vswitch/mfqv0/ctl")
	var vde []*qemuGuest
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("mfqd%d", i)
		d.addHost("lab01/subhosts/"+name, qemuConfig(img, dir, fmt.Sprintf("mfs.ip=10.78.1.%d/24", i), fmt.Sprintf("qemu.net = vde:mfqv0:02:6d:66:71:01:%02x", i)))
		vde = append(vde, d.qemuGuest("hosts/lab01/subhosts/"+name))
	}
	// Both boot at once, as a group: one write starts both.
	d.ok("mkdir groups/mfqg && echo 'lab01/subhosts/mfqd[1-2]' > groups/mfqg/members")
	d.ok("echo 'on wait timeout=60s' > groups/mfqg/power")
	if p := d.read("groups/mfqg/power"); p != "on\n" {
		t.Fatalf("group of two QEMU guests after on wait: %q", p)
	}
	for _, v := range vde {
		v.waitSerial(guestimage.ReadyLine, 1)
	}
	vde[0].run("ping -c 1 -W 10 10.78.1.2 >/dev/null")
	vde[1].run("ping -c 1 -W 10 10.78.1.1 >/dev/null")
	if ports := d.read("hosts/lab01/vswitch/mfqv0/ports"); strings.Count(ports, "client=") < 2 {
		t.Errorf("the VDE switch's ports do not list both guests:\n%s", ports)
	}
	d.fails("rmdir hosts/lab01/vswitch/mfqv0", "Device or resource busy")

	d.fails("rmdir "+vde[0].path, "Device or resource busy")

	// A stack poweroff of lab01 stops its QEMU guests (through the ACPI
	// button, each a step of the stack) and leaves lab01 on.
	d.ok("echo 'poweroff wait label=mfqstack' > hosts/lab01/power")
	for _, v := range vde {
		if p := v.power(); p != "off" {
			t.Fatalf("%s after the stack poweroff of lab01: %s", v.path, p)
		}
	}
	if ev := d.read("hosts/lab01/events.log"); !strings.Contains(ev, "mfqstack") || d.read("hosts/lab01/power") != "on\n" {
		t.Fatalf("stack poweroff: lab01 power %q, events:\n%s", d.read("hosts/lab01/power"), ev)
	}

	// Removal (of a guest that is off: a running one is EBUSY) leaves
	// nothing behind: no QEMU, no guest directory.
	for _, v := range vde {
		d.ok("echo 'off wait timeout=20s' > " + v.path + "/power && rmdir " + v.path)
	}
	d.ok("rmdir " + vm)
	if pids := qemuPids(dir); len(pids) != 0 {
		t.Fatalf("QEMU still running after rmdir: %v", pids)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Fatalf("left in qemu.dir after rmdir: %v", left)
	}
	d.ok("rmdir hosts/lab01/vswitch/mfqv0")
}
