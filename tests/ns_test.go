package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/drivers/ns"
	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/tests/harness/disk"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// nsEnv is what the namespace subhost tests share: a state dir, a cgroup
// parent named for the test, and a cleanup that kills and releases every
// subhost still recorded (a stopping daemon leaves subhosts running by
// design). Call it before start, so its cleanup runs after the unmount.
type nsEnv struct {
	t      *testing.T
	state  string
	cgroup string
}

// nsEnvSeq numbers the environments of one test process: tests that run
// in parallel each get a cgroup of their own, so one's cleanup never
// removes the group another's subhosts are about to join.
var nsEnvSeq atomic.Int32

func newNSEnv(t *testing.T) *nsEnv {
	netns.NeedRoot(t)
	e := &nsEnv{t: t, state: t.TempDir(), cgroup: fmt.Sprintf("mfne%d-%d", os.Getpid(), nsEnvSeq.Add(1))}
	t.Cleanup(func() {
		if err := ns.ReleaseAll(e.state); err != nil {
			t.Errorf("releasing subhosts: %v", err)
		}
		for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			_ = os.Remove(filepath.Join(root, e.cgroup))
		}
	})
	return e
}

// root makes a busybox subhost root; addr ("10.79.0.1/24") goes on eth0.
func (e *nsEnv) root(addr string) string {
	dir := filepath.Join(e.t.TempDir(), "root")
	netns.BusyboxRoot(e.t, dir)
	if addr != "" {
		if err := os.WriteFile(filepath.Join(dir, "etc/net.conf"), []byte("ADDR="+addr+"\n"), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
	return dir
}

func (e *nsEnv) config(extra string) string {
	return fmt.Sprintf("drivers = ns\nns.state-dir = %s\nns.cgroup = %s\nns.poweroff-timeout = 3s\n%s", e.state, e.cgroup, extra)
}

// addSub adds an ns subhost NAME under the host machinefs runs on (local =
// yes): the daemon's local host if it has one, else hosts/nsh, made local
// without drivers. A subhost runs on its host's machine, and one host is
// the local one.
func addSub(d *daemon, name, config string) string {
	d.t.Helper()
	parent := strings.TrimSpace(d.ok("grep -lx 'local = yes' hosts/*/config 2>/dev/null | head -1 | cut -d/ -f2 || true"))
	if parent == "" {
		parent = "nsh"
		d.ok("mkdir -p hosts/nsh && echo 'local = yes' > hosts/nsh/config")
	}
	p := "hosts/" + parent + "/subhosts/" + name
	d.ok(fmt.Sprintf("mkdir %s && cat > %s/config <<'EOF'\n%s\nEOF", p, p, config))
	return p
}

func netnsListed(t *testing.T, name string) bool {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

// Two subhosts boot, say so through their notify FIFO, ping each other
// across a bridge and power off cleanly through /run/initctl.
func TestNSBootPingPoweroff(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	br := fmt.Sprintf("mfnbr%x", os.Getpid()&0xffff)
	netns.Bridge(t, br)
	d := start(t)
	a := addSub(d, "mfnea", e.config(fmt.Sprintf("ns.root = %s\nns.bridges = %s:06:a7:dd:b4:02:01", e.root("10.79.0.1/24"), br)))
	b := addSub(d, "mfneb", e.config(fmt.Sprintf("ns.root = %s\nns.bridges = %s:06:a7:dd:b4:02:02\nns.hostname = bee", e.root("10.79.0.2/24"), br)))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power && echo 'on wait timeout=10s' > %s/power", a, b))
	for _, p := range []string{a, b} {
		eventually(t, p+" notify booted", func() bool { return strings.Contains(d.read(p+"/events.log"), "notify booted") })
	}
	if !netnsListed(t, "mfnea") || !netnsListed(t, "mfneb") {
		t.Fatal("subhost netns not in ip netns list")
	}
	st := d.read(a + "/state")
	pid := stateField(st, "pid")
	if pid == "" || stateField(st, "netns") != "mfnea" || !strings.Contains(stateField(st, "cpu"), "s") {
		t.Fatalf("state lacks the driver's lines:\n%s", st)
	}
	out, err := exec.Command("nsenter", "-t", pid, "-n", "-r", "/bin/ping", "-c", "1", "-W", "3", "10.79.0.2").CombinedOutput()
	if err != nil {
		t.Fatalf("ping from mfnea to mfneb: %v\n%s", err, out)
	}
	// The console.
	r := d.ok(fmt.Sprintf("exec 3<>%s/console; echo version >&3; read -r l <&3; echo \"$l\"", b))
	if !strings.HasPrefix(r, "OK machinefs ns subhost mfneb: kernel Linux") {
		t.Fatalf("version: %q", r)
	}
	d.ok(fmt.Sprintf("echo 'log hello from the host' > %s/console", b))
	if !strings.Contains(d.read(b+"/events.log"), "log hello from the host") {
		t.Fatal("console log not in events")
	}
	d.ok(fmt.Sprintf("echo 'poweroff wait timeout=5s' > %s/power && echo 'poweroff wait timeout=5s' > %s/power", a, b))
	if st := d.read(a + "/state"); !strings.Contains(stateField(st, "reason"), "exited with status 0") {
		t.Fatalf("clean poweroff:\n%s", st)
	}
	if netnsListed(t, "mfnea") || netnsListed(t, "mfneb") {
		t.Fatal("netns left after poweroff")
	}
}

// A crash, force off, hibernation and restart, stop, and adoption after a
// daemon restart, all through the tree.
func TestNSLifecycle(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	root := e.root("")
	d := start(t)
	s := addSub(d, "mfnec", e.config("ns.root = "+root))
	power := func(cmd string) { d.t.Helper(); d.ok(fmt.Sprintf("echo '%s' > %s/power", cmd, s)) }
	reason := func() string { return stateField(d.read(s+"/state"), "reason") }

	os.WriteFile(filepath.Join(root, "etc/crash"), []byte("3"), 0o644)
	power("on")
	eventually(t, "crash seen", func() bool { return strings.Contains(reason(), "exited with status 3") })
	if p := d.read(s + "/power"); p != "off\n" {
		t.Fatalf("after a crash power = %q", p)
	}
	os.Remove(filepath.Join(root, "etc/crash"))

	power("on wait timeout=10s")
	power("poweroff force wait timeout=5s")
	if r := reason(); !strings.Contains(r, "SIGKILL") {
		t.Fatalf("poweroff force: %q", r)
	}

	power("on wait timeout=10s")
	power("hibernate wait timeout=5s")
	if r := reason(); r != "hibernated" || !netnsListed(t, "mfnec") {
		t.Fatalf("hibernate: reason %q, netns kept %v", r, netnsListed(t, "mfnec"))
	}
	// `on wait` returns once init runs, not once it has said "booted", and
	// an earlier boot may have been cut short before saying it: count the
	// boots from here.
	booted := func() int { return strings.Count(d.read(s+"/events.log"), "notify booted") }
	before := booted()
	power("on wait timeout=10s")
	eventually(t, "boot after hibernation", func() bool { return booted() > before })

	// The daemon stops: the subhost runs on and is adopted.
	pid := stateField(d.read(s+"/state"), "pid")
	d.stop()
	if _, err := os.Stat("/proc/" + pid); err != nil {
		t.Fatalf("subhost %s did not survive the daemon", pid)
	}
	d.start()
	eventually(t, "adopted", func() bool { return d.read(s+"/power") == "on\n" })
	if st := d.read(s + "/state"); !strings.Contains(stateField(st, "reason"), "adopted") || stateField(st, "pid") != pid {
		t.Fatalf("after the restart:\n%s", st)
	}
	power("stop wait timeout=5s")
	if netnsListed(t, "mfnec") {
		t.Fatal("netns left after stop")
	}
	if p := d.read(s + "/power"); p != "off\n" {
		t.Fatalf("after stop power = %q", p)
	}
}

// nsHeld lists what subhost name still holds on the host: its netns (as
// ip netns shows it), its live root mounted, its record and state dir, its
// cgroup.
func (e *nsEnv) nsHeld(name string) []string {
	e.t.Helper()
	var left []string
	if netnsListed(e.t, name) {
		left = append(left, "netns")
	}
	live := filepath.Join(e.state, name, "live")
	if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), " "+live+" ") {
		left = append(left, "mount "+live)
	}
	if _, err := os.Stat(filepath.Join(e.state, name+".json")); err == nil {
		left = append(left, "record")
	}
	if _, err := os.Stat(filepath.Join(e.state, name)); err == nil {
		left = append(left, "state dir")
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(root, e.cgroup, name)); err == nil {
			left = append(left, "cgroup "+filepath.Join(root, e.cgroup, name))
		}
	}
	return left
}

