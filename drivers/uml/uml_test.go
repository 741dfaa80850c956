package uml_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/drivers/uml"
	"github.com/machinefs/machinefs/machine"
	umlh "github.com/machinefs/machinefs/tests/harness/uml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a Reporter that keeps what the driver said.
type recorder struct {
	mu       sync.Mutex
	statuses []machine.Status
	events   [][2]string
}

func (r *recorder) Report(st machine.Status) {
	r.mu.Lock()
	r.statuses = append(r.statuses, st)
	r.mu.Unlock()
}

func (r *recorder) Event(kind machine.EventKind, detail string) {
	r.mu.Lock()
	r.events = append(r.events, [2]string{string(kind), detail})
	r.mu.Unlock()
}

// power is the last power state reported.
func (r *recorder) last() machine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.statuses) - 1; i >= 0; i-- {
		if r.statuses[i].Power != "" {
			return r.statuses[i]
		}
	}
	return machine.Status{}
}

func (r *recorder) hasEvent(kind, detail string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e[0] == kind && e[1] == detail {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type config map[string]string

func (c config) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

func newMachine(t *testing.T, cfg config, r *recorder) *uml.Machine {
	t.Helper()
	return newMachineAt(t, "hosts/lab01/subhosts/ut1", cfg, r)
}

func newMachineAt(t *testing.T, hostPath string, cfg config, r *recorder) *uml.Machine {
	t.Helper()
	d, err := uml.New(context.Background(), machine.DriverEnv{Path: hostPath, Config: cfg, Report: r})
	if err != nil {
		t.Fatal(err)
	}
	return d.(*uml.Machine)
}

// Two hosts of the same name under different parents that share uml.dir
// share the umid. The second must neither adopt nor start nor, when it is
// removed, kill the first one's guest: EBUSY, with the reason.
func TestUMLSameNameTwoParents(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}
	ctx := context.Background()
	ra := &recorder{}
	a := newMachineAt(t, "hosts/a/subhosts/ut1", cfg, ra)
	defer a.Close()
	if err := a.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's guest on", func() bool { return ra.last().Power == machine.PowerOn })
	sock := filepath.Join(dir, "ut1", "mconsole")

	rb := &recorder{}
	b := newMachineAt(t, "hosts/b/subhosts/ut1", cfg, rb)
	defer b.Close()
	if st := rb.last(); st.Power != machine.PowerOff || !strings.Contains(st.Reason, "hosts/a/subhosts/ut1") {
		t.Fatalf("b at start: %+v, want off and whose guest it is", st)
	}
	if err := b.Power(ctx, machine.Command{Verb: "on"}); machine.ErrnoOf(err) != syscall.EBUSY || !strings.Contains(err.Error(), "uml.dir") {
		t.Fatalf("b on: %v, want EBUSY naming uml.dir", err)
	}
	if err := b.Remove(ctx); err != nil {
		t.Fatalf("b removed: %v", err)
	}
	if v, err := uml.Request(ctx, sock, "version"); err != nil || !strings.HasPrefix(v, "Linux") || ra.last().Power != machine.PowerOn {
		t.Fatalf("a's guest after b's removal: %q %v, power %s", v, err, ra.last().Power)
	}
	if err := a.Power(ctx, machine.Command{Verb: "off"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's guest off", func() bool { return ra.last().Power == machine.PowerOff })
	waitFor(t, "no linux left", func() bool { return len(umlh.Guests(dir)) == 0 })
}

func TestUMLKeyChecks(t *testing.T) {
	bad := map[string]string{
		"uml.kernel":           "linux",
		"uml.mem":              "lots",
		"uml.root":             "/srv/uml/web1",
		"uml.init":             "/sbin/init with spaces",
		"uml.net":              "sw0:zz:a7:dd:b4:02:10",
		"uml.dir":              "relative/dir",
		"uml.backup-dir":       "backups",
		"uml.poweroff-timeout": "forever",
		"uml.mconsole-timeout": "0s",
	}
	good := map[string]string{
		"uml.kernel":           "/usr/bin/linux",
		"uml.mem":              "128M",
		"uml.root":             "ubd0=/srv/cow.img,/srv/base.img",
		"uml.init":             "/sbin/init",
		"uml.net":              "sw0:06:a7:dd:b4:02:10",
		"uml.dir":              "/run/machinefs/uml",
		"uml.backup-dir":       "/var/lib/machinefs/backup",
		"uml.poweroff-timeout": "30s",
		"uml.mconsole-timeout": "2s",
	}
	for _, k := range uml.Spec.Keys {
		if k.Doc == "" || k.Kind == nil {
			t.Errorf("%s: needs Doc and Kind", k.Name)
			continue
		}
		if err := k.Check(bad[k.Name]); err == nil {
			t.Errorf("%s = %q accepted", k.Name, bad[k.Name])
		} else if !strings.Contains(err.Error(), "want") && !strings.Contains(err.Error(), "use ") {
			t.Errorf("%s: reason %q does not say what is wanted", k.Name, err)
		}
		if err := k.Check(good[k.Name]); err != nil {
			t.Errorf("%s = %q refused: %v", k.Name, good[k.Name], err)
		}
		if k.Default != "" {
			if err := k.Check(k.Default); err != nil {
				t.Errorf("%s: default %q refused: %v", k.Name, k.Default, err)
			}
		}
	}
}

// A socket that never answers and one that does not exist: requests end
// with the context, with errors that say so.
func TestUMLRequestNoAnswer(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "mute")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = uml.Request(ctx, sock, "version")
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || time.Since(start) > 5*time.Second {
		t.Fatalf("mute socket: err %v (errno %v) after %s, want ETIMEDOUT after 200ms", err, machine.ErrnoOf(err), time.Since(start))
	}
	// Cancelled without a deadline (the guest died): the blocked
	// receive is woken by the socket's shutdown.
	cctx, ccancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, ccancel)
	if _, err := uml.Request(cctx, sock, "version"); err == nil {
		t.Fatal("cancelled request to a mute socket succeeded")
	}
	_, err = uml.Request(context.Background(), filepath.Join(dir, "none"), "version")
	if machine.ErrnoOf(err) != syscall.EHOSTDOWN {
		t.Fatalf("missing socket: %v, want EHOSTDOWN", err)
	}
	if _, err := uml.Request(context.Background(), sock, strings.Repeat("x", 600)); machine.ErrnoOf(err) != syscall.EINVAL {
		t.Fatalf("long command: %v, want EINVAL", err)
	}
}

// The protocol against a real guest: boot (notify SOCKET and USER_NOTIFY),
// replies short and multi-datagram, ERR replies, pause, adoption by a new
// driver after Close (which leaves the guest running), off.
func TestUMLGuest(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}
	r := &recorder{}
	m := newMachine(t, cfg, r)
	defer m.Close()
	if p := r.last().Power; p != machine.PowerOff {
		t.Fatalf("new driver reports %q, want off", p)
	}
	ctx := context.Background()
	if err := m.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	if p := r.last().Power; p != machine.PowerStarting {
		t.Fatalf("after on: %q, want starting", p)
	}
	waitFor(t, "guest on", func() bool { return r.last().Power == machine.PowerOn })
	waitFor(t, "notify booted", func() bool { return r.hasEvent("notify", "booted") })
	if st, err := m.Status(ctx); err != nil || st.Power != machine.PowerOn {
		t.Fatalf("Status of a booted guest: %+v %v", st, err)
	}
	sock := filepath.Join(dir, "ut1", "mconsole")

	v, err := uml.Request(ctx, sock, "version")
	if err != nil || !strings.HasPrefix(v, "Linux") {
		t.Fatalf("version: %q %v", v, err)
	}
	out, err := exec.Command("uml_mconsole", sock, "version").CombinedOutput()
	if err == nil && !strings.Contains(string(out), v) {
		t.Fatalf("uml_mconsole says %q, we read %q", out, v)
	}
	// /proc/meminfo is longer than one datagram (512 bytes).
	mi, err := uml.Request(ctx, sock, "proc meminfo")
	mi = strings.TrimSpace(mi) // UML's proc reply starts with a newline
	if err != nil || len(mi) < 600 || !strings.HasPrefix(mi, "MemTotal:") || !strings.Contains(mi, "DirectMap") && !strings.Contains(mi, "Committed_AS") {
		t.Fatalf("proc meminfo (%d bytes): %q %v", len(mi), mi, err)
	}
	// A stack trace comes as more datagrams than the kernel queues for an
	// unconnected receiver (net.unix.max_dgram_qlen, 10): UML would drop
	// the rest, and the request would time out.
	for i := range 5 {
		st, err := uml.Request(ctx, sock, "stack 1")
		if err != nil || !strings.Contains(st, "Stack") && !strings.Contains(st, "stack") {
			t.Fatalf("stack 1 (try %d): %q %v", i, st, err)
		}
	}
	_, err = uml.Request(ctx, sock, "remove nosuchdevice")
	var re *uml.ReplyError
	if !errors.As(err, &re) || re.Text == "" {
		t.Fatalf("remove nosuchdevice: %v, want an ERR reply with UML's words", err)
	}
	t.Logf("UML's ERR reply: %q", re.Text)

	if err := m.Power(ctx, machine.Command{Verb: "pause"}); err != nil || r.last().Power != machine.PowerPaused {
		t.Fatalf("pause: %v, power %q", err, r.last().Power)
	}
	if st, err := m.Status(ctx); err != nil || st.Power != machine.PowerPaused {
		t.Fatalf("Status of a paused guest: %+v %v", st, err)
	}
	if err := m.Power(ctx, machine.Command{Verb: "resume"}); err != nil || r.last().Power != machine.PowerOn {
		t.Fatalf("resume: %v, power %q", err, r.last().Power)
	}

	// Close leaves the guest running; a new driver adopts it.
	m.Close()
	pids := umlh.Guests(dir)
	if len(pids) == 0 {
		t.Fatal("Close stopped the guest")
	}
	r2 := &recorder{}
	m2 := newMachine(t, cfg, r2)
	defer m2.Close()
	if st := r2.last(); st.Power != machine.PowerOn || !strings.Contains(st.Reason, "adopted") {
		t.Fatalf("new driver: %+v, want on, adopted", st)
	}
	if err := m2.Power(ctx, machine.Command{Verb: "off"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "guest off", func() bool { return r2.last().Power == machine.PowerOff })
	t.Logf("off: %s", r2.last().Reason)
	if st, err := m2.Status(ctx); err != nil || st.Power != machine.PowerOff {
		t.Fatalf("Status after off: %+v %v", st, err)
	}
	waitFor(t, "no linux left", func() bool { return len(umlh.Guests(dir)) == 0 })
	if _, err := os.Stat(filepath.Join(dir, "ut1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("umid dir left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ut1.machinefs", "record")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record left: %v", err)
	}
}

// A guest's console requests share one kept socket (the client), so three
// things must hold: a reply that comes after its request timed out is
// never read by the next request; requests at the same time each get
// their own reply; and after a reboot, when UML has made its socket anew,
// the first request is answered.
func TestUMLConsoleKeptSocket(t *testing.T) {
	umlh.Skip(t)
	root, dir := umlh.Root(t), umlh.Dir(t)
	// 3s: short enough for the stopped guest's timeout below, long enough
	// for eight requests at once on a loaded two-vCPU machine.
	cfg := config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init", "uml.mconsole-timeout": "3s"}
	r := &recorder{}
	m := newMachine(t, cfg, r)
	defer m.Close()
	ctx := context.Background()
	if err := m.Power(ctx, machine.Command{Verb: "on"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "guest on", func() bool { return r.last().Power == machine.PowerOn })
	isVersion := func(s string) bool { return strings.HasPrefix(s, "Linux") }
	isUptime := func(s string) bool {
		f := strings.Fields(s)
		return len(f) == 2 && strings.Contains(f[0], ".") && !isVersion(s)
	}

	// A late reply: the guest is stopped, so "version" times out; once
	// it runs again UML answers it, to a socket that must be gone.
	pids := umlh.Guests(dir)
	if len(pids) == 0 {
		t.Fatal("no guest process")
	}
	pgid, err := syscall.Getpgid(pids[0])
	if err != nil || pgid <= 1 {
		t.Fatalf("guest process group: %d %v", pgid, err)
	}
	// Only the main process, the group's leader: it runs the kernel and
	// its mconsole. Stopping the processes it traces can crash the guest.
	syscall.Kill(pgid, syscall.SIGSTOP)
	_, err = m.Console(ctx, "version", nil)
	syscall.Kill(pgid, syscall.SIGCONT)
	if machine.ErrnoOf(err) != syscall.ETIMEDOUT || !strings.Contains(err.Error(), `"version"`) {
		t.Fatalf("version to a stopped guest: %v (errno %v), want ETIMEDOUT naming the command", err, machine.ErrnoOf(err))
	}
	for i := range 20 {
		up, err := m.Console(ctx, "proc", []string{"uptime"})
		if err != nil || !isUptime(strings.TrimSpace(up)) {
			t.Fatalf("proc uptime after a timed-out version (try %d): %q %v", i, up, err)
		}
	}

	// Requests at the same time: each gets the reply to its own command.
	var wg sync.WaitGroup
	errs := make(chan string, 8*20)
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				cmd, args, ok := "version", []string(nil), isVersion
				if (i+j)%2 == 1 {
					cmd, args, ok = "proc", []string{"uptime"}, isUptime
				}
				text, err := m.Console(ctx, cmd, args)
				if err != nil || !ok(strings.TrimSpace(text)) {
					errs <- fmt.Sprintf("%s %v: %q %v", cmd, args, text, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	// A reboot makes UML's socket anew; the kept one has no peer then.
	if _, err := m.Console(ctx, "reboot", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for st := r.last(); st.Power != machine.PowerOn || !strings.Contains(st.Reason, "booted"); st = r.last() {
		if time.Now().After(deadline) {
			r.mu.Lock()
			t.Fatalf("not on after reboot: last %+v; all %+v; events %q", st, r.statuses, r.events)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v, err := m.Console(ctx, "version", nil); err != nil || !isVersion(v) {
		t.Fatalf("version after reboot: %q %v", v, err)
	}
}

// BenchmarkRequestVersion is one mconsole version round trip from Go.
func BenchmarkUMLRequestVersion(b *testing.B) {
	umlh.Skip(b)
	root, dir := umlh.Root(b), umlh.Dir(b)
	r := &recorder{}
	d, err := uml.New(context.Background(), machine.DriverEnv{Path: "hosts/bench1", Config: config{"uml.root": "hostfs:" + root, "uml.dir": dir, "uml.mem": "64M", "uml.init": "/init"}, Report: r})
	if err != nil {
		b.Fatal(err)
	}
	m := d.(*uml.Machine)
	defer m.Close()
	if err := m.Power(context.Background(), machine.Command{Verb: "on"}); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for r.last().Power != machine.PowerOn && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sock := filepath.Join(dir, "bench1", "mconsole")
	b.ResetTimer()
	for b.Loop() {
		if _, err := uml.Request(context.Background(), sock, "version"); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	m.Power(context.Background(), machine.Command{Verb: "off"})
	deadline = time.Now().Add(10 * time.Second)
	for r.last().Power != machine.PowerOff && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
