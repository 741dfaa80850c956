package tests

// The ipmi driver through the mounted tree, against real OpenIPMI ipmi_sim
// BMCs on 127.0.0.1 (tests/harness/ipmisim): what a user types, what the
// user sees, and what the BMC ends up doing.

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/ipmisim"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// ipmiPoll is the poll interval of every test host: short, so a change
// behind machinefs's back shows quickly.
const ipmiPoll = 200 * time.Millisecond

// ipmiConfig is the config file a user writes for a host behind the BMC
// at port, with short timings; "key = value" lines in over replace the
// defaults.
func ipmiConfig(port int, password string, over ...string) string {
	keys := []string{"drivers", "ipmi.address", "ipmi.port", "ipmi.user", "ipmi.password",
		"ipmi.poll", "ipmi.timeout", "ipmi.retries", "ipmi.verify-timeout", "timeout"}
	vals := map[string]string{
		"drivers":             "ipmi",
		"ipmi.address":        "127.0.0.1",
		"ipmi.port":           strconv.Itoa(port),
		"ipmi.user":           ipmisim.User,
		"ipmi.password":       password,
		"ipmi.poll":           ipmiPoll.String(),
		"ipmi.timeout":        "300ms",
		"ipmi.retries":        "1",
		"ipmi.verify-timeout": "5s",
		"timeout":             "3s",
	}
	for _, kv := range over {
		k, v, _ := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = strings.TrimSpace(v)
	}
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, vals[k])
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// waitPower waits until the host's power file shows want.
func (d *daemon) waitPower(host, want string) {
	d.t.Helper()
	eventually(d.t, host+" power "+want, func() bool { return d.read("hosts/"+host+"/power") == want+"\n" })
}

// noSecretInTree greps the whole tree for secret (but the blocking
// streams events and serial) and marks the test failed if it is found.
func (d *daemon) noSecretInTree(secret string) {
	d.t.Helper()
	r := d.sh("grep -rF --exclude=events --exclude=serial -e '" + secret + "' README version events.log hosts")
	if r.code != 1 {
		d.t.Errorf("grep -r for the password over the tree: exit %d (want 1, not found)\n%s%s", r.code, r.out, r.err)
	}
}

