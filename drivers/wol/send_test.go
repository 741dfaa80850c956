package wol

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

var (
	macA = net.HardwareAddr{0x02, 0x6d, 0x66, 0x77, 0x00, 0x0a}
	macB = net.HardwareAddr{0x02, 0x6d, 0x66, 0x77, 0x00, 0x0b}
)

// segment is two namespaces joined by a veth: the sender side A (mfwa) and
// the peer side B (mfwb).
func segment(t *testing.T) (a, b *netns.NS) {
	t.Helper()
	a, b = netns.New(t, "mfwa"), netns.New(t, "mfwb")
	netns.Veth(t, netns.End{NS: a, Name: "mfwa", MAC: macA}, netns.End{NS: b, Name: "mfwb", MAC: macB})
	return a, b
}

func readFrame(t *testing.T, c *packet.Conn) []byte {
	t.Helper()
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no frame in B: %v", err)
	}
	return buf[:n]
}

func checkFrame(t *testing.T, f []byte, src, target net.HardwareAddr, pw []byte) {
	t.Helper()
	want := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	want = append(want, src...)
	want = append(want, 0x08, 0x42)
	want = append(want, wantMagic(target, pw)...)
	if !bytes.Equal(f, want) {
		t.Fatalf("frame in B:\n%x\nwant\n%x", f, want)
	}
}

func TestLocalSegment(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	a, b := segment(t)
	capture := b.Capture(t, "mfwb", EtherType)

	t.Run("interface", func(t *testing.T) {
		rec := &recorder{}
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa"}, rec)
		// Send from a goroutine locked into A, as a caller inside A would.
		a.Do(t, func() error { return d.Power(t.Context(), machine.Command{Verb: "wol"}) })
		checkFrame(t, readFrame(t, capture), macA, testMAC, nil)
		if got := d.Describe(); got[1][1] != "raw frame on mfwa" {
			t.Errorf("Describe: %v", got)
		}
		st := rec.statuses()
		if len(st) == 0 || st[len(st)-1].Power != machine.PowerUnknown || st[len(st)-1].Reason != "no probe configured: WoL cannot report power" {
			t.Errorf("without probe: reports %+v", st)
		} else if last := st[len(st)-1]; machine.ErrnoOf(last.Err) != syscall.ENOTSUP || !strings.Contains(last.Err.Error(), "cannot be confirmed") {
			// The error is what ends the model's wait for "on".
			t.Errorf("without probe: error %v, want ENOTSUP (cannot be confirmed)", last.Err)
		}
		for _, s := range st {
			if s.Power == machine.PowerOn {
				t.Errorf("claimed on without a probe: %+v", s)
			}
		}
	})

	t.Run("password from any goroutine", func(t *testing.T) {
		// The driver sends from A although Power runs on an ordinary
		// goroutine of the test's own namespace.
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa", "wol.password": "01:02:03:04:05:06"}, nil)
		if err := d.Power(t.Context(), machine.Command{Verb: "on"}); err != nil {
			t.Fatal(err)
		}
		checkFrame(t, readFrame(t, capture), macA, testMAC, []byte{1, 2, 3, 4, 5, 6})
		d = newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa", "wol.password": "10.20.30.40"}, nil)
		if err := d.Power(t.Context(), machine.Command{Verb: "resume"}); err != nil {
			t.Fatal(err)
		}
		checkFrame(t, readFrame(t, capture), macA, testMAC, []byte{10, 20, 30, 40})
	})

	t.Run("first interface", func(t *testing.T) {
		// A holds only lo and mfwa: the default must pick mfwa.
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String()}, nil)
		a.Do(t, func() error { return d.Power(t.Context(), machine.Command{Verb: "wol"}) })
		checkFrame(t, readFrame(t, capture), macA, testMAC, nil)
		if got := d.Describe()[1][1]; got != "raw frame on first up interface (last: mfwa)" {
			t.Errorf("wol-via %q", got)
		}
	})

	t.Run("no CAP_NET_RAW", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() {
			// This thread loses CAP_NET_RAW and is never unlocked, so the
			// runtime throws it away when the goroutine ends.
			runtime.LockOSThread()
			if err := vnetns.Set(a.Handle()); err != nil {
				errc <- err
				return
			}
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var data [2]unix.CapUserData
			if err := unix.Capget(&hdr, &data[0]); err != nil {
				errc <- err
				return
			}
			data[0].Effective &^= 1 << unix.CAP_NET_RAW
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				errc <- err
				return
			}
			errc <- SendRaw(context.Background(), "mfwa", MagicPacket{Target: testMAC})
		}()
		err := <-errc
		if !errors.Is(err, syscall.EPERM) {
			t.Fatalf("without CAP_NET_RAW: %v, want EPERM", err)
		}
		t.Log(err)
		_ = capture.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, _, err := capture.ReadFrom(make([]byte, 2048)); err == nil {
			t.Fatalf("a frame of %d bytes went out without CAP_NET_RAW", n)
		}
	})

	t.Run("pause and suspend", func(t *testing.T) {
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa"}, nil)
		for _, v := range []string{"pause", "suspend", "off"} {
			err := d.Power(t.Context(), machine.Command{Verb: v})
			if !errors.Is(err, syscall.ENOTSUP) || machine.ErrnoOf(err) != syscall.ENOTSUP {
				t.Errorf("%s: %v, want ENOTSUP", v, err)
			}
			t.Logf("%s: %v", v, err)
		}
	})
}

