package ipmi

// Test helpers: a real OpenIPMI ipmi_sim BMC per test (harness in
// tests/harness/ipmi), a recording Reporter and a map Config.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/nodes"
)

const (
	simUser = "admin"
	simPass = "s3cret-Pa55" // distinctive, so leaks are easy to grep for
)

// bmc is one running ipmi_sim.
type bmc struct {
	t    *testing.T
	port int
	dir  string // state dir: power, commands.log, fail, soft_delay, sim.log
	cmd  *exec.Cmd
}

func harnessDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs("../../tests/harness/ipmi")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d, "lan.conf.in")); err != nil {
		t.Fatalf("harness missing: %v", err)
	}
	return d
}

// freeUDPPort returns a UDP port on 127.0.0.1 nobody listens on (right now).
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	return port
}

// udpBound reports whether 127.0.0.1:port is bound (from /proc/net/udp).
func udpBound(port int) bool {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return false
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 1 && f[1] == want {
			return true
		}
	}
	return false
}

// startBMC starts ipmi_sim on a free port of 127.0.0.1 with power initially
// off (or on), and kills it (by PID, with its hook children) at cleanup.
// With solPort, the BMC's serial port is the TCP server on that port.
func startBMC(t *testing.T, powerOn bool, solPort ...int) *bmc {
	t.Helper()
	sim, err := exec.LookPath("ipmi_sim")
	if err != nil {
		t.Fatalf("ipmi_sim not found in PATH: install openipmi (apt-get install -y openipmi ipmitool)")
	}
	h := harnessDir(t)
	tmpl, err := os.ReadFile(filepath.Join(h, "lan.conf.in"))
	if err != nil {
		t.Fatal(err)
	}
	solLine := "# no SOL"
	if len(solPort) > 0 {
		solLine = fmt.Sprintf("sol \"tcp:127.0.0.1:%d\" 115200", solPort[0])
	}
	for attempt := 0; attempt < 3; attempt++ {
		b := &bmc{t: t, port: freeUDPPort(t), dir: t.TempDir()}
		conf := strings.NewReplacer("@NAME@", fmt.Sprintf("bmc%d", b.port), "@PORT@", strconv.Itoa(b.port),
			"@STATEDIR@", b.dir, "@HARNESS@", h, "@USER@", simUser, "@PASS@", simPass, "@SOL@", solLine).Replace(string(tmpl))
		if err := os.WriteFile(filepath.Join(b.dir, "lan.conf"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		b.setPower(powerOn)
		logf, err := os.Create(filepath.Join(b.dir, "sim.log"))
		if err != nil {
			t.Fatal(err)
		}
		b.cmd = exec.Command(sim, "-c", filepath.Join(b.dir, "lan.conf"), "-f", filepath.Join(h, "bmc.emu"), "-s", b.dir, "-n")
		b.cmd.Dir = b.dir
		b.cmd.Stdout, b.cmd.Stderr = logf, logf
		b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // hook children share its group
		if err := b.cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("start ipmi_sim: %v", err)
		}
		logf.Close()
		pid := b.cmd.Process.Pid
		t.Cleanup(func() {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = b.cmd.Wait()
		})
		deadline := time.Now().Add(5 * time.Second)
		for !udpBound(b.port) && time.Now().Before(deadline) && alive(pid) {
			time.Sleep(10 * time.Millisecond)
		}
		if udpBound(b.port) && alive(pid) {
			return b
		}
		log, _ := os.ReadFile(filepath.Join(b.dir, "sim.log"))
		t.Logf("ipmi_sim on port %d did not come up (attempt %d): %s", b.port, attempt+1, log)
	}
	t.Fatalf("ipmi_sim did not start")
	return nil
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func (b *bmc) setPower(on bool) {
	v := "0\n"
	if on {
		v = "1\n"
	}
	if err := os.WriteFile(filepath.Join(b.dir, "power"), []byte(v), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bmc) power() string {
	v, _ := os.ReadFile(filepath.Join(b.dir, "power"))
	return strings.TrimSpace(string(v))
}

// commands returns the hook's log as "parm value" lines.
func (b *bmc) commands() []string {
	v, _ := os.ReadFile(filepath.Join(b.dir, "commands.log"))
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(v)), "\n") {
		if f := strings.SplitN(l, " ", 2); len(f) == 2 {
			out = append(out, f[1])
		}
	}
	return out
}

func (b *bmc) touch(name, content string) {
	if err := os.WriteFile(filepath.Join(b.dir, name), []byte(content), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// ipmitool runs ipmitool against the simulator, behind the driver's back.
func (b *bmc) ipmitool(args ...string) string {
	b.t.Helper()
	tool, err := exec.LookPath("ipmitool")
	if err != nil {
		b.t.Fatalf("ipmitool not found in PATH: install ipmitool (apt-get install -y openipmi ipmitool)")
	}
	base := []string{"-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", strconv.Itoa(b.port), "-U", simUser, "-P", simPass}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, append(base, args...)...).CombinedOutput()
	if err != nil {
		b.t.Fatalf("ipmitool %v: %v: %s", args, err, out)
	}
	return string(out)
}

var activeRE = regexp.MustCompile(`active sessions\s*:\s*(\d+)`)

// activeSessions counts the BMC's sessions, not counting ipmitool's own.
func (b *bmc) activeSessions() int {
	m := activeRE.FindStringSubmatch(b.ipmitool("session", "info", "active"))
	if m == nil {
		b.t.Fatalf("no 'active sessions' in ipmitool output")
	}
	n, _ := strconv.Atoi(m[1])
	return n - 1
}

// mapConfig is a nodes.Config.
type mapConfig map[string]string

func (m mapConfig) Get(k string) (string, bool) { v, ok := m[k]; return v, ok }

func (m mapConfig) Duration(k string, def time.Duration) time.Duration {
	v, ok := m[k]
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return def
	}
	return d
}

// recorder is a nodes.Reporter that keeps everything.
type recorder struct {
	mu      sync.Mutex
	changed chan struct{}
	reports []stamped
	events  []string
}

type stamped struct {
	at time.Time
	nodes.Status
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Report(s nodes.Status) {
	r.mu.Lock()
	r.reports = append(r.reports, stamped{time.Now(), s})
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) Event(kind, detail string) {
	r.mu.Lock()
	r.events = append(r.events, kind+" "+detail)
	r.mu.Unlock()
}

func (r *recorder) all() []stamped {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]stamped(nil), r.reports...)
}

