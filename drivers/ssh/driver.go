package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/nsthread"
	"github.com/machinefs/machinefs/machine"
)

// maxVerifyInterval bounds the time between probes while a command is
// followed: a reboot's down phase can be short.
const maxVerifyInterval = 200 * time.Millisecond

// driver reaches one machine over SSH.
type driver struct {
	cfg settings
	dl  dialer
	rep machine.Reporter
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// sem serialises use of the kept connection's setup: one dial at a
	// time, waited for with a context.
	sem chan struct{}

	mu        sync.Mutex
	closed    bool
	c         *conn            // kept connection, nil when none
	following machine.Follower // the command being verified
	gen       int              // bumped by every command: older probes are stale
	shown     machine.Power    // power last reported
	shownErr  syscall.Errno    // errno last reported: a new kind of failure is news
	state     string           // the "ssh" line of state
	lastProbe string
	verify    string // what the last command's verification saw
	wol       string // the "ssh-wol" line of state
	// suspended is set when the machine accepted a suspend: a probe
	// that finds it down shows paused, not off, until it answers again.
	suspended bool
}

var (
	_ machine.PowerController = (*driver)(nil)
	_ machine.Verifier        = (*driver)(nil)
	_ machine.StatusReader    = (*driver)(nil)
	_ machine.Describer       = (*driver)(nil)
)

// New builds an ssh driver. It connects and sends from the network
// namespace of the thread that calls it. It does not touch the network:
// the first probe runs in the background at once, then every
// ssh.probe-interval, and reports what it finds.
func New(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return nil, err
	}
	d := &driver{cfg: cfg, dl: dialer{cfg: cfg, ns: nsthread.CallerHome()}, rep: env.Report, log: env.Log,
		sem: make(chan struct{}, 1), state: "not probed yet", lastProbe: "never",
		wol: "not configured (" + KeyWoLInterface + " is empty)"}
	if cfg.wolIface != "" {
		d.wol = "not armed yet: armed on " + cfg.wolIface + " before poweroff, off, init 0 and suspend"
	}
	if d.rep == nil {
		d.rep = machine.NopReporter{}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(1)
	go d.watch()
	return d, nil
}

func (d *driver) Kind() string { return "ssh" }

// Verbs: the orderly verbs a machine's own tools carry out. on, wol and
// resume are not ssh's (a switched-off or sleeping machine runs no sshd):
// combine drivers, "ssh wol".
func (d *driver) Verbs() []string { return []string{"poweroff", "off", "reboot", "init", "suspend"} }

// Verifies implements machine.Verifier: poweroff, off and init 0 are
// followed until the SSH port stops answering, reboot and init 6 until it
// went down and answers again with the known host key.
func (d *driver) Verifies(cmd machine.Command) bool {
	_, ok := expectOf(cmd)
	return ok
}

// expect is what a command should do to the machine.
type expect int

const (
	expectOff expect = iota + 1
	expectReboot
)

func expectOf(cmd machine.Command) (expect, bool) {
	switch {
	case cmd.Verb == "poweroff", cmd.Verb == "off", cmd.Verb == "init" && cmd.InitLevel == 0:
		return expectOff, true
	case cmd.Verb == "reboot", cmd.Verb == "init" && cmd.InitLevel == 6:
		return expectReboot, true
	}
	return 0, false
}

// verbOf names cmd without its modifiers, for reasons: "poweroff",
// "init 6".
func verbOf(cmd machine.Command) string {
	if cmd.Verb == "init" {
		return fmt.Sprintf("init %d", cmd.InitLevel)
	}
	return cmd.Verb
}

