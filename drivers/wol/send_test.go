package wol

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/nodes"
)

var (
	macA = net.HardwareAddr{0x02, 0x6d, 0x66, 0x77, 0x00, 0x0a}
	macB = net.HardwareAddr{0x02, 0x6d, 0x66, 0x77, 0x00, 0x0b}
)

// segment is two namespaces joined by a veth: the sender side A (mfwa) and
// the peer side B (mfwb).
func segment(t *testing.T) (a, b netns.NsHandle) {
	t.Helper()
	a, b = newNS(t, "a"), newNS(t, "b")
	veth(t, end{ns: a, name: "mfwa", mac: macA}, end{ns: b, name: "mfwb", mac: macB})
	return a, b
}

// captureWoL opens an AF_PACKET listener for EtherType 0x0842 on mfwb in b.
func captureWoL(t *testing.T, b netns.NsHandle) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	inNS(t, b, func() error {
		ifi, err := net.InterfaceByName("mfwb")
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, EtherType, nil)
		return err
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
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
	needRoot(t)
	leakCheck(t)
	a, b := segment(t)
	capture := captureWoL(t, b)

	t.Run("interface", func(t *testing.T) {
		rec := &recorder{}
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa"}, rec)
		// Send from a goroutine locked into A, as a caller inside A would.
		inNS(t, a, func() error { return d.Power(t.Context(), nodes.Command{Verb: "wol"}) })
		checkFrame(t, readFrame(t, capture), macA, testMAC, nil)
		if got := d.Describe(); got[1][1] != "raw frame on mfwa" {
			t.Errorf("Describe: %v", got)
		}
		st := rec.statuses()
		if len(st) == 0 || st[len(st)-1].Power != nodes.PowerUnknown || st[len(st)-1].Reason != "no probe configured: WoL cannot report power" {
			t.Errorf("without probe: reports %+v", st)
		}
		for _, s := range st {
			if s.Power == nodes.PowerOn {
				t.Errorf("claimed on without a probe: %+v", s)
			}
		}
	})

	t.Run("password from any goroutine", func(t *testing.T) {
		// The driver sends from A although Power runs on an ordinary
		// goroutine of the test's own namespace.
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa", "wol.password": "01:02:03:04:05:06"}, nil)
		if err := d.Power(t.Context(), nodes.Command{Verb: "on"}); err != nil {
			t.Fatal(err)
		}
		checkFrame(t, readFrame(t, capture), macA, testMAC, []byte{1, 2, 3, 4, 5, 6})
		d = newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.interface": "mfwa", "wol.password": "10.20.30.40"}, nil)
		if err := d.Power(t.Context(), nodes.Command{Verb: "resume"}); err != nil {
			t.Fatal(err)
		}
		checkFrame(t, readFrame(t, capture), macA, testMAC, []byte{10, 20, 30, 40})
	})

	t.Run("first interface", func(t *testing.T) {
		// A holds only lo and mfwa: the default must pick mfwa.
		d := newDriverIn(t, a, testConfig{"mac": testMAC.String()}, nil)
		inNS(t, a, func() error { return d.Power(t.Context(), nodes.Command{Verb: "wol"}) })
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
			if err := netns.Set(a); err != nil {
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
			err := d.Power(t.Context(), nodes.Command{Verb: v})
			if !errors.Is(err, syscall.ENOTSUP) || nodes.ErrnoOf(err) != syscall.ENOTSUP {
				t.Errorf("%s: %v, want ENOTSUP", v, err)
			}
			t.Logf("%s: %v", v, err)
		}
	})
}

// routed builds sender S -- router R -- target T:
//
//	S mfws 10.77.1.2/24  <->  R mfwr1 10.77.1.1/24
//	R mfwr2 10.77.2.1/24 <->  T mfwt  10.77.2.2/24
//
// R forwards and forwards directed broadcasts arriving on mfwr1.
func routed(t *testing.T) (s, r, tg netns.NsHandle) {
	t.Helper()
	s, r, tg = newNS(t, "s"), newNS(t, "r"), newNS(t, "t")
	veth(t, end{ns: s, name: "mfws", addr: "10.77.1.2/24"}, end{ns: r, name: "mfwr1", addr: "10.77.1.1/24"})
	veth(t, end{ns: r, name: "mfwr2", addr: "10.77.2.1/24"}, end{ns: tg, name: "mfwt", mac: macB, addr: "10.77.2.2/24"})
	defaultRoute(t, s, "mfws", "10.77.1.1")
	defaultRoute(t, tg, "mfwt", "10.77.2.1")
	sysctl(t, r, "net/ipv4/ip_forward", "1")
	sysctl(t, r, "net/ipv4/conf/all/bc_forwarding", "1")
	sysctl(t, r, "net/ipv4/conf/mfwr1/bc_forwarding", "1")
	return s, r, tg
}

// listenUDP opens a UDP socket in ns bound to addr.
func listenUDP(t *testing.T, ns netns.NsHandle, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	inNS(t, ns, func() error {
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", ua)
		return err
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestDirectedBroadcast(t *testing.T) {
	needRoot(t)
	leakCheck(t)
	s, r, tg := routed(t)
	l := listenUDP(t, tg, "10.77.2.255:9")

	rec := &recorder{}
	d := newDriverIn(t, s, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.2.255", "wol.password": "192.168.1.1"}, rec)
	inNS(t, s, func() error { return d.Power(t.Context(), nodes.Command{Verb: "wol", Label: "tst100"}) })

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
	sysctl(t, r, "net/ipv4/conf/mfwr1/bc_forwarding", "0")
	if err := d.Power(t.Context(), nodes.Command{Verb: "wol"}); err != nil {
		t.Fatal(err)
	}
	_ = l.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := l.ReadFromUDP(buf); err == nil {
		t.Fatalf("got %d bytes although the router does not forward directed broadcasts", n)
	}
}

// TestUDPPort checks wol.port with a directed broadcast on one segment.
func TestUDPPort(t *testing.T) {
	needRoot(t)
	leakCheck(t)
	a, b := newNS(t, "a"), newNS(t, "b")
	veth(t, end{ns: a, name: "mfwa", mac: macA, addr: "10.77.3.1/24"}, end{ns: b, name: "mfwb", mac: macB, addr: "10.77.3.2/24"})
	l := listenUDP(t, b, "10.77.3.255:7")
	d := newDriverIn(t, a, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.3.255", "wol.port": "7", "wol.interface": "mfwa"}, nil)
	if err := d.Power(t.Context(), nodes.Command{Verb: "wol"}); err != nil {
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
