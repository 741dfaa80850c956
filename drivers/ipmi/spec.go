package ipmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/machinefs/machinefs/machine"
)

// MaxConcurrentPolls bounds how many hosts of this process poll their BMC at
// the same moment.
const MaxConcurrentPolls = 32

// maxBackoff caps the back-off from an unreachable BMC.
const maxBackoff = time.Minute

// Spec registers the ipmi driver.
var Spec = machine.DriverSpec{
	Name: "ipmi",
	Doc:  "power control, status polling and serial console through a BMC (IPMI over LAN)",
	Keys: keys,
	New:  newDriver,
}

// keys are the config keys of the driver (Spec.Keys), with their defaults.
var keys = []machine.KeySpec{
	{Name: "ipmi.address", Doc: "BMC host name or IP address (required; the port goes in ipmi.port)", Kind: machine.CheckedKind("host name or IP address", checkAddress)},
	{Name: "ipmi.port", Doc: "BMC UDP port", Default: "623", Kind: machine.IntKind(1, 65535)},
	{Name: "ipmi.user", Doc: "BMC user name (at most 16 bytes; empty = anonymous/null user)", Default: "", Kind: machine.CheckedKind("text, at most 16 bytes", checkUser)},
	{Name: "ipmi.password", Doc: "BMC password (at most 20 bytes, 16 for lan); never shown", Default: "", Secret: true, Kind: machine.CheckedKind("text, at most 20 bytes", checkPassword), Destination: []string{"ipmi.address", "ipmi.port", "ipmi.interface", "ipmi.cipher"}},
	{Name: "ipmi.interface", Doc: "lanplus (IPMI 2.0, RMCP+) or lan (IPMI 1.5). With lan and a password, only MD5 or MD2 authentication is used: a BMC that offers only none, straight password or OEM authentication gets no session (EACCES, reason in state); every datagram is checked before it is sent, so the password never goes in clear. With an empty password any type is used", Default: "lanplus", Kind: machine.EnumKind("lanplus", "lan")},
	{Name: "ipmi.cipher", Doc: "RMCP+ cipher suite 0-19, or auto (automatic selection costs seconds per session); lanplus only. No suite sends the password; 0 authenticates and protects nothing, and auto never picks it: set 0 only for a BMC that offers nothing else", Default: "3", Kind: machine.CustomKind("number 0-19, or auto", parseCipher)},
	{Name: "ipmi.timeout", Doc: "time to wait for one BMC answer before retrying", Default: "2s", Kind: machine.DurationKind(10*time.Millisecond, time.Minute)},
	{Name: "ipmi.retries", Doc: "retries of a request the BMC did not answer", Default: "1", Kind: machine.IntKind(0, 10)},
	{Name: "ipmi.poll", Doc: "status poll interval; unreachable BMCs back off up to 1m", Default: "5s", Kind: machine.DurationKind(50*time.Millisecond, 24*time.Hour)},
	{Name: "ipmi.verify-timeout", Doc: "poweroff: how long the soft shutdown may take before a hard power off; at most half the command's window (wait-timeout, timeout=), so the hard off is verified within it. Other verbs are verified until the window ends", Default: "30s", Kind: machine.DurationKind(100*time.Millisecond, time.Hour)},
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$`)

func checkAddress(v string) error {
	switch {
	case v == "":
		return errors.New("empty address: give the BMC's host name or IP address")
	case net.ParseIP(strings.Trim(v, "[]")) != nil:
		return nil
	case strings.Contains(v, ":"):
		return fmt.Errorf("%q is not an IP address or host name (put the port in ipmi.port)", v)
	case len(v) > 253 || !hostnameRE.MatchString(v):
		return fmt.Errorf("%q is not an IP address or host name", v)
	}
	return nil
}

func checkUser(v string) error {
	if len(v) > 16 {
		return fmt.Errorf("user name is %d bytes long; IPMI allows at most 16", len(v))
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return errors.New("user name contains control characters")
		}
	}
	return nil
}

// checkPassword never repeats the value.
func checkPassword(v string) error {
	if len(v) > 20 {
		return fmt.Errorf("password is %d bytes long; IPMI 2.0 allows at most 20", len(v))
	}
	return nil
}

// parseCipher reads ipmi.cipher: a suite this client supports, or auto (-1).
func parseCipher(v string) (int, error) {
	if v == "auto" {
		return -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 19 {
		return 0, fmt.Errorf("cipher suite %q: want a number from 0 to 19, or auto", v)
	}
	if _, _, _, ok := types.GetCipherSuiteAlgorithms(types.CipherSuiteID(n)); !ok {
		return 0, fmt.Errorf("cipher suite %d is not supported by this client (try 3 or 17)", n)
	}
	return n, nil
}

// config is the parsed, validated configuration of one host.
type config struct {
	address       string
	port          int
	user          string
	password      string
	iface         string
	cipher        int // -1 = auto
	timeout       time.Duration
	retries       int
	poll          time.Duration
	verifyTimeout time.Duration
}

// hostPort is the BMC's address for messages.
func (c config) hostPort() string {
	return net.JoinHostPort(strings.Trim(c.address, "[]"), strconv.Itoa(c.port))
}

// budget bounds one background exchange (a poll or a verification read):
// long enough for a session to be opened and a request retried.
func (c config) budget() time.Duration {
	return c.timeout*time.Duration(c.retries+1) + c.timeout
}

// keyCheck is the write-time check of a key: its spec's parser.
func keyCheck(name string) func(string) error {
	for _, k := range keys {
		if k.Name == name {
			return k.Check
		}
	}
	return nil
}

func parseConfig(cfg machine.Config) (config, error) {
	v := machine.ReadConfig(cfg, keys)
	c := config{
		address:       v.String("ipmi.address"),
		port:          v.Int("ipmi.port"),
		user:          v.String("ipmi.user"),
		password:      v.String("ipmi.password"),
		iface:         v.String("ipmi.interface"),
		cipher:        machine.Value[int](v, "ipmi.cipher"),
		timeout:       v.Duration("ipmi.timeout"),
		retries:       v.Int("ipmi.retries"),
		poll:          v.Duration("ipmi.poll"),
		verifyTimeout: v.Duration("ipmi.verify-timeout"),
	}
	if err := v.Err(); err != nil {
		return c, err
	}
	if c.address == "" {
		return c, machine.Errorf(syscall.EINVAL, "ipmi.address is not set (the BMC's host name or IP address)")
	}
	if c.iface == "lan" && len(c.password) > 16 {
		return c, machine.Errorf(syscall.EINVAL, "ipmi.password: %d bytes; IPMI 1.5 (ipmi.interface lan) allows at most 16", len(c.password))
	}
	return c, nil
}

func newDriver(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return nil, err
	}
	return start(cfg, env), nil
}
