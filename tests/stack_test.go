package tests

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

// stackHost builds lab/{a/{a1}, b} with every machine on.
func stackHost(t *testing.T, d *daemon, subConfig string) {
	t.Helper()
	d.addHost("lab", "drivers = sim\nsim.initial = on\nsim.off-delay = 100ms\nsim.on-delay = 100ms")
	for _, p := range []string{"lab/subhosts/a", "lab/subhosts/a/subhosts/a1", "lab/subhosts/b"} {
		d.addHost(p, "drivers = sim\nsim.initial = on\nsim.off-delay = 200ms\nsim.on-delay = 100ms\n"+subConfig)
	}
}

// stepTimes returns the time of each "stack ... step PATH" event.
func stepTimes(t *testing.T, log string) map[string]time.Time {
	t.Helper()
	out := map[string]time.Time{}
	for _, l := range strings.Split(log, "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || f[2] != "stack" {
			continue
		}
		for i, w := range f {
			if w == "step" && i+1 < len(f) {
				ts, err := time.Parse(time.RFC3339Nano, f[0])
				if err != nil {
					t.Fatalf("event time %q: %v", f[0], err)
				}
				out[f[i+1]] = ts
			}
		}
	}
	return out
}

func TestStackPoweroffLeavesHostOn(t *testing.T) {
	d := start(t)
	stackHost(t, d, "")
	d.ok("echo 'poweroff wait label=nightly' > hosts/lab/power")
	if p := d.read("hosts/lab/power"); p != "on\n" {
		t.Fatalf("host power after stack poweroff = %q: the host itself stays on without self", p)
	}
	for _, p := range []string{"lab/subhosts/a", "lab/subhosts/a/subhosts/a1", "lab/subhosts/b"} {
		if got := d.read("hosts/" + p + "/power"); got != "off\n" {
			t.Fatalf("%s = %q, want off", p, got)
		}
	}
	log := d.read("hosts/lab/events.log")
	steps := stepTimes(t, log)
	a1, a, b := steps["hosts/lab/subhosts/a/subhosts/a1"], steps["hosts/lab/subhosts/a"], steps["hosts/lab/subhosts/b"]
	if a1.IsZero() || a.IsZero() || b.IsZero() {
		t.Fatalf("missing step events:\n%s", log)
	}
	if !a1.Before(a) {
		t.Fatalf("a1 (deeper) finished at %s, after its parent a at %s", a1, a)
	}
	// Siblings go in parallel: b (no subhosts) is done before a, which
	// waited for a1.
	if !b.Before(a) {
		t.Fatalf("sibling b finished at %s, after a at %s: not parallel", b, a)
	}
	if !strings.Contains(log, `"poweroff" label=nightly step`) || !strings.Contains(log, "3 ok, 0 forced, 0 failed") {
		t.Fatalf("label or summary missing:\n%s", log)
	}
	if st := d.read("hosts/lab/state"); !strings.Contains(stateField(st, "last-command"), "label=nightly") {
		t.Fatalf("label not in state:\n%s", st)
	}
}

func TestStackPoweroffSelf(t *testing.T) {
	t.Parallel()
	d := start(t)
	stackHost(t, d, "")
	d.ok("echo 'poweroff self wait' > hosts/lab/power")
	if p := d.read("hosts/lab/power"); p != "off\n" {
		t.Fatalf("host power after poweroff self = %q", p)
	}
	steps := stepTimes(t, d.read("hosts/lab/events.log"))
	if host, a := steps["hosts/lab"], steps["hosts/lab/subhosts/a"]; host.IsZero() || !a.Before(host) {
		t.Fatalf("host step %s must come after its stack (a: %s)", host, a)
	}
}