// TestIPMIPowerThroughTree: a user adds a BMC-managed host with mkdir and
// a config file, reads its power and runs every verb with wait; the BMC
// really switches, state shows the verdict, the password never shows.
func TestIPMIPowerThroughTree(t *testing.T) {
	b := ipmisim.Start(t)
	d := start(t)
	d.ok("mkdir hosts/node07")
	d.ok(fmt.Sprintf("cat > hosts/node07/config <<'EOF'\n%s\nEOF", ipmiConfig(b.Port, b.Password)))
	d.waitPower("node07", "off")
	st := d.read("hosts/node07/state")
	if stateField(st, "drivers") != "ipmi" || stateField(st, "reachable") != "yes" || stateField(st, "reason") != "BMC reports off" {
		t.Fatalf("state of a reachable host that is off:\n%s", st)
	}
	if bmc := stateField(st, "ipmi-bmc"); !strings.Contains(bmc, fmt.Sprintf("127.0.0.1:%d", b.Port)) {
		t.Fatalf("ipmi-bmc %q does not name the BMC", bmc)
	}

	steps := []struct {
		line, want string
		hook       []string // what the BMC's chassis-control hook received
	}{
		{"on wait", "on", []string{"power 1"}},
		{"cycle wait", "on", []string{"power 0", "power 1"}},
		{"reset wait", "on", []string{"reset 1"}},
		{"soft wait", "off", []string{"shutdown 1"}},
		{"on wait", "on", []string{"power 1"}},
		{"off wait", "off", []string{"power 0"}},
	}
	for _, s := range steps {
		before := len(b.Commands())
		t0 := time.Now()
		d.ok("echo '" + s.line + "' > hosts/node07/power")
		took := time.Since(t0)
		if got := d.read("hosts/node07/power"); got != s.want+"\n" {
			t.Fatalf("%q returned with power %q, want %s", s.line, got, s.want)
		}
		if b.Power() != s.want {
			t.Fatalf("%q: the simulator's power is %s, want %s", s.line, b.Power(), s.want)
		}
		if got := b.Commands()[before:]; !slices.Equal(got, s.hook) {
			t.Fatalf("%q: BMC hook got %q, want %q", s.line, got, s.hook)
		}
		st := d.read("hosts/node07/state")
		verb := strings.Fields(s.line)[0]
		if r := stateField(st, "reason"); !strings.HasPrefix(r, "verified: BMC reports "+s.want) || !strings.HasSuffix(r, "after "+verb) {
			t.Fatalf("%q: reason %q is not the verify verdict\n%s", s.line, r, st)
		}
		if v := stateField(st, "ipmi-verify"); !strings.HasPrefix(v, "verified") {
			t.Fatalf("%q: ipmi-verify %q", s.line, v)
		}
		if c := stateField(st, "last-command"); !strings.Contains(c, fmt.Sprintf("%q uid=0", s.line)) || !strings.HasSuffix(c, ": ok") {
			t.Fatalf("%q: last-command %q", s.line, c)
		}
		t.Logf("%-10s %v", s.line, took.Round(time.Millisecond))
	}
	if ev := d.read("hosts/node07/events.log"); !strings.Contains(ev, "power rebooting") || !strings.Contains(ev, "power stopping") {
		t.Fatalf("events.log lacks the transitions:\n%s", ev)
	}

	// The password: masked in config, nowhere in the tree, 0600 on disk.
	cfg := d.read("hosts/node07/config")
	if !strings.Contains(cfg, "ipmi.password = <set>\n") || strings.Contains(cfg, b.Password) {
		t.Fatalf("config shows:\n%s", cfg)
	}
	d.ok("echo version > hosts/node07/console") // the console's reply is part of the tree too
	d.noSecretInTree(b.Password)
	if mode := d.ok("stat -c %a hosts/node07/config"); strings.TrimSpace(mode) != "620" {
		t.Errorf("config with a password has mode %s in the tree, want 620 (no one but root reads it)", mode)
	}
	file := filepath.Join(d.config, "hosts", "node07.conf")
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", file, fi.Mode().Perm())
	}
	if disk, _ := os.ReadFile(file); !strings.Contains(string(disk), "ipmi.password = "+b.Password) {
		t.Fatalf("the config on disk lacks the password it must keep:\n%s", disk)
	}

	// A restarted daemon reaches the BMC with the stored password.
	d.stop()
	b.SetPower(true)
	d.start()
	d.waitPower("node07", "on")
	if st := d.read("hosts/node07/state"); stateField(st, "reachable") != "yes" {
		t.Fatalf("state after a restart:\n%s", st)
	}
	d.noSecretInTree(b.Password)
}

// TestIPMIBehindTheBack: a change made with ipmitool behind machinefs's
// back shows in power and wakes inotifywait (the BMC is polled every ipmiPoll).
func TestIPMIBehindTheBack(t *testing.T) {
	b := ipmisim.Start(t)
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password))
	d.waitPower("node07", "off")

	for _, on := range []bool{true, false} {
		want := map[bool]string{true: "on", false: "off"}[on]
		cmd := exec.Command("inotifywait", "-m", "-e", "close_write", "--format", "%w%f %e", "hosts/node07/power")
		cmd.Dir = d.mnt
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for sc := bufio.NewScanner(stderr); sc.Scan() && !strings.Contains(sc.Text(), "Watches established"); {
		}
		woke := make(chan string, 16)
		go func() {
			r := bufio.NewReader(stdout)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					close(woke)
					return
				}
				woke <- strings.TrimSpace(line)
			}
		}()

		b.SetPower(on) // ipmitool chassis power on|off
		// Wake-ups for earlier changes (the host's own set-up) may come
		// first; the change must arrive with a wake-up within a few polls.
		deadline := time.After(5 * time.Second)
		for seen := false; !seen; {
			select {
			case ev := <-woke:
				if ev != "hosts/node07/power CLOSE_WRITE,CLOSE" {
					t.Fatalf("inotify event %q", ev)
				}
				seen = d.read("hosts/node07/power") == want+"\n"
			case <-deadline:
				t.Fatalf("no inotify wake-up with power %s within 5s of ipmitool chassis power %s (power %q)", want, want, d.read("hosts/node07/power"))
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		if r := stateField(d.read("hosts/node07/state"), "reason"); r != "BMC reports "+want {
			t.Fatalf("reason %q", r)
		}
	}
}