// hibernate boots subhost s and hibernates it: power off, its resources
// kept (all four of them).
func (e *nsEnv) hibernate(d *daemon, s string) {
	e.t.Helper()
	name := filepath.Base(s)
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power && echo 'hibernate wait timeout=5s' > %s/power", s, s))
	if p := d.read(s + "/power"); p != "off\n" {
		e.t.Fatalf("%s hibernated: power %q", name, p)
	}
	if r := stateField(d.read(s+"/state"), "reason"); r != "hibernated" {
		e.t.Fatalf("%s hibernated: reason %q", name, r)
	}
	if held := e.nsHeld(name); len(held) < 5 {
		e.t.Fatalf("%s hibernated holds only %v", name, held)
	}
}

// stop on a hibernated subhost (power off) reaches the driver and releases
// it; it used to answer "already off" and keep the netns.
func TestNSStopHibernated(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	d := start(t)
	s := addSub(d, "mfnef", e.config("ns.root = "+e.root("")))
	e.hibernate(d, s)
	d.ok(fmt.Sprintf("echo stop > %s/power", s))
	if held := e.nsHeld("mfnef"); len(held) > 0 {
		t.Fatalf("stop on a hibernated subhost left %v", held)
	}
	st := d.read(s + "/state")
	if r := stateField(st, "reason"); r != "stopped: mounts and netns released" {
		t.Fatalf("after stop:\n%s", st)
	}
	if log := d.read(s + "/events.log"); strings.Contains(log, "already off") {
		t.Fatalf("stop answered from the model:\n%s", log)
	}
	if p := d.read(s + "/power"); p != "off\n" {
		t.Fatalf("after stop power = %q", p)
	}
	// Once released, stop has nothing to do and says so.
	d.ok(fmt.Sprintf("echo stop > %s/power", s))
	if r := stateField(d.read(s+"/state"), "reason"); r != "subhost is off" {
		t.Fatalf("second stop: reason %q", r)
	}
}

