package vswitch

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// vdeEnv is setup with a VDE directory of the test's own, reachable by
// nobody (t.TempDir is 0700), so no test touches /run/machinefs/vde.
func vdeEnv(t *testing.T, tun string) *env {
	t.Helper()
	if _, err := exec.LookPath("vde_switch"); err != nil {
		t.Skip("vde_switch (Debian vde2) is not installed")
	}
	e := setup(t)
	dir := t.TempDir()
	for p := dir; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	m, err := New(context.Background(), Options{Netns: e.ns.Handle(), StateDir: e.state, VDEDir: filepath.Join(dir, "vde"), TunPath: tun})
	must(t, err)
	t.Cleanup(m.Close)
	e.m = m
	// Whatever the test leaves running goes with it.
	t.Cleanup(func() {
		for _, n := range m.List() {
			if rec := m.recs[n]; rec != nil && rec.VDE != nil {
				m.stopVDE(context.Background(), rec)
			}
		}
	})
	return e
}

func TestVDESwitchLifecycle(t *testing.T) {
	e := vdeEnv(t, "")
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvd0")
	must(t, err)
	tap, err := e.m.AddVDE(ctx, "mfvd0", "65534", "65534", "")
	must(t, err)
	if tap != "mfvd0v" {
		t.Fatalf("tap %s", tap)
	}
	_, err = e.m.AddVDE(ctx, "mfvd0", "", "", "")
	wantErrno(t, err, syscall.EEXIST)
	sock := e.m.vdeSock("mfvd0")
	for p, want := range map[string]uint32{sock: unix.S_IFDIR | 0o2770, sock + "/ctl": unix.S_IFSOCK | 0o660, e.m.vdeMgmt("mfvd0"): unix.S_IFSOCK | 0o600} {
		var st unix.Stat_t
		must(t, unix.Lstat(p, &st))
		if st.Mode != want || st.Uid != 65534 || st.Gid != 65534 {
			t.Errorf("%s: mode %o uid %d gid %d, want %o 65534 65534", p, st.Mode, st.Uid, st.Gid, want)
		}
	}
	must(t, e.m.Check(ctx, "mfvd0"))
	ports, err := e.m.PortsText(ctx, "mfvd0")
	must(t, err)
	if !strings.Contains(ports, "mfvd0v vde-tap") || !strings.Contains(ports, "vde vde_switch - up up") || !strings.Contains(ports, "vde-port - up up tap=mfvd0v") {
		t.Fatalf("ports:\n%s", ports)
	}

	// A client plugged in: the switch is busy.
	plug := exec.Command("vde_plug", "-D", "mftest\x01plug", sock)
	plug.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := plug.StdinPipe()
	must(t, plug.Start())
	t.Cleanup(func() { plug.Process.Kill(); plug.Wait() })
	netns.WaitFor(t, 10*time.Second, "the plug in ports", func() bool {
		p, _ := e.m.PortsText(ctx, "mfvd0")
		return strings.Contains(p, `user=nobody client="mftest\x01plug`)
	})
	wantErrno(t, e.m.Delete(ctx, "mfvd0"), syscall.EBUSY)
	wantErrno(t, e.m.RemovePort(ctx, "mfvd0", "vde"), syscall.EBUSY)

	// A restart adopts the running switch.
	pid := e.m.recs["mfvd0"].VDE.Pid
	m2, err := New(ctx, Options{Netns: e.ns.Handle(), StateDir: e.state, VDEDir: e.m.vdeDir})
	must(t, err)
	defer m2.Close()
	in, err := m2.Info(ctx, "mfvd0")
	must(t, err)
	if in.VDE != "running" || in.VDEPid != pid {
		t.Fatalf("after restart: %+v", in)
	}
	wantErrno(t, m2.Delete(ctx, "mfvd0"), syscall.EBUSY)

	stdin.Close()
	plug.Process.Kill()
	plug.Wait()
	netns.WaitFor(t, 10*time.Second, "the plug to go", func() bool {
		p, _ := m2.PortsText(ctx, "mfvd0")
		return !strings.Contains(p, "client=")
	})
	must(t, m2.Delete(ctx, "mfvd0"))
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", sock, err)
	}
	if _, err := os.Lstat(e.m.vdeMgmt("mfvd0")); !os.IsNotExist(err) {
		t.Errorf("mgmt socket still there: %v", err)
	}
	if st, err := procfs.ReadStat(pid); err == nil && st.Live() {
		t.Errorf("vde_switch pid %d still runs", pid)
	}
	if e.exists(t, "mfvd0v") || e.exists(t, "mfvd0") {
		t.Error("TAP or bridge left")
	}
}

// check and info name the missing parts, as ctys's check does.
func TestVDECheck(t *testing.T) {
	e := vdeEnv(t, "")
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvd1")
	must(t, err)
	_, err = e.m.AddVDE(ctx, "mfvd1", "", "", "")
	must(t, err)
	must(t, e.m.Check(ctx, "mfvd1"))
	must(t, os.Remove(e.m.vdeMgmt("mfvd1")))
	wantErrno(t, e.m.Check(ctx, "mfvd1"), syscall.ENOENT)
	in, err := e.m.Info(ctx, "mfvd1")
	must(t, err)
	if !strings.Contains(in.VDE, "management socket") {
		t.Fatalf("info vde %q", in.VDE)
	}
	e.ip(t, "link", "del", "mfvd1v")
	err = e.m.Check(ctx, "mfvd1")
	wantErrno(t, err, syscall.ENOENT)
	if !strings.Contains(err.Error(), "TAP mfvd1v is gone") {
		t.Fatal(err)
	}
	// remove clears what is left, process included.
	pid := e.m.recs["mfvd1"].VDE.Pid
	must(t, e.m.RemovePort(ctx, "mfvd1", "vde"))
	if st, err := procfs.ReadStat(pid); err == nil && st.Live() {
		t.Errorf("vde_switch pid %d still runs", pid)
	}
	wantErrno(t, e.m.RemovePort(ctx, "mfvd1", "vde"), syscall.ENOENT)
}