// TestIPMIWrongPassword: the BMC refuses the password; the user's command
// fails with EACCES and state says why.
func TestIPMIWrongPassword(t *testing.T) {
	const wrong = "wrong-Pa55"
	b := ipmisim.Start(t)
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, wrong))
	d.fails("echo on > hosts/node07/power", "Permission denied")
	st := d.read("hosts/node07/state")
	if p, r := stateField(st, "power"), stateField(st, "reachable"); p != "unknown" || r != "no" {
		t.Fatalf("power %q reachable %q after a refused login, want unknown, no\n%s", p, r, st)
	}
	if e := stateField(st, "last-error"); !strings.Contains(e, "rejected the credentials") {
		t.Fatalf("last-error %q does not say the BMC refused the credentials", e)
	}
	// The poller says the same on its own.
	eventually(t, "poll verdict", func() bool {
		return stateField(d.read("hosts/node07/state"), "reason") == "BMC rejected the credentials"
	})
	if p := d.read("hosts/node07/power"); p != "unknown\n" {
		t.Fatalf("power %q", p)
	}
	if b.Power() != "off" || len(b.Commands()) != 0 {
		t.Fatalf("the BMC acted on a wrong password: power %s, hook %q", b.Power(), b.Commands())
	}
	d.noSecretInTree(wrong)

	// The user fixes the password: the host comes back.
	d.ok("echo 'ipmi.password = " + b.Password + "' > hosts/node07/config")
	d.waitPower("node07", "off")
	st = d.read("hosts/node07/state")
	if stateField(st, "reachable") != "yes" || stateField(st, "reason") != "BMC reports off" {
		t.Fatalf("state after the password was fixed:\n%s", st)
	}
	d.ok("echo 'on wait' > hosts/node07/power")
	if b.Power() != "on" {
		t.Fatalf("simulator power %s after on with the right password", b.Power())
	}
	d.noSecretInTree(b.Password)
}

// TestIPMIUnreachable: a port nobody listens on and a BMC that never
// answers; commands fail with an errno, other hosts stay usable meanwhile.
func TestIPMIUnreachable(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	mute, err := net.ListenPacket("udp", "127.0.0.1:0") // takes packets, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	d := start(t)
	d.addHost("gone", ipmiConfig(ipmisim.FreeUDPPort(t), b.Password))
	d.addHost("mute", ipmiConfig(mute.LocalAddr().(*net.UDPAddr).Port, b.Password, "ipmi.timeout = 1s", "ipmi.retries = 0"))
	d.addHost("node07", ipmiConfig(b.Port, b.Password))
	d.waitPower("node07", "on")

	eventually(t, "gone unreachable", func() bool {
		return stateField(d.read("hosts/gone/state"), "reachable") == "no" && stateField(d.read("hosts/gone/state"), "last-error") != ""
	})
	st := d.read("hosts/gone/state")
	if p := stateField(st, "power"); p != "unknown" {
		t.Fatalf("power of a host whose BMC port is closed: %q\n%s", p, st)
	}
	if e := stateField(st, "last-error"); !strings.Contains(e, "nothing listens") {
		t.Fatalf("last-error %q", e)
	}
	d.fails("echo on > hosts/gone/power", "No route to host")

	// The mute BMC holds a command for its timeout; meanwhile the other
	// hosts answer.
	done := make(chan result, 1)
	t0 := time.Now()
	go func() { done <- runIn(t, d.mnt, "bash", "-c", "echo on > hosts/mute/power") }()
	time.Sleep(100 * time.Millisecond)
	reads := 0
	for inFlight := true; inFlight; reads++ {
		if got := d.read("hosts/node07/power"); got != "on\n" {
			t.Fatalf("node07 power %q while mute's command hangs", got)
		}
		if got := d.read("hosts/gone/power"); got != "unknown\n" {
			t.Fatalf("gone power %q while mute's command hangs", got)
		}
		select {
		case r := <-done:
			inFlight = false
			if r.code == 0 || !strings.Contains(r.err, "Connection timed out") {
				t.Fatalf("mute BMC: exit %d stderr %q, want ETIMEDOUT", r.code, r.err)
			}
		default:
		}
	}
	t.Logf("mute command failed after %v; %d rounds of reads meanwhile", time.Since(t0).Round(time.Millisecond), reads)
	if reads < 2 {
		t.Fatalf("only %d rounds of reads while mute's command was in flight", reads)
	}
	st = d.read("hosts/mute/state")
	if stateField(st, "reachable") != "no" || stateField(st, "power") != "unknown" {
		t.Fatalf("mute state:\n%s", st)
	}
}

