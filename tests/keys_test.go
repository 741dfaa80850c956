package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeysWrittenAsRead: a config value means the same when it is written
// through the mount and when a driver or the model reads it. Once a bare
// number was refused by the simulator's check ("30" is not a Go duration)
// and read as seconds by the model, and the other way round elsewhere.
// Durations are Go durations or a bare number of seconds, everywhere.
func TestKeysWrittenAsRead(t *testing.T) {
	t.Parallel()
	d := start(t)

	// Accepted when written, and effective as seconds when read: the
	// machine takes an hour to come on, and wait gives up after a second.
	d.addHost("slow", "drivers = sim\nsim.on-delay = 3600\nwait-timeout = 1\ntimeout = 30")
	if cfg := d.read("hosts/slow/config"); !strings.Contains(cfg, "sim.on-delay = 3600") || !strings.Contains(cfg, "timeout = 30") {
		t.Fatalf("config does not read back as written:\n%s", cfg)
	}
	if st := d.read("hosts/slow/state"); strings.Contains(stateField(st, "last-error"), "sim") {
		t.Fatalf("the simulator did not build from the values it accepted:\n%s", st)
	}
	d.fails("echo 'on wait' > hosts/slow/power", "Connection timed out")
	if p := d.read("hosts/slow/power"); p == "on\n" {
		t.Fatalf("sim.on-delay = 3600 read as less than an hour: power %q", p)
	}

	// Refused when written, with EINVAL and a reason in events.log...
	const bad = "sim.on-delay = 2h"
	const reason = `sim.on-delay: "2h": want a duration from 0s to 1h`
	d.addHost("lab01", "drivers = sim")
	d.fails("echo '"+bad+"' >> hosts/lab01/config", "Invalid argument")
	d.fails("echo 'timeout = 30x' >> hosts/lab01/config", "Invalid argument")
	if ev := d.read("hosts/lab01/events.log"); !strings.Contains(ev, reason) {
		t.Fatalf("the refusal does not say %q:\n%s", reason, ev)
	}

	// ...and refused when read from a file edited by hand, for the same
	// reason: the driver is not built from a value it would have refused.
	d.stop()
	if err := os.WriteFile(filepath.Join(d.config, "hosts", "lab01.conf"), []byte("drivers = sim\n"+bad+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start()
	st := d.read("hosts/lab01/state")
	if le := stateField(st, "last-error"); !strings.Contains(le, reason) {
		t.Fatalf("a hand-edited %q: last-error %q, want %q\n%s", bad, le, reason, st)
	}
	// The bare number in the file is read as it was written.
	if st := d.read("hosts/slow/state"); strings.Contains(stateField(st, "last-error"), "sim.on-delay") {
		t.Fatalf("3600 read back differently after a restart:\n%s", st)
	}
	d.fails("echo 'on wait' > hosts/slow/power", "Connection timed out")
}
