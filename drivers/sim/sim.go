// Package sim is a simulated machine: power on and off with configurable
// delays, failures and hangs on demand. It drives the demo and the tests of
// the model that no real part can exercise (a driver that fails, hangs or
// never reaches its target). Everything it reports says "simulated".
package sim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// Spec registers the sim driver.
var Spec = machine.DriverSpec{
	Name:      "sim",
	Doc:       "simulated machine (demo and tests): configurable delays and failures",
	Simulated: true,
	Keys:      keys,
	New:       New,
}

// keys are the driver's config keys (Spec.Keys).
var keys = []machine.KeySpec{
	{Name: "sim.initial", Default: "off", Doc: "power state the simulated machine starts in when the host is created or loaded: on or off (a config change keeps the state the machine is in)", Kind: machine.EnumKind("on", "off")},
	{Name: "sim.on-delay", Default: "1s", Doc: "time from an accepted on/wol/resume to power on", Kind: delayKind},
	{Name: "sim.off-delay", Default: "1s", Doc: "time from an accepted off/poweroff/soft to power off", Kind: delayKind},
	{Name: "sim.fail", Doc: "verbs the driver refuses with EIO (space separated, or \"all\")", Kind: verbsKind},
	{Name: "sim.hang", Doc: "verbs the driver accepts but never answers (to exercise timeouts)", Kind: verbsKind},
	{Name: "sim.stuck", Doc: "verbs accepted whose target state is never reached", Kind: verbsKind},
}

var verbs = []string{"on", "wol", "resume", "off", "poweroff", "soft", "reboot", "cycle", "reset", "pause", "suspend", "init"}

var delayKind = machine.DurationKind(0, time.Hour)

// verbsKind is a list of sim verbs, or "all"; the driver receives the words.
var verbsKind = machine.CustomKind("sim verbs, or all", func(v string) ([]string, error) {
	ws := strings.Fields(v)
	for _, w := range ws {
		if w != "all" && !slices.Contains(verbs, w) {
			return nil, fmt.Errorf("%q is not a sim verb: want %s or all", w, strings.Join(verbs, " "))
		}
	}
	return ws, nil
})

// Machine is one simulated machine.
type Machine struct {
	report   machine.Reporter
	onDelay  time.Duration
	offDelay time.Duration
	fail     []string
	hang     []string
	stuck    []string

	mu     sync.Mutex
	power  machine.Power
	timer  *time.Timer
	closed bool
}

var _ machine.StatusReader = (*Machine)(nil)

// New builds a simulated machine from the host's config. It starts in
// sim.initial when the host is new to the tree, and in the state the host
// showed when a config change rebuilds it (DriverEnv.Observed).
func New(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	v := machine.ReadConfig(env.Config, keys)
	m := &Machine{
		report:   env.Report,
		onDelay:  v.Duration("sim.on-delay"),
		offDelay: v.Duration("sim.off-delay"),
		fail:     machine.Value[[]string](v, "sim.fail"),
		hang:     machine.Value[[]string](v, "sim.hang"),
		stuck:    machine.Value[[]string](v, "sim.stuck"),
		power:    machine.PowerOff,
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	reason := "simulated machine is "
	switch env.Observed {
	case machine.PowerOn, machine.PowerOff, machine.PowerPaused:
		// A config change rebuilt the driver: the simulated machine
		// stays as it was, as a real machine outlives its driver.
		m.power = env.Observed
		reason = "simulated machine kept across a config change: "
	default:
		if v.String("sim.initial") == "on" {
			m.power = machine.PowerOn
		}
	}
	m.report.Report(machine.Status{Power: m.power, Reachable: true, Reason: reason + string(m.power)})
	return m, nil
}

// Status implements machine.StatusReader: the simulated machine's state now,
// including a change made with "flip STATE quiet" that was not reported.
func (m *Machine) Status(context.Context) (machine.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return machine.Status{}, machine.Errorf(syscall.ESHUTDOWN, "simulated machine closed")
	}
	return machine.Status{Power: m.power, Reachable: true, Reason: "simulated machine is " + string(m.power)}, nil
}

// Kind implements machine.Driver.
func (m *Machine) Kind() string { return "sim" }

// Verbs implements machine.PowerController.
func (m *Machine) Verbs() []string { return verbs }

func has(list []string, verb string) bool {
	return slices.Contains(list, verb) || slices.Contains(list, "all")
}