// commandLine is the fixed command a verb runs on a machine with init
// system init. Nothing from the tree reaches it but init's level, a
// digit the grammar checked (0-6) and that is checked again here.
func commandLine(cmd machine.Command, init string) (string, error) {
	switch cmd.Verb {
	case "poweroff":
		if init == initSystemd {
			return "systemctl poweroff", nil
		}
		return "poweroff", nil
	case "off":
		return "poweroff -f", nil
	case "reboot":
		if init == initSystemd {
			return "systemctl reboot", nil
		}
		return "reboot", nil
	case "suspend":
		if init == initSystemd {
			return "systemctl suspend", nil
		}
		return "", machine.Errorf(syscall.ENOTSUP, "ssh: suspend needs systemd on the machine (systemctl suspend, through logind); its init is %s", init)
	case "init":
		n := cmd.InitLevel
		if n < 0 || n > 6 {
			return "", machine.Errorf(syscall.EINVAL, "ssh: init %d: level is not 0-6", n)
		}
		switch init {
		case initSystemd, initSysV:
			return fmt.Sprintf("telinit %d", n), nil
		}
		// busybox init (and an init we cannot name) has no run levels:
		// 0 and 6 are its poweroff and reboot.
		switch n {
		case 0:
			return "poweroff", nil
		case 6:
			return "reboot", nil
		}
		if init == initBusybox {
			return "", machine.Errorf(syscall.ENOTSUP, "ssh: init %d: the machine's init is busybox, which has no run levels (init 0 and init 6 are its poweroff and reboot)", n)
		}
		return "", machine.Errorf(syscall.ENOTSUP, "ssh: init %d: cannot tell the machine's init system, so no run level is relayed (init 0 and init 6 still work)", n)
	}
	return "", machine.Errorf(syscall.ENOTSUP, "ssh: %s: not supported over ssh (poweroff, off, reboot, init N, suspend; on, wol and resume need another driver, e.g. drivers = ssh wol)", cmd.Verb)
}

// Power runs the verb's fixed command on the machine and returns once the
// machine accepted it (exit status 0, or the connection closed under it);
// the command's effect is then followed in the background until
// cmd.Deadline.
func (d *driver) Power(ctx context.Context, cmd machine.Command) error {
	if !slices.Contains(d.Verbs(), cmd.Verb) || cmd.Verb == "init" && (cmd.InitLevel < 0 || cmd.InitLevel > 6) {
		_, err := commandLine(cmd, initUnknown)
		return err
	}
	if err := d.refuseSelf(ctx); err != nil {
		return err
	}
	// A connection of its own: a probe that gives up on the kept one
	// must not cut the command short and make it look accepted.
	c, err := d.dl.dial(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	line, err := commandLine(cmd, c.init)
	if err != nil {
		return err
	}
	if armsWoL(cmd) && d.cfg.wolIface != "" {
		d.armWoL(ctx, c, cmd)
	}
	exp, verify := expectOf(cmd)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return machine.Errorf(syscall.ESHUTDOWN, "ssh: driver closed")
	}
	// From here on the command owns the machine's state: probes that
	// started before are stale (gen), and the watch stands aside while
	// the command runs and is followed (Active), so that a machine
	// already going down under the command is not reported by the
	// watch before the verdict.
	d.gen++
	d.suspended = false
	d.following.Stop() // superseded
	var vctx context.Context
	var id int
	if verify {
		vctx, id = d.following.Start(d.ctx, cmd)
	}
	d.mu.Unlock()
	abandon := func() {
		if verify {
			d.mu.Lock()
			d.following.Done(id)
			d.mu.Unlock()
		}
	}

	out, err := run(ctx, c, fmt.Sprintf("command %q", line), line, d.cfg.commandTimeout)
	gone := errors.Is(err, errGone)
	if err != nil && !gone {
		abandon()
		d.log.Warn("command failed", "command", line, "err", err)
		return fmt.Errorf("ssh %s: %w", d.cfg.hostPort(), err)
	}
	what := fmt.Sprintf("ran %q as %s (init %s)", line, d.cfg.user, c.init)
	if gone {
		what += "; the connection closed under it"
	} else if o := quote(out); o != `""` {
		what += "; output " + o
	}
	if cmd.Label != "" {
		what += " (" + cmd.Label + ")"
	}
	d.log.Info("power command accepted", "verb", cmd.String(), "command", line, "connection-closed", gone)
	d.rep.Event(machine.EventNotify, "ssh: "+what)
	if cmd.Verb == "suspend" {
		// Not followed: a sleeping machine and a switched-off one look
		// alike to a probe. The probes show paused while it is down.
		d.mu.Lock()
		d.suspended = true
		d.shown, d.shownErr = machine.PowerPaused, 0
		kept := d.c
		d.c = nil
		d.mu.Unlock()
		if kept != nil {
			kept.close()
		}
		d.rep.Report(machine.Status{Power: machine.PowerPaused, Reason: what})
		return nil
	}
	if !verify {
		return nil // init 1-5: relayed, no power change to follow
	}

	d.mu.Lock()
	if d.closed || !d.following.Current(id) {
		d.mu.Unlock()
		return nil // closed, or superseded by a newer command
	}
	// The machine is going away: the kept connection (sshd's sessions
	// may outlive its listener) must not stand in for it.
	kept := d.c
	d.c = nil
	deadline, _ := vctx.Deadline()
	d.verify = fmt.Sprintf("%s: %s at %s, following until %s", verbOf(cmd), what, time.Now().Format("15:04:05"), deadline.Format("15:04:05"))
	transit := machine.PowerStopping
	if exp == expectReboot {
		transit = machine.PowerRebooting
	}
	d.shown, d.shownErr = transit, 0
	d.wg.Add(1)
	d.mu.Unlock()
	if kept != nil {
		kept.close()
	}
	// Before the follow starts, so its verdict comes after; init 0 and
	// 6 get no transitional state from the model.
	d.rep.Report(machine.Status{Power: transit, Reachable: true, Reason: what})
	go d.follow(vctx, id, cmd, exp, what)
	return nil
}

