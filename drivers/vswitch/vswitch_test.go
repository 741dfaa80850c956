package vswitch

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// env is one test's namespace and a Manager working in it.
type env struct {
	ns    *netns.NS
	h     *netlink.Handle
	m     *Manager
	state string
}

// setup makes a fresh namespace (deleted at cleanup, with every device in
// it) and a Manager for it. Nothing is created in the test's namespace.
func setup(t testing.TB) *env {
	t.Helper()
	netns.NeedRoot(t)
	ns := netns.New(t, "mfv")
	e := &env{ns: ns, h: ns.Netlink(t), state: filepath.Join(t.TempDir(), "vswitch")}
	e.m = e.manager(t)
	return e
}

func (e *env) manager(t testing.TB) *Manager {
	t.Helper()
	m, err := New(context.Background(), Options{Netns: e.ns.Handle(), StateDir: e.state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// ip runs `ip ARGS` inside the namespace.
func (e *env) ip(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", e.ns.Name, "ip"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exists reports whether device name is in the namespace.
func (e *env) exists(t testing.TB, name string) bool {
	t.Helper()
	_, err := e.h.LinkByName(name)
	return err == nil
}

func wantErrno(t testing.TB, err error, want syscall.Errno) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	if got := machine.ErrnoOf(err); got != want {
		t.Fatalf("got %v (%q), want %v", got, err, want)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestCreateInfoPortsList(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	created, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	if !created {
		t.Fatal("first Create: created = false")
	}
	created, err = e.m.Create(ctx, "mfvb0")
	must(t, err)
	if created {
		t.Fatal("second Create: created = true, want reuse")
	}
	tap, err := e.m.AddTap(ctx, "mfvb0", "1234", "5678")
	must(t, err)
	tap2, err := e.m.AddTap(ctx, "mfvb0", "", "")
	must(t, err)
	if tap != "mfvb0t0" || tap2 != "mfvb0t1" {
		t.Fatalf("taps %s %s, want mfvb0t0 mfvb0t1", tap, tap2)
	}
	// Ownership as `ip -d link` shows it inside the namespace.
	d := e.ip(t, "-d", "link", "show", tap)
	for _, w := range []string{"master mfvb0", "tun type tap", "pi off", "persist on", "user 1234", "group 5678", "alias machinefs:mfvb0"} {
		if !strings.Contains(d, w) {
			t.Errorf("ip -d link show %s lacks %q:\n%s", tap, w, d)
		}
	}
	if d := e.ip(t, "-d", "link", "show", tap2); strings.Contains(d, "user ") {
		t.Errorf("%s: owner set although NoID:\n%s", tap2, d)
	}

	in, err := e.m.Info(ctx, "mfvb0")
	must(t, err)
	if !in.Managed || in.State != "up" || in.MTU != 1500 || in.Ports != 2 || in.Group != DefaultGroup+1 || in.Uplink != "" {
		t.Fatalf("info %+v", in)
	}
	ports, err := e.m.Ports(ctx, "mfvb0")
	must(t, err)
	if len(ports) != 2 || ports[0].Name != tap || ports[0].Kind != "tap" || ports[0].Owner != 1234 ||
		ports[0].Group != 5678 || ports[0].State != "up" || !ports[0].Managed || ports[0].MAC == "" || ports[1].Owner != NoID {
		t.Fatalf("ports %+v", ports)
	}

	// A bridge made by hand: listed by ListAll, not by List, managed: no.
	e.ip(t, "link", "add", "mfvx0", "type", "bridge")
	if got := e.m.List(); !slices.Equal(got, []string{"mfvb0"}) {
		t.Fatalf("List %v", got)
	}
	all, err := e.m.ListAll(ctx)
	must(t, err)
	if len(all) != 2 || all[0].Name != "mfvb0" || !all[0].Managed || all[1].Name != "mfvx0" || all[1].Managed || all[1].State != "down" {
		t.Fatalf("ListAll %+v", all)
	}
	must(t, e.m.Check(ctx, "mfvb0"))

	// Another Manager (a restart) finds the switch in the state directory.
	if _, err := os.Stat(filepath.Join(e.state, "mfvb0.json")); err != nil {
		t.Fatal(err)
	}
	m2 := e.manager(t)
	if got := m2.List(); !slices.Equal(got, []string{"mfvb0"}) {
		t.Fatalf("List after restart %v", got)
	}
	// And one without a state directory finds it by its alias.
	m3, err := New(ctx, Options{NetnsPath: "/run/netns/" + e.ns.Name})
	must(t, err)
	defer m3.Close()
	if got := m3.List(); !slices.Equal(got, []string{"mfvb0"}) {
		t.Fatalf("List by alias %v", got)
	}
}

func TestUplink(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	must(t, e.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mfvu0"}, PeerName: "mfvu1"}))
	wantErrno(t, e.m.SetUplink(ctx, "mfvb0", "mfvnone"), syscall.ENOENT)
	must(t, e.m.SetUplink(ctx, "mfvb0", "mfvu0"))
	ports, err := e.m.Ports(ctx, "mfvb0")
	must(t, err)
	if len(ports) != 1 || ports[0].Name != "mfvu0" || ports[0].Kind != "uplink" || ports[0].Managed {
		t.Fatalf("ports %+v", ports)
	}
	in, err := e.m.Info(ctx, "mfvb0")
	must(t, err)
	if in.Uplink != "mfvu0" {
		t.Fatalf("info %+v", in)
	}
	// Attaching never changes the uplink's up state: it is down.
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.ENETDOWN)
	e.ip(t, "link", "set", "mfvu0", "up")
	must(t, e.m.Check(ctx, "mfvb0"))
	// Taken by someone else's bridge: EBUSY.
	e.ip(t, "link", "add", "mfvx0", "type", "bridge")
	e.ip(t, "link", "set", "mfvu1", "master", "mfvx0")
	_, err = e.m.Create(ctx, "mfvb1")
	must(t, err)
	wantErrno(t, e.m.SetUplink(ctx, "mfvb1", "mfvu1"), syscall.EBUSY)
	// Detached by hand: EIO.
	e.ip(t, "link", "set", "mfvu0", "nomaster")
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.EIO)
	must(t, e.m.SetUplink(ctx, "mfvb0", "mfvu0"))
	must(t, e.m.Check(ctx, "mfvb0"))
	// Detach.
	must(t, e.m.SetUplink(ctx, "mfvb0", ""))
	l, err := e.h.LinkByName("mfvu0")
	must(t, err)
	if l.Attrs().MasterIndex != 0 {
		t.Fatal("uplink still attached")
	}
	// Deleting the switch only releases its uplink.
	must(t, e.m.SetUplink(ctx, "mfvb0", "mfvu0"))
	must(t, e.m.Delete(ctx, "mfvb0"))
	if !e.exists(t, "mfvu0") || !e.exists(t, "mfvu1") || !e.exists(t, "mfvx0") || e.exists(t, "mfvb0") {
		t.Fatal("delete touched the uplink or missed the bridge")
	}
}

func TestCheck(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.ENOENT)
	_, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	tap, err := e.m.AddTap(ctx, "mfvb0", "", "")
	must(t, err)
	must(t, e.m.Check(ctx, "mfvb0"))

	e.ip(t, "link", "set", "mfvb0", "down")
	err = e.m.Check(ctx, "mfvb0")
	wantErrno(t, err, syscall.ENETDOWN)
	if !strings.Contains(err.Error(), "bridge mfvb0 is down") {
		t.Fatalf("reason %q", err)
	}
	in, err := e.m.Info(ctx, "mfvb0")
	must(t, err)
	if in.State != "down" {
		t.Fatalf("info %+v", in)
	}
	// Create on a managed switch that is down repairs it.
	if created, err := e.m.Create(ctx, "mfvb0"); err != nil || created {
		t.Fatal(created, err)
	}
	must(t, e.m.Check(ctx, "mfvb0"))

	e.ip(t, "link", "set", tap, "down")
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.ENETDOWN)
	e.ip(t, "link", "set", tap, "up", "nomaster")
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.EIO)
	ports, err := e.m.Ports(ctx, "mfvb0")
	must(t, err)
	if len(ports) != 1 || ports[0].Name != tap { // a detached own TAP is still listed
		t.Fatalf("ports %+v", ports)
	}
	e.ip(t, "link", "del", "mfvb0")
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.ENOENT)
}

