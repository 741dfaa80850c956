package netns

import (
	"net"
	"testing"

	"github.com/mdlayher/packet"
)

// ListenUDP opens a UDP socket in n bound to addr ("10.77.2.255:9" receives
// directed broadcasts to that subnet), closed at cleanup.
func (n *NS) ListenUDP(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	n.Do(t, func() error {
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

// ListenTCP opens a TCP listener in n on addr, closed at cleanup.
func (n *NS) ListenTCP(t testing.TB, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	n.Do(t, func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// Capture opens an AF_PACKET socket on device ifname in n that receives
// whole Ethernet frames of the given EtherType (0x0003, ETH_P_ALL, for
// every frame, in and out), closed at cleanup.
func (n *NS) Capture(t testing.TB, ifname string, etherType int) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	n.Do(t, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, etherType, nil)
		return err
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}
