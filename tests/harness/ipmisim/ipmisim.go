// Package ipmisim runs real OpenIPMI ipmi_sim BMC simulators on 127.0.0.1
// for tests, one per call to Start, each on a free UDP port with its state
// in a temporary directory, killed by PID when the test ends.
//
// The simulator's files (lan.conf.in, bmc.emu, chassiscontrol.sh,
// fake-console.sh) live in tests/harness/ipmi (see its README.txt); they
// are found relative to this package's source, so tests of any package can
// use it. Needs ipmi_sim and ipmitool in PATH (Debian: openipmi ipmitool),
// and socat for StartConsole.
package ipmisim

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/internal/procfs"
)

// The credentials of the simulated BMCs' admin user. The password is
// distinctive so a leak is easy to grep for.
const (
	User     = "admin"
	Password = "s3cret-Pa55"
)

// BMC is one running ipmi_sim.
type BMC struct {
	Addr     string // 127.0.0.1 unless ListenAddr
	Port     int    // UDP port
	User     string
	Password string
	// Dir is the simulator's state directory: power ("0"/"1"), boot,
	// commands.log, soft_delay, fail, sim.log (see the harness README).
	Dir string

	t    testing.TB
	cmd  *exec.Cmd
	run  func(func() error) error // starts processes (see InNetNS)
	once sync.Once
}

type options struct {
	powerOn bool
	solPort int
	auths   []string
	run     func(func() error) error
	addr    string
}

// Option configures Start.
type Option func(*options)

// PoweredOn starts the simulated machine with power on (default off).
func PoweredOn() Option { return func(o *options) { o.powerOn = true } }

// WithSOL makes the BMC's serial port the TCP server on 127.0.0.1:port
// (see StartConsole); ipmi_sim connects to it when it starts.
func WithSOL(port int) Option { return func(o *options) { o.solPort = port } }

// Auths sets the IPMI 1.5 ("-I lan") authentication types the BMC offers
// and accepts, for every privilege level and for the admin user, out of
// none, md2, md5 and straight (plaintext password). The default is the
// template's: md2 md5 straight. RMCP+ ("lanplus") sessions are not
// affected.
func Auths(types ...string) Option {
	return func(o *options) { o.auths = append([]string(nil), types...) }
}

// InNetNS starts ipmi_sim, and the ipmitool runs of the BMC, through run,
// which must call its argument on a thread inside a network namespace
// (netns.NS.Run): the BMC then listens on that namespace's 127.0.0.1.
// StartConsole serves in the caller's namespace, so WithSOL does not
// combine with InNetNS.
func InNetNS(run func(func() error) error) Option { return func(o *options) { o.run = run } }

// ListenAddr makes the BMC listen on ip (an IPv4 address of the namespace
// it runs in, see InNetNS) instead of 127.0.0.1: a BMC on a segment that
// several machines reach.
func ListenAddr(ip string) Option { return func(o *options) { o.addr = ip } }

var (
	allowedAuthsRE = regexp.MustCompile(`(?m)^(\s*allowed_auths_\w+)\s.*$`)
	userAuthsRE    = regexp.MustCompile(`(?m)^(\s*user\s+\d+\s+\S+\s+"[^"]*"\s+"[^"]*"\s+\S+\s+\d+)\b.*$`)
)

// setAuths replaces the authentication type lists of a rendered lan.conf.
func setAuths(conf string, auths []string) string {
	list := strings.Join(auths, " ")
	conf = allowedAuthsRE.ReplaceAllString(conf, "${1} "+list)
	return userAuthsRE.ReplaceAllString(conf, "${1} "+list)
}

// HarnessDir is tests/harness/ipmi, located from this file's path.
func HarnessDir(t testing.TB) string {
	t.Helper()
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("ipmisim: cannot locate the package source")
	}
	d := filepath.Join(filepath.Dir(self), "..", "ipmi")
	if _, err := os.Stat(filepath.Join(d, "lan.conf.in")); err != nil {
		t.Fatalf("ipmisim: harness missing: %v", err)
	}
	return d
}

// FreeUDPPort returns a UDP port of 127.0.0.1 nobody listens on (right now).
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	return port
}

