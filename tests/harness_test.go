// Package tests holds the end-to-end tests: they build the machinefs
// binary, mount it in a temporary directory and drive it with real shell
// tools (sh -c, cat, inotifywait, tail), asserting what a user would see.
package tests

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// binary is the machinefs built once for the whole package.
var binary string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("tests: skipped, the end-to-end tests mount FUSE and need root (make test runs as root in CI)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "machinefs-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "machinefs")
	out, err := exec.Command("go", "build", "-race", "-o", binary, "../cmd/machinefs").CombinedOutput()
	if err != nil {
		fmt.Printf("building machinefs: %v\n%s", err, out)
		os.Exit(1)
	}
	defaultParallel()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testParallel is how many tests of this package run at once when go test
// is not given -parallel. Most tests here wait (for a daemon, a guest, a
// timeout, a probe) rather than compute, so more of them than the
// GOMAXPROCS default (2 on CI) overlap well. Tests whose assertions hinge
// on a short window (a command still in flight after 1-3 s, inotify or
// tail within half a second, a BMC answering within its 300 ms timeout)
// do not call t.Parallel: they run first, alone. So do the UML guests:
// with other guests and QEMU running beside them, Debian's UML kernel
// panicked now and then as it halted ("Segfault with no mm", "Kernel mode
// fault at addr 0x14").
const testParallel = 4

// defaultParallel sets -test.parallel to testParallel unless the command
// line set it.
func defaultParallel() {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", strconv.Itoa(testParallel))
	}
}

// daemon is one running machinefs.
type daemon struct {
	t      *testing.T
	mnt    string
	config string
	state  string // -o statedir
	args   []string
	env    []string  // extra environment, e.g. NOTIFY_SOCKET
	ns     *netns.NS // network namespace the daemon runs in; nil: the test's
	cmd    *exec.Cmd
	log    *bytes.Buffer
	exited chan struct{}
}

// openDir makes a directory every user may enter (t.TempDir is 0700), for
// tests that act as an unprivileged user.
func openDir(t *testing.T) string {
	d := t.TempDir()
	for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	return d
}

// start mounts machinefs with args (mountpoint and config dir are added)
// and unmounts it when the test ends, even when it fails.
func start(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startNS is start with the daemon inside network namespace ns (its
// mount is visible outside: a network namespace is not a mount namespace).
func startNS(t *testing.T, ns *netns.NS, args ...string) *daemon {
	t.Helper()
	return startWith(t, &daemon{ns: ns, args: args})
}

// startEnv is start with extra environment variables for the daemon.
func startEnv(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return startWith(t, &daemon{env: env, args: args})
}

func startWith(t *testing.T, d *daemon) *daemon {
	t.Helper()
	base := openDir(t)
	d.t, d.mnt, d.config, d.state = t, filepath.Join(base, "mnt"), filepath.Join(base, "etc"), filepath.Join(base, "run")
	if err := os.MkdirAll(d.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: stop the daemon, then show its log if the
	// test failed.
	t.Cleanup(func() {
		if t.Failed() && d.log != nil {
			t.Logf("machinefs log:\n%s", d.log)
		}
	})
	t.Cleanup(d.stop)
	d.start()
	return d
}

func (d *daemon) start() {
	t := d.t
	t.Helper()
	args := append([]string{"-c", d.config, "-o", "statedir=" + d.state}, d.args...)
	args = append(args, d.mnt)
	d.cmd = exec.Command(binary, args...)
	d.cmd.Env = append(os.Environ(), d.env...)
	d.log = &bytes.Buffer{}
	d.cmd.Stderr = d.log
	d.cmd.Stdout = d.log
	start := d.cmd.Start
	if d.ns != nil {
		start = func() error { return d.ns.Start(d.cmd) }
	}
	if err := start(); err != nil {
		t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	// Wait for a working mount, not just an entry in /proc/mounts: a dead
	// mount left by a killed daemon is listed there too.
	for !serving(d.mnt) {
		select {
		case <-d.exited:
			t.Fatalf("machinefs exited before mounting: %s", d.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("machinefs did not mount within 20s: %s", d.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends SIGTERM (a clean unmount) and waits; whatever is left mounted
// is detached.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("machinefs did not stop on SIGTERM within 15s; log:\n%s", d.log)
	}
	if mounted(d.mnt) {
		syscall.Unmount(d.mnt, syscall.MNT_DETACH)
		d.t.Errorf("machinefs left %s mounted after SIGTERM", d.mnt)
	}
	d.cmd = nil
}

// serving reports whether a live machinefs answers at dir. statfs, unlike
// stat, is never answered from the kernel's cache.
func serving(dir string) bool {
	var st syscall.Statfs_t
	return mounted(dir) && syscall.Statfs(dir, &st) == nil
}

// mounted reports whether a FUSE filesystem is mounted at dir.
func mounted(dir string) bool {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 2 && f[1] == dir && strings.HasPrefix(f[2], "fuse") {
			return true
		}
	}
	return false
}

// result is what a shell command printed and how it exited.
type result struct {
	out, err string
	code     int
}

// sh runs script with bash -c in the mount directory. bash, not dash:
// dash reports every failed write of its builtins as "I/O error", hiding
// the errno a user of bash (or /bin/echo) sees.
func (d *daemon) sh(script string) result {
	d.t.Helper()
	return runIn(d.t, d.mnt, "bash", "-c", script)
}

func runIn(t *testing.T, dir string, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return result{out: out.String(), err: errb.String(), code: code}
}

// ok runs script and fails the test unless it exits 0; it returns stdout.
func (d *daemon) ok(script string) string {
	d.t.Helper()
	r := d.sh(script)
	if r.code != 0 {
		d.t.Fatalf("sh -c %q: exit %d, stderr %q", script, r.code, r.err)
	}
	return r.out
}

// fails runs script and fails the test unless it exits non-zero with
// stderr containing want (the errno's text, as the shell prints it).
func (d *daemon) fails(script, want string) result {
	d.t.Helper()
	r := d.sh(script)
	if r.code == 0 || !strings.Contains(r.err, want) {
		d.t.Fatalf("sh -c %q: exit %d stderr %q, want failure with %q", script, r.code, r.err, want)
	}
	return r
}

// read returns a file of the tree, as cat prints it.
func (d *daemon) read(rel string) string {
	d.t.Helper()
	return d.ok("cat " + rel)
}

// stateField returns one "key: value" line of a state file.
func stateField(state, key string) string {
	for _, l := range strings.Split(state, "\n") {
		if v, ok := strings.CutPrefix(l, key+": "); ok {
			return v
		}
		if l == key+":" {
			return ""
		}
	}
	return "<missing " + key + ">"
}

// eventually polls cond until it holds or the deadline passes. It waits
// for a state to be reached; it does not assert how fast: the deadline
// only ends a wait that would never end. It is long because tests run in
// parallel on a small machine: a UML guest that boots in 3 s alone took
// 16 s to reach its init with the machine loaded.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// addHost creates a host through mkdir and config, as a user would.
func (d *daemon) addHost(name string, config string) {
	d.t.Helper()
	d.ok(fmt.Sprintf("mkdir hosts/%s && cat > hosts/%s/config <<'EOF'\n%s\nEOF", name, name, config))
}
