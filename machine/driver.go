package machine

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
)

// Power is a machine's power state, the one word the power file shows.
type Power string

// The power states. Transitional states (starting, stopping, rebooting)
// last while a command is in flight; the others are resting states.
const (
	PowerOn        Power = "on"
	PowerOff       Power = "off"
	PowerStarting  Power = "starting"
	PowerStopping  Power = "stopping"
	PowerRebooting Power = "rebooting"
	PowerPaused    Power = "paused"
	PowerUnknown   Power = "unknown"
	PowerCrashed   Power = "crashed"
)

// Transitional reports whether p is a state a machine passes through on its
// way to a resting state.
func (p Power) Transitional() bool {
	return p == PowerStarting || p == PowerStopping || p == PowerRebooting
}

// Status is what a driver observed about its machine. Drivers send it through
// their Reporter whenever they learn something new; the model merges it into
// the host's state and tells watchers.
type Status struct {
	// Power is the observed power state. Empty means "no news about power"
	// (for example a report that only changes Reachable).
	Power Power
	// Reachable is false when the driver cannot talk to the machine or its
	// controller; power is then shown as unknown.
	Reachable bool
	// Reason says in words why the state is what it is ("BMC reports on",
	// "no answer after wake"). It shows as "reason:" in the state file.
	Reason string
	// Err is the last error, if the report is about a failure. Its text shows
	// as "last-error:" in state and as an "error" event.
	Err error
}

// Reporter is how a driver tells the model what happened. Report and Event
// never block for long and are safe to call from any goroutine, including
// from inside a driver call.
type Reporter interface {
	// Report merges an observation into the host's state.
	Report(Status)
	// Event publishes a free-form event for this host, e.g.
	// Event("notify", "disk almost full") shows as "notify disk almost full".
	Event(kind EventKind, detail string)
}

// NopReporter discards what it is told: a driver built without a
// Reporter (in a test, or by a tool) uses it.
type NopReporter struct{}

// Report implements Reporter.
func (NopReporter) Report(Status) {}

// Event implements Reporter.
func (NopReporter) Event(EventKind, string) {}

// Driver is one way of reaching a machine: a simulator, a BMC, a Wake-on-LAN
// sender, a namespace sandbox. A driver implements Driver and any of the
// capability interfaces (PowerController, Consoler, ...). Drivers know nothing
// of FUSE.
type Driver interface {
	// Kind is the driver's name as written in the "drivers" config key.
	Kind() string
	// Close releases sessions, sockets and goroutines. The model calls it
	// when the host is removed, its drivers are reconfigured (a config
	// write that changes drivers or a key a driver declares), or at
	// unmount. Machines keep running: a driver that holds
	// processes (subhosts) leaves them for the next driver to adopt.
	Close() error
}

// PowerController is a driver that can run power verbs.
type PowerController interface {
	Driver
	// Verbs lists the power verbs this driver handles (see Grammar).
	Verbs() []string
	// Power runs cmd. It returns once the driver accepted the command (the
	// BMC answered, the packet was sent), not when the machine reached its
	// new state: that arrives later through the Reporter. ctx carries the
	// host's per-call timeout; a driver must return when it expires.
	Power(ctx context.Context, cmd Command) error
}

// Verifier is a PowerController that follows every command it accepted
// until its machine shows the command's target state or Command.Deadline
// passes, and then reports a verdict through the Reporter: the target, or
// what it saw with an Err that says why (EHOSTDOWN: the machine never
// answered). The model then takes the verdict from that report; its own
// clock stays behind the deadline by VerdictGrace, a backstop for a driver
// that never reports. Poll is the shared loop for this.
type Verifier interface {
	PowerController
	// Verifies says whether the driver follows cmd to its end.
	Verifies(cmd Command) bool
}

// VerdictGrace is how long after Command.Deadline the model waits for a
// Verifier's verdict before it ends the command with ETIMEDOUT itself.
const VerdictGrace = 2 * time.Second

// StatusReader is a driver that can ask its machine for its state now (one
// Get Chassis Status on the kept IPMI session, a look at a process it
// holds). The model asks before it answers a command from what it last
// heard: when a command's target equals the state it shows, a machine
// changed behind its back (ipmitool, a guest's own shutdown) must not be
// answered "already". Status is bounded by ctx; an error, or a state the
// driver cannot tell (unknown), sends the command to the driver. Status
// must not call the Reporter: the model merges what it returns.
type StatusReader interface {
	Driver
	Status(ctx context.Context) (Status, error)
}

// Remover is a driver whose machine holds resources that outlive Close
// (a subhost's processes, mounts, network namespace). Remove is called once
// when the host is removed from the tree (rmdir, ctl remove), before Close:
// it releases everything, as "stop" does. Close alone (reconfiguration,
// unmount) keeps the machine for the next driver to adopt.
type Remover interface {
	Driver
	Remove(ctx context.Context) error
}

