package wolarm

import (
	"syscall"
	"testing"

	"github.com/mdlayher/ethtool"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// A veth, in network namespaces the test made, cannot wake anything: the
// reason names the interface and its driver, and the errno is EOPNOTSUPP.
// No device on the test machine supports Wake-on-LAN (no netdevsim, no
// physical NIC we may touch), so the armed read-back is not tested here.
func TestArmVethReason(t *testing.T) {
	netns.NeedRoot(t)
	a, b := netns.New(t, "mfwa"), netns.New(t, "mfwb")
	netns.Veth(t, netns.End{NS: a, Name: "mfwa0"}, netns.End{NS: b, Name: "mfwb0"})
	var err error
	var res Result
	a.Do(t, func() error {
		res, err = Arm(t.Context(), "mfwa0")
		return nil
	})
	if err == nil {
		t.Fatalf("armed a veth: %+v", res)
	}
	want := "mfwa0: the driver (veth) supports no Wake-on-LAN modes"
	if err.Error() != want || machine.ErrnoOf(err) != syscall.EOPNOTSUPP {
		t.Fatalf("got %q (%v), want %q (EOPNOTSUPP)", err, machine.ErrnoOf(err), want)
	}

	a.Do(t, func() error {
		_, err = Arm(t.Context(), "mfwnone0")
		return nil
	})
	if machine.ErrnoOf(err) != syscall.ENODEV || err.Error() != "mfwnone0: no such network interface" {
		t.Fatalf("missing interface: got %q (%v)", err, machine.ErrnoOf(err))
	}
}

func TestCheckName(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "eth0;reboot", "a b", "a/b", "eth0:1", "0123456789abcdef", "x\n", "$(reboot)", "-"} {
		if CheckName(bad) == nil {
			t.Errorf("CheckName(%q) accepted", bad)
		}
	}
	for _, good := range []string{"eth0", "enp0s31f6", "br-lan.10", "wlan0"} {
		if err := CheckName(good); err != nil {
			t.Errorf("CheckName(%q): %v", good, err)
		}
	}
}

func TestLetters(t *testing.T) {
	for m, want := range map[ethtool.WOLMode]string{0: "d", ethtool.Magic: "g", ethtool.PHY | ethtool.Magic: "pg", ethtool.Unicast | ethtool.Broadcast | ethtool.Magic: "ubg"} {
		if got := Letters(m); got != want {
			t.Errorf("Letters(%v) = %q, want %q", m, got, want)
		}
	}
}
