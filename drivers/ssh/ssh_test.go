package ssh

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range rootDirs {
		_ = os.RemoveAll(d)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			println("goleak:", err.Error())
			code = 1
		}
	}
	os.Exit(code)
}

func describe(d *driver, key string) string {
	for _, kv := range d.Describe() {
		if kv[0] == key {
			return kv[1]
		}
	}
	return ""
}

func isPower(p machine.Power) func(machine.Status) bool {
	return func(s machine.Status) bool { return s.Power == p }
}

// TestPoweroffReachesInit: poweroff over ssh reaches the machine's init
// (its PID 1 ends as a power off does), and the driver reports off only
// once the SSH port no longer answers; off (poweroff -f) does the same.
func TestPoweroffReachesInit(t *testing.T) {
	l := newLab(t)
	for _, verb := range []string{"poweroff", "off"} {
		t.Run(verb, func(t *testing.T) {
			m := bootMachine(t, l, false)
			rec := &recorder{}
			// Inside the report, as the model merges it: at that moment
			// the port must already be down.
			var answeredAtOff atomic.Bool
			rec.onReport = func(st machine.Status) {
				if st.Power == machine.PowerOff && tcpOpen(l) == nil {
					answeredAtOff.Store(true)
				}
			}
			d := newDriver(t, l.client, m.root.config(), rec)
			i := rec.waitFor(t, 0, 10*time.Second, "on", isPower(machine.PowerOn))
			if s := describe(d, "ssh"); !strings.Contains(s, "host key ok") || !strings.Contains(s, "init busybox") {
				t.Errorf("state line ssh: %q, want host key ok and init busybox", s)
			}

			m.mustBeContained()
			cmd := machine.Command{Verb: verb, Deadline: time.Now().Add(20 * time.Second)}
			if !d.Verifies(cmd) {
				t.Fatalf("%s is not followed", verb)
			}
			if err := d.Power(t.Context(), cmd); err != nil {
				t.Fatalf("%s: %v", verb, err)
			}
			j := rec.waitFor(t, i+1, 20*time.Second, "off", isPower(machine.PowerOff))
			st := rec.statuses()[j]
			if !strings.HasPrefix(st.Reason, "verified: ssh down") || st.Err != nil {
				t.Errorf("verdict %+v, want verified off", st)
			}
			t.Logf("verdict: %+v; ssh-verify: %q", st, describe(d, "ssh-verify"))
			if answeredAtOff.Load() {
				t.Fatal("off was reported while the SSH port still answered")
			}
			_, exited := m.current()
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Fatal("the machine's init did not end after poweroff")
			}
			ws := m.exitList()[0]
			if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
				t.Fatalf("the machine's init ended with %v, want killed by SIGINT (reboot(2) POWER_OFF in its PID namespace)", ws)
			}
			for k, s := range rec.statuses()[i+1 : j] {
				if s.Power != machine.PowerStopping {
					t.Errorf("report %d between the command and its verdict: %+v", i+1+k, s)
				}
			}
			if v := describe(d, "ssh-verify"); !strings.Contains(v, "verified") {
				t.Errorf("ssh-verify %q", v)
			}
		})
	}
}