// ConsoleCommand describes one management console command a driver offers.
// Its command-table entry says its name, arguments (Args, Min, Max), help
// and whether it takes the rest of the line as written (Raw): the model
// refuses a line whose arguments do not fit, with the usage, before the
// driver sees it. Zero Min and Max: no arguments.
type ConsoleCommand struct {
	cmdtab.Cmd
	// Query says whether a call with these arguments only reads
	// (version, proc FILE, config DEV). Queries are not recorded in
	// events: a script that polls them must not flood the event log
	// and rotate out what happened to the machine. Nil: never a query.
	Query func(args []string) bool
	// Bounded says the command ends by its context's deadline on its own
	// (one request with that deadline, no unbounded copying): the model
	// then runs it on the caller's goroutine instead of detaching it, and
	// arms no timer for the deadline. The driver must enforce
	// ctx.Deadline() itself (a socket timeout): ctx.Done does not close
	// when the deadline passes.
	Bounded bool
}

// AlwaysQuery is ConsoleCommand.Query of a command that only reads.
func AlwaysQuery([]string) bool { return true }

// Consoler is a driver with a management console (mconsole style).
type Consoler interface {
	Driver
	ConsoleCommands() []ConsoleCommand
	// Console runs one command line. The returned text becomes "OK text";
	// an error becomes "ERR reason".
	Console(ctx context.Context, name string, args []string) (string, error)
}

// QueryStarter is a Consoler that can send a Bounded query (version, proc
// FILE) and read its reply later. A console session that writes a line and
// then reads the reply makes two requests to the filesystem; the machine
// answers the query while the second one is on its way, instead of before
// the first returns.
type QueryStarter interface {
	Consoler
	// StartQuery sends the query and returns what reads the reply, which
	// the caller must call once. ctx is as for a Bounded Console call.
	StartQuery(ctx context.Context, name string, args []string) (collect func() (string, error), err error)
}

// Describer is a driver that adds "key: value" lines to the host's state
// file (e.g. "ipmi-session: open", "pid: 4711"). The model asks after it
// took its snapshot of the host and released the host's lock, so Describe
// may take the driver's own locks, and may run while the driver reports.
// It must be quick: every read of state asks.
type Describer interface {
	Driver
	Describe() [][2]string
}

// DriverEnv is what a driver gets when it is created.
type DriverEnv struct {
	// Path is the host's path in the tree, e.g. "hosts/lab01".
	Path string
	// Config is a snapshot of the host's configuration. A driver reads
	// it through its key specs, ReadConfig(env.Config, Spec.Keys), which
	// parse every value as it was checked when written.
	Config Config
	// Report is where observations go.
	Report Reporter
	// Log is a logger already tagged with the host's path.
	Log *slog.Logger
	// Observed is the power state the model shows for the host when the
	// driver is built: unknown for a host new to the tree, the machine's
	// last observed state when a config change rebuilds its drivers. A
	// driver that cannot ask a machine (the simulator) starts from it,
	// as a real machine outlives its driver; others ignore it.
	Observed Power
}

// DriverSpec registers a driver with the model: its name, the config keys it
// understands and how to build it.
type DriverSpec struct {
	Name string
	// Doc is one line shown in README and `help`.
	Doc string
	// Simulated marks drivers that simulate a machine; the model labels
	// such hosts "(simulation)" wherever their driver shows.
	Simulated bool
	// Keys are the config keys the driver reads. Keys of a driver are
	// usually prefixed with its name ("ipmi.address"); shared keys such as
	// "mac" may be declared by several drivers with the same meaning.
	Keys []KeySpec
	// New builds a driver for one host. It must not block on the network
	// for longer than the host's timeout; a driver that needs to connect
	// should do so lazily or in the background and report what it finds.
	New func(ctx context.Context, env DriverEnv) (Driver, error)
	// Check, if set, reports what the driver needs and whether the host
	// has it (check.go). It is called also when New failed.
	Check Checker
}

// Serialer is a driver with a serial console stream (IPMI Serial-over-LAN,
// a guest's console): reading returns the machine's serial output, writing
// sends input. The model multiplexes it (conman's model): several readers
// at once, one writer, the last 64 KiB kept for a new reader, and an
// optional timestamped serial.log. A host whose drivers have no serial
// console has no serial file.
type Serialer interface {
	Driver
	// HasSerial says whether the machine, as configured, has a serial
	// console (IPMI: only over lanplus). It must be quick.
	HasSerial() bool
	// Serial opens the stream. ctx bounds opening only.
	Serial(ctx context.Context) (io.ReadWriteCloser, error)
}

// SerialHolder is a Serialer whose machine writes its console whether or
// not anyone reads it (a guest's pty or chardev socket). The model opens
// Serial once, right after the driver is built, and reads it until the
// driver closes, so the guest never blocks on a full console and the last
// output is kept for the next reader. The stream spans the machine's
// restarts: Read blocks while the machine is off, and returns io.EOF only
// after the driver's Close; Write while the machine is off fails (EIO).
// drivers/internal/serialline is such a stream. Closing the returned
// stream tells the driver the model stopped reading.
type SerialHolder interface {
	Serialer
	HoldsSerial()
}
