package local

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// The test machine is busybox init (Debian's busybox-static) as PID 1 of
// a PID, mount, UTS and network namespace the test creates, with its own
// /proc, an empty /etc and /run (no D-Bus socket of this machine is
// reachable from it) and a host name of its own. Its inittab runs this
// test binary once, as TestLocalHelperInNamespace, which builds the
// driver in there and runs the steps it is given: the driver only ever
// acts on that PID 1. The kernel ends a child PID namespace's init when
// it calls reboot(2): with SIGINT for power off and halt, SIGHUP for
// restart, which the test reads from outside.

// helperEnv names the directory the helper reads its steps from and
// writes what it saw to; set only in the test machine's inittab.
const helperEnv = "MFL_LOCAL_HELPER"

// outerPIDNSEnv carries the test's own PID namespace into the machine:
// the helper refuses to run in it.
const outerPIDNSEnv = "MFL_OUTER_PIDNS"

const stage1 = `[ "$$" = 1 ] || { echo "stage1: not PID 1 of a new PID namespace: refusing" >&2; exit 99; }
set -e
mount -t proc proc /proc
mount -t tmpfs tmpfs /etc
mount -t tmpfs tmpfs /run
cp "$1/inittab" /etc/inittab
hostname "$2"
exec /bin/busybox init
`

// nsMachine is one boot of the test machine.
type nsMachine struct {
	t        *testing.T
	dir      string
	hostname string
	cmd      *exec.Cmd
	log      *lockedBuffer
	exited   chan struct{}
	status   syscall.WaitStatus
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// step is one power line the helper runs with the driver built for
// hostname (the machine's own when empty) and wol interface.
type step struct {
	hostname, wol, line string
}

var machineSeq int

// bootMachine starts busybox init in new namespaces (the network one
// being ns) and has it run the helper with steps.
func bootMachine(t *testing.T, ns *netns.NS, steps []step) *nsMachine {
	t.Helper()
	netns.NeedRoot(t)
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (Debian busybox-static)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	machineSeq++
	m := &nsMachine{t: t, dir: t.TempDir(), hostname: fmt.Sprintf("mfl%x-%d", os.Getpid()&0xffff, machineSeq), log: &lockedBuffer{}, exited: make(chan struct{})}
	var lines []string
	for _, s := range steps {
		h := s.hostname
		if h == "" {
			h = m.hostname
		}
		lines = append(lines, strings.Join([]string{h, s.wol, s.line}, "\t"))
	}
	outer, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	inittab := fmt.Sprintf("::once:/bin/busybox env %s=%s %s=%s %s -test.run=TestLocalHelperInNamespace -test.v\n", helperEnv, m.dir, outerPIDNSEnv, outer, self)
	for name, data := range map[string]string{"inittab": inittab, "steps": strings.Join(lines, "\n") + "\n", "out": ""} {
		if err := os.WriteFile(filepath.Join(m.dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m.cmd = exec.Command("/bin/busybox", "sh", "-c", stage1, "stage1", m.dir, m.hostname)
	m.cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin"}
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:   syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS,
		Unshareflags: syscall.CLONE_NEWNS, // Go makes / private in it
		Pdeathsig:    syscall.SIGKILL,
	}
	if err := ns.Start(m.cmd); err != nil {
		t.Fatalf("boot the machine: %v", err)
	}
	go func() {
		_ = m.cmd.Wait()
		m.status, _ = m.cmd.ProcessState.Sys().(syscall.WaitStatus)
		close(m.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-m.exited:
		default:
			_ = syscall.Kill(m.cmd.Process.Pid, syscall.SIGKILL) // the init this test started
			<-m.exited
		}
		if t.Failed() {
			t.Logf("machine's console:\n%s\nhelper's record:\n%s", m.log.String(), m.out())
		}
	})
	return m
}

// out is what the helper recorded.
func (m *nsMachine) out() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "out"))
	return string(b)
}

// waitExit waits for the machine's init to end and returns how.
func (m *nsMachine) waitExit() syscall.WaitStatus {
	m.t.Helper()
	select {
	case <-m.exited:
		return m.status
	case <-time.After(30 * time.Second):
		m.t.Fatalf("the machine's init did not end; helper's record:\n%s", m.out())
	}
	return 0
}

// waitOut waits until the helper recorded a line with prefix.
func (m *nsMachine) waitOut(prefix string) {
	m.t.Helper()
	netns.WaitFor(m.t, 30*time.Second, "helper line "+prefix, func() bool {
		return hasLine(m.out(), prefix)
	})
}

func hasLine(out, prefix string) bool {
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		if strings.HasPrefix(s.Text(), prefix) {
			return true
		}
	}
	return false
}

func mustHave(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !hasLine(out, l) {
			t.Errorf("helper's record lacks a line starting %q:\n%s", l, out)
		}
	}
}

