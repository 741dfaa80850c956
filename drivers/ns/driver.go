package ns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/notifyline"
	"github.com/machinefs/machinefs/drivers/internal/ptyhold"
	"github.com/machinefs/machinefs/drivers/internal/serialline"
	"github.com/machinefs/machinefs/machine"
	"golang.org/x/sys/unix"
)

var verbs = []string{"on", "resume", "off", "poweroff", "soft", "reboot", "reset", "cycle", "pause", "suspend", "init", "hibernate", "stop"}

// names maps subhost names held by live drivers in this process to the
// host path holding them: the name is the netns, veth and cgroup name, so
// two subhosts may not share it.
var names = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

var (
	_ machine.PowerController = (*Subhost)(nil)
	_ machine.Remover         = (*Subhost)(nil)
	_ machine.StatusReader    = (*Subhost)(nil)
)

// Subhost is the ns driver of one subhost.
type Subhost struct {
	s      settings
	report machine.Reporter
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	rec     *record // nil: the subhost holds nothing
	p       *proc   // nil: not running
	intent  string  // what the end of the running init means: release, hibernate, restart
	killed  string  // why machinefs killed it, for the record
	since   time.Time
	closed  bool
	lastRun string
	reboots []time.Time // the guest's own reboots, the last rebootLoop.n
	notify  *os.File
	line    *serialline.Line // the init's console, across its lives
}

// New builds the driver of one subhost and adopts it if a recorded run is
// still alive.
func New(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	s, err := parseSettings(env)
	if err != nil {
		return nil, err
	}
	names.Lock()
	if holder, ok := names.m[s.name]; ok && holder != s.path {
		names.Unlock()
		return nil, machine.Errorf(syscall.EEXIST, "subhost name %s is in use by %s", s.name, holder)
	}
	names.m[s.name] = s.path
	names.Unlock()
	d := &Subhost{s: s, report: env.Report, log: env.Log, line: serialline.New()}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	fail := func(err error) (machine.Driver, error) {
		d.cancel()
		d.line.Close()
		names.Lock()
		delete(names.m, s.name)
		names.Unlock()
		return nil, err
	}
	if err := os.MkdirAll(s.stateDir, 0o755); err != nil {
		return fail(fmt.Errorf("ns.state-dir: %w", err))
	}
	rec, err := loadRecord(s.stateDir, s.name)
	if err != nil {
		return fail(err)
	}
	if rec != nil && rec.Path != s.path {
		return fail(machine.Errorf(syscall.EEXIST, "subhost name %s is recorded for %s in %s", s.name, rec.Path, s.stateDir))
	}
	d.mu.Lock()
	d.rec = rec
	switch {
	case rec == nil:
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "subhost is off"})
	default:
		d.openNotifyLocked()
		if p := adopt(rec.Pid, rec.Start); p != nil {
			d.p = p
			d.since, _ = time.Parse(time.RFC3339Nano, rec.Started)
			d.watch(p)
			d.attachConsoleLocked()
			power := machine.PowerOn
			if d.frozenLocked() {
				power = machine.PowerPaused
			}
			d.report.Report(machine.Status{Power: power, Reachable: true, Reason: fmt.Sprintf("adopted running subhost (pid %d, started %s)", p.pid, rec.Started)})
			break
		}
		if rec.Pid != 0 {
			why := "ended while machinefs was not watching"
			var ws unix.WaitStatus
			if wpid, err := unix.Wait4(rec.Pid, &ws, unix.WNOHANG, nil); err == nil && wpid == rec.Pid {
				why = statusText(ws) + " while machinefs was not watching"
			}
			rec.Pid, rec.Start, rec.Ended = 0, 0, why
			_ = rec.save(s.stateDir)
		}
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "hibernated (" + rec.Ended + "); on restarts it, stop releases it"})
	}
	d.mu.Unlock()
	return d, nil
}