// TestRebootDownThenUp: reboot and init 6 end the machine's init as a
// restart does; the machine comes back (the test's firmware boots it),
// and the driver reports on only after it saw the machine down and then
// back with its known host key. init 3 is ENOTSUP on busybox init.
func TestRebootDownThenUp(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, true)
	rec := &recorder{}
	d := newDriver(t, l.client, m.root.config(), rec)
	rec.waitFor(t, 0, 10*time.Second, "on", isPower(machine.PowerOn))

	for n, cmd := range []machine.Command{{Verb: "reboot"}, {Verb: "init", InitLevel: 6}} {
		i := len(rec.statuses()) - 1
		m.mustBeContained()
		pid, exited := m.current()
		cmd.Deadline = time.Now().Add(20 * time.Second)
		if err := d.Power(t.Context(), cmd); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		j := rec.waitFor(t, i+1, 20*time.Second, "on after "+cmd.String(), isPower(machine.PowerOn))
		st := rec.statuses()[j]
		if !strings.Contains(st.Reason, "verified: ssh down") || !strings.Contains(st.Reason, "back with the known host key") {
			t.Errorf("%s: verdict %+v", cmd, st)
		}
		select {
		case <-exited:
		default:
			t.Fatalf("%s: on reported while the old init %d still runs", cmd, pid)
		}
		exits := m.exitList()
		if len(exits) != n+1 || !exits[n].Signaled() || exits[n].Signal() != syscall.SIGHUP {
			t.Fatalf("%s: exits %v, want init killed by SIGHUP (reboot(2) RESTART in its PID namespace)", cmd, exits)
		}
		if np, _ := m.current(); np == pid {
			t.Fatalf("%s: the machine's init is still %d", cmd, pid)
		}
		for _, s := range rec.statuses()[i+1 : j] {
			if s.Power != machine.PowerRebooting {
				t.Errorf("%s: report before the verdict: %+v", cmd, s)
			}
		}
	}

	m.mustBeContained()
	err := d.Power(t.Context(), machine.Command{Verb: "init", InitLevel: 3})
	if machine.ErrnoOf(err) != syscall.ENOTSUP || !strings.Contains(err.Error(), "busybox") {
		t.Fatalf("init 3 on busybox: %v, want ENOTSUP naming busybox", err)
	}
	if len(m.exitList()) != 2 {
		t.Fatal("init 3 changed the machine")
	}
}

// TestHostKeyChecked: a machine whose host key differs from known_hosts,
// or is not listed, is EACCES with the reason; nothing runs on it.
func TestHostKeyChecked(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, false)
	other, _, err := genKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	changed := filepath.Join(dir, "changed")
	unknown := filepath.Join(dir, "unknown")
	if err := os.WriteFile(changed, []byte(knownHostsLine(other)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unknown, []byte("# nobody\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ file, want string }{{changed, "host key CHANGED"}, {unknown, "unknown host"}} {
		rec := &recorder{}
		d := newDriver(t, l.client, m.root.config(KeyKnownHosts, c.file), rec)
		k := rec.waitFor(t, 0, 10*time.Second, "first probe", func(s machine.Status) bool { return s.Power != "" })
		st := rec.statuses()[k]
		if st.Power != machine.PowerUnknown || machine.ErrnoOf(st.Err) != syscall.EACCES || !strings.Contains(st.Err.Error(), c.want) {
			t.Errorf("probe with %s: %+v, want unknown, EACCES %q", filepath.Base(c.file), st, c.want)
		}
		m.mustBeContained()
		err := d.Power(t.Context(), machine.Command{Verb: "poweroff", Deadline: time.Now().Add(5 * time.Second)})
		t.Logf("poweroff: %v", err)
		if machine.ErrnoOf(err) != syscall.EACCES || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "SHA256:") {
			t.Errorf("poweroff with %s: %v, want EACCES %q with the fingerprint", filepath.Base(c.file), err, c.want)
		}
		if s := describe(d, "ssh"); !strings.Contains(s, c.want) {
			t.Errorf("state line ssh: %q", s)
		}
	}
	if len(m.exitList()) != 0 {
		t.Fatal("the machine went down: a command ran despite the host key")
	}
}

