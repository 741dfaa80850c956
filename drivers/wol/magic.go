package wol

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// EtherType is the Ethernet type of a raw Wake-on-LAN frame.
const EtherType = 0x0842

const (
	syncLen    = 6  // 6 x 0xFF
	macLen     = 6  // EUI-48
	macRepeats = 16 // the target MAC, 16 times
	// MagicLen is the length of a magic packet without password.
	MagicLen = syncLen + macLen*macRepeats
)

// Errors returned by UnmarshalBinary and MarshalBinary.
var (
	ErrInvalidLength   = errors.New("wol: magic packet must be 102, 106 or 108 bytes")
	ErrInvalidSync     = errors.New("wol: magic packet does not start with 6 x 0xFF")
	ErrInvalidTarget   = errors.New("wol: magic packet repeats different MAC addresses")
	ErrInvalidMAC      = errors.New("wol: target must be a 6-byte (EUI-48) MAC address")
	ErrInvalidPassword = errors.New("wol: SecureOn password must be 4 or 6 bytes")
)

// MagicPacket is a Wake-on-LAN magic packet: 6 bytes 0xFF, the target's MAC
// address 16 times and, optionally, a SecureOn password of 4 or 6 bytes. The
// same bytes are the payload of a raw Ethernet frame (EtherType 0x0842) or of
// a UDP datagram.
type MagicPacket struct {
	Target   net.HardwareAddr
	Password []byte
}

// MarshalBinary returns the packet's wire form.
func (p MagicPacket) MarshalBinary() ([]byte, error) {
	if len(p.Target) != macLen {
		return nil, ErrInvalidMAC
	}
	if n := len(p.Password); n != 0 && n != 4 && n != 6 {
		return nil, ErrInvalidPassword
	}
	b := make([]byte, 0, MagicLen+len(p.Password))
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	for range macRepeats {
		b = append(b, p.Target...)
	}
	return append(b, p.Password...), nil
}

// UnmarshalBinary parses a magic packet. It checks the sync stream, that all
// 16 copies of the MAC are the same and the length (102 bytes, or 106/108
// with a password). It copies b.
func (p *MagicPacket) UnmarshalBinary(b []byte) error {
	switch len(b) {
	case MagicLen, MagicLen + 4, MagicLen + 6:
	default:
		return ErrInvalidLength
	}
	for _, c := range b[:syncLen] {
		if c != 0xff {
			return ErrInvalidSync
		}
	}
	mac := b[syncLen : syncLen+macLen]
	for i := 1; i < macRepeats; i++ {
		off := syncLen + i*macLen
		if !bytes.Equal(mac, b[off:off+macLen]) {
			return ErrInvalidTarget
		}
	}
	p.Target = net.HardwareAddr(bytes.Clone(mac))
	p.Password = nil
	if pw := b[MagicLen:]; len(pw) > 0 {
		p.Password = bytes.Clone(pw)
	}
	return nil
}

// ParsePassword parses a SecureOn password as ether-wake writes it: 4 or 6
// hex pairs separated by ':' or '-' ("01:02:03:04:05:06"), or 4 bytes in
// dotted IPv4 style ("192.168.1.1").
func ParsePassword(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	bad := func(why string) ([]byte, error) {
		// The value is secret: never echo it.
		return nil, fmt.Errorf("wol.password: %s (want 4 or 6 hex pairs like 01:02:03:04:05:06, or 4 bytes like 192.168.1.1)", why)
	}
	if s == "" {
		return bad("empty")
	}
	if strings.Contains(s, ".") {
		parts := strings.Split(s, ".")
		if len(parts) != 4 {
			return bad("dotted form needs exactly 4 numbers")
		}
		b := make([]byte, 4)
		for i, part := range parts {
			n, err := strconv.ParseUint(part, 10, 8)
			if err != nil {
				return bad("dotted form needs numbers 0-255")
			}
			b[i] = byte(n)
		}
		return b, nil
	}
	sep := ":"
	if !strings.Contains(s, ":") {
		sep = "-"
	}
	parts := strings.Split(s, sep)
	if len(parts) != 4 && len(parts) != 6 {
		return bad(fmt.Sprintf("%d bytes", len(parts)))
	}
	b := make([]byte, len(parts))
	for i, part := range parts {
		if len(part) != 2 {
			return bad("each byte must be two hex digits")
		}
		n, err := strconv.ParseUint(part, 16, 8)
		if err != nil {
			return bad("each byte must be two hex digits")
		}
		b[i] = byte(n)
	}
	return b, nil
}
