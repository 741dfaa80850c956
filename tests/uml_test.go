package tests

// User Mode Linux subhosts through the mounted tree (issue 7): real UML
// guests (Debian user-mode-linux) on a busybox hostfs root built by the
// test, driven with bash.

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/tests/harness/disk"
	"github.com/machinefs/machinefs/tests/harness/netns"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

const umlWeb1 = "hosts/lab01/subhosts/web1"

// umlDaemon mounts machinefs with a sim host lab01 and a UML subhost web1;
// extra lines go into web1's config.
func umlDaemon(t *testing.T, extra ...string) (d *daemon, dir string) {
	t.Helper()
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	// Runs after the daemon stopped (cleanups run last in, first out).
	t.Cleanup(func() {
		if t.Failed() && d != nil && d.log != nil {
			t.Logf("daemon log:\n%s", d.log)
		}
	})
	d = start(t)
	// Guests must not outlive the test: stop the daemon first (LIFO),
	// then umlh.Dir's cleanup kills what is left.
	d.addHost("lab01", "drivers = sim\nsim.initial = on\nlocal = yes")
	d.addHost("lab01/subhosts/web1", umlh.Config(root, dir, append([]string{"uml.poweroff-timeout = 5s"}, extra...)...))
	return d, dir
}

// console runs one console command in a session (exec 3<>console) and
// returns the whole reply.
func (d *daemon) umlConsole(host, line string) string {
	d.t.Helper()
	return d.ok(fmt.Sprintf("exec 3<>%s/console; printf '%%s\\n' %q >&3; timeout 20 cat <&3", host, line))
}

func (d *daemon) umlPower(host string) string {
	d.t.Helper()
	return strings.TrimSpace(d.read(host + "/power"))
}

func (d *daemon) umlWaitPower(host, want string) {
	d.t.Helper()
	eventually(d.t, host+" "+want, func() bool { return d.umlPower(host) == want })
}

// umlBoot powers web1 on and waits for it, checking starting first.
func (d *daemon) umlBoot() int {
	d.t.Helper()
	return d.umlBootHost(umlWeb1)
}

// umlBootHost powers host on and waits until its init says "booted"; it
// returns the guest's pid.
func (d *daemon) umlBootHost(host string) int {
	d.t.Helper()
	booted := strings.Count(d.read(host+"/events.log"), " notify booted")
	d.ok("echo on > " + host + "/power")
	if p := d.umlPower(host); p != "starting" && p != "on" {
		d.t.Fatalf("right after on: power %q, want starting", p)
	}
	d.umlWaitPower(host, "on")
	// Power is on once the kernel's mconsole is up; the guest's init
	// (which handles ctrl-alt-del) says when it runs.
	eventually(d.t, host+" notify booted", func() bool {
		return strings.Count(d.read(host+"/events.log"), " notify booted") > booted
	})
	pid, err := strconv.Atoi(strings.Fields(stateField(d.read(host+"/state"), "uml-pid"))[0])
	if err != nil {
		d.t.Fatal(err)
	}
	return pid
}

func umlAlive(pid int) bool { return syscall.Kill(pid, 0) == nil && !umlZombie(pid) }

func umlZombie(pid int) bool {
	st, err := procfs.ReadStat(pid)
	return err != nil || !st.Live()
}

// umlGone waits until no linux runs under dir and web1's umid dir is
// removed.
func umlGone(t *testing.T, dir string) {
	t.Helper()
	umlGoneHost(t, dir, "web1")
}

// umlGoneHost waits until no linux runs under dir and umid's umid dir is
// removed.
func umlGoneHost(t *testing.T, dir, umid string) {
	t.Helper()
	eventually(t, "no linux left under "+dir, func() bool { return len(umlh.Guests(dir)) == 0 })
	eventually(t, "umid dir removed", func() bool {
		_, err := os.Stat(filepath.Join(dir, umid))
		return os.IsNotExist(err)
	})
}

// umlRemoved checks that rmdir left nothing of the guest umid: no linux
// under dir, no umid dir, no record, console log or notify socket.
func umlRemoved(t *testing.T, dir, umid string) {
	t.Helper()
	if g := umlh.Guests(dir); len(g) != 0 {
		t.Fatalf("linux still running after rmdir: %v", g)
	}
	for _, p := range []string{umid, umid + ".machinefs"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
			ls, _ := exec.Command("ls", "-laR", dir).CombinedOutput()
			t.Fatalf("%s left after rmdir (%v):\n%s", p, err, ls)
		}
	}
}

