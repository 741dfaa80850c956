package uml_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/drivers/uml"
	"github.com/machinefs/machinefs/machine"
	diskimg "github.com/machinefs/machinefs/tests/harness/disk"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// backupInit is a guest /init that, on each ctrl-alt-del (mconsole cad),
// writes "payload N" to /data and then says "written N" through
// /proc/mconsole: the write has completed (write(2) returned and the
// file is closed) when the host sees the notification. It sets the
// console log level as Debian does ("4 4 1 7"), which hides the kernel's
// "Emergency Sync complete" from the console.
const backupInit = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo 0 > /proc/sys/kernel/ctrl-alt-del
echo 4 4 1 7 > /proc/sys/kernel/printk
n=0
trap 'n=$((n+1)); echo "payload $n" > /data; echo "written $n" > /proc/mconsole' INT
echo booted > /proc/mconsole
while :; do sleep 2147483647 & wait $!; done
`

// readImageFile reads path from the ext4 image img as a user who mounts
// the copy would see it: the journal is replayed first (e2fsck on a copy
// of the copy, so the backup itself is left as made).
func readImageFile(t *testing.T, img, path string) string {
	t.Helper()
	for _, tool := range []string{"e2fsck", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install e2fsprogs)", tool)
		}
	}
	work := filepath.Join(t.TempDir(), "check.ext4")
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(work, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// Exit 1: errors corrected (the journal replayed); 0: clean.
	if out, err := exec.Command("e2fsck", "-fy", work).CombinedOutput(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck on the backup: %v\n%s", err, out)
		}
	}
	out, err := exec.Command("debugfs", "-R", "cat "+path, work).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// bootedGuest starts a guest with cfg and waits for its init's "booted".
// When the test ends the guest is powered off and the driver closed.
func bootedGuest(t *testing.T, cfg config) (*uml.Machine, *recorder) {
	t.Helper()
	r := &recorder{}
	m := newMachine(t, cfg, r)
	t.Cleanup(func() { m.Close() })
	ctx := context.Background()
	if err := m.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Power(ctx, machine.Command{Verb: "off"})
		waitFor(t, "guest off", func() bool { return r.last().Power == machine.PowerOff })
	})
	waitFor(t, "notify booted", func() bool { return r.hasEvent("notify", "booted") })
	return m, r
}

// A backup of an image root holds every write that completed before the
// command was issued: the guest writes a file, says so, and the backup
// made at once has it.
func TestUMLBackupImageHasLastWrite(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(backupInit), 0o755); err != nil {
		t.Fatal(err)
	}
	img := diskimg.Ext4(t, root, "24M")
	bk := t.TempDir()
	cfg := config{"uml.root": "ubd0=" + img, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init", "uml.backup-dir": bk}
	m, r := bootedGuest(t, cfg)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := m.Console(ctx, "cad", nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("written %d", i), func() bool { return r.hasEvent("notify", fmt.Sprintf("written %d", i)) })
		// A relative DEST is taken in uml.backup-dir.
		name := fmt.Sprintf("backup%d.ext4", i)
		arg := name
		if i == 2 {
			arg = filepath.Join(bk, name)
		}
		msg, err := m.Console(ctx, "backup", []string{arg})
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		t.Logf("backup %d: %s", i, msg)
		dest := filepath.Join(bk, name)
		// The daemon made the copy: root's, for root only.
		if fi, err := os.Lstat(dest); err != nil || fi.Mode() != 0o600 {
			t.Fatalf("backup %d: %s: %v, want a regular file of mode 0600", i, dest, fileMode(fi, err))
		}
		if got, want := strings.TrimSpace(readImageFile(t, dest, "/data")), fmt.Sprintf("payload %d", i); got != want {
			t.Fatalf("backup %d: /data in the copy is %q, want %q", i, got, want)
		}
		if p := r.last().Power; p != machine.PowerOn {
			t.Fatalf("after backup %d: power %s, want on", i, p)
		}
		// The console log level raised for the sync report is the
		// guest's own again.
		if lv, err := m.Console(ctx, "proc", []string{"sys/kernel/printk"}); err != nil || strings.Join(strings.Fields(lv), " ") != "4 4 1 7" {
			t.Fatalf("after backup %d: printk levels %q %v, want the guest's 4 4 1 7", i, lv, err)
		}
	}
}

// backup DEST is a new path in uml.backup-dir: an operator names DEST and
// the daemon writes the guest's files as root, so a path outside, or
// one that leads outside through a symbolic link, is refused before the
// guest is disturbed, and nothing is written there.
func TestUMLBackupDest(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	bk, outside := t.TempDir(), t.TempDir()
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init", "uml.backup-dir": bk}
	if err := os.Mkdir(filepath.Join(bk, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"out":      outside,                          // a directory outside
		"dangling": filepath.Join(outside, "new"),    // DEST itself a link, to a path outside that does not exist
		"in":       filepath.Join(bk, "sub"),         // a directory inside
		"cron":     filepath.Join(outside, "cron.d"), // a dangling directory outside
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(bk, name)); err != nil {
			t.Fatal(err)
		}
	}
	m, r := bootedGuest(t, cfg)
	ctx := context.Background()

	for _, c := range []struct {
		dest  string
		errno syscall.Errno
		words string
	}{
		{filepath.Join(outside, "x"), syscall.EACCES, "outside uml.backup-dir " + bk},
		{filepath.Join(bk, "out", "x"), syscall.EACCES, "outside uml.backup-dir"},
		{"out/x", syscall.EACCES, "outside uml.backup-dir"},
		{"../x", syscall.EACCES, "outside uml.backup-dir"},
		{bk, syscall.EEXIST, "uml.backup-dir itself"},
		{"dangling", syscall.EEXIST, "exists"},
		{filepath.Join(bk, "dangling"), syscall.EEXIST, "exists"},
		{"cron/x", syscall.ENOENT, "cron"},
		{"sub", syscall.EEXIST, "exists"},
		{"nodir/x", syscall.ENOENT, "nodir"},
		{filepath.Join(root, "backup"), syscall.EACCES, "outside uml.backup-dir"},
	} {
		_, err := m.Console(ctx, "backup", []string{c.dest})
		if machine.ErrnoOf(err) != c.errno || !strings.Contains(fmt.Sprint(err), c.words) {
			t.Errorf("backup %s: %v (%v), want %v and %q", c.dest, err, machine.ErrnoOf(err), c.errno, c.words)
		}
	}
	if ents, err := os.ReadDir(outside); err != nil || len(ents) != 0 {
		t.Fatalf("after refused backups, %s holds %d entries (%v), want none", outside, len(ents), err)
	}
	if p := r.last().Power; p != machine.PowerOn {
		t.Fatalf("after refused backups: power %s, want on", p)
	}
	r.mu.Lock()
	for _, e := range r.events {
		if e[0] == string(machine.EventBackup) {
			t.Errorf("a refused backup got as far as an event: %q", e[1])
		}
	}
	r.mu.Unlock()

	// Accepted: relative, absolute, and through a link that stays inside.
	for _, c := range []struct{ arg, made string }{
		{"copy1", filepath.Join(bk, "copy1")},
		{filepath.Join(bk, "sub", "copy2"), filepath.Join(bk, "sub", "copy2")},
		{"in/copy3", filepath.Join(bk, "sub", "copy3")},
	} {
		msg, err := m.Console(ctx, "backup", []string{c.arg})
		if err != nil {
			t.Fatalf("backup %s: %v", c.arg, err)
		}
		if !strings.Contains(msg, " to "+c.made+":") {
			t.Errorf("backup %s: %q, want it to name %s", c.arg, msg, c.made)
		}
		// The copy's top is the daemon's, for root only; inside, the
		// guest's files as they are.
		if fi, err := os.Lstat(c.made); err != nil || fi.Mode() != fs.ModeDir|0o700 {
			t.Fatalf("backup %s: %s: %v, want a directory of mode 0700", c.arg, c.made, fileMode(fi, err))
		}
		if b, err := os.ReadFile(filepath.Join(c.made, "init")); err != nil || string(b) != umlh.Init {
			t.Fatalf("backup %s: no /init in the copy: %v", c.arg, err)
		}
		if l, err := os.Readlink(filepath.Join(c.made, "bin", "sh")); err != nil || l != "busybox" {
			t.Fatalf("backup %s: bin/sh in the copy: %q %v, want a link to busybox", c.arg, l, err)
		}
	}
	if p := r.last().Power; p != machine.PowerOn {
		t.Fatalf("after the backups: power %s, want on", p)
	}
}

// fileMode says what Lstat found.
func fileMode(fi fs.FileInfo, err error) any {
	if err != nil {
		return err
	}
	return fi.Mode()
}
