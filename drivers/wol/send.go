package wol

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// The send functions work in the network namespace of the calling thread.
// The driver takes care of running them in the namespace it was created in.

var ethBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Frame returns the raw Ethernet frame that carries p on the local segment:
// destination ff:ff:ff:ff:ff:ff, source src, EtherType 0x0842, then the magic
// packet.
func Frame(src net.HardwareAddr, p MagicPacket) ([]byte, error) {
	if len(src) != macLen {
		return nil, fmt.Errorf("wol: source %q is not a 6-byte Ethernet address", src)
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	f := make([]byte, 0, 14+len(payload))
	f = append(f, ethBroadcast...)
	f = append(f, src...)
	f = append(f, EtherType>>8, EtherType&0xff)
	return append(f, payload...), nil
}

// SendRaw broadcasts p on the segment of interface ifname as a raw Ethernet
// frame with EtherType 0x0842 (what ether-wake does). It needs CAP_NET_RAW;
// without it the error wraps syscall.EPERM and says so.
func SendRaw(ctx context.Context, ifname string, p MagicPacket) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return machine.Errorf(syscall.ENODEV, "wol: interface %q: %v", ifname, err)
	}
	frame, err := Frame(ifi.HardwareAddr, p)
	if err != nil {
		return machine.Errorf(syscall.EINVAL, "wol: interface %s has no Ethernet address, cannot send a raw frame: %v", ifname, err)
	}
	c, err := packet.Listen(ifi, packet.Raw, EtherType, nil)
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return machine.Errorf(syscall.EPERM, "wol: a raw frame on %s needs CAP_NET_RAW: run machinefs as root, grant it cap_net_raw, or set wol.broadcast to send a UDP datagram instead (%v)", ifname, err)
		}
		return fmt.Errorf("wol: open packet socket on %s: %w", ifname, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetWriteDeadline(dl)
	}
	if _, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: ethBroadcast}); err != nil {
		return fmt.Errorf("wol: send frame on %s: %w", ifname, err)
	}
	return nil
}

// SendUDP sends p as one UDP datagram to dst, normally a directed broadcast
// address such as 192.168.3.255 port 9, with SO_BROADCAST set. Routers between
// here and the target must forward directed broadcasts (on Linux:
// net.ipv4.conf.{all,IFACE}.bc_forwarding=1 on the incoming interface). If
// ifname is not empty the socket is bound to that interface (SO_BINDTODEVICE),
// which makes 255.255.255.255 usable on a chosen segment. No privilege is
// needed unless ifname is set on kernels older than 5.7.
func SendUDP(ctx context.Context, dst *net.UDPAddr, ifname string, p MagicPacket) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dst == nil || dst.IP.To4() == nil {
		return machine.Errorf(syscall.EINVAL, "wol: UDP destination %v is not an IPv4 address", dst)
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		return machine.Errorf(syscall.EINVAL, "%v", err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
			if serr == nil && ifname != "" {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname)
				if serr != nil {
					serr = fmt.Errorf("bind to interface %s: %w", ifname, serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return machine.Errorf(syscall.EPERM, "wol: UDP socket: %v (binding to an interface needs CAP_NET_RAW on old kernels)", err)
		}
		return fmt.Errorf("wol: UDP socket: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetWriteDeadline(dl)
	} else {
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	}
	if _, err := c.WriteTo(payload, dst); err != nil {
		return fmt.Errorf("wol: send to %s: %w", net.JoinHostPort(dst.IP.String(), strconv.Itoa(dst.Port)), err)
	}
	return nil
}

// DefaultInterface returns what ctys uses without a broadcast option: the
// first interface that is up, not loopback, can broadcast and has an Ethernet
// address. It looks in the calling thread's network namespace.
func DefaultInterface() (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("wol: list interfaces: %w", err)
	}
	return pickInterface(ifs)
}

func pickInterface(ifs []net.Interface) (*net.Interface, error) {
	for i := range ifs {
		ifi := &ifs[i]
		const want = net.FlagUp | net.FlagBroadcast
		if ifi.Flags&want != want || ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != macLen {
			continue
		}
		return ifi, nil
	}
	return nil, machine.Errorf(syscall.ENODEV, "wol: no interface is up, broadcast-capable and has an Ethernet address; set wol.interface or wol.broadcast")
}