func statusText(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		return "killed by signal " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("ended (wait status %#x)", uint32(ws))
}

// Status implements machine.StatusReader: the subhost's init is watched
// through its process, so the driver knows without asking anyone.
func (d *Subhost) Status(context.Context) (machine.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return machine.Status{}, machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	case d.p == nil:
		return machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "subhost is off"}, nil
	case d.frozenLocked():
		return machine.Status{Power: machine.PowerPaused, Reachable: true, Reason: "frozen (cgroup freezer)"}, nil
	}
	return machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "subhost runs (pid " + strconv.Itoa(d.p.pid) + ")"}, nil
}

// Kind implements machine.Driver.
func (d *Subhost) Kind() string { return "ns" }

// Verbs implements machine.PowerController.
func (d *Subhost) Verbs() []string { return verbs }

// Power implements machine.PowerController.
func (d *Subhost) Power(ctx context.Context, cmd machine.Command) error {
	verb := cmd.Verb
	if verb == "init" {
		switch cmd.InitLevel {
		case 0:
			verb = "poweroff"
		case 6:
			verb = "reboot"
		default:
			return d.relayLevel(ctx, cmd.InitLevel)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	}
	running := d.p != nil
	switch verb {
	case "on", "resume":
		if running {
			if err := d.freezeLocked(false); err != nil {
				return err
			}
			d.report.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "subhost runs (pid " + strconv.Itoa(d.p.pid) + ")"})
			return nil
		}
		return d.startLocked()
	case "off":
		return d.endLocked("release", true)
	case "poweroff", "soft":
		return d.endLocked("release", cmd.Force)
	case "hibernate":
		if !running {
			if d.rec == nil {
				return machine.Errorf(syscall.EINVAL, "hibernate: the subhost holds nothing (start it first)")
			}
			d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "hibernated"})
			return nil
		}
		return d.endLocked("hibernate", cmd.Force)
	case "stop":
		return d.endLocked("release", cmd.Force)
	case "reboot":
		if !running {
			return d.startLocked()
		}
		return d.endLocked("restart", cmd.Force)
	case "reset", "cycle":
		if !running {
			return d.startLocked()
		}
		return d.endLocked("restart", true)
	case "pause", "suspend":
		if !running {
			return machine.Errorf(syscall.EINVAL, "%s: the subhost is not running", verb)
		}
		if err := d.freezeLocked(true); err != nil {
			return err
		}
		d.report.Report(machine.Status{Power: machine.PowerPaused, Reachable: true, Reason: "frozen (cgroup freezer)"})
		return nil
	}
	return machine.Errorf(syscall.ENOTSUP, "%s: not supported by ns subhosts", cmd.Verb)
}

// startLocked sets up what is missing (a hibernated subhost keeps its
// mounts and netns) and starts the init. A failed setup is undone.
func (d *Subhost) startLocked() error {
	fresh := d.rec == nil
	if fresh {
		if err := d.claimNameLocked(); err != nil {
			return err
		}
		rec := &record{Path: d.s.path, Name: d.s.name}
		if err := prepare(d.s, rec); err != nil {
			if rerr := release(rec); rerr != nil {
				d.log.Warn("undoing a failed start", "err", rerr)
			}
			return errnoErr(err)
		}
		d.rec = rec
		if err := rec.save(d.s.stateDir); err != nil {
			d.releaseLocked()
			return err
		}
		d.openNotifyLocked()
	}
	fail := func(err error) error {
		if fresh {
			d.releaseLocked()
		}
		return errnoErr(err)
	}
	console, err := d.startConsoleLocked()
	if err != nil {
		return fail(fmt.Errorf("console: %w", err))
	}
	p, err := startInit(d.s, d.rec, console)
	console.Close() // the init has it: the holder ends when the subhost has closed it
	if err != nil {
		if kerr := ptyhold.Kill(d.rec.Holder, d.rec.HolderStart); kerr != nil {
			d.log.Warn("console holder of an init that did not start", "err", kerr)
		}
		d.forgetConsoleLocked()
		return fail(err)
	}
	d.p, d.intent, d.killed, d.since = p, "", "", time.Now()
	d.rec.Pid, d.rec.Start, d.rec.Started = p.pid, p.start, d.since.UTC().Format(time.RFC3339Nano)
	if err := d.rec.save(d.s.stateDir); err != nil {
		d.log.Warn("saving the subhost record", "err", err)
	}
	d.watch(p)
	d.attachConsoleLocked()
	d.report.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: fmt.Sprintf("init %s runs as pid %d", d.rec.Init, p.pid)})
	return nil
}