func TestUMLGuest(t *testing.T) {
	backups := t.TempDir()
	d, dir := umlDaemon(t, "uml.backup-dir = "+backups)
	if p := d.umlPower(umlWeb1); p != "off" {
		t.Fatalf("new UML subhost: power %q, want off", p)
	}
	d.fails("echo 'uml.mem = lots' >> "+umlWeb1+"/config", "Invalid argument")

	// on -> starting -> on, and the guest's notification.
	d.umlBoot()
	st := d.read(umlWeb1 + "/state")
	if !strings.Contains(stateField(st, "reason"), "booted") || stateField(st, "uml-umid") != "web1" {
		t.Fatalf("state after boot:\n%s", st)
	}

	// Every mconsole command, through the tree.
	for _, c := range []struct{ line, want string }{
		{"version", "OK Linux"},
		{"proc uptime", "OK "},
		{"log hello-from-machinefs", "OK"},
		{"sysrq s", "OK"},
		{"config con0", "OK"},
		{"config ubd3=/nonexistent/image", "ERR"},
		{"remove nosuchdevice", "ERR Bad remove option"},
		{"stack 1", "OK"},
		{"help", "backup DEST"},
	} {
		if got := d.umlConsole(umlWeb1, c.line); !strings.HasPrefix(got, c.want) && !strings.Contains(got, c.want) {
			t.Errorf("console %q: %q, want %q", c.line, got, c.want)
		}
	}
	// A query's reply is read when the session next asks (read, write,
	// close), and the lines a session writes go in at its position, ahead
	// of replies it has not read. So lines written in one write, in
	// several (dash's printf writes line by line), or in turn with reads
	// (one that reads just the first line of a longer reply) all read
	// back in order; and a write-only session's reply is there for `cat
	// console` once echo has returned.
	inOrder := regexp.MustCompile(`(?s)^OK Linux[^\n]*\nOK \s*[0-9.]+ [0-9.]+\nOK\s*\nOK [^\n]*\nOK Linux[^\n]*\n$`)
	script := filepath.Join(t.TempDir(), "lines")
	os.WriteFile(script, []byte("version\nproc uptime\nlog pipelined\nconfig con0\nversion\n"), 0o644)
	for _, write := range []string{"cat " + script + " >&3", "printf 'version\\nproc uptime\\nlog pipelined\\n' >&3; printf 'config con0\\nversion\\n' >&3"} {
		out := d.ok(fmt.Sprintf("exec 3<>%s/console; %s; timeout 20 cat <&3", umlWeb1, write))
		if !inOrder.MatchString(out) {
			t.Errorf("%s; cat <&3: replies not whole and in order:\n%s", write, out)
		}
	}
	out := d.ok(fmt.Sprintf("exec 3<>%s/console; for c in version 'proc uptime' version; do echo \"$c\" >&3; read -r r <&3; echo \"$r\"; done; timeout 20 cat <&3", umlWeb1))
	if !regexp.MustCompile(`^OK Linux[^\n]*\nOK\s*\n[0-9.]+ [0-9.]+\nOK Linux[^\n]*\n$`).MatchString(out) {
		t.Errorf("lines written and read in turn:\n%s", out)
	}
	if got := d.ok(fmt.Sprintf("echo 'proc uptime' > %s/console && cat %s/console", umlWeb1, umlWeb1)); !strings.HasPrefix(got, "OK ") || strings.Contains(got, "Linux") {
		t.Errorf("cat console after echo 'proc uptime' > console: %q", got)
	}
	if got := d.umlConsole(umlWeb1, "proc meminfo"); !strings.Contains(got, "MemTotal:") || !strings.Contains(got, "VmallocChunk:") {
		t.Errorf("proc meminfo (several datagrams) incomplete: %q", got)
	}
	// A stack trace is more datagrams than the kernel queues for an
	// unconnected socket (10); each try must get the whole reply.
	for i := range 5 {
		if got := d.umlConsole(umlWeb1, "stack 1"); !strings.HasPrefix(got, "OK") {
			t.Fatalf("stack 1, try %d: %q", i, got)
		}
	}
	if got := d.umlConsole(umlWeb1, "stop"); !strings.HasPrefix(got, "OK") || d.umlPower(umlWeb1) != "paused" {
		t.Fatalf("console stop: %q, power %s", got, d.umlPower(umlWeb1))
	}
	if got := d.umlConsole(umlWeb1, "go"); !strings.HasPrefix(got, "OK") || d.umlPower(umlWeb1) != "on" {
		t.Fatalf("console go: %q, power %s", got, d.umlPower(umlWeb1))
	}
	if got := d.umlConsole(umlWeb1, "reboot"); !strings.HasPrefix(got, "OK") {
		t.Fatalf("console reboot: %q", got)
	}
	d.umlWaitPower(umlWeb1, "on")
	// Power is on once the kernel's mconsole is up; init runs later and
	// only then handles ctrl-alt-del.
	eventually(t, "second notify booted", func() bool { return strings.Count(d.read(umlWeb1+"/events.log"), " notify booted") == 2 })
	if got := d.umlConsole(umlWeb1, "cad"); !strings.HasPrefix(got, "OK") {
		t.Fatalf("console cad: %q", got)
	}
	d.umlWaitPower(umlWeb1, "off")
	eventually(t, "notify poweroff-by-cad", func() bool { return strings.Contains(d.read(umlWeb1+"/events.log"), "notify poweroff-by-cad") })
	umlGone(t, dir)

	// pause and resume through power; halt through the console.
	d.umlBoot()
	d.ok("echo pause > " + umlWeb1 + "/power")
	if p := d.umlPower(umlWeb1); p != "paused" {
		t.Fatalf("after pause: %s", p)
	}
	d.ok("echo resume > " + umlWeb1 + "/power")
	if p := d.umlPower(umlWeb1); p != "on" {
		t.Fatalf("after resume: %s", p)
	}

	// Online backup of the running guest, into uml.backup-dir: a
	// relative DEST is taken there.
	if got := d.umlConsole(umlWeb1, "backup web1-backup"); !strings.HasPrefix(got, "OK backup of") {
		t.Fatalf("backup: %q", got)
	}
	bk := filepath.Join(backups, "web1-backup")
	if b, err := os.ReadFile(filepath.Join(bk, "init")); err != nil || string(b) != umlh.Init {
		t.Fatalf("backup has no /init: %v", err)
	}
	if p := d.umlPower(umlWeb1); p != "on" {
		t.Fatalf("after backup: power %s, want on", p)
	}
	if got := d.umlConsole(umlWeb1, "backup "+bk); !strings.HasPrefix(got, "ERR") || !strings.Contains(got, "exists") {
		t.Fatalf("backup over an existing path: %q", got)
	}
	// The daemon writes a backup as root and an operator names DEST:
	// outside uml.backup-dir, or through a link in it that leads
	// outside, is refused, and nothing is written there.
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(backups, "escape")); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{filepath.Join(outside, "x"), "escape/x", filepath.Join(backups, "escape", "x"), "../x"} {
		if got := d.umlConsole(umlWeb1, "backup "+dest); !strings.HasPrefix(got, "ERR") || !strings.Contains(got, "outside uml.backup-dir "+backups) {
			t.Fatalf("backup %s: %q, want ERR: outside uml.backup-dir", dest, got)
		}
	}
	if ents, err := os.ReadDir(outside); err != nil || len(ents) != 0 {
		t.Fatalf("after refused backups, %s holds %d entries (%v), want none", outside, len(ents), err)
	}
	if p := d.umlPower(umlWeb1); p != "on" {
		t.Fatalf("after a refused backup: power %s, want on", p)
	}
	if got := d.umlConsole(umlWeb1, "halt"); !strings.HasPrefix(got, "OK") {
		t.Fatalf("console halt: %q", got)
	}
	d.umlWaitPower(umlWeb1, "off")
	umlGone(t, dir)

	// Panic: crashed with the panic text, process group killed.
	d.umlBoot()
	d.umlConsole(umlWeb1, "sysrq c")
	d.umlWaitPower(umlWeb1, "crashed")
	st = d.read(umlWeb1 + "/state")
	if r := stateField(st, "reason"); !strings.Contains(r, "panic") || !strings.Contains(r, "sysrq") {
		t.Fatalf("crashed reason %q, want the panic text", r)
	}
	umlGone(t, dir)
	t.Logf("after sysrq c: %s", stateField(d.read(umlWeb1+"/state"), "reason"))

	// SIGKILL behind machinefs's back: off, how it ended, cleanup.
	pid := d.umlBoot()
	syscall.Kill(pid, syscall.SIGKILL)
	d.umlWaitPower(umlWeb1, "off")
	if r := stateField(d.read(umlWeb1+"/state"), "reason"); !strings.Contains(r, "killed by signal 9") {
		t.Fatalf("after SIGKILL: reason %q", r)
	}
	umlGone(t, dir)

	// poweroff: ctrl-alt-del, the guest's init powers off.
	d.umlBoot()
	d.ok("echo 'poweroff wait timeout=20s' > " + umlWeb1 + "/power")
	if r := stateField(d.read(umlWeb1+"/state"), "reason"); !strings.Contains(r, "poweroff") || !strings.Contains(r, "status 0") {
		t.Fatalf("after poweroff: reason %q", r)
	}
	umlGone(t, dir)

	// poweroff force: halt at once.
	d.umlBoot()
	d.ok("echo 'poweroff force wait timeout=10s' > " + umlWeb1 + "/power")
	if r := stateField(d.read(umlWeb1+"/state"), "reason"); !strings.Contains(r, "poweroff force") {
		t.Fatalf("after poweroff force: reason %q", r)
	}
	umlGone(t, dir)

	// rmdir of a subhost that is off: its files go too.
	if _, err := os.Stat(filepath.Join(dir, "web1.machinefs", "console.log")); err != nil {
		t.Fatalf("no console log before rmdir: %v", err)
	}
	d.ok("rmdir " + umlWeb1)
	umlRemoved(t, dir, "web1")
}

