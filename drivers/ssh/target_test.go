package ssh

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
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

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// The test machine is Debian's OpenSSH server in a busybox root, run by
// busybox init as PID 1 of its own PID, mount and network namespaces: its
// poweroff and reboot end that PID 1 (the kernel's reboot(2) in a child
// PID namespace kills the namespace's init, with SIGINT for power off and
// SIGHUP for restart), never this machine's. Nothing runs in the root
// namespaces but the test itself.

const (
	clientAddr = "10.231.0.1"
	targetAddr = "10.231.0.2"
)

// inittab runs sshd, restarted if it dies, as the machine's one service.
const inittab = "::respawn:/usr/sbin/sshd -D -e\n"

const sshdConfig = `ListenAddress ` + targetAddr + `:22
HostKey /etc/ssh/host_key
AuthorizedKeysFile /etc/ssh/authorized_keys
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UseDNS no
PrintMotd no
PidFile none
`

// stage1 runs as PID 1 of the new PID namespace (host busybox, private
// mount namespace): it refuses to go on anywhere else, mounts proc and
// /dev/null into the root and becomes busybox init there.
const stage1 = `[ "$$" = 1 ] || { echo "stage1: not PID 1 of a new PID namespace: refusing" >&2; exit 99; }
set -e
R="$1"
mount -t proc proc "$R/proc"
mount --bind /dev/null "$R/dev/null"
exec chroot "$R" /bin/busybox init
`

// machineRoot is the root file system every test machine boots (built
// once), with its host key and the client's key.
type machineRoot struct {
	dir        string
	hostPub    ssh.PublicKey
	clientKey  string // private key file, mode 0600
	knownHosts string // lists targetAddr with hostPub
	err        error
}

var (
	rootOnce sync.Once
	shared   machineRoot
	rootDirs []string // removed by TestMain
)

func genKey() (ssh.PublicKey, []byte, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, nil, err
	}
	sp, err := ssh.NewPublicKey(pub)
	return sp, pem.EncodeToMemory(blk), err
}

// knownHostsLine is what ssh-keyscan would write for targetAddr.
func knownHostsLine(k ssh.PublicKey) string {
	return knownhosts.Line([]string{knownhosts.Normalize(targetAddr + ":22")}, k) + "\n"
}

func sharedRoot(t *testing.T) *machineRoot {
	t.Helper()
	netns.NeedRoot(t)
	for _, p := range []string{"/usr/sbin/sshd", "/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s (Debian openssh-server, busybox-static)", p)
		}
	}
	rootOnce.Do(func() { shared.err = buildRoot(&shared) })
	if shared.err != nil {
		t.Fatalf("build the machine's root: %v", shared.err)
	}
	return &shared
}

