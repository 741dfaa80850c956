package tests

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// The daemon runs in a network namespace the test creates: every bridge,
// TAP and uplink lives there and goes with it.
func TestVswitchThroughTree(t *testing.T) {
	netns.NeedRoot(t)
	ns := netns.New(t, "mfv")
	peer := netns.New(t, "mfw")
	netns.Veth(t, netns.End{NS: ns, Name: "mfvu0"}, netns.End{NS: peer, Name: "mfvp0"})
	ip := func(args ...string) string {
		t.Helper()
		r := runIn(t, "/", "ip", append([]string{"-n", ns.Name}, args...)...)
		if r.code != 0 {
			t.Fatalf("ip %v: %s", args, r.err)
		}
		return r.out
	}
	// A bridge someone else made before machinefs started.
	ip("link", "add", "foreign0", "type", "bridge")

	d := startNS(t, ns)
	d.addHost("lab01", "drivers = sim\nlocal = yes")
	d.addHost("other", "drivers = sim")
	sw := "hosts/lab01/vswitch/sw0/"

	// create, info, list, listall
	d.ok("mkdir hosts/lab01/vswitch/sw0")
	if ls := d.ok("ls hosts/lab01/vswitch"); ls != "all\nctl\nsw0\n" {
		t.Fatalf("ls vswitch = %q", ls)
	}
	info := d.read(sw + "info")
	if stateField(info, "bridge") != "sw0" || stateField(info, "managed") != "yes" || stateField(info, "state") != "up" {
		t.Fatalf("info:\n%s", info)
	}
	all := d.read("hosts/lab01/vswitch/all")
	if !strings.Contains(all, "sw0 managed=yes") || !strings.Contains(all, "foreign0 managed=no") {
		t.Fatalf("all:\n%s", all)
	}
	// uplink, named explicitly
	d.ok("echo 'uplink = mfvu0' > " + sw + "config")
	if c := d.read(sw + "config"); c != "uplink = mfvu0\n" {
		t.Fatalf("config = %q", c)
	}
	d.fails("echo 'uplink = nosuch0' > "+sw+"config", "No such file or directory")
	d.fails("echo 'colour = blue' > "+sw+"config", "Invalid argument")
	// a TAP owned by a user and group
	d.ok("echo 'add tap owner=65534 group=65534' > " + sw + "ctl")
	ports := d.read(sw + "ports")
	if !strings.Contains(ports, "mfvu0 uplink") || !strings.Contains(ports, "sw0t0 tap") || !strings.Contains(ports, "owner=65534 group=65534") {
		t.Fatalf("ports:\n%s", ports)
	}
	l := ip("-d", "link", "show", "sw0t0")
	owned := strings.Contains(l, "user 65534 group 65534") || strings.Contains(l, "user nobody group nogroup")
	if !owned || !strings.Contains(l, "pi off") || !strings.Contains(l, "persist on") || !strings.Contains(l, "master sw0") {
		t.Fatalf("ip -d link show sw0t0:\n%s", l)
	}
	d.ok("echo check > " + sw + "ctl")
	d.fails("echo 'add tap owner=nosuchuser' > "+sw+"ctl", "Invalid argument")
	d.fails("echo explode > "+sw+"ctl", "Invalid argument")

	// A change made by someone else wakes watchers and shows in info,
	// ports, events and check.
	abs := filepath.Join(d.mnt, sw)
	watch := exec.Command("inotifywait", "-m", "-e", "close_write", "--format", "%w%f", abs+"/info", abs+"/ports")
	out, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	woke := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			woke <- sc.Text()
		}
	}()
	time.Sleep(300 * time.Millisecond)
	ip("link", "set", "sw0t0", "down")
	select {
	case f := <-woke:
		if !strings.HasSuffix(f, "info") && !strings.HasSuffix(f, "ports") {
			t.Fatalf("woke for %q", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("inotifywait did not wake on a link change made with ip")
	}
	if ports := d.read(sw + "ports"); !strings.Contains(ports, "sw0t0 tap") || !strings.Contains(ports, " down ") {
		t.Fatalf("ports after ip link set down:\n%s", ports)
	}
	if ev := d.read("hosts/lab01/events.log"); !strings.Contains(ev, "vswitch sw0 link sw0t0 down") {
		t.Fatalf("events:\n%s", ev)
	}
	d.fails("echo check > "+sw+"ctl", "Network is down")

	// Only the local host has switches; machinefs never deletes what it
	// did not create.
	d.fails("mkdir hosts/other/vswitch/x", "Operation not supported")
	d.fails("rmdir hosts/lab01/vswitch/foreign0", "Operation not permitted")
	d.fails("mkdir hosts/lab01/vswitch/bad/name", "No such file or directory")
	d.fails("mkdir hosts/lab01/vswitch/waytoolongname", "Invalid argument")

	// Restart: the switch is found again (reused, not recreated).
	d.stopStart()
	if ls := d.ok("ls hosts/lab01/vswitch"); ls != "all\nctl\nsw0\n" {
		t.Fatalf("ls vswitch after restart = %q", ls)
	}
	// cancel: everything machinefs made goes, the uplink stays.
	d.ok("rmdir hosts/lab01/vswitch/sw0")
	links := ip("-br", "link")
	if hasLink(links, "sw0", "sw0t0") || !hasLink(links, "mfvu0") || !hasLink(links, "foreign0") {
		t.Fatalf("links after rmdir:\n%s", links)
	}
	if ls := d.ok("ls hosts/lab01/vswitch"); ls != "all\nctl\n" {
		t.Fatalf("ls vswitch after rmdir = %q", ls)
	}
	// Batch cancel: several switches in one request.
	d.ok("cd hosts/lab01/vswitch && mkdir b1 b2 && echo 'add tap' > b1/ctl && echo 'add tap' > b2/ctl && echo 'cancel b1 b2' > ctl")
	if ls := d.ok("ls hosts/lab01/vswitch"); ls != "all\nctl\n" {
		t.Fatalf("ls vswitch after cancel = %q", ls)
	}
	// Names only: "b1" also turns up in random MAC addresses.
	if links := ip("-br", "link"); hasLink(links, "b1", "b1t0", "b2", "b2t0") {
		t.Fatalf("links after cancel:\n%s", links)
	}
	d.fails("echo 'cancel foreign0' > hosts/lab01/vswitch/ctl", "Operation not permitted")
	d.fails("echo 'explode' > hosts/lab01/vswitch/ctl", "Invalid argument")
}

// hasLink reports whether `ip -br link` output lists a device of one of the
// names (veth peers show as NAME@ifN).
func hasLink(brief string, names ...string) bool {
	for _, l := range strings.Split(brief, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		dev, _, _ := strings.Cut(f[0], "@")
		for _, n := range names {
			if dev == n {
				return true
			}
		}
	}
	return false
}
