package uml

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/drivers/internal/childproc"
	"github.com/machinefs/machinefs/drivers/internal/notifyline"
	"github.com/machinefs/machinefs/drivers/internal/ptyhold"
	"github.com/machinefs/machinefs/drivers/internal/serialline"
	"github.com/machinefs/machinefs/internal/atomicfile"
	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
)

// Machine is one UML guest: the driver of one (sub)host.
type Machine struct {
	report machine.Reporter
	log    *slog.Logger

	path            string // the host's path in the tree
	umid            string
	dir             string // uml_dir
	side            string // DIR/UMID.machinefs: notify socket, console log, record
	kernel          string
	mem             string
	root            rootSpec
	init            string
	net             *netSpec
	backupDir       string // uml.backup-dir: backups go only there
	poweroffTimeout time.Duration
	reqTimeout      time.Duration

	line *serialline.Line // the guest's console, across its lives

	mu     sync.Mutex
	g      *guest
	closed bool
}

// guest is a running linux process and what the driver knows about it.
type guest struct {
	pid     int
	start   uint64
	pidfd   int
	notify  int // notify socket (datagram, bound to notifyPath)
	wake    int // eventfd: Close wakes the watcher with it
	done    chan struct{}
	ctx     context.Context // ends when the guest exits or panics
	cancel  context.CancelCauseFunc
	mc      *client             // its mconsole
	lim     *notifyline.Limiter // of its USER_NOTIFY lines
	adopted bool
	since   time.Time
	tap     string
	holder  ptyhold.Holder // of its console

	// guarded by Machine.mu
	booted   bool
	paused   bool
	expect   string // why an exit is expected ("off", "poweroff"...), "" if not
	crashed  string // panic or hang text
	timer    *time.Timer
	detached bool // Close took the guest: it closes wake
	fdsShut  bool // the watcher closed notify and pidfd
}

var verbs = []string{"on", "off", "poweroff", "reboot", "pause", "resume", "init"}

