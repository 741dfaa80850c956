package ssh

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
)

var (
	ethtoolOnce sync.Once
	ethtoolErr  error
)

// withEthtool puts Debian's ethtool and the libraries it links into the
// test machine's root (once), or skips.
func withEthtool(t *testing.T, r *machineRoot) {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/ethtool"); err != nil {
		t.Skip("needs /usr/sbin/ethtool (Debian ethtool)")
	}
	ethtoolOnce.Do(func() {
		if ethtoolErr = copyFile("/usr/sbin/ethtool", filepath.Join(r.dir, "usr/sbin/ethtool"), 0o755); ethtoolErr != nil {
			return
		}
		out, err := exec.Command("ldd", "/usr/sbin/ethtool").Output()
		if err != nil {
			ethtoolErr = err
			return
		}
		for _, f := range strings.Fields(string(out)) {
			if !strings.HasPrefix(f, "/") {
				continue
			}
			dst := filepath.Join(r.dir, f)
			if _, err := os.Stat(dst); err == nil {
				continue
			}
			if ethtoolErr = os.MkdirAll(filepath.Dir(dst), 0o755); ethtoolErr != nil {
				return
			}
			if ethtoolErr = copyFile(f, dst, 0o755); ethtoolErr != nil {
				return
			}
		}
	})
	if ethtoolErr != nil {
		t.Fatalf("put ethtool into the machine's root: %v", ethtoolErr)
	}
}

func eventsOf(r *recorder) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, "\n")
}

// TestWoLArmedBeforePoweroff: with ssh.wol-interface set, poweroff first
// asks the machine's ethtool to arm Wake-on-LAN; the machine's NIC is a
// veth, which cannot: the reason is a warning and state's ssh-wol line,
// and the poweroff goes on to a verified off.
func TestWoLArmedBeforePoweroff(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, false)
	withEthtool(t, m.root)
	rec := &recorder{}
	d := newDriver(t, l.client, m.root.config(KeyWoLInterface, "mfht0"), rec)
	i := rec.waitFor(t, 0, 10*time.Second, "on", isPower(machine.PowerOn))
	if s := describe(d, "ssh-wol"); s != "not armed yet: armed on mfht0 before poweroff, off, init 0 and suspend" {
		t.Errorf("ssh-wol before: %q", s)
	}
	m.mustBeContained()
	cmd := machine.Command{Verb: "poweroff", Deadline: time.Now().Add(20 * time.Second)}
	if err := d.Power(t.Context(), cmd); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	rec.waitFor(t, i+1, 20*time.Second, "off", isPower(machine.PowerOff))
	want := "mfht0: the driver (veth) supports no Wake-on-LAN modes: ethtool -s exited with status 75: \"netlink error: Operation not supported\""
	if s := describe(d, "ssh-wol"); s != "not armed: "+want {
		t.Errorf("ssh-wol: %q, want %q", s, "not armed: "+want)
	}
	ev := eventsOf(rec)
	if !strings.Contains(ev, "warning ssh: poweroff: Wake-on-LAN not armed, wol will not wake the machine: "+want) {
		t.Errorf("no warning with the reason in events:\n%s", ev)
	}
	if w, p := strings.Index(ev, "Wake-on-LAN not armed"), strings.Index(ev, `ran "poweroff"`); w < 0 || p < 0 || w > p {
		t.Errorf("WoL was not armed before the poweroff ran:\n%s", ev)
	}
	_, exited := m.current()
	<-exited
	if ws := m.exitList()[0]; !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Errorf("the machine's init ended with %v, want killed by SIGINT", ws)
	}
}

// TestSuspendNeedsSystemd: the machine's init is busybox: suspend is
// ENOTSUP with the reason, nothing is armed or run, the machine stays on.
func TestSuspendNeedsSystemd(t *testing.T) {
	l := newLab(t)
	m := bootMachine(t, l, false)
	rec := &recorder{}
	d := newDriver(t, l.client, m.root.config(KeyWoLInterface, "mfht0"), rec)
	rec.waitFor(t, 0, 10*time.Second, "on", isPower(machine.PowerOn))
	m.mustBeContained()
	err := d.Power(t.Context(), machine.Command{Verb: "suspend"})
	want := "ssh: suspend needs systemd on the machine (systemctl suspend, through logind); its init is busybox"
	if err == nil || err.Error() != want || machine.ErrnoOf(err) != syscall.ENOTSUP {
		t.Fatalf("suspend: %v (%v), want ENOTSUP %q", err, machine.ErrnoOf(err), want)
	}
	if ev := eventsOf(rec); ev != "" {
		t.Errorf("events after a refused suspend:\n%s", ev)
	}
	if s := describe(d, "ssh-wol"); !strings.HasPrefix(s, "not armed yet") {
		t.Errorf("ssh-wol after a refused suspend: %q", s)
	}
	if err := tcpOpen(l); err != nil {
		t.Errorf("the machine went away after a refused suspend: %v", err)
	}
}

// TestWoLInterfaceChecked: an interface name that could mean something
// to the remote shell is refused when the driver is built.
func TestWoLInterfaceChecked(t *testing.T) {
	for _, bad := range []string{"eth0;reboot", "$(poweroff)", "-a", "eth0 eth1", "a/b"} {
		_, err := New(t.Context(), machine.DriverEnv{Config: testConfig{KeyAddress: "192.0.2.1", KeyKey: "/k", KeyKnownHosts: "/h", KeyWoLInterface: bad}})
		if machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), KeyWoLInterface) {
			t.Errorf("%q: %v, want EINVAL naming %s", bad, err, KeyWoLInterface)
		}
	}
}
