package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// serialLine types line into host's serial file and waits for want in the
// console's output: one session open read-write, as a user at the console.
func (d *daemon) serialLine(host, line, want string) {
	d.t.Helper()
	got := d.ok(fmt.Sprintf("exec 3<>%s/serial; printf '%%s\\n' %q >&3; timeout 20 grep -a -m1 -o %q <&3", host, line, want))
	if strings.TrimSpace(got) != want {
		d.t.Fatalf("serial of %s after %q: %q, want %q", host, line, got, want)
	}
}

// An ns subhost whose init is busybox sh is used through serial, as the
// subhost scripts' "control start" gives a shell as the console; after a
// daemon restart the adopted subhost's serial reaches the same shell.
func TestSerialNSShellTree(t *testing.T) {
	t.Parallel()
	e := newNSEnv(t)
	root := e.root("")
	if err := os.WriteFile(filepath.Join(root, "init"), []byte("#!/bin/sh\nexec /bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := start(t)
	s := addSub(d, "mfnsh", e.config("ns.root = "+root))
	d.ok(fmt.Sprintf("echo 'on wait timeout=10s' > %s/power", s))
	d.serialLine(s, "echo hello-$((6*7))", "hello-42")
	pid := stateField(d.read(s+"/state"), "pid")
	d.stop()
	d.start()
	eventually(t, "adopted", func() bool { return d.read(s+"/power") == "on\n" })
	if p := stateField(d.read(s+"/state"), "pid"); p != pid {
		t.Fatalf("after the restart pid %s, want %s", p, pid)
	}
	d.serialLine(s, "echo again-$((2*3))", "again-6")
	d.ok(fmt.Sprintf("echo 'off wait timeout=10s' > %s/power", s))
	if _, err := os.Stat(filepath.Join(e.state, "mfnsh", "console.sock")); err == nil {
		t.Fatal("console socket left after off")
	}
}
