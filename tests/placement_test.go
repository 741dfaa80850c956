package tests

import (
	"strings"
	"testing"
)

// A subhost runs on its host's machine, so it needs an agent there: on a
// single machine, the host machinefs runs on (local = yes). A real
// driver under any other host was run here without a word; now it is
// refused with ENOTSUP and the reason, and a simulation may go anywhere.
// And only one host can be the machine machinefs runs on.
func TestPlacement(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("far", "drivers = sim")
	d.addHost("me", "drivers = sim\nlocal = yes")
	d.ok("mkdir hosts/far/subhosts/vm")
	d.fails("echo 'drivers = ns' > hosts/far/subhosts/vm/config", "Operation not supported")
	if ev := d.read("hosts/far/subhosts/vm/events.log"); !strings.Contains(ev, "is not the machine machinefs runs on") {
		t.Fatalf("events.log does not say why:\n%s", ev)
	}
	d.fails("echo 'add far/subhosts/vm2 drivers=uml' > ctl", "Operation not supported")
	d.ok("echo 'drivers = sim' > hosts/far/subhosts/vm/config")
	d.ok("mkdir hosts/me/subhosts/vm && echo 'label = a namespace could run here' > hosts/me/subhosts/vm/config")

	d.fails("echo 'local = yes' > hosts/far/config", "Invalid argument")
	if ev := d.read("hosts/far/events.log"); !strings.Contains(ev, "hosts/me is already the machine machinefs runs on") {
		t.Fatalf("events.log does not say why:\n%s", ev)
	}
	d.fails("echo 'add other drivers=sim local=yes' > ctl", "Invalid argument")
	d.ok("echo 'local = yes' > hosts/me/config")
}