func TestCreateFailsAndRollsBack(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	e.ip(t, "link", "add", "mfvd0", "type", "veth", "peer", "name", "mfvd1")
	_, err := e.m.Create(ctx, "mfvd0")
	wantErrno(t, err, syscall.EEXIST)
	_, err = e.m.Create(ctx, "bad/name")
	wantErrno(t, err, syscall.EINVAL)
	_, err = e.m.Create(ctx, "mfv-much-too-long")
	wantErrno(t, err, syscall.ENAMETOOLONG)
	_, err = e.m.Create(ctx, "")
	wantErrno(t, err, syscall.EINVAL)

	// A failure after the bridge exists removes it and the record.
	e.m.failAfter = "bridge"
	_, err = e.m.Create(ctx, "mfvb0")
	wantErrno(t, err, syscall.EIO)
	e.m.failAfter = ""
	if e.exists(t, "mfvb0") {
		t.Fatal("half-made bridge left behind")
	}
	if _, err := os.Stat(filepath.Join(e.state, "mfvb0.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file left behind: %v", err)
	}
	if got := e.m.List(); len(got) != 0 {
		t.Fatalf("List %v", got)
	}
	if !e.exists(t, "mfvd0") {
		t.Fatal("the clashing device was touched")
	}
	// A TAP name that would be too long is refused before anything is made.
	_, err = e.m.Create(ctx, "mfvlongname14c")
	must(t, err)
	_, err = e.m.AddTap(ctx, "mfvlongname14c", "", "")
	wantErrno(t, err, syscall.ENAMETOOLONG)
}