// TestNoSSHTimesOut: a port that accepts TCP but never speaks SSH makes
// the driver give up at ssh.connect-timeout with ETIMEDOUT, for a command
// and for the probe; it never hangs.
func TestNoSSHTimesOut(t *testing.T) {
	netns.NeedRoot(t)
	r := sharedRoot(t)
	l := newLab(t)
	ln := l.target.ListenTCP(t, targetAddr+":22")
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c) // accepted, never answered
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })

	rec := &recorder{}
	d := newDriver(t, l.client, r.config(KeyConnectTimeout, "500ms", KeyProbeInterval, "1s"), rec)
	k := rec.waitFor(t, 0, 5*time.Second, "first probe", func(s machine.Status) bool { return s.Power != "" })
	if st := rec.statuses()[k]; st.Power != machine.PowerUnknown || machine.ErrnoOf(st.Err) != syscall.ETIMEDOUT {
		t.Errorf("probe: %+v, want unknown with ETIMEDOUT", st)
	}
	// No machine here runs anything: the listener is this test's.
	start := time.Now()
	err := d.Power(t.Context(), machine.Command{Verb: "poweroff", Deadline: time.Now().Add(time.Minute)})
	took := time.Since(start)
	t.Logf("poweroff: %v", err)
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || !strings.Contains(err.Error(), "no SSH handshake within 500ms") {
		t.Fatalf("poweroff: %v, want ETIMEDOUT: no SSH handshake within 500ms", err)
	}
	if took > 5*time.Second {
		t.Fatalf("poweroff took %s with a 500ms connect timeout", took)
	}
	st, err := d.Status(t.Context())
	if err != nil || st.Power != machine.PowerUnknown || machine.ErrnoOf(st.Err) != syscall.ETIMEDOUT {
		t.Fatalf("Status: %+v, %v", st, err)
	}
}

// TestSwitchedOffShowsOff: a machine switched off behind the driver's
// back (its init killed) shows off within one probe interval (plus one
// connect), with the reason.
func TestSwitchedOffShowsOff(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, false)
	rec := &recorder{}
	cfg := m.root.config(KeyProbeInterval, "500ms", KeyConnectTimeout, "1s")
	d := newDriver(t, l.client, cfg, rec)
	i := rec.waitFor(t, 0, 10*time.Second, "on", isPower(machine.PowerOn))
	m.kill()
	j := rec.waitFor(t, i+1, 500*time.Millisecond+time.Second+500*time.Millisecond, "off within one interval", isPower(machine.PowerOff))
	st := rec.statuses()[j]
	t.Logf("off: %+v; state: %q", st, describe(d, "ssh"))
	if !strings.Contains(st.Reason, "connection refused") || st.Err != nil || st.Reachable {
		t.Errorf("off report %+v, want the refused connection as its reason", st)
	}
	if s := describe(d, "ssh"); !strings.HasPrefix(s, "down: ssh "+targetAddr+":22: connection refused") {
		t.Errorf("state line ssh: %q", s)
	}
	for _, s := range rec.statuses()[i+1 : j] {
		t.Errorf("report before off: %+v", s)
	}
}

// TestRefusesThisMachine: power verbs aimed at loopback or at an address
// of the driver's own namespace are EPERM before anything is dialled.
// The driver runs in a namespace of its own, where nothing listens.
func TestRefusesThisMachine(t *testing.T) {
	r := sharedRoot(t)
	l := newLab(t)
	for _, addr := range []string{"127.0.0.1", "::1", clientAddr} {
		d := newDriver(t, l.client, r.config(KeyAddress, addr, KeyProbeInterval, "1h"), &recorder{})
		for _, cmd := range []machine.Command{{Verb: "poweroff"}, {Verb: "reboot"}, {Verb: "off"}, {Verb: "init", InitLevel: 0}} {
			err := d.Power(t.Context(), cmd)
			if machine.ErrnoOf(err) != syscall.EPERM || !strings.Contains(err.Error(), "allow-self") {
				t.Errorf("%s at %s: %v, want EPERM (allow-self)", cmd, addr, err)
			}
		}
	}
}

