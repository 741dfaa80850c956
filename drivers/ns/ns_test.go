package ns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	diskimg "github.com/machinefs/machinefs/tests/harness/disk"
	"github.com/machinefs/machinefs/tests/harness/netns"
	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests. Every driver is
// closed by its test's cleanup (forceRelease), and Close waits for the
// driver's watchers, so no ignore is needed: the threads that create a
// netns or start an init end locked and are discarded by the runtime, but
// their goroutines return.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type cfg map[string]string

func (c cfg) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// rep records what the driver reports.
type rep struct {
	mu     sync.Mutex
	last   machine.Status
	all    []machine.Status
	events []string
}

func (r *rep) Report(st machine.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = st
	r.all = append(r.all, st)
}

func (r *rep) Event(kind machine.EventKind, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, string(kind)+" "+detail)
}

func (r *rep) power() machine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func (r *rep) hasEvent(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e == s {
			return true
		}
	}
	return false
}

func (r *rep) countEvent(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e == s {
			n++
		}
	}
	return n
}

type fixture struct {
	t     *testing.T
	state string
	cg    string
}

func setup(t *testing.T) *fixture {
	netns.NeedRoot(t)
	// Registered first, so it runs last: after every driver of the test
	// was released and closed.
	t.Cleanup(func() { goleak.VerifyNone(t) })
	f := &fixture{t: t, state: t.TempDir(), cg: fmt.Sprintf("mfnu%d", os.Getpid())}
	t.Cleanup(func() {
		if root := cgroup2Root(); root != "" {
			_ = os.Remove(filepath.Join(root, f.cg))
		}
	})
	return f
}

func (f *fixture) root() string {
	dir := filepath.Join(f.t.TempDir(), "root")
	netns.BusyboxRoot(f.t, dir)
	return dir
}

func (f *fixture) cfg(kv ...string) cfg {
	c := cfg{"ns.state-dir": f.state, "ns.cgroup": f.cg, "ns.poweroff-timeout": "3s"}
	for i := 0; i+1 < len(kv); i += 2 {
		c[kv[i]] = kv[i+1]
	}
	return c
}

// open builds a driver and registers a cleanup that forces the subhost off
// and releases it whatever the test did.
func (f *fixture) open(name string, c cfg) (*Subhost, *rep) {
	f.t.Helper()
	r := &rep{}
	d, err := New(context.Background(), machine.DriverEnv{Path: "hosts/h/subhosts/" + name, Config: c, Report: r})
	if err != nil {
		f.t.Fatal(err)
	}
	sh := d.(*Subhost)
	f.t.Cleanup(func() { forceRelease(sh) })
	return sh, r
}