func TestCancelHalfMade(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	t0, err := e.m.AddTap(ctx, "mfvb0", "", "")
	must(t, err)
	t1, err := e.m.AddTap(ctx, "mfvb0", "", "")
	must(t, err)
	// Half-made: the bridge went away, the TAPs stayed.
	e.ip(t, "link", "del", "mfvb0")
	wantErrno(t, e.m.Check(ctx, "mfvb0"), syscall.ENOENT)
	if got := e.m.List(); !slices.Equal(got, []string{"mfvb0"}) {
		t.Fatalf("List %v", got)
	}
	must(t, e.m.Delete(ctx, "mfvb0"))
	if e.exists(t, t0) || e.exists(t, t1) {
		t.Fatal("TAPs of a half-made switch left behind")
	}
	if got := e.m.List(); len(got) != 0 {
		t.Fatalf("List %v", got)
	}
	wantErrno(t, e.m.Delete(ctx, "mfvb0"), syscall.ENOENT)

	// Half-made the other way: a record (as a crash right after writing
	// it leaves) and no device at all.
	must(t, os.WriteFile(filepath.Join(e.state, "mfvb1.json"), []byte(`{"name":"mfvb1","group":1835466000}`), 0o600))
	m2 := e.manager(t)
	must(t, m2.Delete(ctx, "mfvb1"))
	if _, err := os.Stat(filepath.Join(e.state, "mfvb1.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("record left behind")
	}
}

func TestDeleteInOneRequest(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	var taps []string
	for range 3 {
		tap, err := e.m.AddTap(ctx, "mfvb0", "0", "0")
		must(t, err)
		taps = append(taps, tap)
	}
	must(t, e.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mfvu0"}, PeerName: "mfvu1"}))
	must(t, e.m.SetUplink(ctx, "mfvb0", "mfvu0"))
	e.ip(t, "link", "set", "mfvu1", "master", "mfvb0") // a port added by hand
	e.ip(t, "tuntap", "add", "dev", "mfvh0", "mode", "tap")
	e.ip(t, "link", "set", "mfvh0", "master", "mfvb0") // a foreign TAP

	before := e.m.dels.Load()
	must(t, e.m.Delete(ctx, "mfvb0"))
	if n := e.m.dels.Load() - before; n != 1 {
		t.Fatalf("%d delete requests, want 1", n)
	}
	for _, d := range append(taps, "mfvb0") {
		if e.exists(t, d) {
			t.Fatalf("%s still exists", d)
		}
	}
	for _, d := range []string{"mfvu0", "mfvu1", "mfvh0"} {
		if !e.exists(t, d) {
			t.Fatalf("%s, not machinefs's, was deleted", d)
		}
	}

	// Several switches in one request.
	names := []string{"mfvc0", "mfvc1", "mfvc2"}
	for _, n := range names {
		_, err := e.m.Create(ctx, n)
		must(t, err)
		_, err = e.m.AddTap(ctx, n, "", "")
		must(t, err)
	}
	before = e.m.dels.Load()
	must(t, e.m.Delete(ctx, names...))
	if n := e.m.dels.Load() - before; n != 1 {
		t.Fatalf("%d delete requests, want 1", n)
	}
	for _, n := range names {
		if e.exists(t, n) || e.exists(t, n+"t0") {
			t.Fatalf("%s left behind", n)
		}
	}

	// RemovePort: own TAP deleted, foreign port only detached.
	_, err = e.m.Create(ctx, "mfvb2")
	must(t, err)
	tap, err := e.m.AddTap(ctx, "mfvb2", "", "")
	must(t, err)
	e.ip(t, "link", "set", "mfvh0", "master", "mfvb2")
	must(t, e.m.RemovePort(ctx, "mfvb2", tap))
	must(t, e.m.RemovePort(ctx, "mfvb2", "mfvh0"))
	wantErrno(t, e.m.RemovePort(ctx, "mfvb2", "mfvh0"), syscall.ENOENT)
	if e.exists(t, tap) || !e.exists(t, "mfvh0") {
		t.Fatal("RemovePort deleted the wrong device")
	}
	// A foreign device in the switch's group: it survives, ours go one by one.
	tap, err = e.m.AddTap(ctx, "mfvb2", "", "")
	must(t, err)
	in, err := e.m.Info(ctx, "mfvb2")
	must(t, err)
	must(t, e.h.LinkSetGroup(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "mfvh0"}}, int(in.Group)))
	must(t, e.m.Delete(ctx, "mfvb2"))
	if e.exists(t, tap) || e.exists(t, "mfvb2") || !e.exists(t, "mfvh0") {
		t.Fatal("fallback delete wrong")
	}
}