// Removing a subhost from the tree releases what it holds (nodes.Remover):
// rmdir, ctl remove and a reload whose file is gone. A running subhost is
// refused with EBUSY.
func TestNSRemoveReleases(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	root := e.root("")
	d := start(t)

	s := addSub(d, "mfneg", e.config("ns.root = "+root))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power", s))
	d.fails("rmdir "+s, "Device or resource busy")
	if held := e.nsHeld("mfneg"); len(held) < 5 {
		t.Fatalf("a refused rmdir released: holds only %v", held)
	}
	e.hibernate(d, s)
	d.ok("rmdir " + s)
	if held := e.nsHeld("mfneg"); len(held) > 0 {
		t.Fatalf("rmdir of a hibernated subhost left %v", held)
	}
	if r := d.sh("ls " + s); r.code == 0 {
		t.Fatalf("%s still listed after rmdir", s)
	}

	// ctl remove.
	s = addSub(d, "mfneh", e.config("ns.root = "+root))
	e.hibernate(d, s)
	d.ok("echo 'remove nsh/subhosts/mfneh' > ctl")
	if held := e.nsHeld("mfneh"); len(held) > 0 {
		t.Fatalf("ctl remove of a hibernated subhost left %v", held)
	}

	// SIGHUP with the host's file gone.
	s = addSub(d, "mfnei", e.config("ns.root = "+root))
	e.hibernate(d, s)
	if err := os.Remove(filepath.Join(d.config, s+".conf")); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "reload removes mfnei", func() bool { return d.sh("ls "+s).code != 0 })
	eventually(t, "reload releases mfnei", func() bool { return len(e.nsHeld("mfnei")) == 0 })
}

// The root file system is a disk image made by the test.
func TestNSDiskImage(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	img := disk.Ext4(t, e.root(""), "32M")
	d := start(t)
	s := addSub(d, "mfned", e.config("ns.disks = vda:1:"+img))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power", s))
	eventually(t, "notify booted", func() bool { return strings.Contains(d.read(s+"/events.log"), "notify booted") })
	d.ok(fmt.Sprintf("echo 'stop wait timeout=5s' > %s/power", s))
	// A missing image is ENOENT with the reason.
	s2 := addSub(d, "mfnee", e.config("ns.disks = vda:1:/nonexistent/future.raw"))
	d.fails(fmt.Sprintf("echo on > %s/power", s2), "No such file or directory")
	if st := d.read(s2 + "/state"); !strings.Contains(stateField(st, "last-error"), "image /nonexistent/future.raw not found") {
		t.Fatalf("missing image:\n%s", st)
	}
	d.fails(fmt.Sprintf("echo 'ns.bridges = sw0:06:a7:dd:b4' >> %s/config", s2), "Invalid argument")
}