// refuseSelf refuses power verbs aimed at the machine machinefs runs on,
// which must go through the local host and its allow-self guard.
func (d *driver) refuseSelf(ctx context.Context) error {
	ip, err := d.dl.resolve(ctx)
	if err != nil {
		return err
	}
	own, err := d.dl.ownAddress(ip)
	if err != nil {
		return machine.Errorf(syscall.EIO, "ssh: cannot list this machine's addresses to rule out powering itself off: %v", err)
	}
	if own {
		return machine.Errorf(syscall.EPERM, "ssh: %s (%s) is an address of the machine machinefs runs on: power it off through the local host (local = yes, allow-self = yes), not over ssh", d.cfg.address, ip)
	}
	return nil
}

// connection returns the kept connection, dialling one if there is none.
func (d *driver) connection(ctx context.Context) (*conn, error) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, machine.Errorf(syscall.ETIMEDOUT, "ssh %s: another connection attempt is in progress: %v", d.cfg.hostPort(), ctx.Err())
	}
	defer func() { <-d.sem }()
	d.mu.Lock()
	c, closed, gen := d.c, d.closed, d.gen
	d.mu.Unlock()
	if closed {
		return nil, machine.Errorf(syscall.ESHUTDOWN, "ssh: driver closed")
	}
	if c != nil {
		return c, nil
	}
	c, err := d.dl.dial(ctx)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		c.close()
		return nil, machine.Errorf(syscall.ESHUTDOWN, "ssh: driver closed")
	case d.gen != gen:
		// A power command started while this dialled: the machine
		// may be going down, and a session of its dying sshd must
		// not be kept as proof that it is up.
		d.mu.Unlock()
		c.close()
		return nil, machine.Errorf(syscall.EAGAIN, "ssh %s: a command started while connecting", d.cfg.hostPort())
	}
	d.c = c
	d.mu.Unlock()
	d.log.Debug("connected", "host-key", c.hostKey, "init", c.init, "how", c.initWhy)
	return c, nil
}

// keep makes c the kept connection, closing the one before it.
func (d *driver) keep(c *conn) {
	d.mu.Lock()
	old := d.c
	if d.closed {
		old = c // closing: nothing is kept
	} else {
		d.c = c
	}
	d.mu.Unlock()
	if old != nil {
		old.close()
	}
}

// drop closes c and forgets it if it is the kept connection.
func (d *driver) drop(c *conn) {
	d.mu.Lock()
	if d.c == c {
		d.c = nil
	}
	d.mu.Unlock()
	c.close()
}

// probe asks the machine whether it is there: a keepalive on the kept
// connection, or a new connection when there is none or it stopped
// answering. It returns the connection it found, or why none.
func (d *driver) probe(ctx context.Context) (*conn, error) {
	d.mu.Lock()
	c := d.c
	d.mu.Unlock()
	if c != nil {
		if err := keepalive(ctx, c, d.cfg.connectTimeout); err == nil {
			return c, nil
		}
		d.drop(c)
	}
	return d.connection(ctx)
}