// A daemon stopped with SIGTERM leaves its guests running; the next one
// adopts them.
func TestUMLAdoption(t *testing.T) {
	d, dir := umlDaemon(t)
	pid := d.umlBoot()
	d.stop()
	if !umlAlive(pid) {
		t.Fatalf("guest %d did not survive the daemon's SIGTERM", pid)
	}
	d.start()
	d.umlWaitPower(umlWeb1, "on")
	st := d.read(umlWeb1 + "/state")
	if !strings.Contains(stateField(st, "reason"), "adopted") || stateField(st, "uml-pid") != fmt.Sprintf("%d (adopted)", pid) {
		t.Fatalf("after restart:\n%s", st)
	}
	if got := d.umlConsole(umlWeb1, "version"); !strings.HasPrefix(got, "OK Linux") {
		t.Fatalf("console of the adopted guest: %q", got)
	}
	// The notify socket was made anew: the guest's next notification
	// (its init says poweroff-by-cad) arrives.
	d.ok("echo 'poweroff wait timeout=20s' > " + umlWeb1 + "/power")
	if ev := d.read(umlWeb1 + "/events.log"); !strings.Contains(ev, "notify poweroff-by-cad") {
		t.Fatalf("no notification from the adopted guest:\n%s", ev)
	}
	umlGone(t, dir)
	if umlAlive(pid) {
		t.Fatalf("guest %d still alive", pid)
	}
}

