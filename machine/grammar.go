package machine

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Command is one parsed line of the power file.
type Command struct {
	// Verb is the canonical (lower case) verb: "on", "poweroff", "init"...
	Verb string
	// InitLevel is N of "init N".
	InitLevel int
	// Self asks the stack commands to act on the host itself too.
	Self bool
	// Force skips the stack: the target alone, at once.
	Force bool
	// Wait makes the write return only when the target state is reached.
	Wait bool
	// Label names the operation in events and state (ctys "l:NAME").
	Label string
	// Timeout bounds a waiting command; zero means the host's default.
	Timeout time.Duration
	// Line is the line as written, for the record.
	Line string
	// Deadline is when the model stops waiting for the command's target
	// state (the host's wait-timeout, or Timeout), set by the model before
	// the driver is called. A driver that follows a command to its end
	// (a Verifier) stops there and reports its verdict: it runs no clock
	// of its own that could disagree with wait. Zero: no target to wait for.
	Deadline time.Time
}

// String renders the command in canonical form.
func (c Command) String() string {
	parts := []string{c.Verb}
	if c.Verb == "init" {
		parts = append(parts, strconv.Itoa(c.InitLevel))
	}
	if c.Self {
		parts = append(parts, "self")
	}
	if c.Force {
		parts = append(parts, "force")
	}
	if c.Wait {
		parts = append(parts, "wait")
	}
	if c.Label != "" {
		parts = append(parts, "label="+c.Label)
	}
	if c.Timeout != 0 {
		parts = append(parts, "timeout="+c.Timeout.String())
	}
	return strings.Join(parts, " ")
}

// VerbSpec is one row of the command grammar: a verb, the state a machine
// shows while the verb is in flight and the state it is expected to reach.
type VerbSpec struct {
	Name string
	// Transit is shown while the command is in flight ("" = go straight
	// to Target when the driver accepts).
	Transit Power
	// Target is the resting state the command aims for ("" = the verb does
	// not change the power state the model can predict, e.g. init 3).
	Target Power
	// Arg is the name of a required argument ("N" for init).
	Arg  string
	Help string
	// Always sends the verb to the driver even when the machine already
	// shows Target (stop releases a hibernated subhost, which shows off).
	Always bool
}

// Grammar is the whole power command grammar in one table. Drivers declare
// which of these verbs they support; nothing else parses power commands.
var Grammar = []VerbSpec{
	{Name: "on", Transit: PowerStarting, Target: PowerOn, Help: "power the machine on"},
	{Name: "wol", Transit: PowerStarting, Target: PowerOn, Always: true, Help: "wake the machine with a Wake-on-LAN packet (sent even when it shows on)"},
	{Name: "resume", Transit: PowerStarting, Target: PowerOn, Help: "resume a paused machine (on Wake-on-LAN hosts: wol)"},
	{Name: "off", Transit: PowerStopping, Target: PowerOff, Help: "power off at once (hard)"},
	{Name: "poweroff", Transit: PowerStopping, Target: PowerOff, Help: "orderly power off"},
	{Name: "soft", Transit: PowerStopping, Target: PowerOff, Help: "ACPI soft shutdown"},
	{Name: "reboot", Transit: PowerRebooting, Target: PowerOn, Help: "orderly reboot"},
	{Name: "cycle", Transit: PowerRebooting, Target: PowerOn, Help: "power cycle: off, then on"},
	{Name: "reset", Transit: PowerRebooting, Target: PowerOn, Help: "hard reset"},
	{Name: "pause", Target: PowerPaused, Help: "pause the machine (stop its CPUs)"},
	{Name: "suspend", Target: PowerPaused, Help: "suspend the machine"},
	{Name: "init", Arg: "N", Help: "relay init level N (0-6) to the target (wait: 0 until off, 6 until back on, 1-5 until accepted)"},
	{Name: "hibernate", Transit: PowerStopping, Target: PowerOff, Help: "stop the machine's processes, keep its resources"},
	{Name: "stop", Transit: PowerStopping, Target: PowerOff, Always: true, Help: "stop and release everything the machine holds"},
}

// initLevels are the run levels whose power the model can predict: init 0
// halts the machine (as poweroff) and init 6 reboots it (as reboot: down,
// then on). Levels 1-5 change what runs, not power: such a command, even
// with wait, ends when the driver accepts it.
var initLevels = map[int]VerbSpec{
	0: {Transit: PowerStopping, Target: PowerOff},
	6: {Transit: PowerRebooting, Target: PowerOn},
}