// New builds the driver of one host. If an earlier machinefs left a guest
// running for this host (its record in the uml dir names a live process
// with the same start time), the driver adopts it.
func New(ctx context.Context, env machine.DriverEnv) (machine.Driver, error) {
	m := &Machine{
		report: env.Report,
		log:    env.Log,
		path:   env.Path,
		umid:   path.Base(env.Path),
		line:   serialline.New(),
	}
	if err := m.settings(env); err != nil {
		m.line.Close()
		return nil, err
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.side = filepath.Join(m.dir, m.umid+".machinefs")
	if p := m.mconsolePath(); len(p) > maxSocketPath {
		m.line.Close()
		return nil, machine.Errorf(syscall.ENAMETOOLONG, "mconsole socket %s is longer than %d bytes: shorten uml.dir", p, maxSocketPath)
	}
	if p := m.notifyPath(); len(p) > maxSocketPath {
		m.line.Close()
		return nil, machine.Errorf(syscall.ENAMETOOLONG, "notify socket %s is longer than %d bytes: shorten uml.dir", p, maxSocketPath)
	}
	m.adopt(ctx)
	return m, nil
}

func (m *Machine) umidDir() string      { return filepath.Join(m.dir, m.umid) }
func (m *Machine) mconsolePath() string { return filepath.Join(m.dir, m.umid, "mconsole") }
func (m *Machine) notifyPath() string   { return filepath.Join(m.side, "notify") }
func (m *Machine) recordPath() string   { return filepath.Join(m.side, "record") }

// ConsoleLog is where the guest's console output goes.
func (m *Machine) ConsoleLog() string { return filepath.Join(m.side, "console.log") }

// Kind implements machine.Driver.
func (m *Machine) Kind() string { return "uml" }

// Verbs implements machine.PowerController.
func (m *Machine) Verbs() []string { return verbs }

// adopt takes over a guest recorded by an earlier driver of this host (an
// earlier machinefs, or this one before a reconfiguration).
func (m *Machine) adopt(ctx context.Context) {
	r, err := readRecord(m.recordPath())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("uml: unreadable record, ignored", "err", err)
			os.Remove(m.recordPath())
		}
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "no guest running"})
		return
	}
	if err := m.foreign(r); err != nil {
		// Another host's guest: neither adopt it nor clean it up.
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: err.Error(), Err: err})
		return
	}
	stale := func(why string) {
		removeUmidDir(m.umidDir(), r.Pid)
		m.deleteTap(r.Tap)
		os.Remove(m.recordPath())
		os.Remove(m.notifyPath())
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: why})
	}
	pidfd, err := unix.PidfdOpen(r.Pid, 0)
	if err != nil {
		stale(fmt.Sprintf("recorded guest pid %d is gone", r.Pid))
		return
	}
	st, err := procfs.ReadStat(r.Pid)
	if err != nil || st.Start != r.Start {
		unix.Close(pidfd)
		stale(fmt.Sprintf("recorded guest pid %d is gone (the pid now belongs to another process)", r.Pid))
		return
	}
	g, err := m.newGuest(r.Pid, st.Start, pidfd)
	if err != nil {
		unix.Close(pidfd)
		m.report.Report(machine.Status{Power: machine.PowerUnknown, Reachable: false, Reason: "cannot watch recorded guest", Err: err})
		return
	}
	g.adopted = true
	g.tap = r.Tap
	g.holder = ptyhold.Holder{Pid: r.Holder, Start: r.HolderStart}
	if r.Path == "" {
		// Recorded by a version that did not mark its TAPs: the TAP
		// in the record is this host's.
		m.claimTap(r.Tap)
	}
	g.paused = r.Paused
	g.booted = true
	m.mu.Lock()
	m.g = g
	m.mu.Unlock()
	m.watch(g)
	m.attachConsole()
	if st.State == 'Z' {
		// It ended while nobody watched: the watcher reaps it and
		// reports how.
		return
	}
	p, reason := machine.PowerOn, fmt.Sprintf("adopted running guest pid %d", r.Pid)
	if g.paused {
		p, reason = machine.PowerPaused, fmt.Sprintf("adopted paused guest pid %d", r.Pid)
	}
	rctx, cancel := context.WithTimeout(ctx, min(m.reqTimeout, time.Second))
	_, err = Request(rctx, m.mconsolePath(), "version")
	cancel()
	if err != nil {
		m.report.Report(machine.Status{Power: machine.PowerUnknown, Reachable: false, Reason: reason + ", but its mconsole does not answer", Err: err})
		return
	}
	m.report.Report(machine.Status{Power: p, Reachable: true, Reason: reason})
}

// foreign says why record r is not this host's: another host of the same
// name shares uml.dir, hence the umid. nil if r is this host's.
func (m *Machine) foreign(r record) error {
	if r.Path == "" || r.Path == m.path {
		return nil
	}
	return machine.Errorf(syscall.EBUSY, "uml.dir %s: umid %s belongs to %s (pid %d); give this host a uml.dir of its own", m.dir, m.umid, r.Path, r.Pid)
}

