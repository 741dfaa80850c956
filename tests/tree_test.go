package tests

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRootFiles(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	readme := d.read("README")
	for _, w := range []string{"hosts/NAME/", "power", "wait", "label=NAME", "EBUSY", "ETIMEDOUT", "sim.on-delay", "ipmi.address", "wol.broadcast"} {
		if !strings.Contains(readme, w) {
			t.Errorf("README lacks %q", w)
		}
	}
	if v := d.read("version"); !strings.HasPrefix(v, "machinefs ") {
		t.Fatalf("version = %q", v)
	}
	// events and vswitch/ are reached by name, not listed (walk_test.go).
	ls := d.ok("ls hosts/lab01; cd hosts/lab01 && ls -d events vswitch")
	for _, f := range []string{"power", "state", "console", "config", "events", "events.log", "vswitch", "subhosts"} {
		if !strings.Contains(ls, f+"\n") {
			t.Errorf("hosts/lab01 lacks %s: %q", f, ls)
		}
	}
	// A simulated machine has no serial console: no serial file.
	d.fails("ls -d hosts/lab01/serial", "No such file or directory")
	if subs := d.ok("ls hosts/lab01/subhosts"); subs != "vm1\nvm2\n" {
		t.Fatalf("subhosts = %q", subs)
	}
	if p := d.read("hosts/lab01/subhosts/vm1/power"); p != "off\n" {
		t.Fatalf("subhost power = %q", p)
	}
	d.fails("echo hi > hosts/lab01/state", "Permission denied")
	// ctl reads back what it takes, so walkers copy it (walk_test.go).
	if u := d.read("ctl"); !strings.Contains(u, "add NAME") {
		t.Fatalf("cat ctl = %q", u)
	}
}

func TestConfigThroughTree(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.ok("mkdir hosts/c1")
	d.ok(`cat > hosts/c1/config <<'EOF'
# the lab's first machine
drivers = sim
label = rack 3, slot 7     # where it is
sim.on-delay = 200ms
EOF`)
	cfg := d.read("hosts/c1/config")
	for _, w := range []string{"drivers = sim\n", "label = rack 3, slot 7     # where it is\n", "sim.on-delay = 200ms\n"} {
		if !strings.Contains(cfg, w) {
			t.Fatalf("config lacks %q:\n%s", w, cfg)
		}
	}
	if l := stateField(d.read("hosts/c1/state"), "label"); l != "rack 3, slot 7" {
		t.Fatalf("label in state = %q", l)
	}
	// A hand-written comment in the file on disk survives a write through
	// the tree, and the key's line is rewritten in place.
	file := filepath.Join(d.config, "hosts/c1.conf")
	data, _ := os.ReadFile(file)
	os.WriteFile(file, append([]byte("# hand-written note\n"), data...), 0o644)
	d.stopStart()
	d.ok("echo 'sim.on-delay = 50ms' > hosts/c1/config")
	data, _ = os.ReadFile(file)
	if !strings.Contains(string(data), "# hand-written note\n") || !strings.Contains(string(data), "sim.on-delay = 50ms\n") || strings.Contains(string(data), "200ms") {
		t.Fatalf("file on disk after a write:\n%s", data)
	}
	// "key =" removes a key.
	d.ok("echo 'label =' > hosts/c1/config")
	if strings.Contains(d.read("hosts/c1/config"), "label") {
		t.Fatal("label not removed")
	}
	// Unknown keys and bad values: EINVAL, nothing changes, reason in events.
	before := d.read("hosts/c1/config")
	d.fails("echo 'colour = blue' > hosts/c1/config", "Invalid argument")
	d.fails("echo 'sim.on-delay = soon' > hosts/c1/config", "Invalid argument")
	d.fails("echo 'drivers = teleport' > hosts/c1/config", "Invalid argument")
	d.fails("echo 'no equals sign' > hosts/c1/config", "Invalid argument")
	d.fails(`/usr/bin/printf 'sim.off-delay = 1s\ncolour = blue\n' > hosts/c1/config`, "Invalid argument")
	if after := d.read("hosts/c1/config"); after != before {
		t.Fatalf("a refused write changed the config:\n%s\n---\n%s", before, after)
	}
	// No temporary files are left beside the config.
	ents, _ := os.ReadDir(filepath.Join(d.config, "hosts"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("temporary file left in config dir: %s", e.Name())
		}
	}
}