// The root is partition 2 of a partitioned disk image (GPT), as the
// pretend-boot scripts' DISKS=( vda:2:/disks/disk.raw ) would have it.
func TestNSPartitionedDisk(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	// Partition 1: 8 MiB at 1 MiB (empty); partition 2: 24 MiB at 10 MiB.
	img := disk.Partitioned(t, "gpt", 40<<20, "start=2048, size=16384", "start=20480, size=49152")
	disk.Put(t, img, disk.Ext4(t, e.root(""), "24M"), 10<<20)
	d := start(t)
	s := addSub(d, "mfnep", e.config("ns.disks = vda:2:"+img))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power", s))
	eventually(t, "notify booted", func() bool { return strings.Contains(d.read(s+"/events.log"), "notify booted") })
	d.ok(fmt.Sprintf("echo 'stop wait timeout=5s' > %s/power", s))
	// Partition 1 holds no file system; partition 3 does not exist.
	d.ok(fmt.Sprintf("echo 'ns.disks = vda:3:%s' >> %s/config", img, s))
	d.fails(fmt.Sprintf("echo on > %s/power", s), "No such file or directory")
	if st := d.read(s + "/state"); !strings.Contains(stateField(st, "last-error"), "has no partition 3") {
		t.Fatalf("partition 3:\n%s", st)
	}
}

// BenchmarkNSStartStop starts and stops N subhosts through the tree and the
// same work done by a shell script (ip netns, ip link, unshare, chroot),
// reporting the ratio. N is 20 (MACHINEFS_NS_BENCH_N overrides; the issue
// asks about 100).
func BenchmarkNSStartStop(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	n := 20
	if v := os.Getenv("MACHINEFS_NS_BENCH_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	state := b.TempDir()
	cg := fmt.Sprintf("mfnb%d", os.Getpid())
	b.Cleanup(func() {
		ns.ReleaseAll(state)
		os.Remove(filepath.Join("/sys/fs/cgroup/unified", cg))
		os.Remove(filepath.Join("/sys/fs/cgroup", cg))
	})
	br := fmt.Sprintf("mfnbb%x", os.Getpid()&0xffff)
	netns.Bridge(b, br)
	root := filepath.Join(b.TempDir(), "root")
	netns.BusyboxRoot(b, root)
	d, _ := startBench(b, "README", "-c", b.TempDir()) // never the default /etc/machinefs
	sh := func(script string) {
		b.Helper()
		cmd := exec.Command("bash", "-c", script)
		cmd.Dir = d.mnt
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
	var add strings.Builder
	add.WriteString("mkdir -p hosts/nsb && echo 'local = yes' > hosts/nsb/config\n")
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("mfnb%d", i)
		fmt.Fprintf(&add, "mkdir hosts/nsb/subhosts/%s && printf 'drivers = ns\\nns.root = %s\\nns.state-dir = %s\\nns.cgroup = %s\\nns.bridges = %s:06:00:00:00:%02x:%02x\\n' > hosts/nsb/subhosts/%s/config\n",
			name, root, state, cg, br, i/256, i%256, name)
	}
	sh(add.String())
	each := func(cmd string) string {
		var s strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&s, "echo '%s' > hosts/nsb/subhosts/mfnb%d/power &\n", cmd, i)
		}
		s.WriteString("wait\n")
		return s.String()
	}
	// The shell baseline: netns + veth into the bridge + bind mount +
	// unshare/chroot of the same init, then kill and tear down.
	script := fmt.Sprintf(`
n=%d; state=%s; br=%s; root=%s; pids=()
teardown() {
  kill -9 "${pids[@]}" 2>/dev/null; wait
  for i in $(seq 0 $((n-1))); do
    umount -l $state/live$i 2>/dev/null; rmdir $state/live$i 2>/dev/null
    ip link del mfnsh$i 2>/dev/null; ip netns del mfnsh$i 2>/dev/null
  done
}
trap teardown EXIT
set -e
for i in $(seq 0 $((n-1))); do
  ns=mfnsh$i; live=$state/live$i; mkdir -p $live
  ip netns add $ns; ip link add $ns type veth peer name eth0 netns $ns
  ip link set $ns master $br up; ip -n $ns link set eth0 up; ip -n $ns link set lo up
  mount --rbind $root $live; mount --make-rprivate $live
  ip netns exec $ns unshare --mount --pid --uts --ipc --fork --kill-child chroot $live /init >/dev/null 2>&1 &
  pids+=($!)
done
`, n, state, br, root)
	b.ResetTimer()
	var tree, shell time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		sh(each("on wait timeout=30s"))
		sh(each("off wait timeout=30s"))
		tree += time.Since(t0)
		t0 = time.Now()
		cmd := exec.Command("bash", "-c", script)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("shell baseline: %v: %s", err, out)
		}
		shell += time.Since(t0)
	}
	b.ReportMetric(float64(tree.Milliseconds())/float64(b.N), "tree-ms")
	b.ReportMetric(float64(shell.Milliseconds())/float64(b.N), "shell-ms")
	b.ReportMetric(float64(tree)/float64(shell), "x-shell")
}

