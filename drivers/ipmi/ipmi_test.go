package ipmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func isPower(p machine.Power) func(machine.Status) bool {
	return func(s machine.Status) bool { return s.Power == p && s.Reachable && s.Err == nil }
}

func wantErrno(t *testing.T, err error, want syscall.Errno) {
	t.Helper()
	if err == nil {
		t.Fatalf("want %v, got no error", want)
	}
	var got syscall.Errno
	if !errors.As(err, &got) || got != want {
		t.Fatalf("want errno %v (%d), got %v: %v", want, want, machine.ErrnoOf(err), err)
	}
}

func noPassword(t *testing.T, h *testHost, extra ...string) {
	t.Helper()
	all := h.rec.text() + h.log.String() + fmt.Sprint(h.d.Describe()) + strings.Join(extra, " ")
	if strings.Contains(all, ipmisim.Password) || strings.Contains(all, "wrong-Pa55") {
		t.Fatalf("password leaked: %s", all)
	}
}

func TestSpecKeys(t *testing.T) {
	want := map[string]string{"ipmi.address": "", "ipmi.port": "623", "ipmi.user": "", "ipmi.password": "",
		"ipmi.interface": "lanplus", "ipmi.cipher": "3", "ipmi.timeout": "2s", "ipmi.retries": "1",
		"ipmi.poll": "5s", "ipmi.verify-timeout": "30s"}
	if Spec.Name != "ipmi" || Spec.New == nil || Spec.Doc == "" {
		t.Fatalf("bad Spec header: %+v", Spec)
	}
	seen := map[string]bool{}
	for _, k := range Spec.Keys {
		def, ok := want[k.Name]
		if !ok {
			t.Errorf("unexpected key %s", k.Name)
			continue
		}
		seen[k.Name] = true
		if k.Default != def || k.Doc == "" || k.Kind == nil {
			t.Errorf("%s: default %q doc %q kind %v", k.Name, k.Default, k.Doc, k.Kind)
		}
		if k.Secret != (k.Name == "ipmi.password") {
			t.Errorf("%s: Secret=%v", k.Name, k.Secret)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("keys missing: have %v", seen)
	}
	check := func(key, v string, ok bool) {
		t.Helper()
		err := keyCheck(key)(v)
		if (err == nil) != ok {
			t.Errorf("Check %s(%q) = %v, want ok=%v", key, v, err, ok)
		}
		if err != nil && key == "ipmi.password" && strings.Contains(err.Error(), v) {
			t.Errorf("password check repeats the value: %v", err)
		}
	}
	check("ipmi.address", "10.0.0.1", true)
	check("ipmi.address", "bmc-01.lab.example", true)
	check("ipmi.address", "fe80::1", true)
	check("ipmi.address", "10.0.0.1:623", false)
	check("ipmi.address", "", false)
	check("ipmi.address", "a b", false)
	check("ipmi.port", "623", true)
	check("ipmi.port", "0", false)
	check("ipmi.port", "70000", false)
	check("ipmi.port", "x", false)
	check("ipmi.user", "admin", true)
	check("ipmi.user", strings.Repeat("u", 17), false)
	check("ipmi.password", strings.Repeat("p", 20), true)
	check("ipmi.password", strings.Repeat("p", 21), false)
	check("ipmi.interface", "lan", true)
	check("ipmi.interface", "lanplus", true)
	check("ipmi.interface", "open", false)
	check("ipmi.cipher", "3", true)
	check("ipmi.cipher", "17", true)
	check("ipmi.cipher", "auto", true)
	check("ipmi.cipher", "20", false)
	check("ipmi.cipher", "three", false)
	check("ipmi.timeout", "2s", true)
	check("ipmi.timeout", "0s", false)
	check("ipmi.timeout", "2", true) // a bare number is seconds, as everywhere
	check("ipmi.timeout", "61", false)
	check("ipmi.retries", "0", true)
	check("ipmi.retries", "-1", false)
	check("ipmi.poll", "5s", true)
	check("ipmi.poll", "1ms", false)
	check("ipmi.verify-timeout", "30s", true)
	check("ipmi.verify-timeout", "soon", false)

	// New validates too, and requires the address.
	_, err := Spec.New(context.Background(), machine.DriverEnv{Config: mapConfig{}})
	wantErrno(t, err, syscall.EINVAL)
	_, err = Spec.New(context.Background(), machine.DriverEnv{Config: mapConfig{"ipmi.address": "h", "ipmi.port": "0"}})
	wantErrno(t, err, syscall.EINVAL)
	_, err = Spec.New(context.Background(), machine.DriverEnv{Config: mapConfig{"ipmi.address": "h", "ipmi.interface": "lan", "ipmi.password": strings.Repeat("p", 18)}})
	wantErrno(t, err, syscall.EINVAL)
}

func TestBackoffSchedule(t *testing.T) {
	d := &Driver{cfg: config{poll: 5 * time.Second}}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute}
	for i, w := range want {
		if got := d.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	d.cfg.poll = 5 * time.Minute
	if got := d.backoff(3); got != 5*time.Minute {
		t.Errorf("long poll: backoff = %v", got)
	}
}

// TestPowerVerbs drives one simulator through every verb and checks the
// verification verdicts and what the BMC's hook received.
func TestPowerVerbs(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t)
	h := newHost(t, b.Port, nil)
	ctx := func() context.Context {
		c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		t.Cleanup(cancel)
		return c
	}
	h.rec.waitFor(t, 0, 3*time.Second, "initial off", isPower(machine.PowerOff))

	step := func(verb string, want machine.Power, hook ...string) machine.Status {
		t.Helper()
		n := h.rec.len()
		before := len(b.Commands())
		if err := h.d.Power(ctx(), machine.Command{Verb: verb}); err != nil {
			t.Fatalf("%s: %v", verb, err)
		}
		spec, _ := machine.LookupVerb(verb)
		h.rec.waitFor(t, n, time.Second, verb+" transit", func(s machine.Status) bool { return s.Power == spec.Transit })
		s, _ := h.rec.waitFor(t, n, 8*time.Second, verb+" verified "+string(want), func(s machine.Status) bool {
			return s.Power == want && s.Reachable && s.Err == nil && strings.HasPrefix(s.Reason, "verified")
		})
		got := b.Commands()[before:]
		if strings.Join(got, ",") != strings.Join(hook, ",") {
			t.Fatalf("%s: BMC hook got %q, want %q", verb, got, hook)
		}
		return s.Status
	}

	step("on", machine.PowerOn, "power 1")
	if b.Power() != "on" {
		t.Fatalf("power file %q after on", b.Power())
	}
	// ipmitool semantics: on when on succeeds and changes nothing.
	n := h.rec.len()
	step("on", machine.PowerOn, "power 1")
	for _, s := range h.rec.all()[n:] {
		if s.Power == machine.PowerOff {
			t.Fatalf("idempotent on reported off: %s", h.rec.dump())
		}
	}
	step("off", machine.PowerOff, "power 0")
	step("on", machine.PowerOn, "power 1")
	s := step("cycle", machine.PowerOn, "power 0", "power 1") // ipmi_sim powers on again ~1 s later
	if strings.Contains(s.Reason, "no off observed") {
		t.Errorf("cycle: the off was not observed: %q", s.Reason)
	}
	step("reset", machine.PowerOn, "reset 1")
	step("reboot", machine.PowerOn, "reset 1")
	step("soft", machine.PowerOff, "shutdown 1")
	step("on", machine.PowerOn, "power 1")
	b.WriteFile("soft_delay", "1")
	step("poweroff", machine.PowerOff, "shutdown 1", "power-soft-off 0")
	if v := h.describe()["ipmi-verify"]; !strings.Contains(v, "verified") {
		t.Errorf("ipmi-verify: %q", v)
	}
	if err := h.d.Power(ctx(), machine.Command{Verb: "wol"}); machine.ErrnoOf(err) != syscall.EINVAL {
		t.Errorf("wol: %v", err)
	}
	noPassword(t, h)
}