// rmdir of a subhost whose guest still runs but is unknown (its mconsole
// does not answer) or crashed: the guest, its umid dir and its record go.
// SIGTERM of the daemon (Close) keeps guests: TestUMLAdoption.
func TestUMLRemove(t *testing.T) {
	d, dir := umlDaemon(t)
	// A guest stopped (SIGSTOP) behind machinefs's back while no daemon
	// ran: the next daemon adopts it, but its mconsole does not answer.
	pid := d.umlBoot()
	d.stop()
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.umlWaitPower(umlWeb1, "unknown")
	if r := stateField(d.read(umlWeb1+"/state"), "reason"); !strings.Contains(r, "does not answer") {
		t.Fatalf("adopted stopped guest: reason %q", r)
	}
	started := time.Now()
	d.ok("rmdir " + umlWeb1)
	t.Logf("rmdir of the unknown guest took %s", time.Since(started).Round(time.Millisecond))
	if umlAlive(pid) {
		t.Fatalf("guest %d alive after rmdir", pid)
	}
	umlRemoved(t, dir, "web1")

	// A crashed guest.
	d.addHost("lab01/subhosts/web1", umlh.Config(umlh.Root(t), dir))
	d.umlBoot()
	d.umlConsole(umlWeb1, "sysrq c")
	d.umlWaitPower(umlWeb1, "crashed")
	d.ok("rmdir " + umlWeb1)
	umlRemoved(t, dir, "web1")
}