// newGuest prepares the watch of a process: the notify socket (bound
// afresh at the notify path, which is machinefs's) and the wake eventfd.
func (m *Machine) newGuest(pid int, start uint64, pidfd int) (*guest, error) {
	if err := os.MkdirAll(m.side, 0o700); err != nil {
		return nil, err
	}
	os.Remove(m.notifyPath())
	ns, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := unix.Bind(ns, &unix.SockaddrUnix{Name: m.notifyPath()}); err != nil {
		unix.Close(ns)
		return nil, fmt.Errorf("notify socket %s: %w", m.notifyPath(), err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ns)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	g := &guest{pid: pid, start: start, pidfd: pidfd, notify: ns, wake: wake, done: make(chan struct{}), ctx: ctx, cancel: cancel, since: time.Now(), lim: notifyline.NewLimiter(m.report.Event)}
	g.mc = newClient(m.mconsolePath(), ctx, m.reqTimeout)
	return g, nil
}

// watch runs the guest's watcher: one goroutine that polls the notify
// socket, the pidfd and the wake eventfd. Notifications are always read
// before the exit is handled, so a panic is known when the exit is.
func (m *Machine) watch(g *guest) {
	go func() {
		defer func() {
			g.lim.Close()
			m.mu.Lock()
			g.fdsShut = true
			unix.Close(g.notify)
			unix.Close(g.pidfd)
			if m.g == g {
				m.g = nil
			}
			if !g.detached {
				unix.Close(g.wake)
			}
			m.mu.Unlock()
			close(g.done)
		}()
		fds := []unix.PollFd{{Fd: int32(g.notify), Events: unix.POLLIN}, {Fd: int32(g.pidfd), Events: unix.POLLIN}, {Fd: int32(g.wake), Events: unix.POLLIN}}
		for {
			for i := range fds {
				fds[i].Revents = 0
			}
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				m.log.Error("uml: poll", "err", err)
				return
			}
			if fds[2].Revents != 0 {
				return
			}
			m.readNotifications(g)
			if fds[1].Revents != 0 {
				m.exited(g)
				return
			}
		}
	}()
}

func (m *Machine) readNotifications(g *guest) {
	buf := make([]byte, 4096)
	// At most a batch per poll round: a guest that floods the socket
	// must not keep the watcher from its exit and wake descriptors.
	for range 256 {
		n, _, err := unix.Recvfrom(g.notify, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return
		}
		nt, ok := parseNotification(buf[:n])
		if !ok {
			continue
		}
		switch nt.kind {
		case notifySocket:
			m.mu.Lock()
			g.booted = true
			m.mu.Unlock()
			g.mc.reset() // after a reboot, the socket is a new one
			m.report.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: fmt.Sprintf("guest booted (pid %d, mconsole %s)", g.pid, nt.text)})
		case notifyUser:
			// UML cuts one write to /proc/mconsole to a datagram of
			// 512 bytes; it may hold several lines. A flood is
			// rate-limited.
			for _, l := range notifyline.Lines(nt.text) {
				g.lim.Line(l)
			}
		case notifyPanic, notifyHang:
			what := "panic"
			if nt.kind == notifyHang {
				what = "hang"
			}
			m.mu.Lock()
			g.crashed = what + ": " + nt.text
			m.mu.Unlock()
			g.cancel(machine.Errorf(syscall.EHOSTDOWN, "guest crashed (%s)", g.crashed))
			m.report.Report(machine.Status{Power: machine.PowerCrashed, Reachable: true, Reason: g.crashed, Err: machine.Errorf(syscall.EIO, "guest %s", g.crashed)})
			// A crashed UML is of no more use: end it and its helpers.
			m.kill(g)
		}
	}
}

// kill ends the guest and its helper processes with SIGKILL. The pidfd is
// still held and the process not reaped, so its pid (and process group,
// which Setsid made equal to it) cannot have been reused.
func (m *Machine) kill(g *guest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.fdsShut || g.pid <= 1 {
		return
	}
	unix.PidfdSendSignal(g.pidfd, unix.SIGKILL, nil, 0)
	unix.Kill(-g.pid, unix.SIGKILL)
}

