package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/tests/harness/etcdlab"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// A physical machine that runs a machinefs agent powers itself off,
// reboots and re-initialises through that agent (issue 17). The "physical
// machine" is an ns subhost of lab1 (its own PID 1, busybox init, its own
// network namespace on a bridge of lab1) running a machinefs agent named
// phys in the same cluster. Commands are written on lab1's mount: they
// are forwarded to phys, whose local driver signals its busybox init; the
// agent goes down with its machine and lab1 reads its departure as the
// verdict. Nothing here signals this machine's init: the driver acts on
// PID 1 of the subhost's PID namespace, and only where uname says "phys".
func TestAgentPowersItsOwnMachine(t *testing.T) {
	t.Parallel()
	netns.NeedRoot(t)
	lab := etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 1, Prefix: "mfap", Subnet: "10.74.0"})
	m := lab.Machine(0)
	lab1 := startNS(t, m.NS, "-o", "node=lab1,cluster="+lab.Endpoints()[0])
	physSegment(t, m.NS)
	e := newNSEnv(t)
	root := agentRoot(t, lab.Endpoints()[0])
	sub := "hosts/lab1/subhosts/phys"
	lab1.ok(fmt.Sprintf("mkdir %s && cat > %s/config <<'EOF'\n%s\nEOF", sub, sub,
		e.config("ns.root = "+root+"\nns.bridges = mfapbr:06:a7:dd:b4:11:01\nns.hostname = phys")))
	bootPhys := func(on bool) int {
		t.Helper()
		lab1.ok("echo 'on wait timeout=30s' > " + sub + "/power")
		eventually(t, "phys's agent to join and run its own host", func() bool {
			st := lab1.sh("cat hosts/phys/state")
			return st.code == 0 && stateField(st.out, "owner") == "phys" && !strings.Contains(stateField(st.out, "reachable"), "gone") &&
				(!on || stateField(st.out, "power") == "on")
		})
		pid, _ := strconv.Atoi(stateField(lab1.read(sub+"/state"), "pid"))
		return pid
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(root, "agent.log"))
			t.Logf("phys's agent log:\n%s", log)
		}
	})
	bootPhys(false)
	lab1.ok("printf 'drivers = local\\nlocal.hostname = phys\\n' >> hosts/phys/config")
	eventually(t, "phys's local driver", func() bool {
		st := lab1.read("hosts/phys/state")
		return stateField(st, "power") == "on" && strings.Contains(st, "busybox")
	})

	// Levels busybox init does not have are refused with the reason.
	lab1.fails("echo 'init 3' > hosts/phys/power", "Operation not supported")

	// poweroff self wait returns once phys is down: its agent went with
	// it, and its init ended as a machine's does (the subhost reads off).
	if r := lab1.sh("echo 'poweroff self wait timeout=60s' > hosts/phys/power"); r.code != 0 {
		t.Fatalf("poweroff self wait: %q; state:\n%s", r.err, lab1.read("hosts/phys/state"))
	}
	st := lab1.read("hosts/phys/state")
	if stateField(st, "power") != "off" || !strings.Contains(st, "went down with its machine") {
		t.Fatalf("after poweroff self wait, hosts/phys shows:\n%s", st)
	}
	eventually(t, "the subhost phys to be off", func() bool { return lab1.read(sub+"/power") == "off\n" })

	// reboot self wait returns once phys is back: the same subhost init
	// was restarted (the kernel ended it as a reboot), a new agent ran.
	pid := bootPhys(true)
	lab1.ok("echo 'reboot self wait timeout=60s' > hosts/phys/power")
	if p := lab1.read("hosts/phys/power"); p != "on\n" {
		t.Fatalf("after reboot self wait, hosts/phys power is %q", p)
	}
	newPid, _ := strconv.Atoi(stateField(lab1.read(sub+"/state"), "pid"))
	if newPid == 0 || newPid == pid {
		t.Fatalf("the subhost's init after the reboot: pid %d (before %d)", newPid, pid)
	}
	if ev := lab1.read("hosts/phys/events.log"); !strings.Contains(ev, "takes down the machine this agent runs on") {
		t.Fatalf("hosts/phys/events.log does not say why the agent went:\n%s", ev)
	}

	// init 6 wait is a reboot, relayed to the machine's init.
	lab1.ok("echo 'init 6 wait timeout=60s' > hosts/phys/power")
	if p := lab1.read("hosts/phys/power"); p != "on\n" {
		t.Fatalf("after init 6 wait, hosts/phys power is %q", p)
	}
	lab1.ok("echo 'off wait timeout=30s' > " + sub + "/power")
}

// physSegment gives lab1 a bridge (mfapbr, 10.75.0.1/24) for its subhost
// phys; it goes with lab1's namespace.
func physSegment(t *testing.T, ns *netns.NS) {
	t.Helper()
	h := ns.Netlink(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "mfapbr"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("bridge in %s: %v", ns, err)
	}
	l, err := h.LinkByName("mfapbr")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.75.0.1"), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// physInit brings the machine up as a physical one would: its network,
// then busybox init as PID 1, which runs the machinefs agent.
const physInit = `#!/bin/sh
mount -t proc proc /proc
ip link set lo up
ip addr add 10.75.0.2/24 dev eth0
ip link set eth0 up
ip route add default via 10.75.0.1
echo booted > /run/machinefs/notify
exec /bin/busybox init
`

// agentRoot makes phys's root: busybox, /dev/fuse, and the machinefs
// binary with the libraries it needs, run by busybox init as the agent
// phys of the cluster at endpoint.
func agentRoot(t *testing.T, endpoint string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	netns.BusyboxRoot(t, root)
	for _, d := range []string{"mnt", "etc/machinefs", "run/mfs", "lib64", "lib/x86_64-linux-gnu"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	netns.CopyProgram(t, root, binary, "/bin/machinefs")
	for name, dev := range map[string][2]uint32{"fuse": {10, 229}, "null": {1, 3}, "zero": {1, 5}, "urandom": {1, 9}} {
		if err := unix.Mknod(filepath.Join(root, "dev", name), unix.S_IFCHR|0o666, int(unix.Mkdev(dev[0], dev[1]))); err != nil {
			t.Fatal(err)
		}
	}
	inittab := fmt.Sprintf("::respawn:/bin/sh -c 'exec /bin/machinefs -c /etc/machinefs -o statedir=/run/mfs,node=phys,cluster=%s /mnt >>/agent.log 2>&1'\n", endpoint)
	files := map[string]string{"init": physInit, "etc/inittab": inittab}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}
