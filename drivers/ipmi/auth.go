package ipmi

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// The password never goes on the wire in clear.
//
// IPMI 1.5 ("lan") lets a BMC choose among authentication types none, MD2,
// MD5, "straight password" and OEM. go-ipmi asks Get Channel Authentication
// Capabilities and picks MD5, else MD2, else straight password, else OEM,
// else none (app.ChooseAuthType), then sends Get Session Challenge and
// Activate Session with that type. With straight password, Activate
// Session and every packet after it carry the password in clear in the
// session header; a rogue BMC (or anyone answering for the BMC's address)
// only has to offer straight password to collect it. go-ipmi also adopts
// whatever type the Activate Session response names for the rest of the
// session (an ASUS quirk), so even a session begun with MD5 can be switched
// to straight password by a forged response.
//
// go-ipmi has no hook between its capabilities query and the session
// activation, and its Connect15 (which sets the client's private IPMI 1.5
// framing) cannot be taken apart; a capabilities query of our own before
// Connect would be framed as RMCP+ and go unanswered by 1.5-only BMCs. But
// go-ipmi opens its UDP socket through a proxy.Dialer when one is set
// (WithUDPProxy), so the driver gives it a dialer whose socket checks every
// datagram before it leaves (guardConn). With a password set:
//
//   - Get Session Challenge and Activate Session may name only MD5 or MD2:
//     a BMC that offers none, straight password or OEM (the only cases in
//     which go-ipmi picks those) is refused before any session exists, with
//     the types it offered (seen in its capabilities answer) in the reason.
//     "none" is refused too: the BMC would let anybody in without the
//     password, so neither side is authenticated.
//   - No datagram may carry a session header of type straight password or
//     OEM (go-ipmi computes no OEM auth code; what it would send is
//     unknown): the backstop for a BMC that changes its answer between
//     queries or downgrades the session in its Activate Session response.
//
// MD2 is accepted: like MD5 it sends a keyed digest, never the password;
// both let an eavesdropper try passwords offline, which is why lanplus is
// the default. With an empty ipmi.password nothing is secret and every type
// is allowed (anonymous and null-password users). RMCP+ ("lanplus") never
// sends the password, with any cipher suite; its packets (type 06h) pass.
//
// The check runs on the socket of every session, polls, commands and SOL
// alike; a refusal is EACCES and the socket sends nothing more.

// IPMI 1.5 authentication types (session header, Get Session Challenge,
// Activate Session) and the RMCP+ format marker (IPMI 2.0 table 13-8).
const (
	authNone     = 0x00
	authMD2      = 0x01
	authMD5      = 0x02
	authStraight = 0x04
	authOEM      = 0x05
	authRMCPPlus = 0x06
)

// IPMI commands (NetFn App, 06h; responses 07h) the guard looks at.
const (
	netFnApp           = 0x06
	netFnAppResponse   = 0x07
	cmdGetAuthCaps     = 0x38
	cmdGetChallenge    = 0x39
	cmdActivateSession = 0x3a
)

func authName(t byte) string {
	switch t {
	case authNone:
		return "none"
	case authMD2:
		return "MD2"
	case authMD5:
		return "MD5"
	case authStraight:
		return "straight password"
	case authOEM:
		return "OEM"
	}
	return fmt.Sprintf("type %#02x", t)
}

// offeredNames lists the types of an Authentication Type Support byte
// (bits 0 none, 1 MD2, 2 MD5, 4 straight password, 5 OEM).
func offeredNames(bits byte) string {
	var n []string
	for _, t := range []byte{authNone, authMD2, authMD5, authStraight, authOEM} {
		if bits&(1<<t) != 0 {
			n = append(n, authName(t))
		}
	}
	if len(n) == 0 {
		return "nothing"
	}
	return strings.Join(n, ", ")
}

// unsafeAuthError is what guardConn returns instead of sending a datagram.
type unsafeAuthError struct {
	chosen  byte
	offered int // the BMC's Authentication Type Support byte, -1 unknown
	header  bool
}