// exited handles the end of the guest process: how it ended, cleanup of
// what it leaves behind, and the report.
func (m *Machine) exited(g *guest) {
	// Helpers may linger after SIGKILL or a panic.
	unix.Kill(-g.pid, unix.SIGKILL)
	how := "ended (it was adopted from an earlier machinefs, so its exit status went elsewhere)"
	if ws, ok := childproc.Reap(g.pid); ok {
		how = childproc.HowEnded(ws)
	}
	g.cancel(machine.Errorf(syscall.EHOSTDOWN, "guest process %s", how))
	g.mc.close()
	removeUmidDir(m.umidDir(), g.pid)
	m.deleteTap(g.tap)
	os.Remove(m.recordPath())

	m.mu.Lock()
	if g.timer != nil {
		g.timer.Stop()
	}
	if m.g == g {
		m.g = nil
	}
	crashed, expect, booted := g.crashed, g.expect, g.booted
	m.mu.Unlock()
	os.Remove(m.notifyPath())

	m.log.Info("uml: guest process ended", "pid", g.pid, "how", how)
	switch {
	case crashed != "" && expect != "":
		// Asked to go down (off force after a panic, or a poweroff the
		// guest crashed in): it is down now. The crash was reported
		// when it came; staying "crashed" here would fail every off.
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: fmt.Sprintf("guest stopped (%s) after %s; process %s", expect, crashed, how)})
	case crashed != "":
		m.report.Report(machine.Status{Power: machine.PowerCrashed, Reachable: true, Reason: fmt.Sprintf("%s; guest process %s", crashed, how)})
	case expect != "":
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: fmt.Sprintf("guest stopped (%s): process %s", expect, how)})
	case !booted || !strings.HasPrefix(how, "exited with status 0"):
		reason := fmt.Sprintf("guest process %s", how)
		if !booted {
			reason = fmt.Sprintf("guest process %s before it booted (see %s)", how, m.ConsoleLog())
		}
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: reason, Err: machine.Errorf(syscall.EIO, "%s", reason)})
	default:
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "guest powered itself off: process " + how})
	}
}

var _ machine.StatusReader = (*Machine)(nil)

// Status implements machine.StatusReader from what the driver watches (the
// guest's pidfd and its mconsole notifications): no request to the guest.
// A guest that has not booted yet or is going down is transitional, which
// sends a command on to Power.
func (m *Machine) Status(context.Context) (machine.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.g
	switch {
	case m.closed:
		return machine.Status{}, machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	case g == nil:
		return machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "no guest running"}, nil
	case g.crashed != "":
		return machine.Status{Power: machine.PowerCrashed, Reachable: true, Reason: g.crashed}, nil
	case g.expect != "":
		return machine.Status{Power: machine.PowerStopping, Reachable: true, Reason: "guest going down (" + g.expect + ")"}, nil
	case !g.booted:
		return machine.Status{Power: machine.PowerStarting, Reachable: true, Reason: "guest booting"}, nil
	case g.paused:
		return machine.Status{Power: machine.PowerPaused, Reachable: true, Reason: "guest paused"}, nil
	}
	return machine.Status{Power: machine.PowerOn, Reachable: true, Reason: fmt.Sprintf("guest runs (pid %d)", g.pid)}, nil
}

// running returns the guest, or an error saying it is not running.
func (m *Machine) running() (*guest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	}
	if m.g == nil {
		return nil, machine.Errorf(syscall.EHOSTDOWN, "guest is off")
	}
	return m.g, nil
}

// request sends one mconsole command to g, bounded by ctx, the mconsole
// timeout and the life of the guest.
func (m *Machine) request(ctx context.Context, g *guest, command string) (string, error) {
	return g.mc.request(ctx, command)
}

// setPaused records that g was stopped or resumed (mconsole stop or go)
// and, with a reason, reports the guest paused or on.
func (m *Machine) setPaused(g *guest, paused bool, why string) {
	m.mu.Lock()
	g.paused = paused
	m.mu.Unlock()
	m.writeRecord(g)
	if why == "" {
		return
	}
	p := machine.PowerOn
	if paused {
		p = machine.PowerPaused
	}
	m.report.Report(machine.Status{Power: p, Reachable: true, Reason: why})
}