// TestConfig: required keys, values checked as written, a key file
// others can read.
func TestConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  testConfig
		want string
	}{
		{testConfig{KeyKey: "/k", KeyKnownHosts: "/kh"}, "ssh.address is not set"},
		{testConfig{KeyAddress: "h", KeyKnownHosts: "/kh"}, "ssh.key is not set"},
		{testConfig{KeyAddress: "h", KeyKey: "/k"}, "ssh.known-hosts is not set"},
		{testConfig{KeyAddress: "h;reboot", KeyKey: "/k", KeyKnownHosts: "/kh"}, "want a host name"},
		{testConfig{KeyAddress: "h", KeyKey: "/k", KeyKnownHosts: "/kh", KeyUser: "ro ot"}, "want a user name"},
		{testConfig{KeyAddress: "h", KeyKey: "k", KeyKnownHosts: "/kh"}, "absolute path"},
		{testConfig{KeyAddress: "h", KeyKey: "/k", KeyKnownHosts: "/kh", KeyProbeInterval: "1ms"}, "from 100ms"},
	} {
		_, err := New(t.Context(), machine.DriverEnv{Config: c.cfg})
		if machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want EINVAL %q", c.cfg, err, c.want)
		}
	}
	for _, k := range keys {
		if (k.Name == KeyKey || k.Name == KeyKnownHosts) != k.Privileged {
			t.Errorf("%s: privileged = %v", k.Name, k.Privileged)
		}
	}

	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	_, pemKey, err := genKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pemKey, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readKey(key); machine.ErrnoOf(err) != syscall.EACCES || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("key mode 0644: %v, want EACCES", err)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readKey(key); err != nil {
		t.Errorf("key mode 0600: %v", err)
	}

	for _, c := range []struct {
		cmd  machine.Command
		init string
		want string
	}{
		{machine.Command{Verb: "poweroff"}, initSystemd, "systemctl poweroff"},
		{machine.Command{Verb: "poweroff"}, initSysV, "poweroff"},
		{machine.Command{Verb: "reboot"}, initSystemd, "systemctl reboot"},
		{machine.Command{Verb: "off"}, initBusybox, "poweroff -f"},
		{machine.Command{Verb: "init", InitLevel: 3}, initSysV, "telinit 3"},
		{machine.Command{Verb: "init", InitLevel: 5}, initSystemd, "telinit 5"},
		{machine.Command{Verb: "init", InitLevel: 0}, initBusybox, "poweroff"},
		{machine.Command{Verb: "init", InitLevel: 6}, initUnknown, "reboot"},
	} {
		if got, err := commandLine(c.cmd, c.init); err != nil || got != c.want {
			t.Errorf("%s on %s: %q, %v; want %q", c.cmd, c.init, got, err, c.want)
		}
	}
	for _, c := range []machine.Command{{Verb: "init", InitLevel: 2}, {Verb: "on"}, {Verb: "suspend"}} {
		if _, err := commandLine(c, initBusybox); machine.ErrnoOf(err) != syscall.ENOTSUP {
			t.Errorf("%s on busybox: %v, want ENOTSUP", c, err)
		}
	}
	if _, err := commandLine(machine.Command{Verb: "init", InitLevel: 7}, initSysV); machine.ErrnoOf(err) != syscall.EINVAL {
		t.Errorf("init 7: %v, want EINVAL", err)
	}
	if q := quote("a\x1b[2Jb\n" + strings.Repeat("x", 300)); strings.ContainsAny(q, "\x1b\n") || len(q) > 220 {
		t.Errorf("quote: %q", q)
	}
}