// Modifiers is the list of modifiers with their help, for README and help.
var Modifiers = [][2]string{
	{"self", "stack commands act on the host itself after its subhosts"},
	{"force", "no stack: the target alone, at once"},
	{"wait", "return when the target state is reached (or ETIMEDOUT)"},
	{"label=NAME", "name the operation in events and state"},
	{"timeout=DURATION", "bound a waiting command (Go duration: 90s, 4m)"},
}

// LookupVerb returns the grammar row of a verb.
func LookupVerb(name string) (VerbSpec, bool) {
	for _, v := range Grammar {
		if v.Name == name {
			return v, true
		}
	}
	return VerbSpec{}, false
}

// SpecOf returns the grammar row that governs cmd: its verb's row, with
// the transit and target of its level for init 0 and init 6. The model
// reads a command's in-flight state and target here, not by verb alone.
func SpecOf(cmd Command) VerbSpec {
	spec, _ := LookupVerb(cmd.Verb)
	if lvl, ok := initLevels[cmd.InitLevel]; ok && spec.Name == "init" {
		spec.Transit, spec.Target = lvl.Transit, lvl.Target
	}
	return spec
}

var labelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// maxTimeout caps timeout= so a typo cannot park a writer for days.
const maxTimeout = 24 * time.Hour

// ParseCommand parses one line of the power file. Errors are *Error with
// EINVAL and say what was wrong.
func ParseCommand(line string) (Command, error) {
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return Command{}, Errorf(syscall.EINVAL, "empty command")
	}
	c := Command{Line: strings.TrimSpace(line), Verb: strings.ToLower(fields[0])}
	spec, ok := LookupVerb(c.Verb)
	if !ok {
		return Command{}, Errorf(syscall.EINVAL, "unknown verb %q (see README)", fields[0])
	}
	rest := fields[1:]
	if spec.Arg != "" {
		if len(rest) == 0 {
			return Command{}, Errorf(syscall.EINVAL, "%s needs %s", c.Verb, spec.Arg)
		}
		n, err := strconv.Atoi(rest[0])
		if err != nil || n < 0 || n > 6 {
			return Command{}, Errorf(syscall.EINVAL, "%s: level %q is not 0-6", c.Verb, rest[0])
		}
		c.InitLevel = n
		rest = rest[1:]
	}
	for _, f := range rest {
		key, val, hasVal := strings.Cut(f, "=")
		key = strings.ToLower(key)
		switch {
		case key == "self" && !hasVal:
			c.Self = true
		case key == "force" && !hasVal:
			c.Force = true
		case key == "wait" && !hasVal:
			c.Wait = true
		case key == "label" && hasVal:
			if !labelRE.MatchString(val) {
				return Command{}, Errorf(syscall.EINVAL, "label %q: use 1-64 letters, digits, '.', '_' or '-'", val)
			}
			c.Label = val
		case key == "timeout" && hasVal:
			d, err := parseTimeout(val)
			if err != nil {
				return Command{}, err
			}
			c.Timeout = d
		default:
			return Command{}, Errorf(syscall.EINVAL, "unknown modifier %q (self, force, wait, label=NAME, timeout=DURATION)", f)
		}
	}
	return c, nil
}

func parseTimeout(val string) (time.Duration, error) {
	d, err := ParseDuration(val)
	if err != nil || d <= 0 || d > maxTimeout {
		return 0, Errorf(syscall.EINVAL, "timeout %q: want a duration between 1ms and 24h (e.g. 30s, 4m; a bare number is seconds)", val)
	}
	return d, nil
}

// GrammarHelp renders the grammar as text for README and console help.
func GrammarHelp() string {
	var b strings.Builder
	b.WriteString("Power commands (write one per line to power):\n")
	for _, v := range Grammar {
		name := v.Name
		if v.Arg != "" {
			name += " " + v.Arg
		}
		fmt.Fprintf(&b, "  %-12s %s\n", name, v.Help)
	}
	b.WriteString("Modifiers (after the verb, any order):\n")
	for _, m := range Modifiers {
		fmt.Fprintf(&b, "  %-17s %s\n", m[0], m[1])
	}
	return b.String()
}

// consolePowerVerbs are the mconsole commands that are power verbs under
// another name.
var consolePowerVerbs = map[string]string{
	"halt":   "off",
	"reboot": "reboot",
	"cad":    "poweroff",
	"stop":   "pause",
	"go":     "resume",
}

// ConsolePowerVerb maps an mconsole command that is a power verb under
// another name (halt, reboot, cad, stop, go) to that verb, for drivers that
// answer these commands through their own Power.
func ConsolePowerVerb(name string) (verb string, ok bool) {
	verb, ok = consolePowerVerbs[name]
	return verb, ok
}