// TestIPMIConsole: the management console answers version with the BMC's
// device id and lists the driver's commands in help.
func TestIPMIConsole(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password))
	d.waitPower("node07", "on")

	out := d.ok("echo version > hosts/node07/console; cat hosts/node07/console")
	if !strings.HasPrefix(out, "OK device-id 0x00 ") || !strings.Contains(out, "firmware 9.08") || !strings.Contains(out, "ipmi 2.0") {
		t.Fatalf("version: %q", out)
	}
	if dev := stateField(d.read("hosts/node07/state"), "ipmi-device"); !strings.Contains(dev, "firmware 9.08") {
		t.Fatalf("ipmi-device %q", dev)
	}
	// A session on one descriptor: the reply follows the command.
	if out := d.ok("exec 3<>hosts/node07/console; echo version >&3; cat <&3"); !strings.HasPrefix(out, "OK device-id 0x00 ") {
		t.Fatalf("console session transcript: %q", out)
	}
	help := d.ok("echo help > hosts/node07/console; cat hosts/node07/console")
	if !strings.HasPrefix(help, "OK ") {
		t.Fatalf("help: %q", help)
	}
	for _, c := range []string{"version", "halt", "reboot", "cad"} {
		if !strings.Contains(help, "  "+c+" ") || !strings.Contains(help, "(ipmi)") {
			t.Errorf("help lacks %s:\n%s", c, help)
		}
	}
	out = d.ok("echo halt > hosts/node07/console; cat hosts/node07/console")
	if !strings.HasPrefix(out, "OK BMC accepted halt") {
		t.Fatalf("halt: %q", out)
	}
	d.waitPower("node07", "off")
	if b.Power() != "off" {
		t.Fatalf("simulator power %s after halt", b.Power())
	}
	if out := d.ok("echo sysrq b > hosts/node07/console; cat hosts/node07/console"); !strings.HasPrefix(out, "ERR ") {
		t.Fatalf("unknown command: %q", out)
	}
}