// stopStart restarts the daemon on the same mountpoint and config.
func (d *daemon) stopStart() {
	d.t.Helper()
	d.stop()
	d.start()
}

func TestConfigSurvivesRestart(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("keep", "drivers = sim\nlabel = survivor\nsim.initial = on")
	d.ok("mkdir hosts/keep/subhosts/inner && echo 'drivers = sim' > hosts/keep/subhosts/inner/config")
	d.stopStart()
	if l := stateField(d.read("hosts/keep/state"), "label"); l != "survivor" {
		t.Fatalf("label after restart = %q", l)
	}
	if p := d.read("hosts/keep/power"); p != "on\n" {
		t.Fatalf("power after restart = %q", p)
	}
	if p := d.read("hosts/keep/subhosts/inner/power"); p != "off\n" {
		t.Fatalf("subhost after restart: power %q", p)
	}
}

func TestMkdirRmdir(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.ok("mkdir hosts/m1")
	d.fails("mkdir hosts/m1", "File exists")
	d.fails("mkdir 'hosts/bad name'", "Invalid argument")
	if _, err := os.Stat(filepath.Join(d.config, "hosts/m1.conf")); err != nil {
		t.Fatalf("mkdir did not create the config file: %v", err)
	}
	d.ok("echo 'drivers = sim' > hosts/m1/config && echo 'on wait' > hosts/m1/power")
	d.fails("rmdir hosts/m1", "Device or resource busy")
	d.ok("echo 'off wait' > hosts/m1/power")
	// A running subhost keeps its host too.
	d.ok("mkdir hosts/m1/subhosts/s && echo 'drivers = sim' > hosts/m1/subhosts/s/config && echo 'on wait' > hosts/m1/subhosts/s/power")
	d.fails("rmdir hosts/m1", "Device or resource busy")
	d.ok("echo 'off wait' > hosts/m1/subhosts/s/power")
	d.ok("rmdir hosts/m1")
	if ls := d.ok("ls hosts"); ls != "" {
		t.Fatalf("hosts after rmdir: %q", ls)
	}
	if _, err := os.Stat(filepath.Join(d.config, "hosts/m1.conf")); !os.IsNotExist(err) {
		t.Fatalf("config file still there after rmdir: %v", err)
	}
}

func TestCtl(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.ok("echo 'add web1 drivers=sim label=frontend' > ctl")
	if ls := d.ok("ls hosts"); ls != "web1\n" {
		t.Fatalf("ls hosts = %q", ls)
	}
	if l := stateField(d.read("hosts/web1/state"), "label"); l != "frontend" {
		t.Fatalf("label = %q", l)
	}
	d.ok("echo 'add web1/subhosts/app drivers=sim' > ctl")
	if ls := d.ok("ls hosts/web1/subhosts"); ls != "app\n" {
		t.Fatalf("subhosts = %q", ls)
	}
	d.fails("echo 'add web1' > ctl", "File exists")
	d.fails("echo 'add web2 colour=blue' > ctl", "Invalid argument")
	d.fails("echo 'launch web2' > ctl", "Invalid argument")
	if ev := d.read("events.log"); !strings.Contains(ev, `/ ctl "launch web2" uid=0`) || !strings.Contains(ev, `unknown command "launch"`) {
		t.Fatalf("the refused ctl line's reason is not in events:\n%s", ev)
	}
	d.fails("echo 'remove nosuch' > ctl", "No such file or directory")
	d.ok("echo 'remove web1' > ctl")
	if ls := d.ok("ls hosts"); ls != "" {
		t.Fatalf("ls hosts after remove = %q", ls)
	}
	if ev := d.read("events.log"); !strings.Contains(ev, "hosts/web1 removed uid=0") {
		t.Fatalf("removal not in events:\n%s", ev)
	}
}

func TestReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("old", "drivers = sim")
	os.WriteFile(filepath.Join(d.config, "hosts/new.conf"), []byte("# added by config management\ndrivers = sim\nlabel = from-puppet\n"), 0o644)
	os.Remove(filepath.Join(d.config, "hosts/old.conf"))
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "reload", func() bool { return d.ok("ls hosts") == "new\n" })
	if l := stateField(d.read("hosts/new/state"), "label"); l != "from-puppet" {
		t.Fatalf("label = %q", l)
	}
}

