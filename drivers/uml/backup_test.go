package uml_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
	cfg := config{"uml.root": "ubd0=" + img, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}
	r := &recorder{}
	m := newMachine(t, cfg, r)
	defer m.Close()
	ctx := context.Background()
	if err := m.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		m.Power(ctx, machine.Command{Verb: "off"})
		waitFor(t, "guest off", func() bool { return r.last().Power == machine.PowerOff })
	}()
	waitFor(t, "notify booted", func() bool { return r.hasEvent("notify", "booted") })
	for i := 1; i <= 3; i++ {
		if _, err := m.Console(ctx, "cad", nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("written %d", i), func() bool { return r.hasEvent("notify", fmt.Sprintf("written %d", i)) })
		dest := filepath.Join(t.TempDir(), "backup.ext4")
		msg, err := m.Console(ctx, "backup", []string{dest})
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		t.Logf("backup %d: %s", i, msg)
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