// observe turns a probe's result into what it says about the machine, and
// records it for Describe.
func (d *driver) observe(c *conn, err error) machine.Status {
	var st machine.Status
	var line string
	switch {
	case err == nil:
		line = fmt.Sprintf("reachable, host key ok (%s), init %s", c.hostKey, c.init)
		st = machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "ssh answers, host key ok"}
	case refusedOrUnreachable(err):
		line = "down: " + err.Error()
		// Off is a state, not a failure: the reason says why, the
		// ssh line of state the details.
		st = machine.Status{Power: machine.PowerOff, Reason: "ssh does not answer (" + errnoWord(err) + "): off"}
	default:
		// A timeout cannot tell off from a network that drops packets;
		// a wrong host key or refused login is a machine that answers
		// but is not the one configured, or not ours to command.
		line = "unreachable: " + err.Error()
		switch machine.ErrnoOf(err) {
		case syscall.EACCES:
			line = "rejected: " + err.Error()
		case syscall.ETIMEDOUT:
			line = "no answer: " + err.Error()
		}
		st = machine.Status{Power: machine.PowerUnknown, Reason: "ssh: " + errnoWord(err), Err: err}
	}
	d.mu.Lock()
	d.state = line
	d.lastProbe = time.Now().Format(time.RFC3339) + " " + line
	if err == nil {
		d.suspended = false // it woke
	} else if d.suspended && isDown(err) {
		st = machine.Status{Power: machine.PowerPaused, Reason: "suspended: ssh does not answer (" + errnoWord(err) + ")"}
	}
	d.mu.Unlock()
	return st
}

// errnoWord names the cause of a failed probe in a few words.
func errnoWord(err error) string {
	var de *downError
	if errors.As(err, &de) {
		return de.short
	}
	switch machine.ErrnoOf(err) {
	case syscall.EHOSTUNREACH:
		return "handshake failed"
	case syscall.ETIMEDOUT:
		return "no answer in time"
	case syscall.EACCES:
		return "host key or login refused"
	}
	return "failed"
}

// Status implements machine.StatusReader: one probe now. The answer is
// what the next background probe compares with, so the model does not
// hear it twice.
func (d *driver) Status(ctx context.Context) (machine.Status, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return machine.Status{}, machine.Errorf(syscall.ESHUTDOWN, "ssh: driver closed")
	}
	st := d.observe(d.probe(ctx))
	if errors.Is(ctx.Err(), context.Canceled) {
		return machine.Status{}, ctx.Err()
	}
	d.mu.Lock()
	if !d.following.Active() { // a verification reports its own verdict
		d.shown, d.shownErr = st.Power, machine.ErrnoOf(st.Err)
	}
	d.mu.Unlock()
	return st, nil
}

// watch probes the machine every ssh.probe-interval until Close, so a
// machine switched off or on behind machinefs's back shows within an
// interval. It reports changes only, and stands aside while a command is
// followed.
func (d *driver) watch() {
	defer d.wg.Done()
	_ = machine.Poll(d.ctx, d.cfg.interval, func(ctx context.Context) (bool, error) {
		d.mu.Lock()
		verifying, gen := d.following.Active(), d.gen
		d.mu.Unlock()
		if verifying {
			return false, nil
		}
		c, err := d.probe(ctx)
		if ctx.Err() != nil {
			return false, nil // closed: not a result
		}
		d.mu.Lock()
		stale := d.gen != gen || d.following.Active()
		d.mu.Unlock()
		if stale {
			return false, nil // a command owns the state now
		}
		st := d.observe(c, err)
		d.mu.Lock()
		errno := machine.ErrnoOf(st.Err)
		report := d.gen == gen && !d.following.Active() && (d.shown != st.Power || d.shownErr != errno)
		if report {
			d.shown, d.shownErr = st.Power, errno
		}
		d.mu.Unlock()
		if report {
			d.rep.Report(st)
		}
		return false, nil
	})
}