// forceRelease kills and releases whatever the subhost holds (test cleanup).
func forceRelease(d *Subhost) {
	d.mu.Lock()
	p := d.p
	if p != nil {
		d.intent = "release"
		p.kill()
	}
	d.mu.Unlock()
	if p != nil {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
	d.mu.Lock()
	d.releaseLocked()
	d.mu.Unlock()
	d.Close()
}

func (f *fixture) power(d *Subhost, verb string) {
	f.t.Helper()
	if err := d.Power(context.Background(), machine.Command{Verb: verb}); err != nil {
		f.t.Fatalf("%s: %v", verb, err)
	}
}

func waitPower(t *testing.T, r *rep, p machine.Power) machine.Status {
	t.Helper()
	netns.WaitFor(t, 10*time.Second, "power "+string(p), func() bool { return r.power().Power == p })
	return r.power()
}

func netnsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func TestNSBootNotifyPoweroff(t *testing.T) {
	f := setup(t)
	d, r := f.open("mfnu1", f.cfg("ns.root", f.root(), "ns.hostname", "box1"))
	if r.power().Power != machine.PowerOff {
		t.Fatalf("initial %+v", r.power())
	}
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	netns.WaitFor(t, 5*time.Second, "notify booted", func() bool { return r.hasEvent("notify booted") })
	if !netnsExists("mfnu1") {
		t.Fatal("netns mfnu1 not under /run/netns")
	}
	// The subhost's own /proc and host name.
	out, err := d.Console(context.Background(), "proc", []string{"1/comm"})
	if err != nil || !strings.Contains(out, "init") {
		t.Fatalf("proc 1/comm = %q, %v", out, err)
	}
	if procs, _ := os.ReadFile(filepath.Join(d.rec.Cgroup, "cgroup.procs")); !strings.Contains(string(procs), fmt.Sprint(d.p.pid)) {
		t.Fatalf("init %d is not in its cgroup %s: %q", d.p.pid, d.rec.Cgroup, procs)
	}
	// /proc/sys shows the reader's namespaces: ask from inside.
	hn, err := exec.Command("nsenter", "-t", fmt.Sprint(d.p.pid), "-u", "hostname").Output()
	if err != nil || strings.TrimSpace(string(hn)) != "box1" {
		t.Fatalf("hostname = %q, %v", hn, err)
	}
	if _, err := d.Console(context.Background(), "log", []string{"hello there"}); err != nil {
		t.Fatal(err)
	}
	if !r.hasEvent("log hello there") {
		t.Fatal("no log event")
	}
	desc := fmt.Sprint(d.Describe())
	for _, k := range []string{"pid ", "cpu ", "memory ", "netns mfnu1"} {
		if !strings.Contains(desc, k) {
			t.Fatalf("Describe lacks %q: %s", k, desc)
		}
	}
	if _, err := d.Console(context.Background(), "sysrq", []string{"b"}); err == nil || !strings.Contains(err.Error(), "not supported by ns subhosts") {
		t.Fatalf("sysrq: %v", err)
	}
	// pause and resume through the freezer.
	if st, err := d.Status(context.Background()); err != nil || st.Power != machine.PowerOn {
		t.Fatalf("Status of a running subhost: %+v %v", st, err)
	}
	f.power(d, "pause")
	if r.power().Power != machine.PowerPaused {
		t.Fatalf("after pause: %+v", r.power())
	}
	if st, err := d.Status(context.Background()); err != nil || st.Power != machine.PowerPaused {
		t.Fatalf("Status of a frozen subhost: %+v %v", st, err)
	}
	f.power(d, "resume")
	if r.power().Power != machine.PowerOn {
		t.Fatalf("after resume: %+v", r.power())
	}
	start := time.Now()
	f.power(d, "poweroff")
	st := waitPower(t, r, machine.PowerOff)
	if !strings.Contains(st.Reason, "exited with status 0") || time.Since(start) > 8*time.Second {
		t.Fatalf("clean poweroff: %+v after %s", st, time.Since(start))
	}
	if st, err := d.Status(context.Background()); err != nil || st.Power != machine.PowerOff {
		t.Fatalf("Status after poweroff: %+v %v", st, err)
	}
	if netnsExists("mfnu1") {
		t.Fatal("netns left after poweroff")
	}
	if _, err := os.Stat(recordPath(f.state, "mfnu1")); err == nil {
		t.Fatal("record left after poweroff")
	}
}

func TestNSCrashHibernateStop(t *testing.T) {
	f := setup(t)
	root := f.root()
	d, r := f.open("mfnu2", f.cfg("ns.root", root))
	os.WriteFile(filepath.Join(root, "etc/crash"), []byte("3"), 0o644)
	f.power(d, "on")
	st := waitPower(t, r, machine.PowerOff)
	if !strings.Contains(st.Reason, "exited with status 3") || st.Err == nil {
		t.Fatalf("crash: %+v", st)
	}
	os.Remove(filepath.Join(root, "etc/crash"))

	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	f.power(d, "hibernate")
	st = waitPower(t, r, machine.PowerOff)
	if st.Reason != "hibernated" || !netnsExists("mfnu2") {
		t.Fatalf("hibernate: %+v, netns kept %v", st, netnsExists("mfnu2"))
	}
	// on from hibernation restarts on the kept resources.
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	netns.WaitFor(t, 5*time.Second, "second boot", func() bool { return r.countEvent("notify booted") >= 3 })
	f.power(d, "off")
	st = waitPower(t, r, machine.PowerOff)
	if !strings.Contains(st.Reason, "SIGKILL") {
		t.Fatalf("force off: %+v", st)
	}
	if netnsExists("mfnu2") {
		t.Fatal("netns left after off")
	}
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	f.power(d, "stop")
	waitPower(t, r, machine.PowerOff)
	if netnsExists("mfnu2") {
		t.Fatal("netns left after stop")
	}
}

// Close leaves the subhost running; a new driver adopts it.
func TestNSAdopt(t *testing.T) {
	f := setup(t)
	c := f.cfg("ns.root", f.root())
	d, r := f.open("mfnu3", c)
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	pid := d.p.pid
	d.Close()
	if procStart(pid) == 0 {
		t.Fatal("Close stopped the subhost")
	}
	d2, r2 := f.open("mfnu3", c)
	if st := r2.power(); st.Power != machine.PowerOn || !strings.Contains(st.Reason, "adopted") {
		t.Fatalf("after adoption: %+v", st)
	}
	// Still our child: the status is known.
	f.power(d2, "poweroff")
	st := waitPower(t, r2, machine.PowerOff)
	if !strings.Contains(st.Reason, "exited with status 0") {
		t.Fatalf("adopted poweroff: %+v", st)
	}
}

func TestNSErrors(t *testing.T) {
	f := setup(t)
	try := func(name string, c cfg, want syscall.Errno, text string) {
		t.Helper()
		d, _ := f.open(name, c)
		err := d.Power(context.Background(), machine.Command{Verb: "on"})
		if !errors.Is(err, want) || !strings.Contains(err.Error(), text) {
			t.Fatalf("%s: on = %v, want %v with %q", name, err, want, text)
		}
		if netnsExists(name) {
			t.Fatalf("%s: a failed start left its netns", name)
		}
		if _, err := os.Stat(filepath.Join(f.state, name)); err == nil {
			t.Fatalf("%s: a failed start left its state dir", name)
		}
	}
	try("mfnu4", f.cfg("ns.root", "/nonexistent/root"), syscall.ENOENT, "does not exist")
	try("mfnu5", f.cfg("ns.disks", "vda:1:/nonexistent.raw"), syscall.ENOENT, "not found")
	try("mfnu6", f.cfg("ns.root", f.root(), "ns.bridges", "mfnnobr:06:a7:dd:b4:02:f2"), syscall.ENOENT, "bridge mfnnobr not found")
	if _, err := parseSettings(machine.DriverEnv{Path: "hosts/x/subhosts/mfnu9", Config: cfg{"ns.root": "/r", "ns.bridges": "sw0:06:a7:dd:b4:02"}}); err == nil || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("malformed MAC: %v", err)
	}
	_, err := New(context.Background(), machine.DriverEnv{Path: "hosts/x/subhosts/mfnu7", Config: f.cfg("ns.root", "/r", "ns.bridges", "b:zz")})
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("bad MAC at New: %v", err)
	}
	// The same name under two hosts.
	f.open("mfnu8", f.cfg("ns.root", "/r"))
	_, err = New(context.Background(), machine.DriverEnv{Path: "hosts/other/subhosts/mfnu8", Config: f.cfg("ns.root", "/r"), Report: &rep{}})
	if !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("name clash: %v", err)
	}
}