func buildRoot(r *machineRoot) error {
	base, err := os.MkdirTemp("", "mfh-ssh-")
	if err != nil {
		return err
	}
	rootDirs = append(rootDirs, base)
	r.dir = filepath.Join(base, "root")
	for _, d := range []string{"bin", "sbin", "usr/sbin", "proc", "dev", "etc/ssh", "root", "run/sshd", "tmp", "var/log"} {
		if err := os.MkdirAll(filepath.Join(r.dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile("/bin/busybox", filepath.Join(r.dir, "bin/busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return err
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			_ = os.Symlink("busybox", filepath.Join(r.dir, "bin", a))
		}
	}
	// sshd and the libraries it links.
	if err := copyFile("/usr/sbin/sshd", filepath.Join(r.dir, "usr/sbin/sshd"), 0o755); err != nil {
		return err
	}
	ldd, err := exec.Command("ldd", "/usr/sbin/sshd").Output()
	if err != nil {
		return fmt.Errorf("ldd sshd: %w", err)
	}
	for _, f := range strings.Fields(string(ldd)) {
		if strings.HasPrefix(f, "/") {
			dst := filepath.Join(r.dir, f)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := copyFile(f, dst, 0o755); err != nil {
				return err
			}
		}
	}
	hostPub, hostPEM, err := genKey()
	if err != nil {
		return err
	}
	clientPub, clientPEM, err := genKey()
	if err != nil {
		return err
	}
	r.hostPub = hostPub
	r.clientKey = filepath.Join(base, "client_key")
	r.knownHosts = filepath.Join(base, "known_hosts")
	files := []struct {
		path string
		data string
		mode os.FileMode
	}{
		{filepath.Join(r.dir, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n", 0o644},
		{filepath.Join(r.dir, "etc/group"), "root:x:0:\nnogroup:x:65534:\n", 0o644},
		{filepath.Join(r.dir, "etc/nsswitch.conf"), "passwd: files\ngroup: files\nshadow: files\n", 0o644},
		{filepath.Join(r.dir, "etc/inittab"), inittab, 0o644},
		{filepath.Join(r.dir, "etc/ssh/sshd_config"), sshdConfig, 0o644},
		{filepath.Join(r.dir, "etc/ssh/host_key"), string(hostPEM), 0o600},
		{filepath.Join(r.dir, "etc/ssh/authorized_keys"), string(ssh.MarshalAuthorizedKey(clientPub)), 0o644},
		{filepath.Join(r.dir, "dev/null"), "", 0o644}, // a mount point
		{r.clientKey, string(clientPEM), 0o600},
		{r.knownHosts, knownHostsLine(hostPub), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, []byte(f.data), f.mode); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, mode)
}

// lab is a client network namespace (where the driver runs) cabled to a
// target network namespace (where the machine runs).
type lab struct {
	client, target *netns.NS
}

func newLab(t *testing.T) *lab {
	t.Helper()
	netns.NeedRoot(t)
	l := &lab{client: netns.New(t, "mfhc"), target: netns.New(t, "mfht")}
	netns.Veth(t, netns.End{NS: l.client, Name: "mfhc0", Addr: clientAddr + "/24"},
		netns.End{NS: l.target, Name: "mfht0", Addr: targetAddr + "/24"})
	return l
}

// machine is one test machine: busybox init as PID 1 of its own PID and
// mount namespaces, in the lab's target network namespace.
type testMachine struct {
	t    *testing.T
	root *machineRoot
	ns   *netns.NS
	log  *bytes.Buffer

	mu       sync.Mutex
	cmd      *exec.Cmd
	pid      int
	exits    []syscall.WaitStatus // every PID 1 that ended, in order
	exited   chan struct{}        // closed when the current PID 1 ends
	restarts bool                 // boot again after a reboot (SIGHUP)
	reapers  sync.WaitGroup
	stopped  bool // test over: no more boots
}

// bootMachine starts the machine and waits until its sshd listens.
func bootMachine(t *testing.T, l *lab, restarts bool) *testMachine {
	t.Helper()
	m := &testMachine{t: t, root: sharedRoot(t), ns: l.target, log: &bytes.Buffer{}, restarts: restarts}
	t.Cleanup(m.stop)
	if err := m.boot(); err != nil {
		t.Fatal(err)
	}
	m.waitListening(l)
	return m
}

func (m *testMachine) boot() error {
	cmd := exec.Command("/bin/busybox", "sh", "-c", stage1, "stage1", m.root.dir)
	cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"}
	cmd.Stdout, cmd.Stderr = m.log, m.log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:   syscall.CLONE_NEWPID,
		Unshareflags: syscall.CLONE_NEWNS, // Go makes / private in it
		Pdeathsig:    syscall.SIGKILL,
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil // the test is over
	}
	if err := m.ns.Start(cmd); err != nil {
		return fmt.Errorf("boot the machine: %w", err)
	}
	m.cmd, m.pid, m.exited = cmd, cmd.Process.Pid, make(chan struct{})
	m.reapers.Add(1)
	go m.reap(cmd, m.exited)
	return nil
}

// reap waits for a PID 1 and, like firmware after a restart, boots the
// machine again when it rebooted.
func (m *testMachine) reap(cmd *exec.Cmd, exited chan struct{}) {
	defer m.reapers.Done()
	_ = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	m.mu.Lock()
	m.exits = append(m.exits, ws)
	again := m.restarts && !m.stopped && ws.Signaled() && ws.Signal() == syscall.SIGHUP
	m.mu.Unlock()
	close(exited)
	if again {
		time.Sleep(300 * time.Millisecond) // firmware
		if err := m.boot(); err != nil {
			m.t.Error(err)
		}
	}
}

func (m *testMachine) current() (pid int, exited chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pid, m.exited
}

func (m *testMachine) exitList() []syscall.WaitStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]syscall.WaitStatus(nil), m.exits...)
}

// kill switches the machine off behind the driver's back: SIGKILL to its
// PID 1, by PID, which the test started.
func (m *testMachine) kill() {
	pid, exited := m.current()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	<-exited
}

func (m *testMachine) stop() {
	m.mu.Lock()
	m.stopped = true
	pid, exited := m.pid, m.exited
	m.mu.Unlock()
	if exited == nil {
		return
	}
	select {
	case <-exited:
	default:
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
	m.reapers.Wait()
	if m.t.Failed() {
		m.t.Logf("machine's console:\n%s", m.log.String())
	}
	// The mounts lived in the machine's mount namespace only.
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(data), m.root.dir) {
		m.t.Errorf("a mount of the machine's root leaked into the test's namespace")
	}
}

// waitListening waits until sshd accepts connections from the client
// namespace.
func (m *testMachine) waitListening(l *lab) {
	m.t.Helper()
	netns.WaitFor(m.t, 10*time.Second, "sshd listening", func() bool { return tcpOpen(l) == nil })
}

func tcpOpen(l *lab) error {
	return l.client.Run(func() error {
		c, err := net.DialTimeout("tcp", targetAddr+":22", time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// mustBeContained fails the test unless the machine's PID 1 and its sshd
// are in a PID namespace other than the test's (and than this machine's
// init's, where that can be read): a power verb must never reach this
// machine's own init. Called before every power verb.
func (m *testMachine) mustBeContained() {
	m.t.Helper()
	pid, _ := m.current()
	mine, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		m.t.Fatalf("SAFETY: cannot read the test's PID namespace: %v", err)
	}
	theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil || theirs == mine {
		m.t.Fatalf("SAFETY: machine PID 1 (%d) is in PID namespace %q, the test in %q (%v): refusing power verbs", pid, theirs, mine, err)
	}
	if init, err := os.Readlink("/proc/1/ns/pid"); err == nil && init == theirs {
		m.t.Fatalf("SAFETY: machine shares this machine's init's PID namespace %s", init)
	}
	if nspid := nsPID(pid); len(nspid) < 2 || nspid[len(nspid)-1] != "1" {
		m.t.Fatalf("SAFETY: machine's init %d is not PID 1 of a child PID namespace (NSpid %v)", pid, nspid)
	}
	for _, ns := range []string{"mnt", "net"} {
		a, _ := os.Readlink("/proc/self/ns/" + ns)
		b, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err != nil || a == b {
			m.t.Fatalf("SAFETY: machine shares the test's %s namespace (%v)", ns, err)
		}
	}
	// Its sshd, whose sessions run the commands, is in there too.
	found := false
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(children)) {
		comm, _ := os.ReadFile("/proc/" + c + "/comm")
		if strings.TrimSpace(string(comm)) != "sshd" {
			continue
		}
		ns, err := os.Readlink("/proc/" + c + "/ns/pid")
		if err != nil || ns != theirs {
			m.t.Fatalf("SAFETY: sshd %s is in PID namespace %q, not the machine's %q", c, ns, theirs)
		}
		found = true
	}
	if !found {
		m.t.Fatalf("no sshd under the machine's init %d", pid)
	}
}

func nsPID(pid int) []string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "NSpid:"); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}

// recorder is a machine.Reporter that keeps every report; onReport, if
// set, runs inside Report (as the model's merge does).
type recorder struct {
	mu       sync.Mutex
	sts      []machine.Status
	events   []string
	onReport func(machine.Status)
}

func (r *recorder) Report(st machine.Status) {
	r.mu.Lock()
	hook := r.onReport
	r.mu.Unlock()
	if hook != nil {
		hook(st)
	}
	r.mu.Lock()
	r.sts = append(r.sts, st)
	r.mu.Unlock()
}

func (r *recorder) Event(kind machine.EventKind, detail string) {
	r.mu.Lock()
	r.events = append(r.events, string(kind)+" "+detail)
	r.mu.Unlock()
}

func (r *recorder) statuses() []machine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]machine.Status(nil), r.sts...)
}

