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

// Defaults of the config keys.
const (
	DefaultPort          = 623
	DefaultInterface     = "lanplus"
	DefaultCipher        = 3
	DefaultTimeout       = 2 * time.Second
	DefaultRetries       = 1
	DefaultPoll          = 5 * time.Second
	DefaultVerifyTimeout = 30 * time.Second
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

// keys are the config keys of the driver (Spec.Keys).
var keys = []machine.KeySpec{
	{Name: "ipmi.address", Doc: "BMC host name or IP address (required; the port goes in ipmi.port)", Check: checkAddress},
	{Name: "ipmi.port", Doc: "BMC UDP port", Default: strconv.Itoa(DefaultPort), Check: checkPort},
	{Name: "ipmi.user", Doc: "BMC user name (at most 16 bytes; empty = anonymous/null user)", Default: "", Check: checkUser},
	{Name: "ipmi.password", Doc: "BMC password (at most 20 bytes, 16 for lan); never shown", Default: "", Secret: true, Check: checkPassword, Destination: []string{"ipmi.address", "ipmi.port", "ipmi.interface", "ipmi.cipher"}},
	{Name: "ipmi.interface", Doc: "lanplus (IPMI 2.0, RMCP+) or lan (IPMI 1.5)", Default: DefaultInterface, Check: checkInterface},
	{Name: "ipmi.cipher", Doc: "RMCP+ cipher suite 0-19, or auto (automatic selection costs seconds per session); lanplus only", Default: strconv.Itoa(DefaultCipher), Check: checkCipher},
	{Name: "ipmi.timeout", Doc: "time to wait for one BMC answer before retrying (Go duration)", Default: DefaultTimeout.String(), Check: durationCheck(10*time.Millisecond, time.Minute)},
	{Name: "ipmi.retries", Doc: "retries of a request the BMC did not answer (0-10)", Default: strconv.Itoa(DefaultRetries), Check: checkRetries},
	{Name: "ipmi.poll", Doc: "status poll interval (Go duration); unreachable BMCs back off up to 1m", Default: DefaultPoll.String(), Check: durationCheck(50*time.Millisecond, 24*time.Hour)},
	{Name: "ipmi.verify-timeout", Doc: "how long to re-read status after a power command until the expected state shows (Go duration)", Default: DefaultVerifyTimeout.String(), Check: durationCheck(100*time.Millisecond, time.Hour)},
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

func checkPort(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 1 to 65535", v)
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

func checkInterface(v string) error {
	if v != "lan" && v != "lanplus" {
		return fmt.Errorf("interface %q: want lanplus (IPMI 2.0) or lan (IPMI 1.5)", v)
	}
	return nil
}

func checkCipher(v string) error {
	if v == "auto" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 19 {
		return fmt.Errorf("cipher suite %q: want a number from 0 to 19, or auto", v)
	}
	if _, _, _, ok := types.GetCipherSuiteAlgorithms(types.CipherSuiteID(n)); !ok {
		return fmt.Errorf("cipher suite %d is not supported by this client (try 3 or 17)", n)
	}
	return nil
}

func checkRetries(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 10 {
		return fmt.Errorf("retries %q: want a number from 0 to 10", v)
	}
	return nil
}

func durationCheck(lo, hi time.Duration) func(string) error {
	return func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < lo || d > hi {
			return fmt.Errorf("%q: want a duration from %v to %v (e.g. 2s, 500ms)", v, lo, hi)
		}
		return nil
	}
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

func keyCheck(name string) func(string) error {
	for _, k := range keys {
		if k.Name == name {
			return k.Check
		}
	}
	return nil
}

func parseConfig(cfg machine.Config) (config, error) {
	get := func(key, def string) (string, error) {
		v, ok := cfg.Get(key)
		if !ok {
			return def, nil
		}
		if check := keyCheck(key); check != nil {
			if err := check(v); err != nil {
				return "", machine.Errorf(syscall.EINVAL, "%s: %v", key, err)
			}
		}
		return v, nil
	}
	var c config
	var err error
	var s string
	if s, err = get("ipmi.address", ""); err != nil {
		return c, err
	}
	if s == "" {
		return c, machine.Errorf(syscall.EINVAL, "ipmi.address is not set (the BMC's host name or IP address)")
	}
	c.address = s
	if s, err = get("ipmi.port", strconv.Itoa(DefaultPort)); err != nil {
		return c, err
	}
	c.port, _ = strconv.Atoi(s)
	if c.user, err = get("ipmi.user", ""); err != nil {
		return c, err
	}
	if c.password, err = get("ipmi.password", ""); err != nil {
		return c, err
	}
	if c.iface, err = get("ipmi.interface", DefaultInterface); err != nil {
		return c, err
	}
	if c.iface == "lan" && len(c.password) > 16 {
		return c, machine.Errorf(syscall.EINVAL, "ipmi.password: %d bytes; IPMI 1.5 (ipmi.interface lan) allows at most 16", len(c.password))
	}
	if s, err = get("ipmi.cipher", strconv.Itoa(DefaultCipher)); err != nil {
		return c, err
	}
	if s == "auto" {
		c.cipher = -1
	} else {
		c.cipher, _ = strconv.Atoi(s)
	}
	if s, err = get("ipmi.retries", strconv.Itoa(DefaultRetries)); err != nil {
		return c, err
	}
	c.retries, _ = strconv.Atoi(s)
	for _, d := range []struct {
		key string
		def time.Duration
		dst *time.Duration
	}{
		{"ipmi.timeout", DefaultTimeout, &c.timeout},
		{"ipmi.poll", DefaultPoll, &c.poll},
		{"ipmi.verify-timeout", DefaultVerifyTimeout, &c.verifyTimeout},
	} {
		if _, err := get(d.key, ""); err != nil {
			return c, err
		}
		*d.dst = cfg.Duration(d.key, d.def)
		if *d.dst <= 0 {
			*d.dst = d.def
		}
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
