package ns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// selfInit reboots or powers the subhost off from inside, with busybox's
// reboot -f and poweroff -f (reboot(2) in the subhost's PID namespace),
// when the test left /etc/selfreboot or /etc/selfpoweroff; otherwise it
// waits for a line on /run/initctl, as the subhost scripts' init does.
const selfInit = `#!/bin/sh
mount -t proc proc /proc
echo booted > /run/machinefs/notify
if [ -f /etc/selfreboot ]; then rm /etc/selfreboot; reboot -f; fi
if [ -f /etc/selfpoweroff ]; then rm /etc/selfpoweroff; poweroff -f; fi
read line < /run/initctl
exit 0
`

// sysvInit reads sysvinit's requests from /run/initctl (384 bytes each,
// with dd, as sysvinit reads them), notifies what it read (size, the first
// 16 bytes in hex, how many bytes are not zero, the level byte) and acts on
// levels 0 and 6 as sysvinit's halt and reboot scripts end: reboot(2).
const sysvInit = `#!/bin/sh
mount -t proc proc /proc
echo booted > /run/machinefs/notify
while :; do
	dd if=/run/initctl of=/tmp/req bs=384 count=1 2>/dev/null
	head=$(od -An -tx1 -N16 /tmp/req | tr -d ' \n')
	size=$(wc -c < /tmp/req)
	nonzero=$(tr -d '\000' < /tmp/req | wc -c)
	lvl=$(dd if=/tmp/req bs=1 skip=8 count=1 2>/dev/null)
	echo "initctl size=$size head=$head nonzero=$nonzero level=$lvl" > /run/machinefs/notify
	case "$lvl" in
	0) poweroff -f ;;
	6) reboot -f ;;
	esac
done
`

func (f *fixture) rootWithInit(init string) string {
	f.t.Helper()
	dir := f.root()
	if err := os.WriteFile(filepath.Join(dir, "init"), []byte(init), 0o755); err != nil {
		f.t.Fatal(err)
	}
	return dir
}

func (r *rep) statuses() []machine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]machine.Status(nil), r.all...)
}

func (r *rep) eventList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func (r *rep) eventWith(s string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if strings.Contains(e, s) {
			return e
		}
	}
	return ""
}