// uml.net = SWITCH:MAC: a TAP named after the subhost on a vswitch of the
// local host, eth0 in the guest with that MAC, and traffic both ways. The
// daemon runs in a network namespace of the test's.
func TestUMLNet(t *testing.T) {
	umlh.Skip(t)
	netns.NeedRoot(t)
	ns := netns.New(t, "mfu")
	root, dir := umlh.Root(t), umlh.Dir(t)
	// The guest configures eth0 and pings the switch's address.
	rc := "#!/bin/sh\nifconfig eth0 10.77.9.2 netmask 255.255.255.0 up\n" +
		"if ping -c 1 -W 5 10.77.9.1 >/dev/null; then echo ping-ok > /proc/mconsole; else echo ping-failed > /proc/mconsole; fi\n"
	if err := os.WriteFile(filepath.Join(root, "etc/rc"), []byte(rc), 0o755); err != nil {
		t.Fatal(err)
	}
	d := startNS(t, ns)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "web1.machinefs", "console.log"))
			t.Logf("guest console:\n%s", b)
		}
	})
	ip := func(args ...string) result {
		t.Helper()
		return runIn(t, "/", "ip", append([]string{"-n", ns.Name}, args...)...)
	}
	d.addHost("lab01", "drivers = sim\nsim.initial = on\nlocal = yes")
	d.ok("mkdir hosts/lab01/vswitch/sw0")
	if r := ip("addr", "add", "10.77.9.1/24", "dev", "sw0"); r.code != 0 {
		t.Fatalf("ip addr add: %s", r.err)
	}
	const mac = "02:6d:66:75:00:01"
	d.addHost("lab01/subhosts/web1", umlh.Config(root, dir, "uml.net = sw0:"+mac))
	d.umlBoot()

	if tap := stateField(d.read(umlWeb1+"/state"), "uml-tap"); tap != "web1" {
		t.Fatalf("uml-tap %q, want web1", tap)
	}
	ports := d.read("hosts/lab01/vswitch/sw0/ports")
	if !strings.Contains(ports, "web1 tap ") {
		t.Fatalf("sw0 ports do not list the TAP web1:\n%s", ports)
	}
	ev := d.read(umlWeb1 + "/events.log")
	if !strings.Contains(ev, "notify eth0 "+mac) {
		t.Fatalf("guest did not report eth0 with %s:\n%s", mac, ev)
	}
	// Traffic: the guest pinged the switch at boot; the switch pings it.
	eventually(t, "guest ping result", func() bool { return strings.Contains(d.read(umlWeb1+"/events.log"), "notify ping-") })
	if ev := d.read(umlWeb1 + "/events.log"); !strings.Contains(ev, "notify ping-ok") {
		t.Fatalf("guest could not ping 10.77.9.1:\n%s", ev)
	}
	if r := runIn(t, "/", "ip", "netns", "exec", ns.Name, "busybox", "ping", "-c", "1", "-W", "5", "10.77.9.2"); r.code != 0 {
		t.Fatalf("ping from the switch to the guest: %s%s", r.out, r.err)
	}
	if neigh := ip("neigh", "show", "10.77.9.2").out; !strings.Contains(neigh, mac) {
		t.Fatalf("neighbour 10.77.9.2 is %q, want MAC %s", neigh, mac)
	}

	// Off: the TAP goes with the guest.
	d.ok("echo 'poweroff force wait timeout=10s' > " + umlWeb1 + "/power")
	umlGone(t, dir)
	if ports := d.read("hosts/lab01/vswitch/sw0/ports"); strings.Contains(ports, "web1") {
		t.Fatalf("TAP still on sw0 after off:\n%s", ports)
	}
	if r := ip("link", "show", "web1"); r.code == 0 {
		t.Fatalf("TAP web1 left after off:\n%s", r.out)
	}
	// Removed while on: rmdir refuses (power it off first).
	d.umlBoot()
	d.fails("rmdir "+umlWeb1, "Device or resource busy")
	d.ok("echo 'off wait timeout=10s' > " + umlWeb1 + "/power")
	d.ok("rmdir " + umlWeb1)
	umlRemoved(t, dir, "web1")
	if r := ip("link", "show", "web1"); r.code == 0 {
		t.Fatalf("TAP web1 left after rmdir:\n%s", r.out)
	}

	// A TAP of the host's name that machinefs did not make is neither
	// taken nor deleted.
	if r := ip("tuntap", "add", "web2", "mode", "tap"); r.code != 0 {
		t.Fatalf("ip tuntap add: %s", r.err)
	}
	d.addHost("lab01/subhosts/web2", umlh.Config(root, dir, "uml.net = sw0:02:6d:66:75:00:02"))
	d.fails("echo on > hosts/lab01/subhosts/web2/power", "File exists")
	if st := d.read("hosts/lab01/subhosts/web2/state"); !strings.Contains(stateField(st, "last-error"), "did not make it") {
		t.Fatalf("state after on:\n%s", st)
	}
	d.ok("rmdir hosts/lab01/subhosts/web2")
	if r := ip("link", "show", "web2"); r.code != 0 {
		t.Fatalf("rmdir deleted a TAP machinefs did not make: %s", r.err)
	}
}

