package ipmi

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

// TestLanAuthTypes: over IPMI 1.5 the driver logs in to a BMC that offers
// MD5 or MD2, and refuses, with EACCES and the offered types in the
// reason, a BMC that offers only straight password or none. The BMC never
// acts on a refused host. (The wire itself is checked end to end in
// tests/ipmi_test.go, TestIPMINoClearPassword.)
func TestLanAuthTypes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		auths []string
		ok    bool
		want  string // in the refusal
	}{
		{[]string{"md5"}, true, ""},
		{[]string{"md2"}, true, ""},
		{[]string{"straight"}, false, "offers only straight password authentication"},
		{[]string{"none"}, false, "offers only none authentication"},
		{[]string{"none", "straight"}, false, "offers only none, straight password authentication"},
	} {
		t.Run(strings.Join(c.auths, "+"), func(t *testing.T) {
			t.Parallel()
			b := ipmisim.Start(t, ipmisim.Auths(c.auths...))
			h := newHost(t, b.Port, map[string]string{"ipmi.interface": "lan"})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := h.d.Power(ctx, machine.Command{Verb: "on"})
			if c.ok {
				if err != nil {
					t.Fatalf("on: %v", err)
				}
				h.rec.waitFor(t, 0, 10*time.Second, "verified on", isPower(machine.PowerOn))
				if b.Power() != "on" {
					t.Fatalf("simulator power %s", b.Power())
				}
				return
			}
			wantErrno(t, err, syscall.EACCES)
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "never in clear") {
				t.Fatalf("refusal does not say why: %v", err)
			}
			s, _ := h.rec.waitFor(t, 0, 5*time.Second, "refusal from poll", func(s machine.Status) bool {
				return s.Err != nil && s.Power == machine.PowerUnknown
			})
			if machine.ErrnoOf(s.Err) != syscall.EACCES || s.Reason != "BMC offers no authentication that keeps the password secret" {
				t.Fatalf("poll report: %+v", s.Status)
			}
			if b.Power() != "off" || len(b.Commands()) != 0 {
				t.Fatalf("the BMC acted: power %s, hook %q", b.Power(), b.Commands())
			}
			noPassword(t, h, err.Error())
		})
	}
}

// TestLanNoPasswordAnyAuth: with no password there is nothing to leak, so
// a BMC offering only straight password (of an empty password) is used.
// The simulator's admin user has a password, so the BMC refuses the login;
// what matters is that the driver sends it (EACCES from the BMC's silence,
// not the driver's refusal).
func TestLanNoPasswordAnyAuth(t *testing.T) {
	t.Parallel()
	b := ipmisim.Start(t, ipmisim.Auths("straight"))
	h := newHost(t, b.Port, map[string]string{"ipmi.interface": "lan", "ipmi.password": "",
		"ipmi.timeout": "200ms", "ipmi.retries": "0"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := h.d.Power(ctx, machine.Command{Verb: "on"})
	wantErrno(t, err, syscall.EACCES)
	if strings.Contains(err.Error(), "never in clear") || isRefusedAuth(err) {
		t.Fatalf("refused although no password is set: %v", err)
	}
}

// TestGuardConn: the datagrams go-ipmi would send, checked byte by byte.
func TestGuardConn(t *testing.T) {
	// RMCP header, IPMI 1.5 session header of type at (auth code of 16
	// bytes unless none), then an App request cmd with data.
	pkt := func(at, cmd byte, data ...byte) []byte {
		p := []byte{0x06, 0x00, 0xff, 0x07, at, 0, 0, 0, 0, 0, 0, 0, 0}
		if at != authNone {
			p = append(p, make([]byte, 16)...)
		}
		msg := append([]byte{0x20, netFnApp << 2, 0, 0x81, 0, cmd}, data...)
		msg = append(msg, 0)
		return append(append(p, byte(len(msg))), msg...)
	}
	g := &guardConn{secret: true}
	g.offered.Store(1 << authStraight)
	for _, c := range []struct {
		name string
		p    []byte
		ok   bool
	}{
		{"capabilities query", pkt(authNone, cmdGetAuthCaps, 0x8e, 0x04), true},
		{"challenge md5", pkt(authNone, cmdGetChallenge, authMD5), true},
		{"challenge md2", pkt(authNone, cmdGetChallenge, authMD2), true},
		{"challenge straight", pkt(authNone, cmdGetChallenge, authStraight), false},
		{"challenge none", pkt(authNone, cmdGetChallenge, authNone), false},
		{"challenge oem", pkt(authNone, cmdGetChallenge, authOEM), false},
		{"activate md5", pkt(authMD5, cmdActivateSession, authMD5, 0x04), true},
		{"activate straight", pkt(authStraight, cmdActivateSession, authStraight, 0x04), false},
		{"activate none", pkt(authNone, cmdActivateSession, authNone, 0x04), false},
		{"session straight", pkt(authStraight, 0x3b, 0x04), false},
		{"session oem", pkt(authOEM, 0x3b, 0x04), false},
		{"session none (BMC quirk)", pkt(authNone, 0x3b, 0x04), true},
		{"rmcp+", []byte{0x06, 0x00, 0xff, 0x07, 0x06, 0x10, 0, 0, 0, 0}, true},
		{"asf ping", []byte{0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe}, true},
		{"short", []byte{0x06, 0x00, 0xff, 0x07, 0x04}, false},
	} {
		err := g.check(c.p)
		if (err == nil) != c.ok {
			t.Errorf("%s: check = %v, want ok=%v", c.name, err, c.ok)
		}
	}
	if err := g.check(pkt(authNone, cmdGetChallenge, authStraight)); err == nil ||
		!strings.Contains(err.Error(), "offers only straight password authentication") {
		t.Errorf("refusal does not name what was offered: %v", err)
	}
}