// TestIPMISerial: hosts/NAME/serial is the BMC's Serial-over-LAN stream:
// cat shows the machine's console, writes reach it.
func TestIPMISerial(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn(), ipmisim.WithSOL(ipmisim.StartConsole(t)))
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password))
	d.waitPower("node07", "on")

	r := d.sh("timeout 2.5 cat hosts/node07/serial")
	if r.code != 124 || !strings.Contains(r.out, "console tick") {
		t.Fatalf("cat serial: exit %d (want 124, killed by timeout) out %q err %q", r.code, r.out, r.err)
	}
	// Both ways on one descriptor; the previous stream may take a moment
	// to be released on the BMC (one SOL session per host).
	var out string
	eventually(t, "a second serial stream", func() bool {
		r := d.sh("exec 3<>hosts/node07/serial || exit 99; sleep 1.2; echo 'hello sol' >&3; timeout 8 sed '/echo: hello sol/q' <&3")
		if r.code == 99 {
			return false
		}
		if r.code != 0 {
			t.Fatalf("serial read/write: exit %d out %q err %q", r.code, r.out, r.err)
		}
		out = r.out
		return true
	})
	if !strings.Contains(out, "console tick") || !strings.Contains(out, "echo: hello sol") {
		t.Fatalf("serial output: %q", out)
	}
	// conman's model: one writer at a time, any number of readers, who
	// all see the same output, and a new reader starts with the last
	// output kept (the echo above, from a stream now closed).
	writer := d.background("exec 3<>hosts/node07/serial; echo ready; sleep 30")
	eventually(t, "the writer's open", func() bool { return strings.Contains(writer.output(), "ready") })
	d.fails("echo x > hosts/node07/serial", "Device or resource busy")
	r = d.sh("timeout 3 sed '/console tick/q' hosts/node07/serial & timeout 3 sed '/console tick/q' hosts/node07/serial; wait")
	if r.code != 0 || strings.Count(r.out, "console tick") != 2 {
		t.Fatalf("two readers beside a writer: exit %d out %q err %q", r.code, r.out, r.err)
	}
	writer.kill()
	if out := d.sh("timeout 2 cat hosts/node07/serial").out; !strings.Contains(out, "echo: hello sol") {
		t.Fatalf("a new reader does not see the backlog: %q", out)
	}
	if ev := d.read("hosts/node07/events.log"); !strings.Contains(ev, "serial opened") {
		t.Fatalf("events.log lacks the serial opening:\n%s", ev)
	}

	d.ok("echo 'off wait' > hosts/node07/power")

	// IPMI 1.5 has no serial over LAN.
	d.addHost("lan15", ipmiConfig(b.Port, b.Password, "ipmi.interface = lan"))
	d.fails("cat hosts/lan15/serial", "No such file or directory")
	d.ok("rmdir hosts/lan15")

	// A reader on serial when the host is removed: its cat ends, and the
	// BMC keeps no session, SOL or other.
	cat := d.background("cat hosts/node07/serial")
	eventually(t, "SOL session next to the poller's", func() bool { return b.Sessions() == 2 })
	d.ok("rmdir hosts/node07")
	if r := cat.wait(5 * time.Second); r.code != 0 {
		t.Fatalf("cat serial across rmdir: exit %d out %q err %q, want the end of the stream", r.code, r.out, r.err)
	}
	if n := b.Sessions(); n != 0 {
		t.Fatalf("%d BMC sessions left after rmdir with serial open", n)
	}

	// The same when the daemon stops.
	d.addHost("node08", ipmiConfig(b.Port, b.Password))
	d.waitPower("node08", "off")
	cat = d.background("cat hosts/node08/serial")
	eventually(t, "SOL session next to the poller's", func() bool { return b.Sessions() == 2 })
	d.stop()
	if r := cat.wait(5 * time.Second); r.code != 0 {
		t.Fatalf("cat serial across SIGTERM: exit %d out %q err %q, want the end of the stream", r.code, r.out, r.err)
	}
	if n := b.Sessions(); n != 0 {
		t.Fatalf("%d BMC sessions left after SIGTERM with serial open", n)
	}
}

// bg is a shell command running in the background.
type bg struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *syncBuf
	err  *syncBuf
	done chan struct{}
}

// background starts script with bash in the mount directory; it is
// killed at the end of the test if still running.
func (d *daemon) background(script string) *bg {
	d.t.Helper()
	b := &bg{t: d.t, cmd: exec.Command("bash", "-c", script), out: &syncBuf{}, err: &syncBuf{}, done: make(chan struct{})}
	b.cmd.Dir = d.mnt
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.err
	if err := b.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	d.t.Cleanup(func() { b.cmd.Process.Kill(); <-b.done })
	return b
}

// output is what the command printed so far.
func (b *bg) output() string { return b.out.String() }

// kill ends the command and waits for it.
func (b *bg) kill() {
	b.cmd.Process.Kill()
	<-b.done
}

// wait waits up to timeout for the command to end and returns what it
// printed; the test fails if it does not end.
func (b *bg) wait(timeout time.Duration) result {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		b.cmd.Process.Kill()
		<-b.done
		b.t.Fatalf("%q still running after %v; out %q err %q", b.cmd.Args, timeout, b.out, b.err)
	}
	return result{out: b.out.String(), err: b.err.String(), code: b.cmd.ProcessState.ExitCode()}
}

