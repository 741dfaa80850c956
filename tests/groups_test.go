package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

func TestGroups(t *testing.T) {
	t.Parallel()
	d := start(t)
	for i := 1; i <= 6; i++ {
		d.ok(fmt.Sprintf("echo 'add node%02d drivers=sim sim.on-delay=100ms sim.off-delay=100ms' > ctl", i))
	}
	d.ok("mkdir groups/rack3 && echo 'node[01-05]' > groups/rack3/members")
	if m := d.read("groups/rack3/members"); m != "node[01-05]\n" {
		t.Fatalf("members = %q", m)
	}
	d.ok("echo 'on wait' > groups/rack3/power")
	for i := 1; i <= 5; i++ {
		if p := d.read(fmt.Sprintf("hosts/node%02d/power", i)); p != "on\n" {
			t.Fatalf("node%02d = %q after group on wait", i, p)
		}
	}
	if p := d.read("hosts/node06/power"); p != "off\n" {
		t.Fatalf("node06 is not a member but is %q", p)
	}
	if p := d.read("groups/rack3/power"); p != "on\n" {
		t.Fatalf("group power = %q", p)
	}
	st := d.read("groups/rack3/state")
	if !strings.Contains(st, "members: 5\n") || !strings.Contains(st, "5 members: 5 ok, 0 failed") || !strings.Contains(st, "hosts/node03: on (last: ok)") {
		t.Fatalf("group state:\n%s", st)
	}
	// >> adds, > replaces.
	d.ok("echo node06 >> groups/rack3/members")
	if p := d.read("groups/rack3/power"); p != "mixed\n" {
		t.Fatalf("group power with node06 off = %q, want mixed", p)
	}
	d.ok("echo 'node[01-02],x' > groups/rack3/members || true")
	d.fails("echo 'node[05-01]' > groups/rack3/members", "Invalid argument")
	d.fails("echo 'node[01-02' > groups/rack3/members", "Invalid argument")
	// A member must name a host when written; one removed later shows
	// as missing.
	d.fails("echo nosuch > groups/rack3/members", "Invalid argument")
	d.ok("echo 'add nosuch' > ctl")
	d.ok("printf 'node01\\nnosuch\\n' > groups/rack3/members")
	if m := d.read("groups/rack3/members"); m != "node01\nnosuch\n" {
		t.Fatalf("members after > = %q", m)
	}
	d.ok("echo 'remove nosuch' > ctl")
	// The worst member's result is the command's; every outcome is in state.
	d.fails("echo 'off wait' > groups/rack3/power", "No such file or directory")
	st = d.read("groups/rack3/state")
	if !strings.Contains(st, "hosts/node01: off (last: ok)") || !strings.Contains(st, "hosts/nosuch: missing (last: failed: no such host)") {
		t.Fatalf("group state after a partial failure:\n%s", st)
	}
	d.fails("echo bogus > groups/rack3/power", "Invalid argument")
	// Groups persist.
	if data, err := os.ReadFile(filepath.Join(d.config, "groups/rack3.members")); err != nil || string(data) != "node01\nnosuch\n" {
		t.Fatalf("groups file: %q %v", data, err)
	}
	d.stopStart()
	if m := d.read("groups/rack3/members"); m != "node01\nnosuch\n" {
		t.Fatalf("members after restart = %q", m)
	}
	d.ok("rmdir groups/rack3")
	if ls := d.ok("ls groups"); ls != "" {
		t.Fatalf("groups after rmdir: %q", ls)
	}
}

// A group of 50 real BMCs (ipmi_sim) powered on and off in parallel, with
// every member's outcome.
func TestGroupIPMIFleet(t *testing.T) {
	const n = 50
	bmcs := make([]*ipmisim.BMC, n)
	var wg sync.WaitGroup
	for i := range bmcs {
		wg.Add(1)
		go func() { defer wg.Done(); bmcs[i] = ipmisim.Start(t) }()
	}
	wg.Wait()
	d := start(t, "-o", "fanout=16")
	for i, b := range bmcs {
		// 50 simulators and a race-built daemon on two vCPUs answer slowly
		// at times: the fan-out is under test here, not the BMCs' speed.
		d.addHost(fmt.Sprintf("bmc%02d", i+1), ipmiConfig(b.Port, b.Password, "ipmi.timeout = 1s", "ipmi.retries = 3", "ipmi.poll = 5s", "timeout = 10s"))
	}
	d.ok(fmt.Sprintf("mkdir groups/fleet && echo 'bmc[01-%02d]' > groups/fleet/members", n))
	d.ok("echo 'on wait timeout=60s' > groups/fleet/power")
	// Every BMC is on, by its simulated hardware (the hook's state file)
	// or, where that disagrees, by the BMC's own answer to another client:
	// on a loaded machine ipmi_sim has been seen to answer "on" while its
	// hook's file still said off (a hook run that failed), which is the
	// simulator's business, not the fan-out's.
	for i, b := range bmcs {
		if b.Power() == "on" {
			continue
		}
		cmds := b.Commands()
		if got := b.Ipmitool("chassis", "power", "status"); !strings.Contains(got, "is on") {
			t.Fatalf("BMC %d is off after the group's on wait: ipmitool says %q, its hook file %s, hook commands %q", i+1, got, b.Power(), cmds)
		}
		t.Logf("BMC %d: ipmi_sim says on, its hook file says %s (hook commands %q)", i+1, b.Power(), cmds)
	}
	st := d.read("groups/fleet/state")
	if !strings.Contains(st, fmt.Sprintf("%d members: %d ok, 0 failed", n, n)) || strings.Count(st, ": on (last: ok)") != n {
		t.Fatalf("group state:\n%s", st)
	}
	d.ok("echo 'off wait timeout=60s' > groups/fleet/power")
	if p := d.read("groups/fleet/power"); p != "off\n" {
		t.Fatalf("group power after off = %q\n%s", p, d.read("groups/fleet/state"))
	}
	for i, b := range bmcs {
		if b.Power() != "off" {
			t.Fatalf("BMC %d reports %s after the group's off wait", i+1, b.Power())
		}
	}
}

