package tests

// -o status-dir=DIR: the daemon keeps a copy of every host's power and
// state and every group's power on a tmpfs of its own at DIR. What a user
// sees there: the mount's bytes, a write's outcome as soon as the write
// returns, inotify events on the host's directory, and no tmpfs left once
// the daemon stops.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// statusMount returns the mountinfo fields of the topmost mount at dir:
// its fstype, its per-mount options and its superblock options; fstype is
// "" when nothing is mounted there.
func statusMount(t *testing.T, dir string) (fstype, opts, super string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, w := range f {
			if w == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+3 >= len(f) || f[4] != dir {
			continue
		}
		fstype, opts, super = f[sep+1], f[5], f[sep+3]
	}
	return fstype, opts, super
}

// statusDir makes an empty directory for -o status-dir (its tmpfs goes
// before the directory is removed: cleanups run last first).
func statusDir(t *testing.T) string {
	t.Helper()
	return openDir(t)
}

func TestStatusDir(t *testing.T) {
	t.Parallel()
	dir := statusDir(t)
	// allow_other: others may read the mount, so they may read the copy.
	d := start(t, "--demo", "-o", "allow_other,status-dir="+dir)

	fstype, opts, super := statusMount(t, dir)
	if fstype != "tmpfs" {
		t.Fatalf("%s: %q mounted, want tmpfs", dir, fstype)
	}
	for _, o := range []string{"nodev", "nosuid", "noexec"} {
		if !strings.Contains(","+opts+",", ","+o+",") {
			t.Errorf("tmpfs options %q lack %s", opts, o)
		}
	}
	if !strings.Contains(super, "size=262144k") || !strings.Contains(super, "mode=755") {
		t.Errorf("tmpfs superblock options %q, want size=262144k and mode=755", super)
	}

	// The demo's hosts and subhosts: the same bytes as the mount's.
	for _, glob := range []string{"hosts/*/power", "hosts/*/state", "hosts/*/subhosts/*/power", "hosts/*/subhosts/*/state"} {
		mount := d.ok("cat " + glob)
		copied := d.ok("cd " + dir + " && cat " + glob)
		if mount == "" || copied != mount {
			t.Errorf("cat %s: status-dir\n%s\nmount\n%s", glob, copied, mount)
		}
	}
	if ls := d.ok("ls " + dir + "/hosts"); ls != d.ok("ls hosts") {
		t.Errorf("ls status-dir/hosts: %q, mount %q", ls, d.ok("ls hosts"))
	}

	// Read your writes: the copy shows a write's outcome when it returns.
	d.addHost("x", "drivers = sim\nsim.on-delay = 300ms\nsim.off-delay = 100ms")
	if got := d.ok("echo 'on wait' > hosts/x/power && cat " + dir + "/hosts/x/power"); got != "on\n" {
		t.Fatalf("status-dir power right after 'on wait': %q, want on", got)
	}
	out := d.ok("echo 'on' > hosts/x/power && cat " + dir + "/hosts/x/state && echo --- && cat hosts/x/state")
	copied, mount, _ := strings.Cut(out, "---\n")
	if copied != mount || !strings.Contains(copied, `last-command: "on"`) {
		t.Fatalf("state right after a write: status-dir\n%s\nmount\n%s", copied, mount)
	}

	// Groups' power.
	d.ok("mkdir groups/g && echo hosts/x > groups/g/members")
	if got, want := d.ok("cat "+dir+"/groups/g/power"), d.read("groups/g/power"); got != want || got != "on\n" {
		t.Errorf("group power: status-dir %q, mount %q", got, want)
	}

	// inotify on the host's directory wakes for a change the daemon makes
	// after the write returned (the simulator turns off 100ms later).
	lines := watchDir(t, dir+"/hosts/x")
	d.ok("echo off > hosts/x/power")
	waitLine(t, lines, "power MOVED_TO", func() bool {
		return d.ok("cat "+dir+"/hosts/x/power") == "off\n"
	})
	if got := d.ok("cat " + dir + "/groups/g/power"); got != "off\n" {
		t.Errorf("group power after its member went off: %q", got)
	}

	// rmdir of a host removes its directory.
	d.ok("rmdir hosts/x")
	eventually(t, "hosts/x gone from the status-dir", func() bool {
		_, err := os.Stat(dir + "/hosts/x")
		return os.IsNotExist(err)
	})

	// The tmpfs goes with the daemon.
	d.stop()
	if fstype, _, _ := statusMount(t, dir); fstype != "" {
		t.Fatalf("%s still mounted (%s) after the daemon stopped", dir, fstype)
	}
}