// TestIPMIRemoveClosesSessions: a host that is on cannot be removed; once
// off, rmdir removes it and closes its BMC session, as stopping the
// daemon does.
func TestIPMIRemoveClosesSessions(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password))
	d.waitPower("node07", "on")
	if n := b.Sessions(); n != 1 {
		t.Fatalf("%d BMC sessions while node07 polls, want 1", n)
	}
	d.fails("rmdir hosts/node07", "Device or resource busy")
	d.ok("echo 'off wait' > hosts/node07/power")
	d.ok("rmdir hosts/node07")
	if ls := d.ok("ls hosts"); strings.Contains(ls, "node07") {
		t.Fatalf("node07 still listed: %q", ls)
	}
	if _, err := os.Stat(filepath.Join(d.config, "hosts", "node07.conf")); !os.IsNotExist(err) {
		t.Fatalf("config file after rmdir: %v", err)
	}
	if n := b.Sessions(); n != 0 {
		t.Fatalf("%d BMC sessions left open after rmdir", n)
	}

	// SIGTERM closes the sessions of every host.
	d.addHost("node08", ipmiConfig(b.Port, b.Password))
	d.addHost("node09", ipmiConfig(b.Port, b.Password))
	d.waitPower("node08", "off")
	d.waitPower("node09", "off")
	if n := b.Sessions(); n != 2 {
		t.Fatalf("%d BMC sessions with two hosts polling, want 2", n)
	}
	d.stop()
	if n := b.Sessions(); n != 0 {
		t.Fatalf("%d BMC sessions left open after SIGTERM", n)
	}
	if strings.Contains(d.log.String(), b.Password) {
		t.Fatalf("the daemon's log shows the password")
	}
}

// TestIPMIFailedVerification: a reset of a machine that is off never
// reaches on. The user waits for wait-timeout and gets a timeout;
// the BMC, which answered every request, stays reachable and keeps one
// session: the driver's.
func TestIPMIFailedVerification(t *testing.T) {
	b := ipmisim.Start(t)
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password, "wait-timeout = 1s"))
	d.waitPower("node07", "off")
	for i := 0; i < 3; i++ {
		r := d.sh("echo 'reset wait' > hosts/node07/power")
		// ETIMEDOUT, as for any wait that does not reach its state (README:
		// errors); the driver's verdict carries ETIMEDOUT.
		if r.code == 0 || !strings.Contains(r.err, "Connection timed out") {
			t.Errorf("reset wait of a machine that stays off: exit %d stderr %q, want Connection timed out", r.code, r.err)
		}
		if p := d.read("hosts/node07/power"); p != "off\n" {
			t.Fatalf("power %q after a reset that never came up", p)
		}
		st := d.read("hosts/node07/state")
		if e := stateField(st, "last-error"); !strings.Contains(e, "never transitioned from off to on") {
			t.Fatalf("last-error %q", e)
		}
		// The BMC answered every status read: nothing timed out on the wire.
		if e := stateField(st, "last-error"); strings.Contains(e, "no answer from the BMC") {
			t.Errorf("the verdict blames an unanswered read: %q", e)
		}
		if ev := d.read("hosts/node07/events.log"); strings.Contains(ev, "reachable no") {
			t.Errorf("a failed verification marked the answering BMC unreachable:\n%s", ev)
		}
		time.Sleep(2 * ipmiPoll)
		if n := b.Sessions(); n != 1 {
			t.Errorf("round %d: %d BMC sessions after a failed verification, want 1 (the poller's)", i, n)
		}
	}
}

// TestIPMIPasswordTypoOnDisk: an administrator edits the config file by
// hand and forgets the "=" after ipmi.password. The line is refused, but
// the password must not be quoted in events.log (readable by everyone) or
// in the daemon's log.
func TestIPMIPasswordTypoOnDisk(t *testing.T) {
	b := ipmisim.Start(t)
	d := start(t)
	typo := strings.Replace(ipmiConfig(b.Port, b.Password), "ipmi.password = ", "ipmi.password ", 1)
	if err := os.WriteFile(filepath.Join(d.config, "hosts", "node07.conf"), []byte(typo+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "reload", func() bool { return strings.Contains(d.read("events.log"), " reload ") })
	if ev := d.read("events.log"); !strings.Contains(ev, "hosts/node07 error config: line 5") {
		t.Fatalf("the bad line is not reported:\n%s", ev)
	}
	d.noSecretInTree(b.Password)
	d.stop()
	if strings.Contains(d.log.String(), b.Password) {
		t.Errorf("the daemon's log quotes the password")
	}
}

// frameCapture collects every frame an AF_PACKET socket on one device of a
// network namespace sees, in and out, until the test ends.
type frameCapture struct {
	mu     sync.Mutex
	frames [][]byte
}

// captureFrames captures on device dev of ns (ETH_P_ALL).
func captureFrames(t *testing.T, ns *netns.NS, dev string) *frameCapture {
	t.Helper()
	c := ns.Capture(t, dev, 0x0003)
	fc := &frameCapture{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return // closed at cleanup
			}
			fc.mu.Lock()
			fc.frames = append(fc.frames, append([]byte(nil), buf[:n]...))
			fc.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = c.Close(); <-done })
	return fc
}