// TestVerifyFailureAndPoweroffEscalation: a reset of a machine that is off
// never reaches on, and the verdict comes at the command's deadline; a soft
// shutdown the OS ignores escalates to a hard off after ipmi.verify-timeout.
func TestVerifyFailureAndPoweroffEscalation(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t)
	h := newHost(t, b.Port, map[string]string{"ipmi.verify-timeout": "1s"})
	h.rec.waitFor(t, 0, 3*time.Second, "initial off", isPower(machine.PowerOff))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()

	n := h.rec.len()
	deadline := time.Now().Add(time.Second)
	cmd := machine.Command{Verb: "reset", Deadline: deadline}
	if !h.d.Verifies(cmd) {
		t.Fatal("the driver does not follow reset to its end")
	}
	if err := h.d.Power(ctx, cmd); err != nil {
		t.Fatal(err)
	}
	s, _ := h.rec.waitFor(t, n, 4*time.Second, "verification failure", func(s machine.Status) bool { return s.Err != nil })
	if machine.ErrnoOf(s.Err) != syscall.ETIMEDOUT || !strings.Contains(s.Reason, "never transitioned from off to on") || s.Power != machine.PowerOff {
		t.Fatalf("verdict: %+v", s.Status)
	}
	// The model's backstop fires at the deadline plus VerdictGrace: the
	// driver's verdict must come first, and not before the deadline.
	if s.at.Before(deadline) || s.at.After(deadline.Add(machine.VerdictGrace)) {
		t.Fatalf("verdict at %s, deadline %s", s.at.Format("15:04:05.000"), deadline.Format("15:04:05.000"))
	}
	// The BMC answered every read: the verdict must not blame a read cut
	// short at the deadline, nor throw the session away (it would stay
	// open on the BMC).
	if !s.Reachable || strings.Contains(s.Err.Error(), "no answer") {
		t.Fatalf("verdict blames the answering BMC: %+v", s.Status)
	}
	time.Sleep(300 * time.Millisecond)
	if n := b.Sessions(); n != 1 {
		t.Fatalf("%d BMC sessions after a failed verification, want 1", n)
	}

	// poweroff: soft shutdown ignored for 30 s -> hard off after verify-timeout.
	b.WritePower(true)
	h.rec.waitFor(t, h.rec.len(), 3*time.Second, "on (set behind the back)", isPower(machine.PowerOn))
	b.WriteFile("soft_delay", "30")
	n = h.rec.len()
	before := len(b.Commands())
	// A context of its own: the first one may have run out while the
	// test waited (under load the waits above take seconds).
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := h.d.Power(ctx2, machine.Command{Verb: "poweroff", Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	h.rec.waitFor(t, n, 5*time.Second, "poweroff verified off", func(s machine.Status) bool {
		return s.Power == machine.PowerOff && s.Err == nil && strings.HasPrefix(s.Reason, "verified")
	})
	if got := strings.Join(b.Commands()[before:], ","); got != "shutdown 1,power 0" {
		t.Fatalf("hook got %q", got)
	}
	if ev := h.rec.dump(); !strings.Contains(ev, "event notify poweroff: not off 1s after the soft shutdown") {
		t.Fatalf("no escalation event: %s", ev)
	}
}

// TestPoweroffHardOffBeforeDeadline: with a command window shorter than
// ipmi.verify-timeout, poweroff gives the soft shutdown half the window and
// verifies the hard off before the deadline, so the verdict is off, not a
// timeout that the hard off then contradicts.
func TestPoweroffHardOffBeforeDeadline(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	h := newHost(t, b.Port, map[string]string{"ipmi.verify-timeout": "30s"})
	h.rec.waitFor(t, 0, 3*time.Second, "initial on", isPower(machine.PowerOn))
	b.WriteFile("soft_delay", "60") // the OS ignores the soft shutdown
	n := h.rec.len()
	deadline := time.Now().Add(4 * time.Second)
	if err := h.d.Power(ctxWithin(t, 3*time.Second), machine.Command{Verb: "poweroff", Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	s, _ := h.rec.waitFor(t, n, 10*time.Second, "the verdict", func(s machine.Status) bool {
		return s.Err != nil || (s.Power != "" && !s.Power.Transitional())
	})
	if s.Power != machine.PowerOff || s.Err != nil || !strings.HasPrefix(s.Reason, "verified: BMC reports off") || !strings.HasSuffix(s.Reason, "after poweroff (hard off)") {
		t.Fatalf("verdict %+v, want verified off after the hard off%s", s.Status, h.rec.dump())
	}
	if !s.at.Before(deadline) {
		t.Fatalf("verified at %s, after the deadline %s", s.at.Format("15:04:05.000"), deadline.Format("15:04:05.000"))
	}
	// Half the window: 2s, less what sending took.
	if ev := h.rec.dump(); !regexp.MustCompile(`event notify poweroff: not off (1\.[5-9]|2)s after the soft shutdown`).MatchString(ev) {
		t.Errorf("the escalation does not say it came at half the window: %s", ev)
	}
	if b.Power() != "off" {
		t.Fatalf("simulator power %s", b.Power())
	}
}

// TestBehindTheBack: a change made with ipmitool shows within a poll interval.
func TestBehindTheBack(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t)
	h := newHost(t, b.Port, map[string]string{"ipmi.poll": "300ms"})
	h.rec.waitFor(t, 0, 3*time.Second, "initial off", isPower(machine.PowerOff))
	n := h.rec.len()
	b.Ipmitool("chassis", "power", "on")
	// From ipmitool's return, not its start: under load ipmitool alone
	// takes longer than a poll interval.
	t0 := time.Now()
	s, _ := h.rec.waitFor(t, n, 2*time.Second, "on", isPower(machine.PowerOn))
	if d := s.at.Sub(t0); d > 300*time.Millisecond+400*time.Millisecond {
		t.Fatalf("change seen after %v, poll is 300ms", d)
	}
	if d := h.describe(); !strings.HasPrefix(d["ipmi-session"], "open") || !strings.Contains(d["ipmi-last-poll"], "on") {
		t.Fatalf("describe: %v", d)
	}
	// Steady polls stay silent.
	n = h.rec.len()
	time.Sleep(700 * time.Millisecond)
	if h.rec.len() != n {
		t.Fatalf("steady state was reported again: %s", h.rec.dump())
	}
}

func TestWrongPassword(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t)
	for _, iface := range []string{"lanplus", "lan"} {
		t.Run(iface, func(t *testing.T) {
			h := newHost(t, b.Port, map[string]string{"ipmi.password": "wrong-Pa55", "ipmi.interface": iface,
				"ipmi.timeout": "200ms", "ipmi.retries": "0"})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			err := h.d.Power(ctx, machine.Command{Verb: "on"})
			wantErrno(t, err, syscall.EACCES)
			s, _ := h.rec.waitFor(t, 0, 3*time.Second, "EACCES from poll", func(s machine.Status) bool {
				return s.Err != nil && s.Power == machine.PowerUnknown
			})
			if s.Reachable || machine.ErrnoOf(s.Err) != syscall.EACCES {
				t.Fatalf("poll report: %+v", s.Status)
			}
			if b.Power() != "off" {
				t.Fatal("power changed with a wrong password")
			}
			noPassword(t, h, err.Error())
		})
	}
}

func TestCompletionCodeEIO(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t)
	h := newHost(t, b.Port, nil)
	h.rec.waitFor(t, 0, 3*time.Second, "initial off", isPower(machine.PowerOff))
	b.WriteFile("fail", "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := h.d.Power(ctx, machine.Command{Verb: "on"})
	wantErrno(t, err, syscall.EIO)
	if !strings.Contains(err.Error(), "BMC answered") || !strings.Contains(err.Error(), "0xff") {
		t.Fatalf("error lacks the BMC's words: %v", err)
	}
	_, err = h.d.Console(ctx, "version", nil) // device id does not use the hook
	if err != nil {
		t.Fatalf("version after a cc error (session must reopen): %v", err)
	}
}

// TestUnreachable: nobody listens on the port.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	port := ipmisim.FreeUDPPort(t)
	h := newHost(t, port, map[string]string{"ipmi.poll": "50ms"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	err := h.d.Power(ctx, machine.Command{Verb: "on"})
	wantErrno(t, err, syscall.EHOSTUNREACH)
	if time.Since(t0) > 5*time.Second {
		t.Fatalf("refused port took %v", time.Since(t0))
	}
	time.Sleep(1600 * time.Millisecond)
	var fails []stamped
	for _, s := range h.rec.all() {
		if s.Err != nil && s.Reason != "on failed" {
			if s.Power != machine.PowerUnknown || s.Reachable {
				t.Fatalf("unreachable report: %+v", s.Status)
			}
			fails = append(fails, s)
		}
	}
	// Without back-off a 50ms poll would fail ~32 times; with it:
	// 50, 100, 200, 400, 800ms -> about 5.
	if len(fails) < 3 || len(fails) > 8 {
		t.Fatalf("%d failed polls in 1.6s: %s", len(fails), h.rec.dump())
	}
	for i := 2; i < len(fails); i++ {
		if fails[i].at.Sub(fails[i-1].at) < fails[i-1].at.Sub(fails[i-2].at) {
			t.Fatalf("poll gaps do not grow: %s", h.rec.dump())
		}
	}
	if d := h.describe(); !strings.Contains(d["ipmi-poll-failures"], "in a row") {
		t.Fatalf("describe: %v", d)
	}
}

// TestHungBMC: a UDP socket that never answers must not hold Power beyond
// its context, even while a poll holds the session.
func TestHungBMC(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	hung, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	port := hung.LocalAddr().(*net.UDPAddr).Port
	h := newHost(t, port, map[string]string{"ipmi.timeout": "400ms", "ipmi.retries": "3", "ipmi.poll": "50ms"})
	time.Sleep(100 * time.Millisecond) // let a poll grab the session
	for _, budget := range []time.Duration{150 * time.Millisecond, 700 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		t0 := time.Now()
		err := h.d.Power(ctx, machine.Command{Verb: "on"})
		took := time.Since(t0)
		cancel()
		wantErrno(t, err, syscall.ETIMEDOUT)
		if took > budget+2*time.Second { // bounded, not timed: generous on a loaded machine
			t.Fatalf("Power took %v with a %v context", took, budget)
		}
	}
	_, err = h.d.Console(ctxWithin(t, 200*time.Millisecond), "version", nil)
	wantErrno(t, err, syscall.ETIMEDOUT)
	t0 := time.Now()
	h.d.Close()
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("Close took %v", took)
	}
	goleak.VerifyNone(t, ignore)
}

func ctxWithin(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestCloseReleasesSessions: sessions are reused while the driver lives and
// closed by Close; no goroutine survives.
func TestCloseReleasesSessions(t *testing.T) {
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	ignore := goleak.IgnoreCurrent()
	for i := 0; i < 3; i++ {
		h := newHost(t, b.Port, map[string]string{"ipmi.poll": "50ms"})
		h.rec.waitFor(t, 0, 3*time.Second, "on", isPower(machine.PowerOn))
		v, err := h.d.Console(ctxWithin(t, 2*time.Second), "version", nil)
		if err != nil || !strings.Contains(v, "firmware 9.08") {
			t.Fatalf("version: %q %v", v, err)
		}
		time.Sleep(200 * time.Millisecond) // several polls
		if n := b.Sessions(); n != 1 {
			t.Fatalf("round %d: %d BMC sessions while the driver lives, want 1 (reused)", i, n)
		}
		d := h.describe()
		if !strings.Contains(d["ipmi-session"], "1 opened") || !strings.Contains(d["ipmi-device"], "firmware 9.08") {
			t.Fatalf("describe: %v", d)
		}
		if err := h.d.Close(); err != nil {
			t.Fatal(err)
		}
		if n := b.Sessions(); n != 0 {
			t.Fatalf("round %d: %d BMC sessions after Close", i, n)
		}
		err = h.d.Power(ctxWithin(t, time.Second), machine.Command{Verb: "on"})
		wantErrno(t, err, syscall.ENODEV)
		noPassword(t, h)
	}
	goleak.VerifyNone(t, ignore)
}

func TestConsole(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t, ipmisim.PoweredOn())
	h := newHost(t, b.Port, nil)
	h.rec.waitFor(t, 0, 3*time.Second, "on", isPower(machine.PowerOn))
	names := map[string]bool{}
	for _, c := range h.d.ConsoleCommands() {
		names[c.Name] = true
	}
	for _, n := range []string{"version", "halt", "reboot", "cad"} {
		if !names[n] {
			t.Errorf("console command %s missing", n)
		}
	}
	ctx := ctxWithin(t, 5*time.Second)
	out, err := h.d.Console(ctx, "version", nil)
	if err != nil || !strings.Contains(out, "device-id 0x00") || !strings.Contains(out, "ipmi 2.0") {
		t.Fatalf("version: %q %v", out, err)
	}
	n := h.rec.len()
	if _, err := h.d.Console(ctx, "halt", nil); err != nil {
		t.Fatal(err)
	}
	h.rec.waitFor(t, n, 3*time.Second, "off after halt", isPower(machine.PowerOff))
	b.WritePower(true)
	h.rec.waitFor(t, h.rec.len(), 3*time.Second, "on", isPower(machine.PowerOn))
	before := len(b.Commands())
	if _, err := h.d.Console(ctx, "reboot", nil); err != nil {
		t.Fatal(err)
	}
	n = h.rec.len()
	if _, err := h.d.Console(ctx, "cad", nil); err != nil {
		t.Fatal(err)
	}
	h.rec.waitFor(t, n, 3*time.Second, "off after cad", isPower(machine.PowerOff))
	if got := strings.Join(b.Commands()[before:], ","); got != "reset 1,shutdown 1" {
		t.Fatalf("hook got %q", got)
	}
	if _, err := h.d.Console(ctx, "sysrq", nil); machine.ErrnoOf(err) != syscall.EINVAL {
		t.Fatalf("unknown command: %v", err)
	}
}

// TestSOL streams the fake console's output and echoes input back.
func TestSOL(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t, ipmisim.PoweredOn(), ipmisim.WithSOL(ipmisim.StartConsole(t)))
	h := newHost(t, b.Port, nil)
	s, err := h.d.SOL(ctxWithin(t, 3*time.Second))
	if err != nil {
		t.Fatalf("SOL: %v", err)
	}
	defer s.Close()
	got := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 512)
		for {
			n, err := s.Read(buf)
			all = append(all, buf[:n]...)
			if strings.Contains(string(all), "echo: hello sol") || err != nil {
				got <- string(all)
				return
			}
		}
	}()
	time.Sleep(1500 * time.Millisecond) // a tick or two first
	if _, err := s.Write([]byte("hello sol\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case out := <-got:
		if !strings.Contains(out, "console tick") || !strings.Contains(out, "echo: hello sol") {
			t.Fatalf("SOL output: %q", out)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("no echo over SOL within 8s")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("write after Close succeeded")
	}
	// A second stream can be opened once the first is closed.
	s2, err := h.d.SOL(ctxWithin(t, 3*time.Second))
	if err != nil {
		t.Fatalf("second SOL: %v", err)
	}
	h.d.Close() // closes the stream too
	if _, err := s2.Read(make([]byte, 10)); err == nil {
		t.Fatal("read after driver Close succeeded")
	}
}

// TestStatusAsksTheBMC: Status reads chassis status now, not what the last
// poll saw (the poll is an hour here), and the poll that follows does not
// report the same state again.
func TestStatusAsksTheBMC(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t)
	h := newHost(t, b.Port, map[string]string{"ipmi.poll": "1h"})
	h.rec.waitFor(t, 0, 3*time.Second, "initial off", isPower(machine.PowerOff))
	b.Ipmitool("chassis", "power", "on")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := h.d.Status(ctx)
	if err != nil || st.Power != machine.PowerOn || !st.Reachable {
		t.Fatalf("Status after ipmitool power on: %+v %v", st, err)
	}
	if p := h.d.lastPower(); p != machine.PowerOn {
		t.Fatalf("the driver's last state is %s: the next poll would report on again", p)
	}
	h.d.Close()
	if _, err := h.d.Status(ctx); machine.ErrnoOf(err) != syscall.ENODEV {
		t.Fatalf("Status after Close: %v, want ENODEV", err)
	}
}