func TestNSDiskRoot(t *testing.T) {
	f := setup(t)
	img := diskimg.Ext4(t, f.root(), "32M")
	data := filepath.Join(t.TempDir(), "data.raw")
	if err := os.WriteFile(data, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(data, 32<<20); err != nil {
		t.Fatal(err)
	}
	d, r := f.open("mfnu9", f.cfg("ns.disks", "vda:1:"+img+" vdb:0:"+data))
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	netns.WaitFor(t, 5*time.Second, "notify booted", func() bool { return r.hasEvent("notify booted") })
	if _, err := os.Stat(filepath.Join(d.rec.Live, "dev/vdb")); err != nil {
		t.Fatalf("vdb node: %v", err)
	}
	loops := append([]string(nil), d.rec.Loops...)
	f.power(d, "poweroff")
	waitPower(t, r, machine.PowerOff)
	for _, l := range loops {
		b, _ := os.ReadFile("/sys/block/" + filepath.Base(l) + "/loop/backing_file")
		if len(b) > 0 {
			t.Fatalf("%s still attached to %s", l, b)
		}
	}
}

// mountedAt reports whether something is mounted at dir.
func mountedAt(dir string) bool {
	data, _ := os.ReadFile("/proc/self/mounts")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

// Remove (the host leaves the tree) releases a hibernated subhost's
// resources and kills and releases a running one; the driver then closes
// without leaking anything.
func TestNSRemove(t *testing.T) {
	f := setup(t)
	held := func(name string, rec record) []string {
		var left []string
		if netnsExists(name) {
			left = append(left, "netns")
		}
		if mountedAt(rec.Live) {
			left = append(left, "mount "+rec.Live)
		}
		if _, err := os.Stat(recordPath(f.state, name)); err == nil {
			left = append(left, "record")
		}
		if _, err := os.Stat(filepath.Dir(rec.Live)); err == nil {
			left = append(left, "state dir")
		}
		if rec.Cgroup != "" {
			if _, err := os.Stat(rec.Cgroup); err == nil {
				left = append(left, "cgroup "+rec.Cgroup)
			}
		}
		return left
	}

	// Hibernated: power off, everything kept until Remove.
	d, r := f.open("mfnu10", f.cfg("ns.root", f.root()))
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	f.power(d, "hibernate")
	if st := waitPower(t, r, machine.PowerOff); st.Reason != "hibernated" {
		t.Fatalf("hibernate: %+v", st)
	}
	rec := *d.rec
	if left := held("mfnu10", rec); len(left) < 4 {
		t.Fatalf("hibernated subhost holds only %v", left)
	}
	if err := d.Remove(context.Background()); err != nil {
		t.Fatalf("Remove of a hibernated subhost: %v", err)
	}
	if left := held("mfnu10", rec); len(left) > 0 {
		t.Fatalf("Remove left %v", left)
	}
	if st := r.power(); st.Power != machine.PowerOff || !strings.Contains(st.Reason, "removed") {
		t.Fatalf("after Remove: %+v", st)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// Running: killed, then released.
	d, r = f.open("mfnu11", f.cfg("ns.root", f.root()))
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	d.mu.Lock()
	rec, pid := *d.rec, d.p.pid
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Remove(ctx); err != nil {
		t.Fatalf("Remove of a running subhost: %v", err)
	}
	if procStart(pid) != 0 {
		t.Fatalf("init %d still runs after Remove", pid)
	}
	if left := held("mfnu11", rec); len(left) > 0 {
		t.Fatalf("Remove left %v", left)
	}
	if st := r.power(); st.Power != machine.PowerOff || !strings.Contains(st.Reason, "host removed") {
		t.Fatalf("after Remove: %+v", st)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// After Close, Remove is refused: a new driver may hold the subhost.
	if err := d.Remove(ctx); !errors.Is(err, syscall.ESHUTDOWN) {
		t.Fatalf("Remove after Close: %v", err)
	}
}