// claimNameLocked refuses a name whose netns or record belongs to someone
// else before anything is created.
func (d *Subhost) claimNameLocked() error {
	rec, err := loadRecord(d.s.stateDir, d.s.name)
	if err != nil {
		return err
	}
	if rec != nil {
		return machine.Errorf(syscall.EEXIST, "subhost name %s is recorded for %s in %s", d.s.name, rec.Path, d.s.stateDir)
	}
	return nil
}

// errnoErr keeps a wrapped errno and makes everything else EIO, with the
// reason.
func errnoErr(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return err
	}
	return machine.Errorf(syscall.EIO, "%v", err)
}

// endLocked ends the running init: through /run/initctl, then SIGKILL
// after the poweroff timeout, or SIGKILL at once with force. What then
// happens is intent's.
func (d *Subhost) endLocked(intent string, force bool) error {
	p := d.p
	if p == nil {
		if intent == "release" && d.rec != nil {
			d.releaseLocked()
			d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "stopped: mounts and netns released"})
			return nil
		}
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "subhost is off"})
		return nil
	}
	d.intent = intent
	_ = d.freezeLocked(false) // a frozen init reads nothing and dies slowly
	if force {
		d.killed = "killed by machinefs (force)"
		p.kill()
		return nil
	}
	initctl := filepath.Join(d.rec.Live, initctlPath)
	msg := d.initMessage(intent)
	sent := tellInit(initctl, msg)
	timeout := d.s.poweroffAfter
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-p.done:
				return
			case <-tick.C:
				if !sent {
					sent = tellInit(initctl, msg)
				}
			case <-deadline.C:
				d.mu.Lock()
				if d.p == p {
					d.killed = fmt.Sprintf("did not end within %s of the %s request on /run/initctl: killed", timeout, intentWord(intent))
					p.kill()
				}
				d.mu.Unlock()
				return
			}
		}
	}()
	return nil
}

func intentWord(intent string) string {
	if intent == "restart" {
		return "reboot"
	}
	return "poweroff"
}

// initMessage is what /run/initctl gets to end the init for intent: in
// line mode a line, which ends the subhost scripts' init (a restart is
// machinefs's, after the end); for sysvinit, run level 6 for a restart
// and 0 otherwise, whose end (reboot(2): SIGHUP or SIGINT) is the same.
func (d *Subhost) initMessage(intent string) []byte {
	if d.s.initctl != initctlSysV {
		return []byte("poweroff\n")
	}
	if intent == "restart" {
		return sysvRequest(6)
	}
	return sysvRequest(0)
}

// sysvRequest is sysvinit's struct init_request (initreq.h) asking for run
// level n, as telinit and systemctl's SysV compatibility write it: magic,
// cmd INIT_CMD_RUNLVL, the level as its character, sleeptime 0, and 368
// bytes of zeros; 384 bytes, in the machine's byte order (little endian
// on every architecture machinefs builds for).
func sysvRequest(n int) []byte {
	const (
		initMagic  = 0x03091969
		cmdRunLvl  = 1
		requestLen = 384
	)
	b := make([]byte, requestLen)
	binary.LittleEndian.PutUint32(b[0:], initMagic)
	binary.LittleEndian.PutUint32(b[4:], cmdRunLvl)
	binary.LittleEndian.PutUint32(b[8:], uint32('0'+n))
	return b
}