// A subhost whose init reboots it (reboot(2) inside: the init is killed
// by SIGHUP) is started again, shown rebooting then on; one that powers
// itself off (SIGINT) is off without an error. Before, both were an init
// that "ended by itself": released, with EIO.
func TestNSRebootAndPoweroffFromInside(t *testing.T) {
	f := setup(t)
	root := f.rootWithInit(selfInit)
	if err := os.WriteFile(filepath.Join(root, "etc/selfreboot"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d, r := f.open("mfnu20", f.cfg("ns.root", root))
	f.power(d, "on")
	netns.WaitFor(t, 10*time.Second, "second boot after the reboot from inside", func() bool { return r.countEvent("notify booted") >= 2 })
	st := waitPower(t, r, machine.PowerOn)
	if _, err := os.Stat(filepath.Join(root, "etc/selfreboot")); err == nil {
		t.Fatal("the init did not reboot")
	}
	var seq []string
	for _, s := range r.statuses() {
		seq = append(seq, string(s.Power)+": "+s.Reason)
		if s.Err != nil {
			t.Fatalf("report with an error: %+v", s)
		}
	}
	// off (new driver), on (first boot), rebooting, on (second boot).
	if len(seq) != 4 || seq[2] != "rebooting: rebooted from inside" || !strings.HasPrefix(seq[3], "on: ") {
		t.Fatalf("reports %q, want off, on, rebooting (rebooted from inside), on", seq)
	}
	if e := r.eventWith("rebooted from inside"); !strings.HasPrefix(e, "warning ") || !strings.Contains(e, "SIGHUP") {
		t.Fatalf("event %q, want a warning naming the reboot from inside", e)
	}
	if !strings.Contains(st.Reason, "runs as pid") {
		t.Fatalf("after the restart: %+v", st)
	}

	// The next boot powers itself off.
	if err := os.WriteFile(filepath.Join(root, "etc/selfpoweroff"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.power(d, "reboot")
	netns.WaitFor(t, 10*time.Second, "third boot", func() bool { return r.countEvent("notify booted") >= 3 })
	st = waitPower(t, r, machine.PowerOff)
	if st.Err != nil || !strings.HasPrefix(st.Reason, "powered off from inside: killed by signal SIGINT") {
		t.Fatalf("power off from inside: %+v", st)
	}
	if e := r.eventWith("powered off from inside"); !strings.HasPrefix(e, "warning ") {
		t.Fatalf("event %q", e)
	}
	if netnsExists("mfnu20") {
		t.Fatal("netns left after the power off from inside")
	}
	// Killed from outside is still a crash: an error.
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	d.mu.Lock()
	pid := d.p.pid
	d.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st = waitPower(t, r, machine.PowerOff)
	if !errors.Is(st.Err, syscall.EIO) || !strings.Contains(st.Reason, "SIGKILL") {
		t.Fatalf("killed from outside: %+v", st)
	}
}

// ns.initctl = sysvinit: poweroff, reboot and init N reach the init as
// sysvinit's init_request, read from the real FIFO by the subhost's init.
func TestNSInitctlSysvinit(t *testing.T) {
	f := setup(t)
	d, r := f.open("mfnu21", f.cfg("ns.root", f.rootWithInit(sysvInit), "ns.initctl", "sysvinit"))
	ctx := context.Background()
	if err := d.Power(ctx, machine.Command{Verb: "init", InitLevel: 3}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("init 3 on a subhost that is off: %v, want EINVAL", err)
	}
	f.power(d, "on")
	netns.WaitFor(t, 10*time.Second, "boot", func() bool { return r.hasEvent("notify booted") })
	// What the init notifies for a request of level n: 384 bytes, magic
	// 0x03091969 and cmd 1 (little endian), the level as its character
	// ('3' = 0x33), sleeptime 0, and zeros after the 6 bytes that are not.
	request := func(n int) string {
		return fmt.Sprintf("notify initctl size=384 head=69190903"+"01000000"+"%02x000000"+"00000000 nonzero=6 level=%d", '0'+n, n)
	}
	for _, n := range []int{3, 5} {
		if err := d.Power(ctx, machine.Command{Verb: "init", InitLevel: n}); err != nil {
			t.Fatalf("init %d: %v", n, err)
		}
		netns.WaitFor(t, 10*time.Second, request(n), func() bool { return r.hasEvent(request(n)) })
	}
	if st := r.power(); st.Power != machine.PowerOn {
		t.Fatalf("after init 3 and 5: %+v", st)
	}
	// reboot is level 6; the init ends by reboot(2) and is started again.
	f.power(d, "reboot")
	netns.WaitFor(t, 10*time.Second, "second boot", func() bool { return r.countEvent("notify booted") >= 2 })
	waitPower(t, r, machine.PowerOn)
	if !r.hasEvent(request(6)) {
		t.Fatalf("reboot: no level 6 request read; events %q", r.eventList())
	}
	// init 0 is level 0: the init powers off, well before the timeout's
	// SIGKILL.
	if err := d.Power(ctx, machine.Command{Verb: "init", InitLevel: 0}); err != nil {
		t.Fatal(err)
	}
	st := waitPower(t, r, machine.PowerOff)
	if st.Err != nil || !strings.Contains(st.Reason, "killed by signal SIGINT") || strings.Contains(st.Reason, "did not end") {
		t.Fatalf("init 0: %+v", st)
	}
	if !r.hasEvent(request(0)) {
		t.Fatalf("init 0: no level 0 request read; events %q", r.eventList())
	}
}

// In line mode (the default), init 1-5 have no way to the init: ENOTSUP,
// naming the key that would give one.
func TestNSInitctlLineRefusesLevels(t *testing.T) {
	f := setup(t)
	d, r := f.open("mfnu22", f.cfg("ns.root", f.root()))
	f.power(d, "on")
	waitPower(t, r, machine.PowerOn)
	err := d.Power(context.Background(), machine.Command{Verb: "init", InitLevel: 3})
	if !errors.Is(err, syscall.ENOTSUP) || !strings.Contains(err.Error(), "ns.initctl") {
		t.Fatalf("init 3 in line mode: %v, want ENOTSUP naming ns.initctl", err)
	}
	if err := d.Power(context.Background(), machine.Command{Verb: "init", InitLevel: 0}); err != nil {
		t.Fatal(err)
	}
	if st := waitPower(t, r, machine.PowerOff); !strings.Contains(st.Reason, "exited with status 0") {
		t.Fatalf("init 0 in line mode: %+v", st)
	}
}

// A guest whose init reboots at once, every time, is started again only
// until it rebooted itself rebootLoop.n times within rebootLoop.within:
// then it is left off, with the reason, instead of restarted for ever.
func TestNSRebootLoopLeftOff(t *testing.T) {
	f := setup(t)
	root := f.rootWithInit("#!/bin/sh\nmount -t proc proc /proc\necho booted > /run/machinefs/notify\nreboot -f\n")
	d, r := f.open("mfnu23", f.cfg("ns.root", root))
	f.power(d, "on")
	st := waitPower(t, r, machine.PowerOff)
	if st.Err == nil || !strings.Contains(st.Err.Error(), "reboot loop") {
		t.Fatalf("after a reboot loop: %+v, want off with the reason", st)
	}
	// A notify line of a guest that reboots at once may be lost, so at
	// most n boots were seen (never more: it was not started again).
	if n := r.countEvent("notify booted"); n == 0 || n > rebootLoop.n {
		t.Fatalf("the guest booted %d times, want 1-%d (then left off)", n, rebootLoop.n)
	}
}
