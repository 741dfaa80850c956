package ssh

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/wolarm"
	"github.com/machinefs/machinefs/machine"
)

// Config keys read by the driver.
const (
	KeyAddress        = "ssh.address"
	KeyPort           = "ssh.port"
	KeyUser           = "ssh.user"
	KeyKey            = "ssh.key"
	KeyKnownHosts     = "ssh.known-hosts"
	KeyConnectTimeout = "ssh.connect-timeout"
	KeyCommandTimeout = "ssh.command-timeout"
	KeyProbeInterval  = "ssh.probe-interval"
	KeyWoLInterface   = "ssh.wol-interface"
)

// Spec registers the ssh driver with the model.
var Spec = machine.DriverSpec{
	Name: "ssh",
	Doc:  "power off, reboot, suspend and relay init N to a machine without a BMC by running its own shutdown tools over SSH (key authentication, host key checked against known_hosts), and probe it",
	Keys: keys,
	New:  New,
}

// keys are the driver's config keys (Spec.Keys). The key file and the
// known_hosts file are privileged: the first decides what runs as whom on
// the target, the second which machines the daemon's key may be used on
// at all. Because known_hosts is the allow-list, ssh.address need not be:
// an operator who points it elsewhere reaches only machines the admin
// listed. Nor need ssh.wol-interface: it only names the NIC on such a
// machine that a fixed ethtool command arms, and names that could mean
// anything to the remote shell are refused when written.
var keys = []machine.KeySpec{
	{Name: KeyAddress, Doc: "the machine's host name or IP address; required. It must be listed in ssh.known-hosts (as ADDRESS, or [ADDRESS]:PORT for a port other than 22)", Kind: addressKind},
	{Name: KeyPort, Doc: "the machine's SSH port", Default: "22", Kind: machine.IntKind(1, 65535)},
	{Name: KeyUser, Doc: "the user the commands run as; it must be allowed to run poweroff, reboot and telinit (root, or a user whose forced commands do)", Default: "root", Kind: userKind},
	{Name: KeyKey, Doc: "private key file (OpenSSH or PEM, unencrypted, readable by the daemon's user only); required", Kind: machine.PathKind, Privileged: true},
	{Name: KeyKnownHosts, Doc: "known_hosts file that must list the machine's host key; required: an unknown or changed key is EACCES with the reason, never trusted on first use", Kind: machine.PathKind, Privileged: true},
	{Name: KeyConnectTimeout, Doc: "bound on one connection: TCP connect, SSH handshake and authentication (a port that accepts but never speaks SSH is ETIMEDOUT after it)", Default: "5s", Kind: machine.DurationKind(100*time.Millisecond, time.Minute)},
	{Name: KeyCommandTimeout, Doc: "bound on one command on the machine (init detection, poweroff, reboot, telinit): ETIMEDOUT after it", Default: "30s", Kind: machine.DurationKind(100*time.Millisecond, 10*time.Minute)},
	{Name: KeyWoLInterface, Doc: "the machine's network interface on which Wake-on-LAN (magic packet) is armed with the machine's ethtool (ethtool -s IFACE wol g, read back with ethtool IFACE) before poweroff, off, init 0 and suspend, so that wol can wake it; empty: not armed. A NIC without WoL, or no ethtool, is a warning with the reason, not a refusal", Kind: ifaceKind},
	{Name: KeyProbeInterval, Doc: "time between probes of the machine (an SSH keepalive on the kept connection, or a new connection), so a machine switched off or on elsewhere shows within one interval", Default: "10s", Kind: machine.DurationKind(100*time.Millisecond, time.Hour)},
}

var (
	hostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$`)
	userRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)
)

// addressKind is an IP address or a DNS host name, without a port (that
// is ssh.port) and without brackets.
var addressKind = machine.CustomKind("host name or IP address", func(v string) (string, error) {
	s := strings.TrimSpace(v)
	if net.ParseIP(s) != nil {
		return s, nil
	}
	if len(s) > 253 || !hostRE.MatchString(s) {
		return "", fmt.Errorf("%q: want a host name or an IP address (no port: that is ssh.port)", v)
	}
	return s, nil
})

// ifaceKind is a network interface name, or empty. It reaches a command
// line, so only names that mean nothing to a shell pass (wolarm.CheckName).
var ifaceKind = machine.CheckedKind("interface name", func(v string) error {
	if v == "" {
		return nil
	}
	return wolarm.CheckName(v)
})

// userKind is a POSIX-style login name.
var userKind = machine.CheckedKind("user name", func(v string) error {
	if !userRE.MatchString(v) {
		return fmt.Errorf("%q: want a user name (letters, digits, '_', '.', '-'; at most 32)", v)
	}
	return nil
})

// settings is the parsed configuration of one host.
type settings struct {
	address        string
	port           int
	user           string
	key            string
	knownHosts     string
	connectTimeout time.Duration
	commandTimeout time.Duration
	interval       time.Duration
	wolIface       string
}

// hostPort is the address as dialled and as looked up in known_hosts.
func (s settings) hostPort() string {
	return net.JoinHostPort(s.address, fmt.Sprint(s.port))
}

func parseConfig(c machine.Config) (settings, error) {
	v := machine.ReadConfig(c, keys)
	s := settings{
		address:        v.String(KeyAddress),
		port:           v.Int(KeyPort),
		user:           v.String(KeyUser),
		key:            v.String(KeyKey),
		knownHosts:     v.String(KeyKnownHosts),
		connectTimeout: v.Duration(KeyConnectTimeout),
		commandTimeout: v.Duration(KeyCommandTimeout),
		interval:       v.Duration(KeyProbeInterval),
		wolIface:       v.String(KeyWoLInterface),
	}
	if err := v.Err(); err != nil {
		return s, machine.Errorf(syscall.EINVAL, "ssh: %v", err)
	}
	for _, k := range []struct{ name, val string }{{KeyAddress, s.address}, {KeyKey, s.key}, {KeyKnownHosts, s.knownHosts}} {
		if k.val == "" {
			return s, machine.Errorf(syscall.EINVAL, "ssh: %s is not set: the ssh driver needs %s, %s and %s", k.name, KeyAddress, KeyKey, KeyKnownHosts)
		}
	}
	return s, nil
}