// waitFor waits for a report from index from on that satisfies ok and
// returns its index.
func (r *recorder) waitFor(t *testing.T, from int, timeout time.Duration, what string, ok func(machine.Status) bool) int {
	t.Helper()
	found := -1
	netns.WaitFor(t, timeout, what, func() bool {
		sts := r.statuses()
		for i := from; i < len(sts); i++ {
			if ok(sts[i]) {
				found = i
				return true
			}
		}
		return false
	})
	return found
}

type testConfig map[string]string

func (c testConfig) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// config is a host's config for the shared machine.
func (r *machineRoot) config(extra ...string) testConfig {
	c := testConfig{KeyAddress: targetAddr, KeyKey: r.clientKey, KeyKnownHosts: r.knownHosts,
		KeyConnectTimeout: "2s", KeyCommandTimeout: "5s", KeyProbeInterval: "300ms"}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i]] = extra[i+1]
	}
	return c
}

// newDriver builds a driver in ns, closed at cleanup.
func newDriver(t *testing.T, ns *netns.NS, cfg testConfig, rec *recorder) *driver {
	t.Helper()
	var d machine.Driver
	ns.Do(t, func() error {
		var err error
		d, err = New(t.Context(), machine.DriverEnv{Path: "hosts/" + t.Name(), Config: cfg, Report: rec})
		return err
	})
	t.Cleanup(func() { _ = d.Close() })
	return d.(*driver)
}