func TestStackForcesStuckSubhost(t *testing.T) {
	t.Parallel()
	d := start(t)
	stackHost(t, d, "sim.stuck = poweroff\nstack-timeout = 300ms")
	d.ok("echo 'poweroff wait' > hosts/lab/power")
	log := d.read("hosts/lab/events.log")
	if !strings.Contains(log, "hosts/lab/subhosts/b did not stop within 300ms") || !strings.Contains(log, "step hosts/lab/subhosts/b off force forced") {
		t.Fatalf("forcing not in events:\n%s", log)
	}
	if p := d.read("hosts/lab/subhosts/b/power"); p != "off\n" {
		t.Fatalf("forced subhost power = %q", p)
	}
}

func TestStackFailureIsTheWorstStep(t *testing.T) {
	t.Parallel()
	d := start(t)
	// b refuses poweroff, off and off force alike: the step fails.
	d.addHost("lab", "drivers = sim\nsim.initial = on")
	d.addHost("lab/subhosts/b", "drivers = sim\nsim.initial = on\nsim.fail = all")
	d.fails("echo 'poweroff wait' > hosts/lab/power", "Input/output error")
	st := d.read("hosts/lab/state")
	if !strings.Contains(stateField(st, "last-command"), "0 ok, 0 forced, 1 failed") {
		t.Fatalf("state:\n%s", st)
	}
}

func TestStackReboot(t *testing.T) {
	t.Parallel()
	d := start(t)
	stackHost(t, d, "")
	d.ok("echo 'reboot wait' > hosts/lab/power")
	for _, p := range []string{"lab", "lab/subhosts/a", "lab/subhosts/a/subhosts/a1", "lab/subhosts/b"} {
		if got := d.read("hosts/" + p + "/power"); got != "on\n" {
			t.Fatalf("%s = %q after a stack reboot, want on", p, got)
		}
	}
	log := d.read("hosts/lab/events.log")
	if strings.Count(log, " on ok (") != 3 || strings.Contains(log, "hosts/lab power rebooting") {
		t.Fatalf("stack reboot should restart the 3 subhosts and not the host:\n%s", log)
	}
	// reboot self: stack down, then the (simulated) host reboots.
	d.ok("echo 'reboot self wait' > hosts/lab/power")
	if p := d.read("hosts/lab/power"); p != "on\n" {
		t.Fatalf("host after reboot self = %q", p)
	}
	if !strings.Contains(d.read("hosts/lab/events.log"), "hosts/lab power rebooting") {
		t.Fatal("the host did not reboot")
	}
	if p := d.read("hosts/lab/subhosts/a/power"); p != "off\n" {
		t.Fatalf("subhost after reboot self = %q, want off", p)
	}
}

func TestStackForceAndLocal(t *testing.T) {
	t.Parallel()
	d := start(t)
	stackHost(t, d, "")
	d.fails("echo 'poweroff force' > hosts/lab/power", "Invalid argument")
	d.ok("echo 'poweroff self force wait' > hosts/lab/power")
	if p := d.read("hosts/lab/subhosts/a/power"); p != "on\n" {
		t.Fatalf("force must not touch the stack: a = %q", p)
	}
	if log := d.read("hosts/lab/events.log"); !strings.Contains(log, "machines on top may be left inconsistent") {
		t.Fatalf("no warning for force:\n%s", log)
	}
	// The machine machinefs runs on refuses poweroff/reboot self unless
	// its config allows it. (A simulated host stands in for it.)
	d.addHost("me", "drivers = sim\nsim.initial = on\nlocal = yes")
	for _, c := range []string{"poweroff self", "reboot self", "poweroff self force"} {
		d.fails(fmt.Sprintf("echo '%s' > hosts/me/power", c), "Operation not permitted")
	}
	if p := d.read("hosts/me/power"); p != "on\n" {
		t.Fatalf("local host power = %q", p)
	}
	d.ok("echo 'allow-self = yes' > hosts/me/config && echo 'poweroff self wait' > hosts/me/power")
	if p := d.read("hosts/me/power"); p != "off\n" {
		t.Fatalf("local host with allow-self: power = %q", p)
	}
}