// relayLevel relays init N (1-5), which changes what runs and not power,
// to a sysvinit subhost: it returns once the request is written (the init
// may not have opened /run/initctl yet: it is tried until ctx ends, at
// most ns.poweroff-timeout). In line mode there is no way to say a level:
// ENOTSUP, naming the key.
func (d *Subhost) relayLevel(ctx context.Context, n int) error {
	d.mu.Lock()
	closed, running := d.closed, d.p != nil
	var fifo string
	if d.rec != nil {
		fifo = filepath.Join(d.rec.Live, initctlPath)
	}
	d.mu.Unlock()
	switch {
	case closed:
		return machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	case d.s.initctl != initctlSysV:
		return machine.Errorf(syscall.ENOTSUP, "init %d: ns.initctl is line (the subhost's init takes any line on /run/initctl as power off): only init 0 and init 6 are relayed; set ns.initctl = sysvinit for an init that reads sysvinit's run level requests", n)
	case !running:
		return machine.Errorf(syscall.EINVAL, "init %d: the subhost is not running", n)
	}
	ctx, cancel := context.WithTimeout(ctx, d.s.poweroffAfter)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !tellInit(fifo, sysvRequest(n)) {
		select {
		case <-ctx.Done():
			return machine.Errorf(syscall.ETIMEDOUT, "init %d: no process of the subhost read /run/initctl (%v): is its init sysvinit (ns.initctl)?", n, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// tellInit writes msg to the init's FIFO; false if no one reads it yet.
// msg is at most PIPE_BUF bytes, so the write is whole or nothing.
func tellInit(fifo string, msg []byte) bool {
	fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	n, err := unix.Write(fd, msg)
	return err == nil && n == len(msg)
}

// watch waits for p's end in the background.
func (d *Subhost) watch(p *proc) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(p.done)
		if p.wait() {
			d.exited(p)
		}
	}()
}

// exited handles the end of an init: what the ending command wanted, or
// for an init that ended by itself, what its end says (insideIntent): a
// reboot from inside restarts it, a power off from inside releases it,
// anything else is a full release with how it ended.
func (d *Subhost) exited(p *proc) {
	why, ws := p.status()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.p != p {
		return
	}
	d.p = nil
	p.closeFds()
	intent, killed := d.intent, d.killed
	d.intent, d.killed = "", ""
	if killed != "" {
		why = killed + ", " + why
	}
	d.rec.Ended = fmt.Sprintf("%s at %s", why, time.Now().UTC().Format(time.RFC3339))
	d.rec.Pid, d.rec.Start = 0, 0
	d.forgetConsoleLocked()
	d.lastRun = d.rec.Ended
	inside := ""
	if intent == "" {
		intent, inside = insideIntent(ws)
	}
	if d.closed && intent == "restart" {
		intent = "hibernate" // no new watchers once closed; the next driver starts it
	}
	switch intent {
	case "hibernate":
		_ = d.rec.save(d.s.stateDir)
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "hibernated"})
	case "restart":
		if inside != "" && d.rebootLoopLocked() {
			ended := d.rec.Ended
			d.releaseLocked()
			err := machine.Errorf(syscall.EIO, "the subhost rebooted itself %d times within %s: left off (a reboot loop); on starts it again", rebootLoop.n, rebootLoop.within)
			d.report.Event(machine.EventWarning, err.Error())
			d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: inside + ": " + ended, Err: err})
			return
		}
		if inside != "" {
			d.report.Event(machine.EventWarning, inside+" ("+d.rec.Ended+"): starting it again")
			d.report.Report(machine.Status{Power: machine.PowerRebooting, Reachable: true, Reason: inside})
		}
		if err := d.startLocked(); err != nil {
			d.releaseLocked()
			d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "restart failed: " + err.Error(), Err: err})
		}
	case "release":
		ended := d.rec.Ended
		d.releaseLocked()
		what := "powered off: "
		if inside != "" {
			d.report.Event(machine.EventWarning, inside+" ("+ended+")")
			what = inside + ": "
		}
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: what + ended})
	default:
		ended := d.rec.Ended
		d.releaseLocked()
		var err error
		if !strings.HasPrefix(why, "exited with status 0") {
			err = machine.Errorf(syscall.EIO, "subhost init %s", why)
		}
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: ended, Err: err})
	}
}