// A daemon killed with SIGKILL leaves a dead mount ("Transport endpoint is
// not connected"); the next start clears it and mounts.
func TestRestartAfterKill(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("k", "drivers = sim")
	d.cmd.Process.Kill()
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("machinefs did not die on SIGKILL")
	}
	r := runIn(t, filepath.Dir(d.mnt), "ls", "mnt/hosts")
	if !strings.Contains(r.err, "Transport endpoint is not connected") {
		t.Fatalf("after SIGKILL: %+v (want a dead mount)", r)
	}
	d.start()
	if ls := d.ok("ls hosts"); ls != "k\n" {
		t.Fatalf("after restart: %q", ls)
	}
}

func TestReadOnlyMount(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo", "-o", "ro")
	if p := d.read("hosts/lab01/power"); p != "off\n" {
		t.Fatalf("power = %q", p)
	}
	d.fails("echo on > hosts/lab01/power", "Read-only file system")
	d.fails("mkdir hosts/x", "Read-only file system")
}

// Control files are writable by root and the operators group only; the
// kernel checks the modes (default_permissions) and a denied write is
// EACCES, never a silent success.
func TestAccess(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv missing: install util-linux (make test does)")
	}
	d := start(t, "--demo", "-o", "allow_other,group=4242")
	as := func(gid, script string) result {
		return runIn(t, d.mnt, "setpriv", "--reuid=65534", "--regid=65534", "--groups="+gid, "bash", "-c", script)
	}
	r := as("65534", "cat hosts/lab01/power hosts/lab01/state >/dev/null && echo on > hosts/lab01/power")
	if r.code == 0 || !strings.Contains(r.err, "Permission denied") {
		t.Fatalf("nobody wrote power: %+v", r)
	}
	if p := d.read("hosts/lab01/power"); p != "off\n" {
		t.Fatalf("a denied write changed power to %q", p)
	}
	as("65534", "mkdir hosts/intruder")
	if _, err := os.Stat(filepath.Join(d.mnt, "hosts/intruder")); err == nil {
		t.Fatal("nobody could mkdir a host")
	}
	// A member of the operators group may.
	r = as("4242", "echo on > hosts/lab01/power")
	if r.code != 0 {
		t.Fatalf("operator could not write power: %+v", r)
	}
	st := d.read("hosts/lab01/state")
	if !strings.Contains(stateField(st, "last-command"), "uid=65534 gid=65534") {
		t.Fatalf("last-command does not record the operator's uid/gid:\n%s", st)
	}
	ls := d.ok("ls -ln hosts/lab01/power hosts/lab01/state hosts/lab01/console ctl")
	for _, w := range []string{"-rw-rw-r-- 1 0 4242", "-r--r--r-- 1 0 4242", "-rw-rw---- 1 0 4242"} {
		if !strings.Contains(ls, w) {
			t.Fatalf("modes: want %q in\n%s", w, ls)
		}
	}
}