// follow probes the machine after cmd until it shows what cmd does, or
// ctx's deadline (the command's) passes, and reports the verdict. Down is
// a TCP connect that fails (refused, unreachable, no answer): the kept
// connection was dropped, and sshd's sessions may outlive its listener.
// Up again, after a reboot, is a new connection whose host key checks.
// A cancelled ctx (a newer command, Close) reports nothing.
func (d *driver) follow(ctx context.Context, id int, cmd machine.Command, exp expect, what string) {
	defer d.wg.Done()
	defer func() {
		d.mu.Lock()
		d.following.Done(id)
		d.mu.Unlock()
	}()
	start := time.Now()
	every := min(d.cfg.interval, maxVerifyInterval)
	var downAt time.Duration
	var downErr, last error
	err := machine.Poll(ctx, every, func(ctx context.Context) (bool, error) {
		if downErr == nil {
			err := d.dl.tcp(ctx)
			if ctx.Err() != nil {
				return false, nil // cut short by the deadline: no evidence
			}
			if err == nil || !isDown(err) {
				last = err
				return false, err // still answers
			}
			downErr, downAt = err, time.Since(start)
			if exp == expectOff {
				return true, nil
			}
			d.rep.Event(machine.EventNotify, fmt.Sprintf("ssh: %s: down after %s (%s)", verbOf(cmd), downAt.Round(time.Millisecond), errnoWord(err)))
			return false, nil
		}
		// A new connection: one the watch kept from before the
		// command may still be served by a dying sshd.
		c, err := d.dl.dial(ctx)
		if err != nil {
			if ctx.Err() == nil {
				last = err
			}
			return false, err
		}
		d.keep(c)
		d.observe(c, nil)
		return true, nil
	})
	if errors.Is(err, context.Canceled) {
		return
	}
	elapsed := time.Since(start).Round(time.Millisecond)
	var st machine.Status
	switch {
	case err == nil && exp == expectOff:
		st = machine.Status{Power: machine.PowerOff, Reason: fmt.Sprintf("verified: ssh down %s after %s (%s)", downAt.Round(time.Millisecond), verbOf(cmd), errnoWord(downErr))}
		d.observe(nil, downErr)
	case err == nil:
		st = machine.Status{Power: machine.PowerOn, Reachable: true, Reason: fmt.Sprintf("verified: ssh down %s after %s, back with the known host key after %s", downAt.Round(time.Millisecond), verbOf(cmd), elapsed)}
	case downErr == nil:
		// It never went down: still on, as far as the probe can tell.
		why := ""
		if last != nil {
			why = "; last probe: " + last.Error()
		}
		st = machine.Status{Power: machine.PowerOn, Reachable: last == nil, Reason: verbOf(cmd) + ": the machine did not go down",
			Err: machine.Errorf(syscall.ETIMEDOUT, "ssh %s: %s: the machine still answers %s after the command was accepted (%s)%s", d.cfg.hostPort(), verbOf(cmd), elapsed, what, why)}
	default:
		why := ""
		if last != nil {
			why = ": " + last.Error()
		}
		code := syscall.EHOSTDOWN
		if machine.ErrnoOf(last) == syscall.EACCES {
			code = syscall.EACCES // back, but not with the known key
		}
		st = machine.Status{Power: machine.PowerUnknown, Reason: cmd.Verb + ": down, not back",
			Err: machine.Errorf(code, "ssh %s: %s: down %s after the command, not back with the known host key within %s%s", d.cfg.hostPort(), verbOf(cmd), downAt.Round(time.Millisecond), elapsed, why)}
	}
	d.mu.Lock()
	current := d.following.Current(id) && !d.closed
	if current {
		d.shown, d.shownErr = st.Power, machine.ErrnoOf(st.Err)
		d.verify = fmt.Sprintf("%s: %s", verbOf(cmd), st.Reason)
		if st.Err != nil {
			d.verify += ": " + st.Err.Error()
		}
	}
	d.mu.Unlock()
	if current {
		d.rep.Report(st)
	}
}

// Describe adds the target, what the last probe found and what the last
// command's verification saw.
func (d *driver) Describe() [][2]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	lines := [][2]string{
		{"ssh-target", fmt.Sprintf("%s@%s (known hosts %s, probe every %s)", d.cfg.user, d.cfg.hostPort(), d.cfg.knownHosts, d.cfg.interval)},
		{"ssh", d.state},
		{"ssh-last-probe", d.lastProbe},
		{"ssh-wol", d.wol},
	}
	if d.verify != "" {
		lines = append(lines, [2]string{"ssh-verify", d.verify})
	}
	return lines
}

// Close stops the probes and the follow, closes the connection and waits.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.following.Stop()
	c := d.c
	d.c = nil
	d.mu.Unlock()
	d.cancel()
	if c != nil {
		c.close()
	}
	d.wg.Wait()
	d.dl.ns.Close()
	return nil
}