// TestCommandHangs: a command that never returns is cut at
// ssh.command-timeout with ETIMEDOUT, and the machine is left alone. The
// client's key gets a forced command that sleeps (busybox's sh runs its
// own poweroff applet whatever PATH holds, so the command itself cannot
// be swapped): every command the driver sends hangs.
func TestCommandHangs(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, false)
	ak := filepath.Join(m.root.dir, "etc/ssh/authorized_keys")
	orig, err := os.ReadFile(ak)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(ak, orig, 0o644); err != nil {
			t.Error(err)
		}
	})
	if err := os.WriteFile(ak, append([]byte(`command="sleep 600" `), orig...), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := newDriver(t, l.client, m.root.config(KeyCommandTimeout, "1s"), rec)
	k := rec.waitFor(t, 0, 10*time.Second, "first probe", func(s machine.Status) bool { return s.Power != "" })
	if st := rec.statuses()[k]; st.Power != machine.PowerUnknown || machine.ErrnoOf(st.Err) != syscall.ETIMEDOUT {
		t.Errorf("probe: %+v, want unknown with ETIMEDOUT", st)
	}

	m.mustBeContained()
	start := time.Now()
	err = d.Power(t.Context(), machine.Command{Verb: "poweroff", Deadline: time.Now().Add(time.Minute)})
	took := time.Since(start)
	t.Logf("poweroff: %v", err)
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || !strings.Contains(err.Error(), "no answer within 1s") {
		t.Fatalf("poweroff on a machine whose commands hang: %v, want ETIMEDOUT after 1s", err)
	}
	if took > 10*time.Second {
		t.Fatalf("took %s with a 1s command timeout", took)
	}
	if len(m.exitList()) != 0 {
		t.Fatal("the machine went down")
	}
}

// TestVerdictsAtDeadline: a poweroff the machine accepts but does not
// carry out (the key's forced command is "true") ends at the command's
// deadline with ETIMEDOUT, the machine still on; a reboot after which
// the machine does not come back ends with EHOSTDOWN.
func TestVerdictsAtDeadline(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, false) // no firmware: a reboot stays down
	ak := filepath.Join(m.root.dir, "etc/ssh/authorized_keys")
	orig, err := os.ReadFile(ak)
	if err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := os.WriteFile(ak, orig, 0o644); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(restore)
	if err := os.WriteFile(ak, append([]byte(`command="true" `), orig...), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	d := newDriver(t, l.client, m.root.config(), rec)
	rec.waitFor(t, 0, 10*time.Second, "on", isPower(machine.PowerOn))

	m.mustBeContained()
	i := len(rec.statuses())
	deadline := time.Now().Add(2 * time.Second)
	if err := d.Power(t.Context(), machine.Command{Verb: "poweroff", Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	j := rec.waitFor(t, i, 10*time.Second, "verdict", func(s machine.Status) bool { return s.Err != nil })
	st := rec.statuses()[j]
	t.Logf("poweroff not carried out: %+v", st)
	if st.Power != machine.PowerOn || machine.ErrnoOf(st.Err) != syscall.ETIMEDOUT || !strings.Contains(st.Err.Error(), "the machine still answers") {
		t.Errorf("verdict %+v, want on, ETIMEDOUT: the machine still answers", st)
	}
	if time.Now().Before(deadline) {
		t.Errorf("verdict before the deadline")
	}
	if len(m.exitList()) != 0 {
		t.Fatal("the machine went down")
	}

	restore()
	m.mustBeContained()
	_, exited := m.current()
	i = len(rec.statuses())
	if err := d.Power(t.Context(), machine.Command{Verb: "reboot", Deadline: time.Now().Add(3 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	j = rec.waitFor(t, i, 15*time.Second, "verdict", func(s machine.Status) bool { return s.Err != nil })
	st = rec.statuses()[j]
	t.Logf("reboot, not back: %+v", st)
	if st.Power != machine.PowerUnknown || machine.ErrnoOf(st.Err) != syscall.EHOSTDOWN || !strings.Contains(st.Err.Error(), "not back") {
		t.Errorf("verdict %+v, want unknown, EHOSTDOWN: not back", st)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the machine's init did not end after reboot")
	}
	if ex := m.exitList(); len(ex) != 1 || ex[0].Signal() != syscall.SIGHUP {
		t.Errorf("exits %v, want one reboot", ex)
	}
}