// notifyFloodInit is an /init that writes to its notify FIFO one line of
// 100 MiB, then 5,000 lines at once, then, once a second has refilled the
// rate limit, "flood-done"; it then waits for /run/initctl.
const notifyFloodInit = `#!/bin/sh
mount -t proc proc /proc
echo booted > /run/machinefs/notify
{ yes | head -c 104857600 | tr -d '\n'; echo; } > /run/machinefs/notify
i=0
while [ $i -lt 5000 ]; do echo "flood $i"; i=$((i+1)); done > /run/machinefs/notify
sleep 1
echo flood-done > /run/machinefs/notify
read line < /run/initctl
exit 0
`

// procStatusKiB returns a "Vm...:" field of /proc/PID/status in KiB.
func procStatusKiB(t *testing.T, pid int, field string) int {
	t.Helper()
	st, err := procfs.ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	kb, ok := st.VmKiB[field]
	if !ok {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	return int(kb)
}

// A subhost's notify channel cannot take the daemon's memory: a line of
// 100 MiB is cut at 4 KiB (and the cut is said), a flood of lines is
// rate-limited with a notify-dropped event, and the daemon's peak RSS
// grows by far less than the line.
func TestNSNotifyBounded(t *testing.T) {
	e := newNSEnv(t)
	d := start(t)
	root := e.root("")
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(notifyFloodInit), 0o755); err != nil {
		t.Fatal(err)
	}
	s := addSub(d, "mfnfl", e.config("ns.root = "+root))
	pid := d.cmd.Process.Pid
	before := procStatusKiB(t, pid, "VmRSS")
	d.ok("echo 'on wait timeout=10s' > " + s + "/power")
	log := func() string { return d.read(s + "/events.log") }
	// The flood's count: the lines passed and the dropped ones said.
	var cut, lines, dropped int
	count := func() int {
		cut, lines, dropped = 0, 0, 0
		for _, l := range strings.Split(log(), "\n") {
			switch {
			case strings.Contains(l, " notify yyyy"):
				cut++
				if len(l) > 4096+200 || !strings.Contains(l, "[cut: longer than 4096 bytes]") {
					t.Fatalf("the long line in events.log: %d bytes, ends %q", len(l), l[max(0, len(l)-60):])
				}
			case strings.Contains(l, " notify flood "):
				lines++
			case strings.Contains(l, " notify-dropped "):
				var n int
				if _, err := fmt.Sscanf(l[strings.Index(l, " notify-dropped ")+len(" notify-dropped "):], "%d", &n); err != nil || n <= 0 {
					t.Fatalf("drop event %q", l)
				}
				dropped += n
			}
		}
		return lines + dropped
	}
	eventually(t, "notify flood-done", func() bool { return strings.Contains(log(), "notify flood-done") })
	eventually(t, "5000 flood lines passed or said dropped", func() bool { return count() >= 5000 })
	if cut != 1 || lines == 0 || dropped == 0 || lines+dropped != 5000 {
		t.Fatalf("events.log: %d cut lines, %d flood lines passed, %d dropped (want 1, >0, >0, 5000 in all)", cut, lines, dropped)
	}
	peak := procStatusKiB(t, pid, "VmHWM")
	t.Logf("daemon RSS before %d KiB, peak after %d KiB; %d flood lines passed, %d dropped", before, peak, lines, dropped)
	if peak-before > 64<<10 {
		t.Fatalf("daemon peak RSS grew by %d KiB reading a 100 MiB notify line and a flood", peak-before)
	}
	d.ok("echo 'poweroff wait timeout=5s' > " + s + "/power")
}