func (m *Machine) writeRecord(g *guest) {
	m.mu.Lock()
	r := record{Path: m.path, Pid: g.pid, Start: g.start, Umid: m.umid, Notify: m.notifyPath(), Tap: g.tap, Paused: g.paused, Holder: g.holder.Pid, HolderStart: g.holder.Start}
	m.mu.Unlock()
	// No fsync: the record names a running process, which a reboot ends
	// anyway.
	if err := atomicfile.Write(m.recordPath(), r.marshal(), 0o600, atomicfile.ProcessCrash); err != nil {
		m.log.Warn("uml: writing record", "err", err)
	}
}

// Power implements machine.PowerController.
func (m *Machine) Power(ctx context.Context, cmd machine.Command) error {
	if cmd.Verb == "init" {
		// The host has no way to the guest's init but mconsole, which
		// has no run level command (cad is one ctrl-alt-del, whatever
		// the guest's inittab makes of it); a login on the guest's
		// console is not a way. init 0 and 6 are the power verbs.
		switch cmd.InitLevel {
		case 0:
			cmd.Verb = "poweroff"
		case 6:
			cmd.Verb = "reboot"
		default:
			return machine.Errorf(syscall.ENOTSUP, "init %d: a UML guest takes no run level from the host (mconsole has none): init 0 (poweroff: ctrl-alt-del, then mconsole halt) and init 6 (mconsole reboot) are supported", cmd.InitLevel)
		}
	}
	switch cmd.Verb {
	case "on":
		return m.powerOn(ctx)
	case "resume":
		g, err := m.running()
		if err != nil {
			return m.powerOn(ctx)
		}
		if _, err := m.request(ctx, g, "go"); err != nil {
			return err
		}
		m.setPaused(g, false, "guest resumed (mconsole go)")
		return nil
	case "pause":
		g, err := m.running()
		if err != nil {
			return err
		}
		if _, err := m.request(ctx, g, "stop"); err != nil {
			return err
		}
		m.setPaused(g, true, "guest paused (mconsole stop)")
		return nil
	case "reboot":
		g, err := m.running()
		if err != nil {
			return err
		}
		if _, err := m.request(ctx, g, "reboot"); err != nil {
			return err
		}
		g.mc.reset() // UML re-executes itself: a new socket
		m.mu.Lock()
		g.booted, g.paused = false, false
		m.mu.Unlock()
		m.writeRecord(g)
		return nil
	case "off":
		return m.halt(ctx, "off")
	case "poweroff":
		if cmd.Force {
			return m.halt(ctx, "poweroff force")
		}
		return m.poweroff(ctx)
	}
	return machine.Errorf(syscall.ENOTSUP, "uml does not know %q", cmd.Verb)
}

// halt stops the guest at once (mconsole halt), and kills it if it does
// not answer.
func (m *Machine) halt(ctx context.Context, why string) error {
	g, err := m.running()
	if err != nil {
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "guest is off"})
		return nil
	}
	m.mu.Lock()
	g.expect = why
	m.mu.Unlock()
	if _, err := m.request(ctx, g, "halt"); err != nil {
		if g.ctx.Err() != nil {
			return nil // it is ending anyway
		}
		m.log.Warn("uml: halt not answered, killing the guest", "pid", g.pid, "err", err)
		m.mu.Lock()
		g.expect = why + ", killed: halt not answered: " + err.Error()
		m.mu.Unlock()
		m.kill(g)
	}
	return nil
}