// uml.root = ubd0=/IMAGE: a guest boots from an ext4 image made by the
// test; ubd0=/COW,/BACKING writes to the COW file only.
func TestUMLImage(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	img := disk.Ext4(t, root, "24M")
	d := start(t)
	d.addHost("lab01", "drivers = sim\nsim.initial = on\nlocal = yes")
	d.addHost("lab01/subhosts/web1", umlh.ConfigRoot("ubd0="+img, dir))
	d.umlBoot()
	if got := d.umlConsole(umlWeb1, "config ubd0"); !strings.Contains(got, img) {
		t.Fatalf("config ubd0: %q, want %s", got, img)
	}
	d.ok("echo 'poweroff wait timeout=20s' > " + umlWeb1 + "/power")
	if r := stateField(d.read(umlWeb1+"/state"), "reason"); !strings.Contains(r, "poweroff") || !strings.Contains(r, "status 0") {
		t.Fatalf("after poweroff: reason %q", r)
	}
	umlGone(t, dir)

	// Copy-on-write over the same image: the backing file stays as it was.
	sum := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", sha256.Sum256(b))
	}
	before := sum(img)
	cow := filepath.Join(t.TempDir(), "web2.cow")
	const web2 = "hosts/lab01/subhosts/web2"
	d.addHost("lab01/subhosts/web2", umlh.ConfigRoot("ubd0="+cow+","+img, dir))
	d.umlBootHost(web2)
	if _, err := os.Stat(cow); err != nil {
		t.Fatalf("no COW file: %v", err)
	}
	d.ok("echo 'poweroff wait timeout=20s' > " + web2 + "/power")
	umlGoneHost(t, dir, "web2")
	if sum(img) != before {
		t.Fatal("the backing image changed under a COW guest")
	}
}