// Ctrl-C on a group `wait` ends the wait only: the fan-out still paces
// the members' commands, and every member gets the command. The fan-out
// bounds the commands on their way to the machines (issue 19), so these
// drivers never answer: each member holds its slot, "starting", until the
// host's timeout (fanout=1: one starting at a time).
func TestGroupWaitInterrupted(t *testing.T) {
	d := start(t, "-o", "fanout=1")
	for i := 1; i <= 4; i++ {
		d.ok(fmt.Sprintf("echo 'add g%d drivers=sim sim.hang=on timeout=700ms' > ctl", i))
	}
	d.ok("mkdir groups/row && echo 'g[1-4]' > groups/row/members")
	cmd := exec.Command("sh", "-c", "echo 'on wait' > groups/row/power")
	cmd.Dir = d.mnt
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	starting := func() (n int) {
		for i := 1; i <= 4; i++ {
			b, _ := os.ReadFile(filepath.Join(d.mnt, fmt.Sprintf("hosts/g%d/power", i)))
			if string(b) == "starting\n" {
				n++
			}
		}
		return n
	}
	eventually(t, "a member starting", func() bool { return starting() > 0 })
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err == nil {
		t.Fatal("sh was not interrupted: the group had finished already")
	}
	eventually(t, "every member's command timed out", func() bool {
		if n := starting(); n > 1 {
			t.Fatalf("%d members starting at once after the interrupt, fanout is 1", n)
		}
		return strings.Contains(d.read("groups/row/state"), "4 members: 0 ok, 4 failed")
	})
	if st := d.read("groups/row/state"); strings.Count(st, ": unknown (last: failed:") != 4 {
		t.Fatalf("group state:\n%s", st)
	}
}

// Hostranges are bounded. A number at the top of int64 is one host like
// any other (it used to wrap and allocate until the daemon was killed); a
// range past uint64 or past the cap is EINVAL with the reason in
// events.log, the cap holds across lines and appends, and a group of
// 100,000 members answers (it took 37 s: a quadratic dedup; the speed is
// measured by BenchmarkGroupHosts100k, not asserted here).
func TestGroupHostrangeBounds(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.ok("mkdir groups/G")
	// A member must name a host when written; one removed later shows
	// as missing.
	d.ok("mkdir hosts/n9223372036854775807 && echo 'n[9223372036854775807]' > groups/G/members && rmdir hosts/n9223372036854775807")
	if st := d.read("groups/G/state"); stateField(st, "members") != "1" || stateField(st, "hosts/n9223372036854775807") != "missing" {
		t.Fatalf("state:\n%s", st)
	}
	for _, bad := range []string{"n[0-9223372036854775807]", "n[18446744073709551616]", "n[1-1000]x[1-1000]", "n[0-18446744073709551615]"} {
		d.fails("echo '"+bad+"' > groups/G/members", "Invalid argument")
	}
	d.ok("mkdir hosts/n1") // a range names at least one host
	d.ok("echo 'n[1-60000]' > groups/G/members")
	d.fails("echo 'm[1-60000]' >> groups/G/members", "Invalid argument")
	// Two lines in one write (dd: bash's printf writes line by line).
	d.fails("printf 'a[1-50000]\\nb[1-50001]\\n' | dd of=groups/G/members bs=1M iflag=fullblock status=none", "Invalid argument")
	if m := d.read("groups/G/members"); m != "n[1-60000]\n" {
		t.Fatalf("members after refused writes: %q", m)
	}
	if log := d.read("groups/G/events.log"); !strings.Contains(log, "a group names at most 100000") {
		t.Fatalf("events.log does not name the cap:\n%s", log)
	}
	d.ok("echo 'n[1-100000]' > groups/G/members")
	began := time.Now()
	if p := d.read("groups/G/power"); p != "unknown\n" {
		t.Fatalf("power of 100,000 missing hosts = %q", p)
	}
	t.Logf("cat power of 100,000 members: %v (for information, not asserted)", time.Since(began))
	began = time.Now()
	// The whole state (3 MB), not only its start: a read reply longer
	// than the kernel's request used to fail with EIO.
	st := d.read("groups/G/state")
	if stateField(st, "members") != "100000" || stateField(st, "hosts/n100000") != "missing" {
		t.Fatalf("state of 100,000 members: %.200q...", st)
	}
	t.Logf("cat state of 100,000 members: %v (for information, not asserted)", time.Since(began))
	// Still the same daemon, and it still answers.
	select {
	case <-d.exited:
		t.Fatalf("the daemon exited: %s", d.log)
	default:
	}
	d.ok("echo 'add h1 drivers=sim' > ctl && cat hosts/h1/power")
}
