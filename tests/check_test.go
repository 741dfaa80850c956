package tests

// The tool and permission report (ctys-plugins) through the mounted tree:
// hosts/NAME/check, the tree's check, and the warning a missing piece
// gets in events.log before any command needs it.

import (
	"strings"
	"testing"

	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

// TestCheckMissingBinary: a qemu host whose qemu.binary does not exist
// shows it missing, with the reason, in its check file and in the tree's,
// and events.log warns of it before any command was written.
func TestCheckMissingBinary(t *testing.T) {
	const bin = "/nonexistent/qemu-system-x86_64"
	d := start(t)
	d.addHost("vm1", "drivers = qemu\nqemu.binary = "+bin+"\nqemu.kernel = /etc/hostname\nqemu.accel = tcg")

	warning := "warning check: qemu: missing binary " + bin + " (no such file or directory)"
	eventually(t, "the warning in events.log", func() bool {
		return strings.Contains(d.read("hosts/vm1/events.log"), warning)
	})
	if log := d.read("hosts/vm1/events.log"); strings.Contains(log, " command ") {
		t.Fatalf("events.log has a command, but none was written:\n%s", log)
	}
	check := d.read("hosts/vm1/check")
	t.Logf("hosts/vm1/check:\n%s", check)
	if !strings.Contains(check, "result: missing 1 of") || !strings.Contains(check, "qemu     missing   binary "+bin+" (no such file or directory)") {
		t.Fatalf("hosts/vm1/check does not show the missing binary:\n%s", check)
	}
	if !strings.Contains(check, "qemu     present   kernel /etc/hostname (") {
		t.Fatalf("hosts/vm1/check does not show the kernel present:\n%s", check)
	}
	eventually(t, "the tree's check", func() bool {
		return strings.Contains(d.read("check"), "vm1 missing: qemu binary "+bin+"\n")
	})

	// Read-only, as every file that takes no writes.
	d.fails("echo x > hosts/vm1/check", "Permission denied")
	d.fails("echo x > check", "Permission denied")
	d.fails("rm hosts/vm1/check", "Operation not permitted")
	// A walker finishes and finds it.
	if out := d.ok("grep -rl 'missing' check hosts"); !strings.Contains(out, "hosts/vm1/check") {
		t.Fatalf("grep -r does not find the report:\n%s", out)
	}

	// The binary fixed: the report says ok, with no warning again.
	d.ok("echo 'qemu.binary = /bin/true' > hosts/vm1/config")
	eventually(t, "ok after the fix", func() bool {
		return strings.HasPrefix(d.read("hosts/vm1/check"), "result: ok") && strings.Contains(d.read("check"), "vm1 ok\n")
	})
	if n := strings.Count(d.read("hosts/vm1/events.log"), "missing binary"); n != 1 {
		t.Fatalf("%d warnings of the missing binary, want 1", n)
	}
}

// TestCheckIPMIAuthentication: an ipmi host against ipmi_sim shows BMC
// authentication present (a real session); with a wrong password it is
// missing, with the BMC's refusal as the reason.
func TestCheckIPMIAuthentication(t *testing.T) {
	b := ipmisim.Start(t)
	d := start(t)
	d.addHost("good", ipmiConfig(b.Port, b.Password))
	d.addHost("bad", ipmiConfig(b.Port, "wrong-Pa55"))

	check := d.read("hosts/good/check")
	if !strings.HasPrefix(check, "result: ok") || !strings.Contains(check, "ipmi     present   BMC authentication (session opened as user \""+ipmisim.User+"\"") {
		t.Fatalf("hosts/good/check:\n%s", check)
	}
	check = d.read("hosts/bad/check")
	t.Logf("hosts/bad/check:\n%s", check)
	if !strings.Contains(check, "ipmi     present   BMC reachable") ||
		!strings.Contains(check, "ipmi     missing   BMC authentication (") || !strings.Contains(check, "rejected the credentials") {
		t.Fatalf("hosts/bad/check:\n%s", check)
	}
	eventually(t, "the tree's check", func() bool {
		c := d.read("check")
		return strings.Contains(c, "bad missing: ipmi BMC authentication\n") && strings.Contains(c, "good ok\n")
	})
	eventually(t, "the warning", func() bool {
		return strings.Contains(d.read("hosts/bad/events.log"), "warning check: ipmi: missing BMC authentication (")
	})
	d.noSecretInTree("wrong-Pa55")
	d.noSecretInTree(b.Password)
}