// A simulated host carrying real subhosts: a namespace subhost, and a UML
// guest with a (simulated) subhost of its own. A stack poweroff stops them
// through their drivers, deepest first.
func TestStackRealSubhosts(t *testing.T) {
	umlh.Skip(t)
	e := newNSEnv(t)
	umlRoot, umlDir := umlh.Root(t), umlh.Dir(t)
	d := start(t)
	d.addHost("lab", "drivers = sim\nsim.initial = on\nlocal = yes")
	d.addHost("lab/subhosts/box", e.config("ns.root = "+e.root("")))
	d.addHost("lab/subhosts/web", umlh.Config(umlRoot, umlDir, "uml.poweroff-timeout = 5s"))
	d.addHost("lab/subhosts/web/subhosts/inner", "drivers = sim\nsim.initial = on\nsim.off-delay = 300ms")
	d.ok("echo 'on wait timeout=60s' > hosts/lab/subhosts/box/power")
	d.ok("echo 'on wait timeout=60s' > hosts/lab/subhosts/web/power")
	// ctrl-alt-del reaches the guest's init only once it runs.
	eventually(t, "web booted", func() bool { return strings.Contains(d.read("hosts/lab/subhosts/web/events.log"), " notify booted") })

	d.ok("echo 'poweroff wait label=real' > hosts/lab/power")
	for _, p := range []string{"lab/subhosts/box", "lab/subhosts/web", "lab/subhosts/web/subhosts/inner"} {
		if got := d.read("hosts/" + p + "/power"); got != "off\n" {
			t.Fatalf("%s = %q after the stack poweroff", p, got)
		}
	}
	if p := d.read("hosts/lab/power"); p != "on\n" {
		t.Fatalf("host = %q, want on", p)
	}
	log := d.read("hosts/lab/events.log")
	steps := stepTimes(t, log)
	inner, web := steps["hosts/lab/subhosts/web/subhosts/inner"], steps["hosts/lab/subhosts/web"]
	if inner.IsZero() || web.IsZero() || steps["hosts/lab/subhosts/box"].IsZero() || !inner.Before(web) {
		t.Fatalf("steps (inner %s, web %s):\n%s", inner, web, log)
	}
	if !strings.Contains(log, "3 ok, 0 forced, 0 failed") {
		t.Fatalf("summary:\n%s", log)
	}
}

// Ctrl-C on a stack `wait` ends the wait with EINTR; the stack goes on as
// if nobody had waited. The subhost still stopping is not forced off, and
// the host goes off only after it.
func TestStackWaitInterrupted(t *testing.T) {
	d := start(t)
	d.addHost("lab", "drivers = sim\nsim.initial = on\nsim.off-delay = 100ms")
	d.addHost("lab/subhosts/a", "drivers = sim\nsim.initial = on\nsim.off-delay = 1500ms")
	cmd := exec.Command("sh", "-c", "echo 'poweroff self wait' > hosts/lab/power")
	cmd.Dir = d.mnt
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a stopping", func() bool { return d.read("hosts/lab/subhosts/a/power") == "stopping\n" })
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err == nil {
		t.Fatal("sh was not interrupted: the stack had finished already")
	}
	eventually(t, "lab off", func() bool { return d.read("hosts/lab/power") == "off\n" })
	log := d.read("hosts/lab/events.log")
	if strings.Contains(log, "forcing") || !strings.Contains(log, "2 ok, 0 forced, 0 failed") {
		t.Fatalf("an interrupted wait changed the stack:\n%s", log)
	}
	steps := stepTimes(t, log)
	if a, lab := steps["hosts/lab/subhosts/a"], steps["hosts/lab"]; a.IsZero() || lab.IsZero() || !a.Before(lab) {
		t.Fatalf("host step before its subhost's (a %s, lab %s):\n%s", a, lab, log)
	}
}
