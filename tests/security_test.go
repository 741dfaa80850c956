package tests

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// The hostile cases of the security model, run as real users through a
// real mount with -o allow_other,group=OPERATORS,admingroup=ADMINS. The
// test creates the users and groups and removes them when it ends.

// roles are the users and groups one test made.
type roles struct {
	operators, admins string // group names
	operator, admin   string // user names: operator is in operators; admin in both
}

// rolesMu serializes useradd, groupadd, userdel and groupdel between the
// tests of this process that run in parallel: each locks /etc/passwd and
// /etc/group, and one that finds them locked fails ("cannot lock").
var rolesMu sync.Mutex

func makeRoles(t *testing.T) roles {
	t.Helper()
	for _, c := range []string{"useradd", "groupadd", "userdel", "groupdel", "setpriv"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s missing (passwd and util-linux; make test installs them)", c)
		}
	}
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	r := roles{operators: "mfo" + id, admins: "mfa" + id, operator: "mfuo" + id, admin: "mfua" + id}
	must := func(name string, args ...string) {
		t.Helper()
		rolesMu.Lock()
		out, err := exec.Command(name, args...).CombinedOutput()
		rolesMu.Unlock()
		if err != nil {
			t.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	del := func(name, arg string) {
		rolesMu.Lock()
		defer rolesMu.Unlock()
		exec.Command(name, arg).Run()
	}
	must("groupadd", r.operators)
	t.Cleanup(func() { del("groupdel", r.operators) })
	must("groupadd", r.admins)
	t.Cleanup(func() { del("groupdel", r.admins) })
	must("useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/bin/sh", "-g", r.operators, r.operator)
	t.Cleanup(func() { del("userdel", r.operator) })
	must("useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/bin/sh", "-g", r.operators, "-G", r.admins, r.admin)
	t.Cleanup(func() { del("userdel", r.admin) })
	return r
}

// as runs script with bash in the mount as user, with the user's groups.
func (d *daemon) asUser(user, script string) result {
	d.t.Helper()
	return runIn(d.t, d.mnt, "setpriv", "--reuid="+user, "--regid="+primaryGroup(d.t, user), "--init-groups", "bash", "-c", script)
}

func primaryGroup(t *testing.T, user string) string {
	out, err := exec.Command("id", "-g", user).Output()
	if err != nil {
		t.Fatalf("id -g %s: %v", user, err)
	}
	return strings.TrimSpace(string(out))
}

func startRoles(t *testing.T, opts ...string) (*daemon, roles) {
	r := makeRoles(t)
	o := strings.Join(append([]string{"allow_other", "group=" + r.operators, "admingroup=" + r.admins}, opts...), ",")
	d := start(t, "--demo", "-o", o)
	return d, r
}

// Operators run machines; only root and the admin group decide what runs
// as root: keys that choose a program, a root file system, a host path, a
// device or a directory the daemon writes in.
func TestSecurityPrivilegedKeys(t *testing.T) {
	t.Parallel()
	d, r := startRoles(t)
	// Operators keep power, labels, timeouts and their own hosts.
	if res := d.asUser(r.operator, "echo 'label = rack 7' >> hosts/lab02/config && echo 'timeout = 5s' >> hosts/lab02/config && mkdir hosts/opbox && echo 'drivers = sim' > hosts/opbox/config"); res.code != 0 {
		t.Fatalf("operator's ordinary keys: %+v", res)
	}
	before := d.read("hosts/opbox/config")
	for _, line := range []string{
		"uml.kernel = /bin/sh",
		"uml.root = hostfs:/",
		"ns.root = /",
		"ns.base = /",
		"ns.disks = vda:0:/dev/sda",
		"ns.state-dir = /etc",
		"uml.dir = /etc",
		"ns.bridges = br0:02:00:00:00:00:01",
		"local = yes",
	} {
		res := d.asUser(r.operator, fmt.Sprintf("printf '%%s\\n' %q >> hosts/opbox/config", line))
		if res.code == 0 || !strings.Contains(res.err, "Permission denied") {
			t.Errorf("operator wrote %q: %+v", line, res)
		}
	}
	if after := d.read("hosts/opbox/config"); after != before {
		t.Fatalf("refused writes changed config:\n%s\nwas\n%s", after, before)
	}
	if ev := d.read("hosts/opbox/events.log"); !strings.Contains(ev, "privileged") || !strings.Contains(ev, "only root or the admin group") {
		t.Fatalf("events.log gives no reason:\n%s", ev)
	}
	// ctl and mkdir alike.
	res := d.asUser(r.operator, "echo 'add evil ns.root=/ drivers=ns' > ctl")
	if res.code == 0 || !strings.Contains(res.err, "Permission denied") {
		t.Fatalf("operator's ctl add with ns.root: %+v", res)
	}
	if _, err := os.Stat(d.mnt + "/hosts/evil"); err == nil {
		t.Fatal("a refused ctl add created the host")
	}
	// A member of the admin group may, as root may.
	if res := d.asUser(r.admin, "echo 'ns.root = /srv/opbox' >> hosts/opbox/config"); res.code != 0 {
		t.Fatalf("admin: %+v", res)
	}
	if c := d.read("hosts/opbox/config"); !strings.Contains(c, "ns.root = /srv/opbox") {
		t.Fatalf("admin's key missing:\n%s", c)
	}
	// Writing the config back unchanged (what editors and ansible do) is
	// no change to a privileged key.
	if res := d.asUser(r.operator, "cat hosts/opbox/config > /tmp/mfs.$$ && cat /tmp/mfs.$$ > hosts/opbox/config; e=$?; rm -f /tmp/mfs.$$; exit $e"); res.code != 0 {
		t.Fatalf("operator wrote back the same config: %+v", res)
	}
	// Removing the admin's key is a change.
	if res := d.asUser(r.operator, "echo 'ns.root =' >> hosts/opbox/config"); res.code == 0 {
		t.Fatal("operator removed ns.root")
	}
}

// A stored secret never follows an operator's edit to where it is sent.
func TestSecuritySecretDestination(t *testing.T) {
	t.Parallel()
	d, r := startRoles(t)
	d.ok("printf 'ipmi.address = 127.0.0.1\\nipmi.password = Pw-n0t-for-you\\n' >> hosts/lab02/config")
	if c := d.read("hosts/lab02/config"); !strings.Contains(c, "ipmi.password = <set>") {
		t.Fatalf("config:\n%s", c)
	}
	if res := d.asUser(r.operator, "echo 'ipmi.address = 127.0.0.66' >> hosts/lab02/config"); res.code != 0 {
		t.Fatalf("operator moved the BMC address: %+v", res)
	}
	c := d.read("hosts/lab02/config")
	if strings.Contains(c, "ipmi.password") {
		t.Fatalf("the password followed the operator's address change:\n%s", c)
	}
	ev := d.read("hosts/lab02/events.log")
	if !strings.Contains(ev, "cleared ipmi.password") {
		t.Fatalf("events.log does not say the password was cleared:\n%s", ev)
	}
	if strings.Contains(ev, "Pw-n0t-for-you") {
		t.Fatal("the password shows in events.log")
	}
	d.stop() // the daemon's log is complete, and no longer written, once it has exited
	if strings.Contains(d.log.String(), "Pw-n0t-for-you") {
		t.Fatal("the password shows in the daemon's log")
	}
}

// Input that would forge lines or take memory is refused or bounded.
func TestSecurityHostileInput(t *testing.T) {
	t.Parallel()
	d, r := startRoles(t)
	op := func(script, want string) {
		t.Helper()
		res := d.asUser(r.operator, script)
		if res.code == 0 || !strings.Contains(res.err, want) {
			t.Fatalf("%q: %+v, want failure with %q", script, res, want)
		}
	}
	// Control characters in config values: EINVAL, nothing changes.
	op(`printf 'label = x\033[2J\r2026-01-01T00:00:00Z hosts/lab01 power off\n' >> hosts/lab01/config`, "Invalid argument")
	if c := d.read("hosts/lab01/config"); strings.Contains(c, "\x1b") {
		t.Fatalf("ESC reached config:\n%q", c)
	}
	// A ctl write with a bad line applies nothing.
	// (cat writes what it read in one write; bash's printf writes a line
	// at a time, and separate writes are separate requests.)
	op("cat > ctl <<'EOF'\nadd okhost\nadd bad/../x\nEOF", "Invalid argument")
	op("cat > ctl <<'EOF'\nadd okhost\nremove nosuch\nEOF", "No such file or directory")
	if ls := d.ok("ls hosts"); strings.Contains(ls, "okhost") {
		t.Fatalf("a failed ctl write added a host: %s", ls)
	}
	// Hostranges: overflow and oversize are EINVAL, and the daemon lives.
	d.asUser(r.operator, "mkdir groups/g")
	op(`echo 'n[0-9223372036854775807]' > groups/g/members`, "Invalid argument")
	op(`echo 'n[18446744073709551616]' > groups/g/members`, "Invalid argument")
	op(`echo 'n[0-18446744073709551615]' > groups/g/members`, "Invalid argument")
	op(`echo 'n[1-1000]x[1-1000]' > groups/g/members`, "Invalid argument")
	op(`echo 'n[1-100001]' > groups/g/members`, "Invalid argument")
	// The largest int64 is one valid host name; it used to wrap the loop.
	if res := d.asUser(r.operator, `mkdir hosts/n9223372036854775807 && echo 'n[9223372036854775807]' > groups/g/members && cat groups/g/members`); res.code != 0 || res.out != "n[9223372036854775807]\n" {
		t.Fatalf("n[9223372036854775807]: %+v", res)
	}
	if p := d.read("hosts/lab01/power"); p == "" {
		t.Fatal("daemon gone")
	}
	// Text a machine or a user sends never forges an event line: the
	// console's log TEXT event carries an ESC and a CR.
	if res := d.asUser(r.operator, `printf 'log hi\033]0;owned\a\r2026-01-01T00:00:00Z hosts/lab03 power on\n' > hosts/lab01/console`); res.code != 0 {
		t.Fatalf("console log: %+v", res)
	}
	ev := d.read("events.log")
	for _, c := range []string{"\x1b", "\r", "\a"} {
		if strings.Contains(ev, c) {
			t.Fatalf("events.log holds %q raw:\n%q", c, ev)
		}
	}
	if !strings.Contains(ev, `hi\x1b]0;owned\x07\x0d2026-01-01T00:00:00Z hosts/lab03 power on`) {
		t.Fatalf("the log line is not there, escaped:\n%s", ev)
	}
}

// An operator cannot take the daemon's memory: floods through the console,
// endless lines and idle event readers stay bounded (the limits are in
// README, Security model).
func TestSecurityOperatorFloods(t *testing.T) {
	t.Parallel()
	d, r := startRoles(t, "max-readers=3")
	// 64 MiB of console commands from a write-only session: every line
	// runs, nothing is kept. Lines are long so that 64 MiB is a thousand
	// commands, not millions.
	res := d.asUser(r.operator, `yes "version$(printf '%60000s')" | head -c 64M > hosts/lab01/console`)
	if res.code != 0 {
		t.Fatalf("write-only console flood: %+v", res)
	}
	d.checkRSS("a 64 MiB write-only console session", rssLimit)
	// A read-write session that never reads is refused, not grown.
	res = d.asUser(r.operator, `exec 3<>hosts/lab01/console; yes "version$(printf '%60000s')" | head -c 64M >&3`)
	if res.code == 0 || !strings.Contains(res.err, "No buffer space available") {
		t.Fatalf("read-write console flood: %+v", res)
	}
	d.checkRSS("a read-write session that never reads", rssLimit)
	// An endless line is refused and none of it runs.
	// (One writer, cat: a line ends when its writer closes the file, so
	// a second process's "on" would be a line of its own.)
	res = d.asUser(r.operator, `{ head -c 100M /dev/zero | tr '\0' ' '; echo on; } | cat > hosts/lab01/power`)
	if res.code == 0 || !strings.Contains(res.err, "Invalid argument") {
		t.Fatalf("100 MB line: %+v", res)
	}
	if p := d.read("hosts/lab01/power"); p != "off\n" {
		t.Fatalf("the tail of a refused line ran: power %q", p)
	}
	d.checkRSS("a 100 MB line to power", rssLimit)
	// Event readers: at most max-readers, EBUSY beyond.
	res = d.asUser(r.operator, `for i in 1 2 3; do cat events > /dev/null & done; sleep 0.5; cat events; e=$?; kill $(jobs -p); exit $e`)
	if res.code == 0 || !strings.Contains(res.err, "Device or resource busy") {
		t.Fatalf("a 4th events reader with max-readers=3: %+v", res)
	}
}