// TestLocalBusyboxRefusals: a wrong local.hostname is EPERM and nothing
// happens (not even Wake-on-LAN arming), init 3 and suspend are ENOTSUP
// with the reason, and state names busybox; the machine's init is still
// running after all of it.
func TestLocalBusyboxRefusals(t *testing.T) {
	ns := netns.New(t, "mflr")
	m := bootMachine(t, ns, []step{
		{hostname: "not-this-machine", wol: "lo", line: "poweroff"},
		{hostname: "not-this-machine", line: "off"},
		{line: "init 3"},
		{line: "suspend"},
		{line: "pause"},
		{line: "describe"},
	})
	m.waitOut("done")
	select {
	case <-m.exited:
		t.Fatalf("the machine's init ended (%v) after refused commands", m.status)
	default:
	}
	out := m.out()
	mustHave(t, out,
		"result poweroff: EPERM local: this machine is "+m.hostname+", not not-this-machine (local.hostname): refusing to act on it",
		"result off: EPERM local: this machine is "+m.hostname+", not not-this-machine",
		"result init 3: ENOTSUP local: init 3: this machine's init is busybox, which has no run levels (init 0 and init 6 are its poweroff and reboot)",
		"result suspend: ENOTSUP local: suspend needs systemd-logind; this machine's init is busybox (PID 1 is ",
		"result pause: ENOTSUP local: pause needs systemd-logind; this machine's init is busybox",
		"state local-init: busybox (PID 1 is /",
		"state local-machine: "+m.hostname+" (this machine)",
		"report on reachable: this machine ("+m.hostname+") runs machinefs; init busybox",
	)
	// On another machine the driver reports nothing: in a cluster that
	// is the agent that runs the host while its own is gone, and power
	// is its other drivers' to tell.
	if strings.Contains(out, "report unknown") {
		t.Errorf("the driver on another machine reported a power:\n%s", out)
	}
	if strings.Contains(out, "event wol") || strings.Contains(out, "Wake-on-LAN") || strings.Contains(out, "event notify") {
		t.Errorf("a refused command armed or sent something:\n%s", out)
	}
}

// TestLocalBusyboxPower: each verb reaches busybox init, which ends the
// way the kernel ends a PID namespace's init: SIGINT for a power off,
// SIGHUP for a restart. Wake-on-LAN is asked for on a veth, which cannot
// wake anything: the command goes on, with the reason as a warning.
func TestLocalBusyboxPower(t *testing.T) {
	for _, tc := range []struct {
		line   string
		sig    syscall.Signal
		wol    bool
		record []string
	}{
		{"poweroff", syscall.SIGINT, true, []string{
			"event warning local: poweroff: Wake-on-LAN not armed, wol will not wake this machine: mflv0: the driver (veth) supports no Wake-on-LAN modes",
			"event notify local: poweroff: SIGUSR2 to PID 1 (busybox init) (init busybox)",
			"report stopping reachable: poweroff: SIGUSR2 to PID 1",
			"result poweroff: ok",
			"state wol: not armed: mflv0: the driver (veth) supports no Wake-on-LAN modes",
		}},
		{"reboot", syscall.SIGHUP, true, []string{
			"event notify local: reboot: SIGTERM to PID 1 (busybox init) (init busybox)",
			"report rebooting reachable: reboot: SIGTERM",
			"result reboot: ok",
			"state wol: not armed yet: armed on mflv0 before poweroff, off, init 0 and suspend",
		}},
		{"init 0", syscall.SIGINT, false, []string{
			"event notify local: init 0: SIGUSR2 to PID 1 (busybox init)",
			"result init 0: ok",
			"state wol: not configured (local.wol-interface is empty)",
		}},
		{"init 6", syscall.SIGHUP, false, []string{"event notify local: init 6: SIGTERM to PID 1", "result init 6: ok"}},
		{"off", syscall.SIGINT, true, []string{
			"event warning local: off: Wake-on-LAN not armed, wol will not wake this machine: mflv0: the driver (veth) supports no Wake-on-LAN modes",
			"event notify local: off: sync, then reboot(2) POWER_OFF (no orderly stop) (init busybox)",
			"report stopping reachable: off: sync, then reboot(2) POWER_OFF",
		}},
	} {
		t.Run(strings.ReplaceAll(tc.line, " ", ""), func(t *testing.T) {
			ns, peer := netns.New(t, "mflp"), netns.New(t, "mflq")
			netns.Veth(t, netns.End{NS: ns, Name: "mflv0"}, netns.End{NS: peer, Name: "mflv1"})
			s := step{line: tc.line}
			if tc.wol {
				s.wol = "mflv0"
			}
			m := bootMachine(t, ns, []step{s, {line: "describe"}})
			ws := m.waitExit()
			if !ws.Signaled() || ws.Signal() != tc.sig {
				t.Errorf("%s: the machine's init ended with %#x (signaled %v, signal %v), want killed by %v", tc.line, uint32(ws), ws.Signaled(), ws.Signal(), tc.sig)
			}
			mustHave(t, m.out(), tc.record...)
		})
	}
}