func (e *unsafeAuthError) Error() string {
	if e.header {
		return fmt.Sprintf("refused to send a packet with IPMI 1.5 authentication %s: it would carry the password in clear", authName(e.chosen))
	}
	offered := "offers no MD5 or MD2 authentication"
	if e.offered >= 0 {
		offered = "offers only " + offeredNames(byte(e.offered)) + " authentication"
	}
	return fmt.Sprintf("the BMC %s for IPMI 1.5 (ipmi.interface lan); machinefs sends a password only as an MD5 or MD2 digest, "+
		"never in clear, and never logs in without it (enable MD5 for this user on the BMC, or use ipmi.interface lanplus)", offered)
}

// refusedAuth is the classified refusal. It unwraps to the *machine.Error
// the model sees, and lets the poller name the cause.
type refusedAuth struct{ err *machine.Error }

func (r refusedAuth) Error() string { return r.err.Error() }
func (r refusedAuth) Unwrap() error { return r.err }

func isRefusedAuth(err error) bool {
	var r refusedAuth
	return errors.As(err, &r)
}

// guardDialer is the proxy.Dialer given to go-ipmi: it dials UDP as
// go-ipmi would and wraps the socket in a guardConn.
type guardDialer struct{ secret bool }

func (g guardDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	g2 := &guardConn{Conn: c, secret: g.secret}
	g2.offered.Store(-1)
	return g2, nil
}

// guardConn refuses datagrams that would put the password on the wire (see
// the comment at the top of this file). go-ipmi writes each datagram with
// one Write (io.Copy from a bytes.Reader).
type guardConn struct {
	net.Conn
	secret  bool
	offered atomic.Int32 // Authentication Type Support byte last seen, -1 none yet
}

func (c *guardConn) Write(p []byte) (int, error) {
	if c.secret {
		if err := c.check(p); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

func (c *guardConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if at, msg, ok := parseLan15(p[:n]); ok && at != authRMCPPlus {
			// Response: rqAddr, netFn/LUN, chk, rsAddr, seq/LUN, cmd, cc, channel, auth support, ..., chk.
			if len(msg) >= 10 && msg[1]>>2 == netFnAppResponse && msg[5] == cmdGetAuthCaps && msg[6] == 0 {
				c.offered.Store(int32(msg[8] & 0x3f))
			}
		}
	}
	return n, err
}

func (c *guardConn) check(p []byte) error {
	at, msg, ok := parseLan15(p)
	if !ok {
		return nil // RMCP ping (ASF) or not RMCP at all: carries no password
	}
	switch at {
	case authNone, authMD2, authMD5, authRMCPPlus:
	default:
		return &unsafeAuthError{chosen: at, offered: int(c.offered.Load()), header: true}
	}
	// Request: rsAddr, netFn/LUN, chk, rqAddr, seq/LUN, cmd, data..., chk.
	if len(msg) >= 8 && msg[1]>>2 == netFnApp && (msg[5] == cmdGetChallenge || msg[5] == cmdActivateSession) {
		if t := msg[6] & 0x0f; t != authMD5 && t != authMD2 {
			return &unsafeAuthError{chosen: t, offered: int(c.offered.Load())}
		}
	}
	return nil
}

// parseLan15 splits an RMCP datagram of class IPMI into its authentication
// type (06h for RMCP+, whose payload is not parsed) and, for an IPMI 1.5
// session, the IPMI message. ok is false for anything else.
func parseLan15(p []byte) (authType byte, msg []byte, ok bool) {
	// RMCP header: version 06h, reserved, sequence, class (07h = IPMI).
	if len(p) < 5 || p[0] != 0x06 || p[3]&0x1f != 0x07 {
		return 0, nil, false
	}
	authType = p[4] & 0x0f
	if authType == authRMCPPlus {
		return authType, nil, true
	}
	// Session header: auth type, sequence (4), session id (4), auth code
	// (16, absent for none), message length.
	off := 4 + 1 + 4 + 4
	if authType != authNone {
		off += 16
	}
	if len(p) <= off {
		return authType, nil, true
	}
	n := int(p[off])
	msg = p[off+1:]
	if n < len(msg) {
		msg = msg[:n]
	}
	return authType, msg, true
}

// classifyRefusal turns a guardConn refusal found in err into EACCES.
func (d *Driver) classifyRefusal(where string, err error) (error, bool) {
	var ue *unsafeAuthError
	if !errors.As(err, &ue) {
		return nil, false
	}
	return refusedAuth{machine.Errorf(syscall.EACCES, "%s: %v", where, ue).(*machine.Error)}, true
}
