package tests

import (
	"os"
	"path/filepath"
	"testing"

	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// A UML guest's console is its serial file: its boot lines, a shell on
// the console answering a typed command, and the same after a daemon
// restart (the console's holder kept it meanwhile). One boot.
func TestSerialUMLTree(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	rc := "#!/bin/sh\nmount -t devtmpfs dev /dev 2>/dev/null\nsh -i </dev/console >/dev/console 2>&1 &\n"
	if err := os.WriteFile(filepath.Join(root, "etc/rc"), []byte(rc), 0o755); err != nil {
		t.Fatal(err)
	}
	d := start(t)
	d.addHost("lab01", "drivers = sim\nsim.initial = on\nlocal = yes")
	d.addHost("lab01/subhosts/web1", umlh.Config(root, dir, "uml.poweroff-timeout = 5s"))
	pid := d.umlBoot()
	if got := d.ok("timeout 20 grep -a -m1 -o 'Run /init as init process' " + umlWeb1 + "/serial"); got != "Run /init as init process\n" {
		t.Fatalf("boot lines: %q", got)
	}
	d.serialLine(umlWeb1, "echo uml-$((6*7))", "uml-42")
	d.stop()
	d.start()
	d.umlWaitPower(umlWeb1, "on")
	if !umlAlive(pid) {
		t.Fatalf("guest %d did not survive the restart", pid)
	}
	d.serialLine(umlWeb1, "echo again-$((2*3))", "again-6")
	d.ok("echo 'off wait timeout=20s' > " + umlWeb1 + "/power")
}