// Power implements machine.PowerController.
func (m *Machine) Power(ctx context.Context, cmd machine.Command) error {
	switch {
	case has(m.fail, cmd.Verb):
		return machine.Errorf(syscall.EIO, "simulated failure of %q (sim.fail)", cmd.Verb)
	case has(m.hang, cmd.Verb):
		<-ctx.Done()
		return fmt.Errorf("simulated hang of %q (sim.hang): %w", cmd.Verb, ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return machine.Errorf(syscall.ESHUTDOWN, "simulated machine closed")
	}
	if has(m.stuck, cmd.Verb) {
		return nil
	}
	switch cmd.Verb {
	case "on", "wol":
		m.after(m.onDelay, machine.PowerOn)
	case "resume":
		if m.power == machine.PowerPaused {
			m.after(0, machine.PowerOn)
		} else {
			m.after(m.onDelay, machine.PowerOn)
		}
	case "off", "poweroff", "soft":
		m.after(m.offDelay, machine.PowerOff)
	case "reboot", "cycle", "reset":
		m.after(m.offDelay+m.onDelay, machine.PowerOn)
	case "pause", "suspend":
		if m.power != machine.PowerOn {
			return machine.Errorf(syscall.EINVAL, "simulated machine is %s, cannot %s", m.power, cmd.Verb)
		}
		m.after(0, machine.PowerPaused)
	case "init":
		switch cmd.InitLevel {
		case 0:
			m.after(m.offDelay, machine.PowerOff)
		case 6:
			m.after(m.offDelay+m.onDelay, machine.PowerOn)
		}
	default:
		return machine.Errorf(syscall.ENOTSUP, "sim does not know %q", cmd.Verb)
	}
	return nil
}

// after moves the machine to p once d has passed, replacing any pending
// move. Called with m.mu held.
func (m *Machine) after(d time.Duration, p machine.Power) {
	if m.timer != nil {
		m.timer.Stop()
	}
	m.timer = time.AfterFunc(d, func() { m.set(p, "simulated machine is "+string(p)) })
}

func (m *Machine) set(p machine.Power, reason string) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.power = p
	m.mu.Unlock()
	m.report.Report(machine.Status{Power: p, Reachable: true, Reason: reason})
}

// ConsoleCommands implements machine.Consoler.
func (m *Machine) ConsoleCommands() []machine.ConsoleCommand {
	return []machine.ConsoleCommand{
		{Cmd: cmdtab.Cmd{Name: "version", Help: "simulator version"}, Query: machine.AlwaysQuery, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "halt", Help: "power off at once"}, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "reboot", Help: "reboot"}, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "cad", Help: "ctrl-alt-del: orderly power off"}, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "stop", Help: "pause the machine"}, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "go", Help: "resume a paused machine"}, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "log", Args: "TEXT", Min: 1, Max: 1, Raw: true, Help: "write TEXT to the machine's event log"}, Bounded: true},
		{Cmd: cmdtab.Cmd{Name: "flip", Args: "on|off [quiet]", Min: 1, Max: 2, Help: "change power behind machinefs's back (simulation only); quiet: without telling it, as ipmitool on the BMC would"}, Bounded: true},
	}
}

// Console implements machine.Consoler.
func (m *Machine) Console(ctx context.Context, name string, args []string) (string, error) {
	run := func(verb string) (string, error) {
		if err := m.Power(ctx, machine.Command{Verb: verb}); err != nil {
			return "", err
		}
		return verb + " accepted", nil
	}
	if verb, ok := machine.ConsolePowerVerb(name); ok {
		return run(verb)
	}
	switch name {
	case "version":
		return "machinefs sim 1 (simulated machine)", nil
	case "log":
		m.report.Event(machine.EventLog, args[0]) // the table: one Raw argument
		return "", nil
	case "flip":
		if (args[0] != "on" && args[0] != "off") || (len(args) == 2 && args[1] != "quiet") {
			return "", machine.Errorf(syscall.EINVAL, "flip on|off [quiet]")
		}
		if len(args) == 2 {
			// The tree learns it when it next asks (Status), as it learns
			// of an ipmitool command at its next poll.
			m.mu.Lock()
			m.power = machine.Power(args[0])
			m.mu.Unlock()
			return "flipped " + args[0] + " quietly", nil
		}
		m.set(machine.Power(args[0]), "simulated machine changed "+args[0]+" behind machinefs's back")
		return "flipped " + args[0], nil
	}
	return "", machine.Errorf(syscall.ENOTSUP, "not supported by sim")
}

// Describe implements machine.Describer.
func (m *Machine) Describe() [][2]string {
	return [][2]string{{"sim", fmt.Sprintf("simulated machine (on-delay %s, off-delay %s)", m.onDelay, m.offDelay)}}
}

// Close stops pending transitions.
func (m *Machine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.timer != nil {
		m.timer.Stop()
	}
	return nil
}