// udpPorts returns the UDP ports of an IPv4 frame as seen on lo (an
// Ethernet header of zeros), ok false for anything else.
func udpPorts(f []byte) (src, dst int, ok bool) {
	if len(f) < 14+20+8 || f[12] != 0x08 || f[13] != 0x00 || f[14]>>4 != 4 || f[14+9] != 17 {
		return 0, 0, false
	}
	u := 14 + int(f[14]&0x0f)*4
	if len(f) < u+8 {
		return 0, 0, false
	}
	return int(f[u])<<8 | int(f[u+1]), int(f[u+2])<<8 | int(f[u+3]), true
}

// stats counts the UDP frames to or from port, and among them those that
// contain secret.
func (fc *frameCapture) stats(port int, secret string) (frames, leaks int) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, f := range fc.frames {
		if s, d, ok := udpPorts(f); ok && (s == port || d == port) {
			frames++
			if bytes.Contains(f, []byte(secret)) {
				leaks++
			}
		}
	}
	return frames, leaks
}

// sync sends a marker datagram on 127.0.0.1 of ns and waits until the
// capture has it, so every frame sent before is in fc.frames (a packet
// socket gets a device's frames in order).
func (fc *frameCapture) sync(t *testing.T, ns *netns.NS) {
	t.Helper()
	marker := fmt.Sprintf("capture-sync-%d", time.Now().UnixNano())
	ns.Do(t, func() error {
		c, err := net.Dial("udp", "127.0.0.1:9") // discard: nobody listens, the frame is seen anyway
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(marker))
		return err
	})
	eventually(t, "the capture's sync marker", func() bool { return fc.leaksAnywhere(marker) > 0 })
}

// leaksAnywhere counts the captured frames, of any kind, that contain secret.
func (fc *frameCapture) leaksAnywhere(secret string) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	n := 0
	for _, f := range fc.frames {
		if bytes.Contains(f, []byte(secret)) {
			n++
		}
	}
	return n
}