// rebootLoop bounds the guest's own reboots: a guest whose init reboots
// at once, again and again, would have the daemon start it for ever.
var rebootLoop = struct {
	n      int
	within time.Duration
}{5, 30 * time.Second}

// rebootLoopLocked records a reboot from inside and says whether it is the
// rebootLoop.n-th within rebootLoop.within.
func (d *Subhost) rebootLoopLocked() bool {
	now := time.Now()
	d.reboots = append(d.reboots, now)
	if len(d.reboots) > rebootLoop.n {
		d.reboots = d.reboots[len(d.reboots)-rebootLoop.n:]
	}
	if len(d.reboots) == rebootLoop.n && now.Sub(d.reboots[0]) < rebootLoop.within {
		d.reboots = nil
		return true
	}
	return false
}

// insideIntent reads an init's end that no command of machinefs's asked
// for. reboot(2) in a PID namespace ends the namespace's init, which its
// parent sees killed by SIGHUP (restart) or SIGINT (power off, halt); from
// outside, no other signal than SIGKILL can kill it, so these are the
// guest's own reboot and power off.
func insideIntent(ws *unix.WaitStatus) (intent, why string) {
	if ws == nil || !ws.Signaled() {
		return "", ""
	}
	switch ws.Signal() {
	case unix.SIGHUP:
		return "restart", "rebooted from inside"
	case unix.SIGINT:
		return "release", "powered off from inside"
	}
	return "", ""
}

