package model

import (
	"fmt"
	"strings"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// maxTimeout bounds the core durations, as the timeout= modifier's.
const maxTimeout = 24 * time.Hour

// Core config keys every host understands, whatever its drivers. Their
// defaults are the ones the model uses (ConfigFile.Duration, Bool).
var coreKeys = []machine.KeySpec{
	{Name: "drivers", Doc: "drivers that reach this machine, in order of preference, space or comma separated (e.g. \"ipmi wol\"); a verb goes to the first driver that supports it"},
	{Name: "driver", Doc: "same as drivers, for hosts with one driver; used when drivers is not set"},
	{Name: "label", Doc: "free text shown as label: in state"},
	{Name: "timeout", Default: "10s", Doc: "bound on every driver call (a driver that does not answer fails with ETIMEDOUT after it)", Kind: machine.DurationKind(time.Millisecond, maxTimeout)},
	{Name: "stack-timeout", Default: "1m", Doc: "bound on stopping this machine as a step of a stack poweroff or reboot; after it the machine is forced", Kind: machine.DurationKind(time.Millisecond, maxTimeout)},
	{Name: "local", Default: "no", Doc: "yes on the machine machinefs itself runs on: \"poweroff self\" and \"reboot self\" are then refused (EPERM) unless allow-self = yes", Kind: machine.BoolKind, Privileged: true},
	{Name: "node", Doc: "in a cluster, the agent (its -o node= name) that runs on this machine: it runs the machine's subhosts and switches, and its power unless agents is set", Kind: agentKind, Privileged: true},
	{Name: "agents", Doc: "in a cluster, the agents that may run this host's power (those that reach its BMC or its network segment), space or comma separated; default: node if set, else any agent. One of them owns the host at a time; another takes over when it goes", Kind: agentListKind},
	{Name: "allow-self", Default: "no", Doc: "yes lets \"poweroff self\" and \"reboot self\" act on the local host", Kind: machine.BoolKind, Privileged: true},
	{Name: "serial-log", Default: "no", Doc: "yes keeps the machine's serial console open and records its output in serial.log (and serial.log.1 after a rotation), one line per console line, each with the time it ended", Kind: machine.BoolKind},
	{Name: "wait-timeout", Default: "2m", Doc: "how long a command may take to reach its target state; the default for the wait modifier", Kind: machine.DurationKind(time.Millisecond, maxTimeout)},
}

// agentKind is an agent's name, as -o node= takes it.
var agentKind = machine.CheckedKind("agent name", func(v string) error {
	if !ValidName(v) {
		return fmt.Errorf("%q is not an agent name (letters, digits, '.', '_', '-'; at most 63)", v)
	}
	return nil
})

// agentListKind is a list of agent names.
var agentListKind = machine.CheckedKind("agent names", func(v string) error {
	names := AgentNames(v)
	if len(names) == 0 {
		return fmt.Errorf("no agent named")
	}
	for _, n := range names {
		if !ValidName(n) {
			return fmt.Errorf("%q is not an agent name", n)
		}
	}
	return nil
})

// AgentNames splits an agents value.
func AgentNames(v string) []string { return driverNames(v) }

// driverNames splits a drivers value.
func driverNames(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

// CoreKeys lists the keys every host understands, whatever its drivers,
// for the documentation.
func CoreKeys() []machine.KeySpec { return append([]machine.KeySpec(nil), coreKeys...) }
