package tests

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/ns"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// The "physical machine" of the ssh driver's end-to-end test is an ns
// subhost of the daemon's local host: its own PID 1 (busybox init, whose
// inittab runs Debian's OpenSSH server), mount and network namespaces, on
// a bridge of the daemon's network namespace (a namespace of the test's
// own). Its poweroff and reboot end its PID 1 by reboot(2) inside its PID
// namespace, which the ns driver reads as the machine powering off or
// rebooting itself. The top-level host phys reaches it with drivers = ssh.
const (
	sshmBridge = "mfshbr"
	sshmGW     = "10.236.0.1"
	sshmAddr   = "10.236.0.2"
	sshmSub    = "mfshm"
)

// sshmInit brings the machine up as a physical one would: its network,
// then busybox init as PID 1. A machine with busybox init has no
// /run/initctl: the FIFO the ns driver makes for its own subhost scripts
// goes, so that the ssh driver sees the machine's real init.
const sshmInit = `#!/bin/sh
mount -t proc proc /proc
rm -f /run/initctl
ip link set lo up
ip addr add ` + sshmAddr + `/24 dev eth0
ip link set eth0 up
exec /bin/busybox init
`

const sshmConfig = `HostKey /etc/ssh/host_key
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

// sshmKeys are the machine's host key and the daemon's client key.
type sshmKeys struct {
	hostPub    ssh.PublicKey
	clientKey  string // private key file, 0600
	knownHosts string // lists sshmAddr with hostPub
	wrongHosts string // lists sshmAddr with another key
}

func sshmKey(t *testing.T) (ssh.PublicKey, []byte) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp, pem.EncodeToMemory(blk)
}

func sshmWrite(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// sshmRoot makes the machine's root: busybox, sshd and the libraries it
// links, an inittab that runs sshd, keys, and /dev/null (sshd needs it).
func sshmRoot(t *testing.T) (string, sshmKeys) {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Skip("needs Debian's openssh-server (/usr/sbin/sshd)")
	}
	root := filepath.Join(t.TempDir(), "root")
	netns.BusyboxRoot(t, root)
	for _, d := range []string{"usr/sbin", "etc/ssh", "root", "run/sshd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bins := []string{"/usr/sbin/sshd"}
	if _, err := os.Stat("/usr/lib/openssh/sshd-session"); err == nil {
		bins = append(bins, "/usr/lib/openssh/sshd-session") // OpenSSH 9.8 and later
	}
	for _, b := range bins {
		netns.CopyProgram(t, root, b, "")
	}
	if err := unix.Mknod(filepath.Join(root, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod dev/null: %v", err)
	}
	if err := os.Chmod(filepath.Join(root, "dev/null"), 0o666); err != nil { // past the umask
		t.Fatal(err)
	}
	hostPub, hostPEM := sshmKey(t)
	otherPub, _ := sshmKey(t)
	clientPub, clientPEM := sshmKey(t)
	dir := t.TempDir()
	k := sshmKeys{hostPub: hostPub, clientKey: filepath.Join(dir, "client_key"),
		knownHosts: filepath.Join(dir, "known_hosts"), wrongHosts: filepath.Join(dir, "known_hosts.wrong")}
	addr := []string{knownhosts.Normalize(sshmAddr + ":22")}
	for _, f := range []struct {
		path, data string
		mode       os.FileMode
	}{
		{filepath.Join(root, "init"), sshmInit, 0o755},
		{filepath.Join(root, "etc/inittab"), "::respawn:/usr/sbin/sshd -D -e\n", 0o644},
		{filepath.Join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n", 0o644},
		{filepath.Join(root, "etc/group"), "root:x:0:\nnogroup:x:65534:\n", 0o644},
		{filepath.Join(root, "etc/nsswitch.conf"), "passwd: files\ngroup: files\nshadow: files\n", 0o644},
		{filepath.Join(root, "etc/ssh/sshd_config"), sshmConfig, 0o644},
		{filepath.Join(root, "etc/ssh/host_key"), string(hostPEM), 0o600},
		{filepath.Join(root, "etc/ssh/authorized_keys"), string(ssh.MarshalAuthorizedKey(clientPub)), 0o644},
		{k.clientKey, string(clientPEM), 0o600},
		{k.knownHosts, knownhosts.Line(addr, hostPub) + "\n", 0o644},
		{k.wrongHosts, knownhosts.Line(addr, otherPub) + "\n", 0o644},
	} {
		sshmWrite(t, f.path, f.data, f.mode)
	}
	return root, k
}

// sshmSegment gives the daemon's namespace the machine's bridge, with
// the gateway address the daemon reaches the machine from.
func sshmSegment(t *testing.T, n *netns.NS) {
	t.Helper()
	h := n.Netlink(t)
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: sshmBridge}}); err != nil {
		t.Fatalf("bridge in %s: %v", n, err)
	}
	l, err := h.LinkByName(sshmBridge)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(sshmGW), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// sshmNSEnv is newNSEnv with a cgroup of this test's own: the test runs in
// parallel with others, and a shared parent cgroup could be removed by one
// test's cleanup while another creates a subhost under it.
func sshmNSEnv(t *testing.T) *nsEnv {
	e := &nsEnv{t: t, state: t.TempDir(), cgroup: fmt.Sprintf("mfsh%d", os.Getpid())}
	t.Cleanup(func() {
		if err := ns.ReleaseAll(e.state); err != nil {
			t.Errorf("releasing subhosts: %v", err)
		}
		for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			_ = os.Remove(filepath.Join(root, e.cgroup))
		}
	})
	return e
}

// TestSSHPhysicalMachine drives a machine without a BMC through the ssh
// driver, from bash in the mount: poweroff, reboot and init 6 reach its
// init over SSH and the tree shows off, then on; a wrong host key is
// EACCES; a machine whose init is killed behind machinefs's back shows
// off within a probe interval. One boot of the machine serves every step.
func TestSSHPhysicalMachine(t *testing.T) {
	t.Parallel()
	netns.NeedRoot(t)
	n := netns.New(t, "mfsh")
	sshmSegment(t, n)
	e := sshmNSEnv(t)
	root, keys := sshmRoot(t)
	d := startNS(t, n)
	sub := addSub(d, sshmSub, e.config(fmt.Sprintf("ns.root = %s\nns.bridges = %s:06:a7:dd:b4:36:02\nns.hostname = phys\nns.poweroff-timeout = 5s", root, sshmBridge)))
	phys := "hosts/phys"
	// The daemon's helpers fail the test they are given: each step hands
	// them its own (steps run one after the other).
	step := func(name string, fn func(t *testing.T)) {
		t.Run(name, func(st *testing.T) {
			d.t = st
			defer func() { d.t = t }()
			fn(st)
		})
	}
	power := func(p string) string { d.t.Helper(); return strings.TrimSpace(d.read(p + "/power")) }
	subPid := func() int {
		d.t.Helper()
		pid, _ := strconv.Atoi(stateField(d.read(sub+"/state"), "pid"))
		return pid
	}
	boot := func() {
		d.t.Helper()
		d.ok("echo 'on wait timeout=20s' > " + sub + "/power")
		eventually(d.t, "phys on (sshd answers with its host key)", func() bool { return power(phys) == "on" })
	}
	d.ok("echo 'on wait timeout=20s' > " + sub + "/power")
	d.addHost("phys", fmt.Sprintf("drivers = ssh\nssh.address = %s\nssh.key = %s\nssh.known-hosts = %s\nssh.connect-timeout = 2s\nssh.command-timeout = 10s\nssh.probe-interval = 500ms",
		sshmAddr, keys.clientKey, keys.knownHosts))
	eventually(t, "phys on (sshd answers with its host key)", func() bool { return power(phys) == "on" })

	step("poweroff", func(t *testing.T) {
		d.ok("echo 'poweroff self wait timeout=60s' > " + phys + "/power")
		if p := power(phys); p != "off" {
			t.Fatalf("after poweroff self wait, phys power is %q", p)
		}
		// The machine's init ended by reboot(2) as a power off: off, no
		// error.
		eventually(t, "the subhost off", func() bool { return power(sub) == "off" })
		st := d.read(sub + "/state")
		if !strings.HasPrefix(stateField(st, "reason"), "powered off from inside: killed by signal SIGINT") {
			t.Fatalf("the subhost after poweroff over ssh:\n%s", st)
		}
		boot()
	})

	step("reboot", func(t *testing.T) {
		pid := subPid()
		d.ok("echo 'reboot self wait timeout=60s' > " + phys + "/power")
		if p := power(phys); p != "on" {
			t.Fatalf("after reboot self wait, phys power is %q", p)
		}
		if now := subPid(); now == 0 || now == pid {
			t.Fatalf("the subhost's init after the reboot: pid %d (before %d)", now, pid)
		}
		eventsInOrder(t, d.read(phys+"/events.log"), "reboot self wait", phys+" power rebooting", phys+" power on")
		eventsInOrder(t, d.read(sub+"/events.log"), "rebooted from inside", sub+" power rebooting", sub+" power on")
	})

	step("init6", func(t *testing.T) {
		pid := subPid()
		before := strings.Count(d.read(sub+"/events.log"), "rebooted from inside")
		d.ok("echo 'init 6 wait timeout=60s' > " + phys + "/power")
		if p := power(phys); p != "on" {
			t.Fatalf("after init 6 wait, phys power is %q", p)
		}
		if now := subPid(); now == 0 || now == pid {
			t.Fatalf("the subhost's init after init 6: pid %d (before %d)", now, pid)
		}
		if after := strings.Count(d.read(sub+"/events.log"), "rebooted from inside"); after != before+1 {
			t.Fatalf("init 6: %d reboots from inside, want %d", after, before+1)
		}
		// busybox init has no run levels: the reason says so.
		d.fails("echo 'init 3' > "+phys+"/power", "Operation not supported")
		if le := stateField(d.read(phys+"/state"), "last-error"); !strings.Contains(le, "busybox") {
			t.Fatalf("init 3: last-error %q, want the reason naming busybox", le)
		}
	})

	step("wrong-host-key", func(t *testing.T) {
		d.ok(fmt.Sprintf("sed -i 's|^ssh.known-hosts = .*|ssh.known-hosts = %s|' %s/config", keys.wrongHosts, phys))
		eventually(t, "phys refuses the host key", func() bool {
			return strings.Contains(stateField(d.read(phys+"/state"), "reason"), "host key")
		})
		// force: the machine alone and at once, so the driver's refusal
		// is the write's (a stack command is accepted, then runs).
		d.fails("echo 'poweroff self force' > "+phys+"/power", "Permission denied")
		st := d.read(phys + "/state")
		if le := stateField(st, "last-error"); !strings.Contains(le, "host key CHANGED") || !strings.Contains(le, keys.wrongHosts) {
			t.Fatalf("poweroff with a wrong host key: last-error %q\n%s", le, st)
		}
		if power(sub) != "on" {
			t.Fatal("the machine went down although its host key was refused")
		}
		d.ok(fmt.Sprintf("sed -i 's|^ssh.known-hosts = .*|ssh.known-hosts = %s|' %s/config", keys.knownHosts, phys))
		eventually(t, "phys on with the right key again", func() bool { return power(phys) == "on" })
	})

	step("target-hangs", func(t *testing.T) {
		// A port that accepts and never speaks SSH (the kernel completes
		// the TCP handshake; nobody answers): a command is bounded by the
		// host's timeout and fails with ETIMEDOUT and the reason, and
		// the rest of the tree answers meanwhile.
		// The listener is in the machine's network namespace: an address
		// of the daemon's own would be refused (EPERM) as this machine.
		l := exec.Command("ip", "netns", "exec", sshmSub, "socat", "TCP-LISTEN:2222,bind="+sshmAddr+",reuseaddr,fork", "SYSTEM:exec sleep 30")
		l.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // socat and its children, ended together
		if err := l.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(-l.Process.Pid, syscall.SIGKILL); _ = l.Wait() })
		eventually(t, "the silent port to listen", func() bool {
			return exec.Command("ip", "netns", "exec", sshmSub, "bash", "-c", ": </dev/tcp/"+sshmAddr+"/2222").Run() == nil
		})
		hosts := filepath.Join(t.TempDir(), "known_hosts")
		sshmWrite(t, hosts, knownhosts.Line([]string{knownhosts.Normalize(sshmAddr + ":2222")}, keys.hostPub)+"\n", 0o644)
		d.addHost("hang", fmt.Sprintf("drivers = ssh\nssh.address = %s\nssh.port = 2222\nssh.key = %s\nssh.known-hosts = %s\nssh.connect-timeout = 2s\nssh.command-timeout = 2s\ntimeout = 3s\nssh.probe-interval = 1s",
			sshmAddr, keys.clientKey, hosts))
		done := make(chan result, 1)
		go func() { done <- runIn(t, d.mnt, "bash", "-c", "echo 'poweroff self force' > hosts/hang/power") }()
		if p := power(phys); p != "on" {
			t.Fatalf("phys read %q while hang's command was in flight", p)
		}
		r := <-done
		if r.code == 0 || !strings.Contains(r.err, "timed out") {
			t.Fatalf("poweroff of a target that never speaks SSH: exit %d, %q", r.code, r.err)
		}
		if le := stateField(d.read("hosts/hang/state"), "last-error"); le == "" {
			t.Fatal("hosts/hang/state gives no reason for the timeout")
		}
	})

	step("killed-behind-the-back", func(t *testing.T) {
		// SIGKILL to the machine's init, by the pid the tree shows: the
		// subhost's PID 1, which this test booted.
		pid := subPid()
		if pid == 0 {
			t.Fatal("no subhost pid")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, "phys off after its init was killed", func() bool { return power(phys) == "off" })
		eventually(t, "the subhost off", func() bool { return power(sub) == "off" })
	})
}