// routed builds sender S -- router R -- target T (see netns.Routed):
//
//	S mfws0 10.77.1.2/24  <->  R mfwr1 10.77.1.1/24
//	R mfwr2 10.77.2.1/24  <->  T mfwt0 10.77.2.2/24 (MAC macB)
//
// R forwards and forwards directed broadcasts arriving on mfwr1.
func routed(t *testing.T) *netns.Routed {
	t.Helper()
	return netns.NewRouted(t, netns.RoutedSpec{Prefix: "mfw", Net1: "10.77.1", Net2: "10.77.2", TargetMAC: macB})
}

func TestDirectedBroadcast(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	rt := routed(t)
	s := rt.Sender
	l := rt.Target.ListenUDP(t, "10.77.2.255:9")

	rec := &recorder{}
	d := newDriverIn(t, s, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.2.255", "wol.password": "192.168.1.1"}, rec)
	s.Do(t, func() error { return d.Power(t.Context(), machine.Command{Verb: "wol", Label: "tst100"}) })

	buf := make([]byte, 2048)
	_ = l.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, from, err := l.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("no datagram at the target: %v", err)
	}
	if want := wantMagic(testMAC, []byte{192, 168, 1, 1}); !bytes.Equal(buf[:n], want) {
		t.Fatalf("datagram\n%x\nwant\n%x", buf[:n], want)
	}
	if !from.IP.Equal(net.IPv4(10, 77, 1, 2)) {
		t.Errorf("datagram from %v, want the sender 10.77.1.2", from)
	}
	if got := d.Describe()[1][1]; got != "udp 10.77.2.255:9" {
		t.Errorf("wol-via %q", got)
	}
	rec.mu.Lock()
	ev := rec.events
	rec.mu.Unlock()
	if len(ev) != 1 || ev[0][0] != "wol" {
		t.Errorf("events %v", ev)
	} else {
		t.Logf("event: %s %s", ev[0][0], ev[0][1])
	}

	// Control: the datagram really crossed the router. Without
	// bc_forwarding on the incoming interface it does not arrive.
	rt.DirectedBroadcast(t, false)
	if err := d.Power(t.Context(), machine.Command{Verb: "wol"}); err != nil {
		t.Fatal(err)
	}
	_ = l.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := l.ReadFromUDP(buf); err == nil {
		t.Fatalf("got %d bytes although the router does not forward directed broadcasts", n)
	}
}

// TestUDPPort checks wol.port with a directed broadcast on one segment.
func TestUDPPort(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	a, b := netns.New(t, "mfwa"), netns.New(t, "mfwb")
	netns.Veth(t, netns.End{NS: a, Name: "mfwa", MAC: macA, Addr: "10.77.3.1/24"}, netns.End{NS: b, Name: "mfwb", MAC: macB, Addr: "10.77.3.2/24"})
	l := b.ListenUDP(t, "10.77.3.255:7")
	d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.3.255", "wol.port": "7", "wol.interface": "mfwa"}, nil)
	if err := d.Power(t.Context(), machine.Command{Verb: "wol"}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = l.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := l.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("no datagram on port 7: %v", err)
	}
	if !bytes.Equal(buf[:n], wantMagic(testMAC, nil)) {
		t.Fatalf("datagram %x", buf[:n])
	}
}