// watchDir runs inotifywait -m -e moved_to on dir, the documented way to
// watch a status-dir file (each update is a rename into the directory),
// and returns its lines ("NAME EVENTS").
func watchDir(t *testing.T, dir string) <-chan string {
	t.Helper()
	cmd := exec.Command("inotifywait", "-m", "-e", "moved_to", "--format", "%f %e", dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for sc := bufio.NewScanner(errOut); sc.Scan() && !strings.Contains(sc.Text(), "Watches established"); {
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(out); sc.Scan(); {
			lines <- sc.Text()
		}
	}()
	return lines
}

// waitLine waits for a line of the watcher after which cond holds.
func waitLine(t *testing.T, lines <-chan string, want string, cond func() bool) {
	t.Helper()
	var seen []string
	deadline := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("inotifywait ended; lines %q", seen)
			}
			seen = append(seen, l)
			if l == want && cond() {
				return
			}
		case <-deadline:
			t.Fatalf("no %q from inotifywait after which the change shows; lines %q", want, seen)
		}
	}
}

// A daemon killed with SIGKILL leaves its tmpfs; the next start replaces
// it with a fresh copy (one tmpfs, not two stacked).
func TestStatusDirAfterKill(t *testing.T) {
	t.Parallel()
	dir := statusDir(t)
	d := start(t, "-o", "status-dir="+dir)
	// Without allow_other only the mounter reaches the mount: the copy is
	// its owner's alone too.
	if _, _, super := statusMount(t, dir); !strings.Contains(super, "mode=700") {
		t.Errorf("tmpfs superblock options %q without allow_other, want mode=700", super)
	}
	d.addHost("k", "drivers = sim")
	d.ok("test -f " + dir + "/hosts/k/power")
	d.cmd.Process.Kill()
	<-d.exited
	if fstype, _, _ := statusMount(t, dir); fstype != "tmpfs" {
		t.Fatalf("after SIGKILL: %q at %s, want the dead daemon's tmpfs", fstype, dir)
	}
	os.WriteFile(dir+"/left-behind", []byte("x\n"), 0o644)
	d.start()
	if ls := d.ok("ls " + dir); ls != "groups\nhosts\n" {
		t.Fatalf("status-dir after restart: %q, want a fresh copy", ls)
	}
	if got := d.ok("cat " + dir + "/hosts/k/power"); got != d.read("hosts/k/power") {
		t.Fatalf("power after restart: %q", got)
	}
	d.stop()
	if fstype, _, _ := statusMount(t, dir); fstype != "" {
		t.Fatalf("%s still mounted (%s) after the daemon stopped: the stale tmpfs was stacked", dir, fstype)
	}
}

// A status-dir that is no directory is a bad option: exit 2 with the
// reason, nothing mounted.
func TestStatusDirBad(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]string{
		file:                        "status-dir=" + file + ": not a directory",
		filepath.Join(base, "none"): "status-dir=" + filepath.Join(base, "none") + ": stat " + filepath.Join(base, "none") + ": no such file or directory",
		"relative":                  "status-dir wants an absolute directory path",
		mnt:                         "must be outside the mountpoint",
	} {
		os.MkdirAll(mnt, 0o755)
		cmd := exec.Command(binary, "--demo", "-o", "status-dir="+dir, mnt)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), want) {
			t.Errorf("status-dir=%s: %v, output %q; want exit 2 and %q", dir, err, out, want)
		}
		if mounted(mnt) {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			t.Errorf("status-dir=%s: mounted anyway", dir)
		}
	}
}

// A driver may report while it holds the lock its state lines are read
// under: an ns subhost whose init ends reports off from inside its own
// lock. The copy must render state elsewhere, or the daemon deadlocks on
// the subhost's first poweroff (it did, when the copy rendered a host's
// state in the reporting goroutine).
func TestStatusDirSubhostReportsUnderItsLock(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	dir := statusDir(t)
	d := start(t, "-o", "status-dir="+dir)
	s := addSub(d, "mfnsd", e.config("ns.root = "+e.root("")))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power", s))
	d.ok(fmt.Sprintf("echo 'poweroff wait timeout=5s' > %s/power", s))
	if p := d.read(s + "/power"); p != "off\n" {
		t.Fatalf("mount: power %q after poweroff, want off", p)
	}
	eventually(t, "the copy's state says off", func() bool {
		st, err := os.ReadFile(filepath.Join(dir, s, "state"))
		return err == nil && stateField(string(st), "power") == "off"
	})
}