// A TAP whose owner cannot open the TUN clone device is reported by check
// and info, and a VDE switch (which runs as its owner) is refused.
func TestTunNotOpenable(t *testing.T) {
	tun := filepath.Join(t.TempDir(), "tun")
	must(t, unix.Mknod(tun, unix.S_IFCHR|0o600, int(unix.Mkdev(10, 200))))
	e := vdeEnv(t, tun)
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvd2")
	must(t, err)
	_, err = e.m.AddTap(ctx, "mfvd2", "nobody", "")
	must(t, err)
	err = e.m.Check(ctx, "mfvd2")
	wantErrno(t, err, syscall.EACCES)
	want := "tun: " + tun + " is 0600 root:root: user nobody cannot open it"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("check: %v, want %q", err, want)
	}
	text, err := e.m.InfoText(ctx, "mfvd2")
	must(t, err)
	if !strings.Contains(text, want) {
		t.Fatalf("info:\n%s", text)
	}
	_, err = e.m.AddVDE(ctx, "mfvd2", "nobody", "", "")
	wantErrno(t, err, syscall.EACCES)
	if e.exists(t, "mfvd2v") {
		t.Fatal("refused add vde left its TAP")
	}
}

// A bridge machinefs did not make (ctys -b): machinefs adds its ports and
// removes them, and never deletes the bridge.
func TestExternalBridge(t *testing.T) {
	e := vdeEnv(t, "")
	ctx := context.Background()
	e.ip(t, "link", "add", "mfvx1", "type", "bridge")
	wantErrno(t, e.m.Delete(ctx, "mfvx1"), syscall.EPERM)
	_, err := e.m.AddVDE(ctx, "mfvx1", "", "", "")
	must(t, err)
	in, err := e.m.Info(ctx, "mfvx1")
	must(t, err)
	if in.Managed || !in.External || in.VDE != "running" {
		t.Fatalf("info %+v", in)
	}
	must(t, e.m.Delete(ctx, "mfvx1"))
	if !e.exists(t, "mfvx1") || e.exists(t, "mfvx1v") {
		t.Fatal("delete of an external switch: bridge gone or TAP left")
	}
	if len(e.m.List()) != 0 {
		t.Fatalf("List %v", e.m.List())
	}
	wantErrno(t, e.m.Delete(ctx, "mfvx1"), syscall.EPERM)
}

// A client's endpoint counts only while the switch holds its control
// connection: a descriptor the switch closed, or one that is no client's
// connection (here the TAP's), is a client gone. vde_switch 2.3.2 keeps the
// endpoint of a client that closed, now and then under load, with the
// descriptor closed; TestVDESwitchLifecycle then waited in vain for the
// plug to go.
func TestVDEClientGone(t *testing.T) {
	e := vdeEnv(t, "")
	ctx := context.Background()
	_, err := e.m.Create(ctx, "mfvd3")
	must(t, err)
	_, err = e.m.AddVDE(ctx, "mfvd3", "65534", "65534", "")
	must(t, err)
	v, ctl := e.m.recs["mfvd3"].VDE, filepath.Join(e.m.vdeSock("mfvd3"), "ctl")
	plug := exec.Command("vde_plug", "-D", "mftest-gone", e.m.vdeSock("mfvd3"))
	plug.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := plug.StdinPipe()
	must(t, plug.Start())
	t.Cleanup(func() { stdin.Close(); plug.Process.Kill(); plug.Wait() })
	// The endpoints as the switch lists them, none left out.
	endpoints := func() map[string]int {
		lines, err := mgmtQuery(ctx, e.m.vdeMgmt("mfvd3"), v.Uid, "port/allprint")
		must(t, err)
		ids := map[string]int{}
		for _, p := range parsePorts(lines) {
			for _, ep := range p.Endpoints {
				ids[ep.Module] = ep.ID
			}
		}
		return ids
	}
	netns.WaitFor(t, 10*time.Second, "the plug's endpoint", func() bool { _, ok := endpoints()["unix prog"]; return ok })
	ids := endpoints()
	if vdeClientGone(v.Pid, ids["unix prog"], ctl) {
		t.Fatalf("the plug (endpoint %d) counts as gone while it runs", ids["unix prog"])
	}
	if !vdeClientGone(v.Pid, ids["tuntap"], ctl) {
		t.Fatalf("descriptor %d (the TAP) counts as a client's connection", ids["tuntap"])
	}
	if !vdeClientGone(v.Pid, 1000, ctl) {
		t.Fatal("a descriptor the switch does not hold counts as a client's connection")
	}
	if p, err := e.m.PortsText(ctx, "mfvd3"); err != nil || !strings.Contains(p, `client="mftest-gone`) {
		t.Fatalf("ports with the plug running: %v\n%s", err, p)
	}
}