// TestIPMINoClearPassword: a BMC that offers IPMI 1.5 ("ipmi.interface =
// lan") only with "straight password" authentication would receive the
// password in clear. The user's power command gets EACCES with the reason,
// state and events.log say why, the BMC does nothing, and a capture of
// every packet in the test's network namespace holds no packet with the
// password. Controls: the capture does see the password when ipmitool
// sends it in clear to the same BMC, and a BMC offering MD5 is used as
// usual (its packets are captured, without the password).
func TestIPMINoClearPassword(t *testing.T) {
	netns.NeedRoot(t)
	ns := netns.New(t, "mfip")
	capture := captureFrames(t, ns, "lo")
	rogue := ipmisim.Start(t, ipmisim.InNetNS(ns.Run), ipmisim.Auths("straight"))
	md5 := ipmisim.Start(t, ipmisim.InNetNS(ns.Run), ipmisim.Auths("md5"))
	secret := rogue.Password

	// Control: a client that sends the password in clear is caught.
	if out, err := rogue.IpmitoolRaw(append(rogue.IpmitoolLanArgs("PASSWORD"), "chassis", "power", "status")...); err != nil || !strings.Contains(out, "Chassis Power is off") {
		t.Fatalf("ipmitool -A PASSWORD against the straight-password BMC: %v: %s", err, out)
	}
	capture.sync(t, ns)
	if frames, leaks := capture.stats(rogue.Port, secret); frames == 0 || leaks == 0 {
		t.Fatalf("the capture saw %d frames of ipmitool's clear-password session, %d with the password: it cannot catch a leak", frames, leaks)
	}
	before := capture.leaksAnywhere(secret)

	d := startNS(t, ns)
	d.addHost("rogue", ipmiConfig(rogue.Port, secret, "ipmi.interface = lan"))
	d.addHost("good", ipmiConfig(md5.Port, md5.Password, "ipmi.interface = lan"))

	d.fails("echo on > hosts/rogue/power", "Permission denied")
	st := d.read("hosts/rogue/state")
	if e := stateField(st, "last-error"); !strings.Contains(e, "offers only straight password authentication") || !strings.Contains(e, "never in clear") {
		t.Fatalf("last-error %q does not say why\n%s", e, st)
	}
	eventually(t, "poll verdict", func() bool {
		return stateField(d.read("hosts/rogue/state"), "reason") == "BMC offers no authentication that keeps the password secret"
	})
	if ev := d.read("hosts/rogue/events.log"); !strings.Contains(ev, "offers only straight password authentication") {
		t.Fatalf("events.log does not say why:\n%s", ev)
	}
	if p := d.read("hosts/rogue/power"); p != "unknown\n" {
		t.Fatalf("power %q", p)
	}
	if rogue.Power() != "off" || len(rogue.Commands()) != 0 {
		t.Fatalf("the rogue BMC acted: power %s, hook %q", rogue.Power(), rogue.Commands())
	}

	// The MD5 BMC works, over the same kind of session.
	d.ok("echo 'on wait' > hosts/good/power")
	if md5.Power() != "on" {
		t.Fatalf("MD5 BMC power %s after on wait", md5.Power())
	}

	// The wire: machinefs talked to both BMCs, never with the password.
	capture.sync(t, ns)
	rogueFrames, _ := capture.stats(rogue.Port, secret)
	goodFrames, goodLeaks := capture.stats(md5.Port, secret)
	t.Logf("captured %d frames with the rogue BMC (incl. ipmitool's), %d with the MD5 BMC", rogueFrames, goodFrames)
	if goodFrames == 0 || goodLeaks != 0 {
		t.Fatalf("MD5 BMC: %d frames captured, %d with the password", goodFrames, goodLeaks)
	}
	if n := capture.leaksAnywhere(secret); n != before {
		t.Fatalf("%d captured frames carry the password after machinefs started (ipmitool's control: %d)", n-before, before)
	}
	d.noSecretInTree(secret)
}

// TestIPMISerialLog: serial-log = yes records the console in serial.log,
// one line per console line with its time, control characters escaped
// (the guest is untrusted), followed by tail -f; no takes the file away.
func TestIPMISerialLog(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn(), ipmisim.WithSOL(ipmisim.StartConsole(t)))
	d := start(t)
	d.addHost("node07", ipmiConfig(b.Port, b.Password))
	d.waitPower("node07", "on")
	d.fails("ls hosts/node07/serial.log", "No such file or directory")

	d.ok("sed -i '$a serial-log = yes' hosts/node07/config")
	tail := d.background("tail -n +1 -f hosts/node07/serial.log")
	tick := regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z console tick \d+$`)
	eventually(t, "console ticks in serial.log, followed by tail -f", func() bool { return tick.MatchString(tail.output()) })
	if ls := d.ok("ls hosts/node07"); !strings.Contains(ls, "serial.log\n") {
		t.Errorf("ls does not list serial.log:\n%s", ls)
	}
	// It shows what serial shows, so only those who may open serial read
	// it (serial is 0660; the rest of the tree's logs are 0444).
	if mode := strings.TrimSpace(d.ok("stat -c %a hosts/node07/serial.log")); mode != "440" {
		t.Errorf("serial.log mode %s, want 440", mode)
	}
	d.ok(`printf 'bell\a esc\033[31m\n' > hosts/node07/serial`)
	eventually(t, "the echoed line, escaped", func() bool {
		return strings.Contains(d.read("hosts/node07/serial.log"), `echo: bell\x07 esc\x1b[31m`)
	})
	if log := d.read("hosts/node07/serial.log"); strings.ContainsAny(log, "\a\x1b\r") {
		t.Fatalf("serial.log holds raw control characters:\n%q", log)
	}
	if ev := d.read("hosts/node07/events.log"); strings.Contains(ev, "console tick") {
		t.Fatalf("console output went to events.log:\n%s", ev)
	}

	d.ok("sed -i 's/^serial-log = yes/serial-log = no/' hosts/node07/config")
	d.fails("ls hosts/node07/serial.log", "No such file or directory")
}