// poweroff asks the guest's init to shut down (ctrl-alt-del), and halts it
// if it is still up after the poweroff timeout.
func (m *Machine) poweroff(ctx context.Context) error {
	g, err := m.running()
	if err != nil {
		m.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "guest is off"})
		return nil
	}
	m.mu.Lock()
	paused := g.paused
	m.mu.Unlock()
	if paused {
		if _, err := m.request(ctx, g, "go"); err != nil {
			return err
		}
		m.setPaused(g, false, "") // no report: the poweroff that follows reports
	}
	m.mu.Lock()
	g.expect = "poweroff"
	m.mu.Unlock()
	if _, err := m.request(ctx, g, "cad"); err != nil {
		if g.ctx.Err() != nil {
			return nil
		}
		return m.halt(ctx, "poweroff: ctrl-alt-del not answered ("+err.Error()+"), halted")
	}
	m.mu.Lock()
	if g.timer != nil {
		g.timer.Stop()
	}
	g.timer = time.AfterFunc(m.poweroffTimeout, func() {
		m.mu.Lock()
		live := m.g == g && !m.closed
		m.mu.Unlock()
		if live {
			hctx, cancel := context.WithTimeout(context.Background(), m.reqTimeout)
			defer cancel()
			m.halt(hctx, fmt.Sprintf("poweroff: still up %s after ctrl-alt-del, halted", m.poweroffTimeout))
		}
	})
	m.mu.Unlock()
	return nil
}