// udpBound reports whether addr:port (IPv4) is bound in the network
// namespace of process pid (from /proc/<pid>/net/udp).
func udpBound(pid int, addr string, port int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", pid))
	if err != nil {
		return false
	}
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return false
	}
	// /proc shows the address as a little-endian word.
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 1 && f[1] == want {
			return true
		}
	}
	return false
}

// Start starts ipmi_sim on a free port of 127.0.0.1 with power off (unless
// PoweredOn) and returns once the BMC listens. The process and its hook
// children are killed, by the PID of the group Start created, at Stop or
// when the test ends.
func Start(t testing.TB, opts ...Option) *BMC {
	t.Helper()
	o := options{run: func(f func() error) error { return f() }, addr: "127.0.0.1"}
	for _, f := range opts {
		f(&o)
	}
	sim, err := exec.LookPath("ipmi_sim")
	if err != nil {
		t.Fatalf("ipmi_sim not found in PATH: install openipmi (apt-get install -y openipmi ipmitool)")
	}
	h := HarnessDir(t)
	tmpl, err := os.ReadFile(filepath.Join(h, "lan.conf.in"))
	if err != nil {
		t.Fatal(err)
	}
	solLine := "# no SOL"
	if o.solPort > 0 {
		solLine = fmt.Sprintf("sol \"tcp:127.0.0.1:%d\" 115200", o.solPort)
	}
	for attempt := 0; attempt < 3; attempt++ {
		var port int
		if err := o.run(func() error { port = FreeUDPPort(t); return nil }); err != nil {
			t.Fatal(err)
		}
		b := &BMC{Addr: o.addr, Port: port, User: User, Password: Password, Dir: t.TempDir(), t: t, run: o.run}
		conf := strings.NewReplacer("127.0.0.1 @PORT@", b.Addr+" "+strconv.Itoa(b.Port), "@NAME@", fmt.Sprintf("bmc%d", b.Port), "@PORT@", strconv.Itoa(b.Port),
			"@STATEDIR@", b.Dir, "@HARNESS@", h, "@USER@", b.User, "@PASS@", b.Password, "@SOL@", solLine).Replace(string(tmpl))
		if o.auths != nil {
			conf = setAuths(conf, o.auths)
		}
		if err := os.WriteFile(filepath.Join(b.Dir, "lan.conf"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		b.WritePower(o.powerOn)
		logf, err := os.Create(filepath.Join(b.Dir, "sim.log"))
		if err != nil {
			t.Fatal(err)
		}
		b.cmd = exec.Command(sim, "-c", filepath.Join(b.Dir, "lan.conf"), "-f", filepath.Join(h, "bmc.emu"), "-s", b.Dir, "-n")
		b.cmd.Dir = b.Dir
		b.cmd.Stdout, b.cmd.Stderr = logf, logf
		b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // hook children share its group
		if err := o.run(b.cmd.Start); err != nil {
			logf.Close()
			t.Fatalf("start ipmi_sim: %v", err)
		}
		logf.Close()
		t.Cleanup(b.Stop)
		pid := b.cmd.Process.Pid
		deadline := time.Now().Add(5 * time.Second)
		for !udpBound(pid, b.Addr, b.Port) && time.Now().Before(deadline) && alive(pid) {
			time.Sleep(10 * time.Millisecond)
		}
		if udpBound(pid, b.Addr, b.Port) && alive(pid) {
			return b
		}
		b.Stop()
		log, _ := os.ReadFile(filepath.Join(b.Dir, "sim.log"))
		t.Logf("ipmi_sim on port %d did not come up (attempt %d): %s", b.Port, attempt+1, log)
	}
	t.Fatalf("ipmi_sim did not start")
	return nil
}

// Stop kills the simulator and its hook children (SIGKILL to the process
// group Start created) and waits for it. It may be called more than once.
func (b *BMC) Stop() {
	b.once.Do(func() {
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		_ = b.cmd.Wait()
	})
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	st, err := procfs.ReadStat(pid)
	return err == nil && st.State != 'Z'
}

// Power is the simulated machine's power as the state file says: "on",
// "off", or the file's raw content if it is neither "1" nor "0".
func (b *BMC) Power() string {
	v, _ := os.ReadFile(filepath.Join(b.Dir, "power"))
	switch s := strings.TrimSpace(string(v)); s {
	case "1":
		return "on"
	case "0", "":
		return "off"
	default:
		return s
	}
}

// WritePower changes the power state file directly, as if the machine
// changed by itself (a button, a crash): no IPMI command, no hook call.
func (b *BMC) WritePower(on bool) {
	v := "0\n"
	if on {
		v = "1\n"
	}
	b.WriteFile("power", v)
}

// SetPower switches power with ipmitool, behind the back of any other
// client, as an administrator would.
func (b *BMC) SetPower(on bool) {
	b.t.Helper()
	word := "off"
	if on {
		word = "on"
	}
	b.Ipmitool("chassis", "power", word)
}

// WriteFile writes a file of the state directory (soft_delay, fail, ...).
func (b *BMC) WriteFile(name, content string) {
	if err := os.WriteFile(filepath.Join(b.Dir, name), []byte(content), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// Reads is how many status reads (Get Chassis Status) the BMC has
// answered: each forks the hook, which counts it.
func (b *BMC) Reads() int {
	fi, err := os.Stat(filepath.Join(b.Dir, "reads.log"))
	if err != nil {
		return 0
	}
	return int(fi.Size())
}

// Commands returns what the power hook received, as "parm value" lines
// ("power 1", "reset 1", "shutdown 1", "power-soft-off 0").
func (b *BMC) Commands() []string {
	v, _ := os.ReadFile(filepath.Join(b.Dir, "commands.log"))
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(v)), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// IpmitoolArgs are the arguments that make ipmitool talk to this BMC
// (lanplus, cipher suite 3), without the command.
func (b *BMC) IpmitoolArgs() []string {
	return []string{"-I", "lanplus", "-C", "3", "-H", b.Addr, "-p", strconv.Itoa(b.Port), "-U", b.User, "-P", b.Password}
}

// IpmitoolLanArgs are the arguments that make ipmitool talk IPMI 1.5
// ("-I lan") to this BMC with authentication type auth (NONE, MD2, MD5,
// PASSWORD), without the command.
func (b *BMC) IpmitoolLanArgs(auth string) []string {
	return []string{"-I", "lan", "-A", auth, "-H", b.Addr, "-p", strconv.Itoa(b.Port), "-U", b.User, "-P", b.Password}
}

// Ipmitool runs ipmitool against the simulator and returns its output; a
// failure fails the test.
func (b *BMC) Ipmitool(args ...string) string {
	b.t.Helper()
	out, err := b.IpmitoolRaw(append(b.IpmitoolArgs(), args...)...)
	if err != nil {
		b.t.Fatalf("ipmitool %v: %v: %s", args, err, out)
	}
	return out
}

// IpmitoolRaw runs ipmitool with exactly args (in the BMC's network
// namespace, see InNetNS), bounded to 10 seconds, and returns its combined
// output and error.
func (b *BMC) IpmitoolRaw(args ...string) (string, error) {
	b.t.Helper()
	tool, err := exec.LookPath("ipmitool")
	if err != nil {
		b.t.Fatalf("ipmitool not found in PATH: install ipmitool (apt-get install -y openipmi ipmitool)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	run := b.run
	if run == nil {
		run = func(f func() error) error { return f() }
	}
	if err := run(cmd.Start); err != nil {
		return "", err
	}
	err = cmd.Wait()
	return out.String(), err
}

var activeRE = regexp.MustCompile(`active sessions\s*:\s*(\d+)`)

// Sessions counts the BMC's open sessions, not counting the one ipmitool
// opens to ask.
func (b *BMC) Sessions() int {
	b.t.Helper()
	m := activeRE.FindStringSubmatch(b.Ipmitool("session", "info", "active"))
	if m == nil {
		b.t.Fatalf("no 'active sessions' in ipmitool output")
	}
	n, _ := strconv.Atoi(m[1])
	return n - 1
}

// StartConsole serves tests/harness/ipmi/fake-console.sh on a free TCP
// port of 127.0.0.1 with socat (one console per connection) and returns
// the port, for WithSOL. socat is killed by PID when the test ends.
func StartConsole(t testing.TB) int {
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
		"EXEC:"+filepath.Join(HarnessDir(t), "fake-console.sh"))
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
