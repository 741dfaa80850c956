package ipmi

import (
	"context"
	"log/slog"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal: check reads the keys, and the
// literal naming check would be an initialization cycle.
func init() { Spec.Check = check }

// check opens a real session with the configured credentials, through
// the driver's own code (the same client, the same guard against a
// password in clear, the same classification of failures), and closes
// it: a BMC that does not answer is "BMC reachable" missing, one that
// refuses the user or password is "BMC authentication" missing with the
// BMC's words. The session is a throwaway: the driver's own stays as it
// is. Bounded by ctx and by ipmi.timeout and ipmi.retries.
func check(ctx context.Context, env machine.CheckEnv) []machine.Requirement {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return []machine.Requirement{machine.Lack("config", err.Error())}
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{cfg: cfg, log: log, sess: make(chan struct{}, 1)}
	c, err := d.dial(ctx)
	if err == nil {
		d.discard(c, true) // Close Session, bounded by ipmi.timeout
		d.wg.Wait()
		how := d.sessionKind()
		return []machine.Requirement{
			machine.Have("BMC reachable", "UDP "+cfg.hostPort()+" answers"),
			machine.Have("BMC authentication", "session opened as user "+quoteUser(cfg.user)+" ("+how+")"),
		}
	}
	err = d.classify(ctx, "open session", err)
	reach := machine.Have("BMC reachable", "UDP "+cfg.hostPort()+" answers")
	switch machine.ErrnoOf(err) {
	case syscall.EACCES:
		return []machine.Requirement{reach, machine.Lack("BMC authentication", err.Error())}
	case syscall.EIO:
		if reachableAfter(err) {
			return []machine.Requirement{reach, machine.Lack("BMC authentication", err.Error())}
		}
	}
	return []machine.Requirement{
		machine.Lack("BMC reachable", err.Error()),
		machine.Lack("BMC authentication", "not tried: the BMC does not answer"),
	}
}

func quoteUser(u string) string {
	if u == "" {
		return "(anonymous)"
	}
	return "\"" + u + "\""
}
