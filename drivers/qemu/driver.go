// Package qemu is the driver of QEMU/KVM guests: a qemu-system-x86_64
// process per host, spoken to over QMP (power, state, console commands,
// online backup), its first serial port streamed as the host's serial
// file. Guests outlive the daemon and are adopted by the next driver of
// their host (a daemon restart, a config change).
package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/serialline"
	"github.com/machinefs/machinefs/machine"
)

// Machine is one QEMU guest: the driver of one (sub)host.
type Machine struct {
	report machine.Reporter
	log    *slog.Logger
	path   string // the host's path in the tree
	name   string // its last element: the guest's name, its TAP's name
	s      settings
	line   *serialline.Line

	mu     sync.Mutex
	g      *guest
	closed bool
}

// guest is a running QEMU process and what the driver knows about it.
type guest struct {
	pid      int
	start    uint64 // with pid, names the process
	pidfd    int
	wake     int // eventfd: Close wakes the watcher with it
	done     chan struct{}
	accel    string // "tcg (no /dev/kvm)"
	tap      string
	adopted  bool
	qmp      *qmpConn // nil when QMP could not be reached
	qmpError error    // why it is nil

	// guarded by Machine.mu
	paused   bool
	crashed  string // the panic's words, "" if none
	expect   string // why an exit is expected ("off", "poweroff"...), "" if not
	shutdown string // the reason of QEMU's SHUTDOWN event
	next     string // the reason for the next STOP, RESUME or RESET, set by the command that causes it
	timer    *time.Timer
	detached bool // Close took the guest: it closes wake
	gone     bool // the watcher ended and closed the pidfd
}

var verbs = []string{"on", "off", "poweroff", "reboot", "reset", "pause", "resume"}

// New builds the driver of one host. A guest an earlier driver of this
// host left running (its pid file in the guest's directory names a live
// QEMU with this guest's QMP socket) is adopted.
func New(ctx context.Context, env machine.DriverEnv) (machine.Driver, error) {
	s, err := readSettings(env.Config)
	if err != nil {
		return nil, err
	}
	m := &Machine{report: env.Report, log: env.Log, path: env.Path, name: path.Base(env.Path), s: s, line: serialline.New()}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if p := m.file(serialSock); len(p) > maxSocketPath {
		return nil, machine.Errorf(syscall.ENAMETOOLONG, "socket %s is longer than %d bytes: shorten qemu.dir", p, maxSocketPath)
	}
	if s.net != nil && !s.net.vde {
		if err := machine.CheckInterfaceName(m.name); err != nil {
			return nil, machine.Errorf(syscall.EINVAL, "qemu.net: the TAP is named after the host: %v", err)
		}
	}
	m.adopt(ctx)
	return m, nil
}

// The files in the guest's directory.
const (
	qmpSock    = "qmp.sock"
	serialSock = "serial.sock"
	pidFile    = "qemu.pid"
	logFile    = "qemu.log"
	hostFile   = "host" // the tree path of the host the guest belongs to
)

// guestDir is the guest's own directory: qemu.dir/NAME.
func (m *Machine) guestDir() string        { return filepath.Join(m.s.dir, m.name) }
func (m *Machine) file(name string) string { return filepath.Join(m.guestDir(), name) }

// Kind implements machine.Driver.
func (m *Machine) Kind() string { return "qemu" }

// Verbs implements machine.PowerController.
func (m *Machine) Verbs() []string { return verbs }

// running returns the guest and its QMP session, or why there are none.
func (m *Machine) running() (*guest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return nil, machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	case m.g == nil:
		return nil, machine.Errorf(syscall.EHOSTDOWN, "guest is off")
	case m.g.qmp == nil:
		return nil, machine.Errorf(syscall.EHOSTUNREACH, "guest pid %d: no QMP session: %v", m.g.pid, m.g.qmpError)
	}
	return m.g, nil
}

var _ machine.StatusReader = (*Machine)(nil)

// Status implements machine.StatusReader: query-status, the guest's run
// state as QEMU has it, so a guest changed behind the driver's back (an
// HMP stop through another monitor) is not answered "already".
func (m *Machine) Status(ctx context.Context) (machine.Status, error) {
	m.mu.Lock()
	g, closed := m.g, m.closed
	var q *qmpConn
	var qerr error
	if g != nil {
		q, qerr = g.qmp, g.qmpError
	}
	m.mu.Unlock()
	switch {
	case closed:
		return machine.Status{}, machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	case g == nil:
		return machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "no guest running"}, nil
	case q == nil:
		return machine.Status{Power: machine.PowerUnknown, Reason: "QMP not connected"}, qerr
	}
	st, err := queryStatus(ctx, q)
	if err != nil {
		return machine.Status{Power: machine.PowerUnknown}, err
	}
	return st, nil
}

// queryStatus maps QEMU's run state to a power state.
func queryStatus(ctx context.Context, q *qmpConn) (machine.Status, error) {
	ret, err := q.execute(ctx, "query-status", nil)
	if err != nil {
		return machine.Status{}, err
	}
	var s struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := json.Unmarshal(ret, &s); err != nil {
		return machine.Status{}, fmt.Errorf("query-status: %w", err)
	}
	reason := "QEMU run state " + s.Status
	switch {
	case s.Running:
		return machine.Status{Power: machine.PowerOn, Reachable: true, Reason: reason}, nil
	case s.Status == "guest-panicked" || s.Status == "internal-error":
		return machine.Status{Power: machine.PowerCrashed, Reachable: true, Reason: reason}, nil
	case s.Status == "shutdown":
		return machine.Status{Power: machine.PowerStopping, Reachable: true, Reason: reason}, nil
	case s.Status == "prelaunch" || s.Status == "inmigrate":
		return machine.Status{Power: machine.PowerStarting, Reachable: true, Reason: reason}, nil
	}
	return machine.Status{Power: machine.PowerPaused, Reachable: true, Reason: reason}, nil
}

// Describe implements machine.Describer.
func (m *Machine) Describe() [][2]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := [][2]string{{"qemu-dir", m.guestDir()}}
	if m.s.net != nil {
		out = append(out, [2]string{"qemu-net", m.netDescription()})
	}
	g := m.g
	if g == nil {
		return out
	}
	pid := strconv.Itoa(g.pid)
	if g.adopted {
		pid += " (adopted)"
	}
	qmp := "connected"
	if g.qmp == nil {
		qmp = fmt.Sprintf("not connected: %v", g.qmpError)
	}
	return append(out, [2]string{"qemu-pid", pid}, [2]string{"qemu-accel", g.accel}, [2]string{"qemu-qmp", qmp})
}

func (m *Machine) netDescription() string {
	n := m.s.net
	if n.vde {
		return fmt.Sprintf("VDE switch %s (%s), MAC %s", n.bridge, machine.VDESocket(n.bridge), n.mac)
	}
	return fmt.Sprintf("TAP %s on switch %s, MAC %s", m.name, n.bridge, n.mac)
}

// Close stops watching the guest and closes its QMP session and serial
// line. It never stops the guest: it outlives the daemon, and the next
// driver of the host adopts it.
func (m *Machine) Close() error {
	m.mu.Lock()
	m.closed = true
	g := m.g
	m.g = nil
	if g != nil {
		g.detached = true
		if g.timer != nil {
			g.timer.Stop()
		}
	}
	m.mu.Unlock()
	if g != nil {
		m.unwatch(g)
		if g.qmp != nil {
			g.qmp.close()
		}
	}
	m.line.Close()
	return nil
}
