package wol

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
	"golang.org/x/sys/unix"
)

// Probe is how the driver checks that a woken machine is up: a TCP connect
// to HOST:PORT ("tcp:lab01:22") or an ICMP echo to HOST ("icmp:lab01").
// Magic packets are fire-and-forget; only a probe gives evidence of power.
type Probe struct {
	Network string // "tcp" or "icmp"
	Host    string
	Port    int // tcp only
}

// ParseProbe parses the probe config key: "tcp:HOST:PORT" (IPv6 hosts in
// brackets: "tcp:[fd00::1]:22") or "icmp:HOST" (IPv4).
func ParseProbe(s string) (Probe, error) {
	s = strings.TrimSpace(s)
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Probe{}, fmt.Errorf("probe %q: want tcp:HOST:PORT or icmp:HOST", s)
	}
	switch strings.ToLower(kind) {
	case "tcp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil || host == "" {
			return Probe{}, fmt.Errorf("probe %q: want tcp:HOST:PORT (e.g. tcp:lab01:22)", s)
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return Probe{}, fmt.Errorf("probe %q: port %q is not 1-65535", s, port)
		}
		return Probe{Network: "tcp", Host: host, Port: n}, nil
	case "icmp":
		if rest == "" || strings.ContainsAny(rest, ":[]/ ") {
			return Probe{}, fmt.Errorf("probe %q: want icmp:HOST with an IPv4 address or host name", s)
		}
		if ip := net.ParseIP(rest); ip != nil && ip.To4() == nil {
			return Probe{}, fmt.Errorf("probe %q: icmp probes are IPv4 only", s)
		}
		return Probe{Network: "icmp", Host: rest}, nil
	}
	return Probe{}, fmt.Errorf("probe %q: unknown kind %q (tcp:HOST:PORT or icmp:HOST)", s, kind)
}

// String renders the probe as written in config.
func (p Probe) String() string {
	if p.Network == "icmp" {
		return "icmp:" + p.Host
	}
	return "tcp:" + net.JoinHostPort(p.Host, strconv.Itoa(p.Port))
}

// resolve turns the host into an address. Names are resolved in the
// process's own network namespace.
func (p Probe) resolve(ctx context.Context) (net.IP, error) {
	if ip := net.ParseIP(p.Host); ip != nil {
		return ip, nil
	}
	network := "ip"
	if p.Network == "icmp" {
		network = "ip4"
	}
	ips, err := net.DefaultResolver.LookupIP(ctx, network, p.Host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("%s: no address", p.Host)
	}
	return ips[0], nil
}

// errRefused marks a probe that reached a network stack that said no: the
// address answers, the service does not (yet).
var errRefused = errors.New("refused")

// try runs one probe against ip in the calling thread's network namespace.
// It returns nil when the machine answered.
func (p Probe) try(ctx context.Context, ip net.IP, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if p.Network == "icmp" {
		return ping(ctx, ip)
	}
	// An IP literal and no fallback: the dial runs in this goroutine (and
	// thus this thread's namespace), no Happy Eyeballs helpers.
	d := net.Dialer{FallbackDelay: -1}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(p.Port)))
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (the address answers, the port is closed)", errRefused)
		}
		return err
	}
	return c.Close()
}

// ping sends one ICMP echo request and waits for the reply. It uses an
// unprivileged ping socket when net.ipv4.ping_group_range allows it and a raw
// ICMP socket (CAP_NET_RAW) otherwise.
func ping(ctx context.Context, ip net.IP) error {
	ip4 := ip.To4()
	if ip4 == nil {
		return machine.Errorf(syscall.EAFNOSUPPORT, "icmp probe: %s is not IPv4", ip)
	}
	raw := false
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		raw = true
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
				return machine.Errorf(syscall.EPERM, "icmp probe needs a ping socket (add our group to net.ipv4.ping_group_range) or CAP_NET_RAW; or use a tcp: probe (%v)", err)
			}
			return fmt.Errorf("icmp socket: %w", err)
		}
	}
	f := os.NewFile(uintptr(fd), "icmp")
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { _ = pc.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = pc.SetDeadline(dl)
	}

	id := uint16(os.Getpid())
	seq := uint16(time.Now().UnixNano())
	msg := []byte{8, 0, 0, 0, 0, 0, 0, 0, 'm', 'a', 'c', 'h', 'i', 'n', 'e', 'f', 's'}
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
	var dst net.Addr = &net.UDPAddr{IP: ip4}
	if raw {
		dst = &net.IPAddr{IP: ip4}
	}
	if _, err := pc.WriteTo(msg, dst); err != nil {
		return fmt.Errorf("icmp echo to %s: %w", ip4, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("icmp echo to %s: no reply: %w", ip4, ctx.Err())
			}
			return fmt.Errorf("icmp echo to %s: %w", ip4, err)
		}
		b := buf[:n]
		// net.IPConn already strips the IPv4 header of raw sockets.
		if raw && !addrIP(from).Equal(ip4) {
			continue
		}
		if len(b) < 8 || b[0] != 0 || b[1] != 0 { // echo reply
			continue
		}
		// Ping sockets rewrite the id; raw sockets see everyone's replies.
		if binary.BigEndian.Uint16(b[6:]) != seq || (raw && binary.BigEndian.Uint16(b[4:]) != id) {
			continue
		}
		return nil
	}
}

func addrIP(a net.Addr) net.IP {
	switch a := a.(type) {
	case *net.IPAddr:
		return a.IP
	case *net.UDPAddr:
		return a.IP
	}
	return nil
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