// waitFor waits until a report from index from on satisfies ok and returns
// it with its index.
func (r *recorder) waitFor(t *testing.T, from int, timeout time.Duration, what string, ok func(nodes.Status) bool) (stamped, int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for i := from; i < len(r.reports); i++ {
			if ok(r.reports[i].Status) {
				s := r.reports[i]
				r.mu.Unlock()
				return s, i
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no report %s within %v; reports: %s", what, timeout, r.dump())
		}
	}
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reports)
}

func (r *recorder) dump() string {
	var b strings.Builder
	for _, s := range r.all() {
		fmt.Fprintf(&b, "\n  %s power=%q reachable=%v reason=%q err=%v", s.at.Format("15:04:05.000"), s.Power, s.Reachable, s.Reason, s.Err)
	}
	r.mu.Lock()
	for _, e := range r.events {
		fmt.Fprintf(&b, "\n  event %s", e)
	}
	r.mu.Unlock()
	return b.String()
}

// text is everything the driver said, for password checks.
func (r *recorder) text() string {
	var b strings.Builder
	b.WriteString(r.dump())
	return b.String()
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testHost struct {
	d   *Driver
	rec *recorder
	log *syncBuffer
}

// newHost builds a driver through Spec.New with the given config on top of
// test defaults (fast poll, short verify timeout).
func newHost(t *testing.T, port int, extra map[string]string) *testHost {
	t.Helper()
	cfg := mapConfig{
		"ipmi.address":        "127.0.0.1",
		"ipmi.port":           strconv.Itoa(port),
		"ipmi.user":           simUser,
		"ipmi.password":       simPass,
		"ipmi.timeout":        "500ms",
		"ipmi.retries":        "1",
		"ipmi.poll":           "200ms",
		"ipmi.verify-timeout": "5s",
	}
	for k, v := range extra {
		cfg[k] = v
	}
	h := &testHost{rec: newRecorder(), log: &syncBuffer{}}
	drv, err := Spec.New(context.Background(), nodes.DriverEnv{
		Path:   "hosts/" + t.Name(),
		Config: cfg,
		Report: h.rec,
		Log:    slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.d = drv.(*Driver)
	t.Cleanup(func() { h.d.Close() })
	return h
}

// describe returns the Describe lines as a map.
func (h *testHost) describe() map[string]string {
	m := map[string]string{}
	for _, kv := range h.d.Describe() {
		m[kv[0]] = kv[1]
	}
	return m
}

// startConsole serves tests/harness/ipmi/fake-console.sh on a free TCP port
// of 127.0.0.1 with socat (one console per connection) and returns the port.
func startConsole(t *testing.T) int {
	t.Helper()
	socat, err := exec.LookPath("socat")
	if err != nil {
		t.Fatalf("socat not found in PATH: install socat (apt-get install -y socat)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(socat, fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork", port),
		"EXEC:"+filepath.Join(harnessDir(t), "fake-console.sh"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
			c.Close() // socat forks a console for this probe; it ends at EOF
			return port
		}
	}
	t.Fatalf("socat did not listen on %d", port)
	return 0
}