// powerOn starts linux. It returns once the process runs; the notify
// socket's SOCKET message reports the guest on.
func (m *Machine) powerOn(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	}
	if g := m.g; g != nil {
		paused, crashed := g.paused, g.crashed
		m.mu.Unlock()
		switch {
		case crashed != "":
			return machine.Errorf(syscall.EBUSY, "the crashed guest (pid %d) is still being cleaned up", g.pid)
		case paused:
			if _, err := m.request(ctx, g, "go"); err != nil {
				return err
			}
			m.setPaused(g, false, "guest resumed (mconsole go)")
		}
		return nil
	}
	m.mu.Unlock()
	// Checked now, not only at adoption: the other host may have started
	// its guest since.
	if r, err := readRecord(m.recordPath()); err == nil {
		if err := m.foreign(r); err != nil {
			return err
		}
	}

	kernel, err := exec.LookPath(m.kernel)
	if err != nil {
		return machine.Errorf(syscall.ENOENT, "uml.kernel %s: %v (Debian package user-mode-linux)", m.kernel, err)
	}
	if m.root.hostfs != "" {
		if fi, err := os.Stat(m.root.hostfs); err != nil || !fi.IsDir() {
			return machine.Errorf(syscall.ENOENT, "uml.root: hostfs directory %s does not exist", m.root.hostfs)
		}
	} else if m.root.backing != "" {
		// UML makes the COW file if it is missing; the backing file must be there.
		if _, err := os.Stat(m.root.backing); err != nil {
			return machine.Errorf(syscall.ENOENT, "uml.root: backing file %s: %v", m.root.backing, err)
		}
	} else if _, err := os.Stat(m.root.image); err != nil {
		return machine.Errorf(syscall.ENOENT, "uml.root: image %s: %v", m.root.image, err)
	}
	if err := os.MkdirAll(m.side, 0o700); err != nil {
		return err
	}
	// A umid dir of a dead guest is removed by UML itself; one of a live
	// guest that is not ours makes UML refuse, and the exit says so.
	tap := ""
	if m.net != nil {
		if tap, err = m.createTap(); err != nil {
			return err
		}
	}

	args := []string{
		"mem=" + m.mem,
		"umid=" + m.umid,
		"uml_dir=" + m.dir,
	}
	args = append(args, m.root.kernelArgs()...)
	if m.init != "" {
		args = append(args, "init="+m.init)
	}
	if m.net != nil {
		args = append(args, fmt.Sprintf("eth0=tuntap,%s,%s", tap, m.net.mac))
	}
	args = append(args, "con=null", "con0=fd:0,fd:1", "mconsole=notify:"+m.notifyPath())

	pidfd := -1
	// The notify socket must exist before linux starts: bind it with a
	// placeholder guest, then fill in the process.
	g, err := m.newGuest(0, 0, -1)
	if err != nil {
		m.deleteTap(tap)
		return err
	}
	g.tap = tap
	abort := func(err error) error {
		unix.Close(g.notify)
		unix.Close(g.wake)
		os.Remove(m.notifyPath())
		m.deleteTap(tap)
		if kerr := ptyhold.Kill(g.holder.Pid, g.holder.Start); kerr != nil {
			m.log.Warn("uml: console holder of a guest that did not start", "err", kerr)
		}
		return err
	}
	console, holder, err := m.startConsole()
	if err != nil {
		return abort(machine.Errorf(syscall.EIO, "guest console: %v", err))
	}
	g.holder = holder
	// linux gets its console (a pty's slave) as stdin, stdout and stderr
	// and no other descriptor: keep ExtraFiles empty. Every descriptor of
	// the daemon is close-on-exec (its FUSE channel too, see
	// fs.mountChannel), so a guest can neither answer the tree's requests
	// nor keep a dead daemon's mount alive.
	c := exec.Command(kernel, args...)
	c.Dir = m.side
	c.Stdin, c.Stdout, c.Stderr = console, console, console
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR=/tmp"}
	// The console is linux's controlling terminal. Otherwise UML's
	// SIGWINCH helper makes it its own (setsid, TIOCSCTTY): a process
	// outside the guest's process group, which killing the group after a
	// panic misses, and which keeps the console's holder waiting for a
	// guest that is gone. With the terminal taken, the helper gives up at
	// once (one line on the console); the guest just never learns a
	// window size, which the holder fixes at 80x24.
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, PidFD: &pidfd}
	err = c.Start()
	console.Close() // linux has it: the holder ends when the guest is gone
	if err != nil {
		return abort(machine.Errorf(syscall.EIO, "starting %s: %v", kernel, err))
	}
	g.pid, g.pidfd = c.Process.Pid, pidfd
	// The driver reaps the process itself (through its pidfd watcher).
	c.Process.Release()
	st, err := procfs.ReadStat(g.pid)
	g.start = st.Start
	if err != nil {
		m.log.Warn("uml: reading start time", "pid", g.pid, "err", err)
	}
	m.mu.Lock()
	closed := m.closed
	if !closed {
		m.g = g
	}
	m.mu.Unlock()
	m.writeRecord(g)
	if closed {
		// Closed while starting: leave the guest to the next driver
		// (it adopts it through the record).
		unix.Close(g.notify)
		unix.Close(g.wake)
		unix.Close(g.pidfd)
		return machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	}
	m.log.Info("uml: guest started", "pid", g.pid, "args", strings.Join(args, " "))
	m.watch(g)
	m.attachConsole()
	m.report.Report(machine.Status{Power: machine.PowerStarting, Reachable: true, Reason: fmt.Sprintf("linux started (pid %d), waiting for its mconsole", g.pid)})
	return nil
}

// Describe implements machine.Describer.
func (m *Machine) Describe() [][2]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := [][2]string{{"uml-umid", m.umid}, {"uml-console-log", m.ConsoleLog()}}
	if g := m.g; g != nil {
		pid := strconv.Itoa(g.pid)
		if g.adopted {
			pid += " (adopted)"
		}
		out = append(out, [2]string{"uml-pid", pid}, [2]string{"uml-mconsole", m.mconsolePath()})
		if g.tap != "" {
			out = append(out, [2]string{"uml-tap", g.tap})
		}
	}
	return out
}

// Close stops the watcher and closes the sockets. It never stops the
// guest: a guest outlives the daemon, and the next driver of the host
// adopts it through the record.
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
	// The holder keeps the console for the next driver.
	defer m.line.Close()
	if g == nil {
		return nil
	}
	var one [8]byte
	one[0] = 1
	unix.Write(g.wake, one[:])
	<-g.done
	unix.Close(g.wake)
	g.cancel(machine.Errorf(syscall.ESHUTDOWN, "driver closed"))
	g.mc.close()
	return nil
}