// mount -t fuse.machinefs runs mount.fuse.machinefs CONFIGDIR MOUNTPOINT
// -o OPTS, which must return once mounted and leave a daemon behind that
// umount stops.
func TestMountHelper(t *testing.T) {
	t.Parallel()
	base := openDir(t)
	helper := filepath.Join(base, "mount.fuse.machinefs")
	if err := os.Symlink(binary, helper); err != nil {
		t.Fatal(err)
	}
	mnt, conf := filepath.Join(base, "mnt"), filepath.Join(base, "etc")
	os.MkdirAll(mnt, 0o755)
	os.MkdirAll(filepath.Join(conf, "hosts"), 0o755)
	os.WriteFile(filepath.Join(conf, "hosts/fstab1.conf"), []byte("drivers = sim\n"), 0o644)
	done := make(chan result, 1)
	go func() {
		done <- runIn(t, base, helper, conf, mnt, "-o", "rw,noauto,_netdev,allow_other,default_permissions")
	}()
	select {
	case r := <-done:
		if r.code != 0 {
			t.Fatalf("mount helper: %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("mount helper did not return: it must detach once mounted")
	}
	t.Cleanup(func() {
		if mounted(mnt) {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	if !mounted(mnt) {
		t.Fatal("not mounted after the helper returned")
	}
	if ls := runIn(t, mnt, "ls", "hosts"); ls.out != "fstab1\n" {
		t.Fatalf("ls hosts = %+v", ls)
	}
	src := runIn(t, base, "findmnt", "-n", "-o", "SOURCE,FSTYPE", mnt)
	if !strings.Contains(src.out, conf) || !strings.Contains(src.out, "fuse.machinefs") {
		t.Fatalf("findmnt: %q, want the config dir as source and type fuse.machinefs", src.out)
	}
	if r := runIn(t, base, "umount", mnt); r.code != 0 {
		t.Fatalf("umount: %+v", r)
	}
	eventually(t, "daemon exit after umount", func() bool {
		return runIn(t, base, "pgrep", "-f", " "+conf+" "+mnt+" ").code != 0
	})
}

// -o log=FILE: a daemon the mount helper detached logs to the file, and
// SIGHUP reopens it, so logrotate can move it away.
func TestMountHelperLogFile(t *testing.T) {
	t.Parallel()
	base := openDir(t)
	helper := filepath.Join(base, "mount.fuse.machinefs")
	if err := os.Symlink(binary, helper); err != nil {
		t.Fatal(err)
	}
	mnt, conf, logPath := filepath.Join(base, "mnt"), filepath.Join(base, "etc"), filepath.Join(base, "log", "machinefs.log")
	os.MkdirAll(mnt, 0o755)
	os.MkdirAll(filepath.Join(conf, "hosts"), 0o755)
	if r := runIn(t, base, helper, conf, mnt, "-o", "log="+logPath+",statedir="+filepath.Join(base, "state")); r.code != 0 {
		t.Fatalf("mount helper: %+v", r)
	}
	t.Cleanup(func() {
		if mounted(mnt) {
			runIn(t, base, "umount", mnt)
		}
	})
	logged := func(what string) bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), what)
	}
	eventually(t, "mounted in the log file", func() bool { return logged("msg=mounted") })
	if fi, err := os.Stat(logPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("log file mode: %v %v, want 0600", fi, err)
	}
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	pid := strings.Fields(runIn(t, base, "pgrep", "-f", " "+conf+" "+mnt+" ").out)
	if len(pid) != 1 {
		t.Fatalf("daemon pid: %q", pid)
	}
	if r := runIn(t, base, "kill", "-HUP", pid[0]); r.code != 0 {
		t.Fatalf("kill -HUP: %+v", r)
	}
	d := &daemon{t: t, mnt: mnt}
	d.ok("mkdir hosts/rot1")
	eventually(t, "events after SIGHUP in the new log file", func() bool { return logged("hosts/rot1") })
	// Right after a change the poker may still hold a file open for a
	// moment (it writes through the mount to wake inotify watchers), and
	// umount(8) then says "target is busy": retry, as a user would.
	eventually(t, "umount", func() bool { return runIn(t, base, "umount", mnt).code == 0 })
}

// Under systemd (Type=notify) the daemon says READY=1 once mounted,
// RELOADING=1/READY=1 around SIGHUP and STOPPING=1 on SIGTERM.
func TestSdNotify(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(openDir(t), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func() string {
		select {
		case m := <-msgs:
			return m
		case <-time.After(10 * time.Second):
			return "<nothing>"
		}
	}
	d := startEnv(t, []string{"NOTIFY_SOCKET=" + sock}, "--demo")
	if m := next(); m != "READY=1" {
		t.Fatalf("first message %q, want READY=1", m)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	// MONOTONIC_USEC (CLOCK_MONOTONIC) is what Type=notify-reload needs.
	a, b := next(), next()
	usec, ok := strings.CutPrefix(a, "RELOADING=1\nMONOTONIC_USEC=")
	var now unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
	if n, err := strconv.ParseInt(usec, 10, 64); !ok || err != nil || n <= 0 || n > now.Nano()/1000 || b != "READY=1" {
		t.Fatalf("reload: %q %q", a, b)
	}
	d.stop()
	if m := next(); m != "STOPPING=1" {
		t.Fatalf("stop: %q", m)
	}
}