// releaseLocked removes everything the subhost holds and its record. What
// could not be released is logged and returned; the record goes anyway
// (what it lists is gone or beyond repair by a retry).
func (d *Subhost) releaseLocked() error {
	if d.notify != nil {
		d.notify.Close()
		d.notify = nil
	}
	if d.rec == nil {
		return nil
	}
	if d.p != nil {
		d.p.kill()
	}
	err := release(d.rec)
	if err != nil {
		d.log.Warn("releasing subhost", "err", err)
	}
	if rerr := os.Remove(recordPath(d.s.stateDir, d.s.name)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	d.rec = nil
	return err
}

// Remove implements machine.Remover: the host leaves the tree, so the
// subhost goes for good, as with "stop force": a running init is killed
// (SIGKILL, after thawing) and, once it has ended, its mounts, loop
// devices, veths, netns, cgroup and record are released. A hibernated
// subhost is released at once. The model refuses to remove a host that is
// on, so a running init is the exception (a reload whose host power was
// not known). Close follows; Close alone keeps the subhost for adoption.
func (d *Subhost) Remove(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return machine.Errorf(syscall.ESHUTDOWN, "driver closed")
	}
	p := d.p
	var holder ptyhold.Holder
	if d.rec != nil {
		holder = ptyhold.Holder{Pid: d.rec.Holder, Start: d.rec.HolderStart}
	}
	if p != nil {
		d.intent = "release"
		d.killed = "killed by machinefs (host removed)"
		_ = d.freezeLocked(false)
		p.kill()
	}
	d.mu.Unlock()
	if p != nil {
		// The watcher sees the end through the pidfd and releases
		// (intent "release"); wait for it rather than release under
		// a live init.
		select {
		case <-p.done:
		case <-ctx.Done():
			return machine.Errorf(syscall.ETIMEDOUT, "subhost init (pid %d) still running after SIGKILL: %v", p.pid, ctx.Err())
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if p != nil && d.p == p {
		// The watcher was stopped (a Close after our caller gave up)
		// before it saw the end. The kill was sent: release what is
		// left.
		p.closeFds()
		d.p = nil
	}
	held := d.rec != nil
	// The console's holder would end by itself now that the init has;
	// the host leaves the tree, so nothing waits for its last output.
	if err := ptyhold.Kill(holder.Pid, holder.Start); err != nil {
		d.log.Warn("removing subhost", "err", err)
	}
	if err := d.releaseLocked(); err != nil {
		return machine.Errorf(syscall.EIO, "releasing subhost %s: %v", d.s.name, err)
	}
	if held {
		d.report.Report(machine.Status{Power: machine.PowerOff, Reachable: true, Reason: "removed: mounts and netns released"})
	}
	return nil
}

// openNotifyLocked opens the subhost's notify FIFO for reading (O_RDWR, so
// it never sees end of file) and turns each line into a notify event. The
// guest is not trusted: lines are bounded and a flood is rate-limited
// (notifyline), so the daemon's memory stays bounded whatever it writes.
func (d *Subhost) openNotifyLocked() {
	if d.notify != nil || d.rec == nil || d.closed {
		return
	}
	f, err := os.OpenFile(filepath.Join(d.rec.Live, notifyPath), os.O_RDWR, 0)
	if err != nil {
		d.log.Warn("notify FIFO", "err", err)
		return
	}
	d.notify = f
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		lim := notifyline.NewLimiter(d.report.Event)
		defer lim.Close()
		r := notifyline.NewReader(f)
		for {
			line, err := r.Next()
			if line != "" {
				lim.Line(line)
			}
			if err != nil {
				if !errors.Is(err, os.ErrClosed) && !errors.Is(err, io.EOF) {
					d.log.Warn("notify FIFO", "err", err)
				}
				return
			}
		}
	}()
}

// freezeLocked sets the cgroup freezer and waits until it took effect.
func (d *Subhost) freezeLocked(on bool) error {
	if d.rec == nil || d.rec.Cgroup == "" {
		if on {
			return machine.Errorf(syscall.ENOTSUP, "pause: no cgroup v2 freezer on this host")
		}
		return nil
	}
	v := "0"
	if on {
		v = "1"
	}
	if err := os.WriteFile(filepath.Join(d.rec.Cgroup, "cgroup.freeze"), []byte(v), 0); err != nil {
		return machine.Errorf(syscall.EIO, "cgroup freezer: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for d.frozenLocked() != on {
		if time.Now().After(deadline) {
			return machine.Errorf(syscall.ETIMEDOUT, "cgroup freezer: not %s after 2s", map[bool]string{true: "frozen", false: "thawed"}[on])
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

func (d *Subhost) frozenLocked() bool {
	if d.rec == nil || d.rec.Cgroup == "" {
		return false
	}
	data, _ := os.ReadFile(filepath.Join(d.rec.Cgroup, "cgroup.events"))
	return strings.Contains(string(data), "frozen 1")
}

// Close stops watching. It leaves a running subhost running and a
// hibernated one as it is: the record in ns.state-dir lets the next driver
// adopt it.
func (d *Subhost) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	p := d.p
	if d.notify != nil {
		d.notify.Close()
		d.notify = nil
	}
	d.mu.Unlock()
	d.cancel()
	if p != nil {
		p.stopWatching()
	}
	d.wg.Wait()
	d.line.Close() // the holder keeps the console for the next driver
	if p != nil {
		d.mu.Lock()
		if d.p == p {
			p.closeFds()
			d.p = nil // its fds are gone: nothing may signal through them
		}
		d.mu.Unlock()
	}
	names.Lock()
	if names.m[d.s.name] == d.s.path {
		delete(names.m, d.s.name)
	}
	names.Unlock()
	return nil
}
