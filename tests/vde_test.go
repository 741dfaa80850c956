package tests

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// A VDE switch on a vswitch, through the tree: real vde_switch processes
// (as nobody), real vde_plug clients, traffic between two network
// namespaces through the VDE switch and from one of them to the bridge.
func TestVDESwitchThroughTree(t *testing.T) {
	t.Parallel()
	netns.NeedRoot(t)
	if _, err := exec.LookPath("vde_switch"); err != nil {
		t.Skip("vde_switch (Debian vde2) is not installed")
	}
	ns := netns.New(t, "mfd")
	const name = "mfd0"
	sock, mgmt := machine.VDESocket(name), machine.VDEDir+"/"+name+".mgmt"
	// Whatever a failed test leaves running goes: the switch by its pidfile
	// (if it is that switch), its sockets.
	t.Cleanup(func() {
		if b, err := os.ReadFile(machine.VDEDir + "/" + name + ".pid"); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); pid > 1 && strings.Contains(string(cl), sock+"\x00") {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for _, p := range []string{sock, mgmt, machine.VDEDir + "/" + name + ".pid"} {
			os.RemoveAll(p)
		}
	})
	d := startNS(t, ns)
	d.addHost("lab01", "drivers = sim\nlocal = yes")
	sw := "hosts/lab01/vswitch/" + name + "/"

	d.ok("mkdir " + sw)
	d.ok("echo 'add vde owner=nobody group=nogroup' > " + sw + "ctl")
	d.fails("echo 'add vde' > "+sw+"ctl", "File exists")
	d.fails("echo 'add vde mode=777' > "+sw+"ctl", "Invalid argument")
	st := d.ok(fmt.Sprintf("stat -c '%%n %%U %%G %%a %%F' %s %s/ctl %s", sock, sock, mgmt))
	for _, want := range []string{sock + " nobody nogroup 2770 directory", sock + "/ctl nobody nogroup 660 socket", mgmt + " nobody nogroup 600 socket"} {
		if !strings.Contains(st, want) {
			t.Fatalf("stat lacks %q:\n%s", want, st)
		}
	}
	ports := d.read(sw + "ports")
	for _, want := range []string{name + "v vde-tap", "vde vde_switch - up up", "owner=65534 group=65534 mode=0660", "vde-port - up up tap=" + name + "v"} {
		if !strings.Contains(ports, want) {
			t.Fatalf("ports lack %q:\n%s", want, ports)
		}
	}
	info := d.read(sw + "info")
	if stateField(info, "vde") != "running" || stateField(info, "vde-sock") != sock || stateField(info, "tun") != "ok" {
		t.Fatalf("info:\n%s", info)
	}
	d.ok("echo check > " + sw + "ctl")

	// Two namespaces plugged in with vde_plug tap://, as nobody's guests
	// would with -netdev vde: they reach each other, and the bridge
	// through the VDE switch's TAP.
	ip := func(n *netns.NS, args ...string) {
		t.Helper()
		if r := runIn(t, "/", "ip", append([]string{"-n", n.Name}, args...)...); r.code != 0 {
			t.Fatalf("ip %v: %s", args, r.err)
		}
	}
	ip(ns, "addr", "add", "10.77.0.254/24", "dev", name)
	var peers []*netns.NS
	var plugs []*exec.Cmd
	for i := 1; i <= 2; i++ {
		p := netns.New(t, "mfe")
		dev := fmt.Sprintf("mfdp%d", i)
		// Started on a thread in the namespace, not with ip netns exec:
		// that makes a mount namespace holding a copy of the FUSE mount,
		// which keeps the daemon's unmount waiting until the plug exits.
		plug := exec.Command("vde_plug", "vde://"+sock, "tap://"+dev)
		if err := p.Start(plug); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { plug.Process.Kill(); plug.Wait() })
		plugs = append(plugs, plug)
		netns.WaitFor(t, 10*time.Second, dev+" in "+p.Name, func() bool {
			return runIn(t, "/", "ip", "-n", p.Name, "link", "show", dev).code == 0
		})
		ip(p, "addr", "add", fmt.Sprintf("10.77.0.%d/24", i), "dev", dev)
		ip(p, "link", "set", dev, "up")
		peers = append(peers, p)
	}
	for _, c := range [][2]string{{peers[0].Name, "10.77.0.2"}, {peers[1].Name, "10.77.0.254"}} {
		if r := runIn(t, "/", "ip", "netns", "exec", c[0], "busybox", "ping", "-c", "2", "-W", "5", c[1]); r.code != 0 {
			t.Fatalf("ping %s from %s through the VDE switch: %s%s", c[1], c[0], r.out, r.err)
		}
	}
	ports = d.read(sw + "ports")
	if strings.Count(ports, "client=") != 2 {
		t.Fatalf("ports do not list the two plugs:\n%s", ports)
	}
	// In use: rmdir and remove are EBUSY, and say why.
	d.fails("rmdir "+sw, "Device or resource busy")
	d.fails("echo 'remove vde' > "+sw+"ctl", "Device or resource busy")
	d.fails("echo 'cancel "+name+"' > hosts/lab01/vswitch/ctl", "Device or resource busy")
	if ev := d.read("hosts/lab01/events.log"); !strings.Contains(ev, "is in use: VDE port") {
		t.Fatalf("events lack the reason:\n%s", ev)
	}

	// A restart adopts the running switch: same process, still busy.
	pid := stateField(d.read(sw+"info"), "vde-pid")
	d.stopStart()
	if got := stateField(d.read(sw+"info"), "vde-pid"); got != pid || stateField(d.read(sw+"info"), "vde") != "running" {
		t.Fatalf("after restart vde-pid %s (was %s):\n%s", got, pid, d.read(sw+"info"))
	}
	d.fails("rmdir "+sw, "Device or resource busy")
	d.ok("echo check > " + sw + "ctl")

	// Guests gone: remove vde takes process, sockets and TAP.
	for _, p := range plugs {
		p.Process.Kill()
		p.Wait()
	}
	netns.WaitFor(t, 10*time.Second, "the plugs to leave", func() bool { return !strings.Contains(d.read(sw+"ports"), "client=") })
	d.ok("echo 'remove vde' > " + sw + "ctl")
	if r := runIn(t, "/", "ls", sock, mgmt); r.code == 0 {
		t.Fatalf("sockets left: %s", r.out)
	}
	if r := runIn(t, "/", "ip", "-n", ns.Name, "link", "show", name+"v"); r.code == 0 {
		t.Fatal("VDE TAP left")
	}
	n, _ := strconv.Atoi(pid)
	netns.WaitFor(t, 10*time.Second, "vde_switch to go", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		return len(b) == 0 || strings.Contains(string(b), ") Z ")
	})

	// check fails when a part is gone, as ctys's does.
	d.ok("echo 'add vde' > " + sw + "ctl")
	d.ok("rm " + mgmt)
	d.fails("echo check > "+sw+"ctl", "No such file or directory")
	d.ok("rmdir " + sw)
	if r := runIn(t, "/", "ls", sock); r.code == 0 {
		t.Fatal("data socket left after rmdir")
	}
}