func TestUnmanagedNeverDeleted(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	e.ip(t, "link", "add", "mfvx0", "type", "bridge")
	_, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	wantErrno(t, e.m.Delete(ctx, "mfvx0"), syscall.EPERM)
	wantErrno(t, e.m.Delete(ctx, "mfvb0", "mfvx0"), syscall.EPERM)
	if !e.exists(t, "mfvx0") || !e.exists(t, "mfvb0") {
		t.Fatal("a refused delete deleted something")
	}
	created, err := e.m.Create(ctx, "mfvx0") // reused, stays unmanaged
	must(t, err)
	in, err := e.m.Info(ctx, "mfvx0")
	must(t, err)
	if created || in.Managed {
		t.Fatalf("created %v, info %+v", created, in)
	}
	wantErrno(t, e.m.SetUplink(ctx, "mfvx0", "lo"), syscall.EPERM)
	wantErrno(t, e.m.RemovePort(ctx, "mfvx0", "lo"), syscall.EPERM)
	// A TAP on it (ctys -b) makes it an external switch: deleting that
	// removes the TAP and leaves the bridge.
	tap, err := e.m.AddTap(ctx, "mfvx0", "", "")
	must(t, err)
	if in, err := e.m.Info(ctx, "mfvx0"); err != nil || in.Managed || !in.External {
		t.Fatalf("info %+v %v", in, err)
	}
	must(t, e.m.Delete(ctx, "mfvx0"))
	if !e.exists(t, "mfvx0") || e.exists(t, tap) {
		t.Fatal("unmanaged bridge deleted, or machinefs's TAP left on it")
	}
	wantErrno(t, e.m.Delete(ctx, "mfvx0"), syscall.EPERM)
	// Even with a same-named record (stale state) the bridge that is not
	// in its group is not machinefs's.
	e.ip(t, "link", "del", "mfvb0")
	e.ip(t, "link", "add", "mfvb0", "type", "bridge")
	wantErrno(t, e.m.Delete(ctx, "mfvb0"), syscall.EPERM)
	if !e.exists(t, "mfvb0") {
		t.Fatal("replaced bridge deleted")
	}
}

func TestWatch(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	e := setup(t)
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvb0")
	must(t, err)
	tap, err := e.m.AddTap(ctx, "mfvb0", "", "")
	must(t, err)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes := make(chan Change, 100)
	done, err := e.m.Watch(wctx, func(c Change) { changes <- c })
	must(t, err)
	expect := func(want Change) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case c := <-changes:
				if c == want {
					return
				}
				t.Logf("(other change %+v)", c)
			case <-timeout:
				t.Fatalf("no change %+v", want)
			}
		}
	}
	e.ip(t, "link", "set", tap, "down")
	expect(Change{"mfvb0", tap, "down"})
	e.ip(t, "link", "set", tap, "up")
	expect(Change{"mfvb0", tap, "up"})
	e.ip(t, "link", "add", "mfvd0", "type", "veth", "peer", "name", "mfvd1")
	e.ip(t, "link", "set", "mfvd0", "master", "mfvb0")
	expect(Change{"mfvb0", "mfvd0", "port-added"})
	e.ip(t, "link", "set", "mfvd0", "nomaster")
	expect(Change{"mfvb0", "mfvd0", "port-removed"})
	e.ip(t, "link", "set", "mfvb0", "down")
	expect(Change{"mfvb0", "mfvb0", "down"})
	e.ip(t, "link", "add", "mfvx0", "type", "bridge")
	expect(Change{"mfvx0", "mfvx0", "created"})
	must(t, e.m.Delete(ctx, "mfvb0"))
	expect(Change{"mfvb0", "mfvb0", "deleted"})

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not stop")
	}
}