// BenchmarkUMLVersion compares a console round trip through the tree with
// uml_mconsole's, two ways: "tree" opens the console, writes version,
// reads the reply and closes, every time; "session" writes and reads on a
// console kept open (`exec 3<>console`, as a script that asks repeatedly
// does). The three are interleaved (one uml_mconsole call every tenth
// iteration) so that all meet the same guest and the same neighbours on a
// shared machine. Stalls of the guest or the machine hit every side alike
// and dominate the means, so the medians are reported next to them.
// ns/op is one tree plus one session round trip.
func BenchmarkUMLVersion(b *testing.B) {
	umlh.Skip(b)
	if _, err := exec.LookPath("uml_mconsole"); err != nil {
		b.Skip("no uml_mconsole (apt-get install uml-utilities)")
	}
	root, dir := umlh.Root(b), umlh.Dir(b)
	etc := b.TempDir()
	os.MkdirAll(filepath.Join(etc, "hosts/lab01/subhosts"), 0o755)
	os.WriteFile(filepath.Join(etc, "hosts/lab01.conf"), []byte("drivers = sim\nsim.initial = on\nlocal = yes\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "hosts/lab01/subhosts/web1.conf"), []byte(umlh.Config(root, dir)+"\n"), 0o644)
	d, _ := startBench(b, umlWeb1+"/power", "-c", etc)
	powerPath := filepath.Join(d.mnt, umlWeb1, "power")
	bootStart := time.Now()
	if err := os.WriteFile(powerPath, []byte("on wait timeout=30s\n"), 0); err != nil {
		state, _ := os.ReadFile(filepath.Join(d.mnt, umlWeb1, "state"))
		events, _ := os.ReadFile(filepath.Join(d.mnt, umlWeb1, "events.log"))
		b.Fatalf("%v\nstate:\n%s\nevents:\n%s", err, state, events)
	}
	boot := time.Since(bootStart)
	defer os.WriteFile(powerPath, []byte("off wait timeout=10s\n"), 0)
	consolePath := filepath.Join(d.mnt, umlWeb1, "console")
	buf := make([]byte, 512)
	tree := func() {
		fd, err := syscall.Open(consolePath, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := syscall.Write(fd, []byte("version\n")); err != nil {
			b.Fatal(err)
		}
		n, err := syscall.Read(fd, buf)
		syscall.Close(fd)
		if err != nil || !strings.HasPrefix(string(buf[:n]), "OK Linux") {
			b.Fatalf("reply %q %v", buf[:n], err)
		}
	}
	sock := filepath.Join(dir, "web1", "mconsole")
	tool := func() {
		out, err := exec.Command("uml_mconsole", sock, "version").Output()
		if err != nil || !strings.HasPrefix(string(out), "OK Linux") {
			b.Fatalf("uml_mconsole: %q %v", out, err)
		}
	}
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	sfd, err := syscall.Open(consolePath, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer syscall.Close(sfd)
	session := func() {
		if _, err := syscall.Write(sfd, []byte("version\n")); err != nil {
			b.Fatal(err)
		}
		n, err := syscall.Read(sfd, buf)
		if err != nil || !strings.HasPrefix(string(buf[:n]), "OK Linux") {
			b.Fatalf("session reply %q %v", buf[:n], err)
		}
	}
	// Let the guest finish booting, then warm every path.
	for range 200 {
		tree()
		session()
	}
	for range 20 {
		tool()
	}
	var trees, sessions, tools []time.Duration
	b.ResetTimer()
	i := 0
	for b.Loop() {
		trees = append(trees, timed(tree))
		sessions = append(sessions, timed(session))
		if i++; i%10 == 0 {
			b.StopTimer()
			tools = append(tools, timed(tool))
			b.StartTimer()
		}
	}
	b.StopTimer()
	if len(tools) == 0 {
		tools = append(tools, timed(tool))
	}
	treeMean, treeMedian := meanMedian(trees)
	sessMean, sessMedian := meanMedian(sessions)
	toolMean, toolMedian := meanMedian(tools)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(toolMean), "uml_mconsole-mean-us")
	b.ReportMetric(us(toolMedian), "uml_mconsole-median-us")
	b.ReportMetric(us(treeMean), "tree-mean-us")
	b.ReportMetric(us(treeMedian), "tree-median-us")
	b.ReportMetric(us(sessMean), "session-mean-us")
	b.ReportMetric(us(sessMedian), "session-median-us")
	b.ReportMetric(float64(toolMean)/float64(treeMean), "tree-x-faster-mean")
	b.ReportMetric(float64(toolMedian)/float64(treeMedian), "tree-x-faster-median")
	b.ReportMetric(float64(toolMean)/float64(sessMean), "session-x-faster-mean")
	b.ReportMetric(float64(toolMedian)/float64(sessMedian), "session-x-faster-median")
	b.ReportMetric(boot.Seconds(), "boot-to-on-s")
}

// meanMedian of durations.
func meanMedian(ds []time.Duration) (mean, median time.Duration) {
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	var sum time.Duration
	for _, d := range sorted {
		sum += d
	}
	return sum / time.Duration(len(sorted)), sorted[len(sorted)/2]
}

// A write-only console query waits for the guest's reply, so that `cat
// console` right after it shows the reply; a signal ends that wait, never
// the query. The guest is stopped behind machinefs's back (SIGSTOP), so
// its reply waits until it runs again (the host's bound is a minute).
func TestUMLConsoleWriterInterruptible(t *testing.T) {
	d, _ := umlDaemon(t, "timeout = 60s", "uml.mconsole-timeout = 60s")
	pid := d.umlBoot()
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Runs before the daemon stops (cleanups run last in, first out).
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGCONT) })
	w := startBash(t, d.mnt, "echo version > "+umlWeb1+"/console")
	select {
	case r := <-w.done:
		t.Fatalf("the writer returned while the guest was stopped: %+v", r)
	case <-time.After(time.Second):
	}
	syscall.Kill(w.cmd.Process.Pid, syscall.SIGINT)
	within(t, "the interrupted console writer", 20*time.Second, w.done)
	if err := syscall.Kill(-pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the query's reply in console once the guest runs", func() bool {
		return strings.HasPrefix(d.read(umlWeb1+"/console"), "OK ")
	})
}
