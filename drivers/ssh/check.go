package ssh

import (
	"context"
	"errors"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"

	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// check reports what the driver needs, through its own code: the key
// file (a private key, readable by the daemon's user only), known_hosts
// listing the machine, and a real connection (TCP, the SSH handshake with
// the host key checked against known_hosts, key authentication),
// bounded by ctx and ssh.connect-timeout. A machine that is off shows
// "ssh reachable" missing: on a machine without a BMC that is what the
// driver cannot do without. The connection is closed at once; the
// driver's own is not touched.
func check(ctx context.Context, env machine.CheckEnv) []machine.Requirement {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return []machine.Requirement{machine.Lack("config", err.Error())}
	}
	hp := cfg.hostPort()
	out := []machine.Requirement{keyNeed(cfg)}
	known := knownNeed(cfg)
	out = append(out, known)
	if !out[0].Present || !known.Present {
		return append(out, machine.Lack("ssh connection "+hp, "not tried: the key or known_hosts is missing"))
	}
	// From the daemon's network namespace (a driver made in another
	// dials from there; the model checks from its own).
	c, err := dialer{cfg: cfg}.dial(ctx)
	if err == nil {
		defer c.close()
		return append(out,
			machine.Have("ssh reachable "+hp, "TCP connect and SSH handshake"),
			machine.Have("ssh host key", c.hostKey+", as in "+cfg.knownHosts),
			machine.Have("ssh authentication", "user "+cfg.user+" with "+cfg.key+"; init "+c.init))
	}
	return append(out, dialNeeds(hp, err)...)
}

// keyNeed: the key file parses and is private.
func keyNeed(cfg settings) machine.Requirement {
	what := "ssh key " + cfg.key
	s, err := readKey(cfg.key)
	if err != nil {
		return machine.Lack(what, err.Error())
	}
	return machine.Have(what, s.PublicKey().Type()+" "+ssh.FingerprintSHA256(s.PublicKey())+", mode private")
}

// knownNeed: known_hosts reads and lists the machine.
func knownNeed(cfg settings) machine.Requirement {
	hp := cfg.hostPort()
	what := "known_hosts entry for " + hp
	_, algos, err := hostKeyCheck(cfg.knownHosts, hp)
	switch {
	case err != nil:
		return machine.Lack(what, err.Error())
	case len(algos) == 0:
		return machine.Lack(what, cfg.knownHosts+" has no key for "+hp+" (as ADDRESS, or [ADDRESS]:PORT for a port other than 22)")
	}
	return machine.Have(what, cfg.knownHosts+" ("+strings.Join(algos, ", ")+")")
}

// dialNeeds says which step of the connection failed: nothing answered,
// the host key was not the known one, or the key was refused.
func dialNeeds(hp string, err error) []machine.Requirement {
	reach := machine.Have("ssh reachable "+hp, "TCP connect and SSH handshake")
	why := err.Error()
	switch {
	case machine.ErrnoOf(err) == syscall.EACCES && strings.Contains(why, "was refused"):
		return []machine.Requirement{reach, machine.Have("ssh host key", "as in known_hosts"), machine.Lack("ssh authentication", why)}
	case machine.ErrnoOf(err) == syscall.EACCES:
		return []machine.Requirement{reach, machine.Lack("ssh host key", why), machine.Lack("ssh authentication", "not tried: the host key is not the known one")}
	case errors.Is(err, context.Canceled):
		return []machine.Requirement{machine.Lack("ssh reachable "+hp, "the check was cancelled")}
	}
	return []machine.Requirement{machine.Lack("ssh reachable "+hp, why),
		machine.Lack("ssh host key", "not tried: the machine does not answer")}
}
