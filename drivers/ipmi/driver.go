package ipmi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/machinefs/machinefs/machine"
)

// pollSem bounds concurrent polls across all hosts of the process.
var pollSem = make(chan struct{}, MaxConcurrentPolls)

// verifyInterval is how often a verification re-reads chassis status.
const verifyInterval = 200 * time.Millisecond

// cycleSettle is how long a cycle verification waits for an "off" before it
// accepts "on" without one (BMCs that cycle faster than two reads).
const cycleSettle = 3 * time.Second

// action is what one verb sends (the chassis control) and expects: its
// transitional and target states are the grammar's (machine.Grammar), not
// declared again here.
type action struct {
	verb    string
	control chassis.ChassisControl
	target  machine.Power
	transit machine.Power
}

// controls maps each verb to the chassis control that carries it.
var controls = map[string]chassis.ChassisControl{
	"on":       chassis.ChassisControlPowerUp,
	"off":      chassis.ChassisControlPowerDown,
	"cycle":    chassis.ChassisControlPowerCycle,
	"reset":    chassis.ChassisControlHardReset,
	"reboot":   chassis.ChassisControlHardReset,
	"soft":     chassis.ChassisControlSoftShutdown,
	"poweroff": chassis.ChassisControlSoftShutdown,
}

// actionOf is verb's action, false for a verb IPMI does not carry.
func actionOf(verb string) (action, bool) {
	control, ok := controls[verb]
	spec, known := machine.LookupVerb(verb)
	if !ok || !known {
		return action{}, false
	}
	return action{verb: verb, control: control, target: spec.Target, transit: spec.Transit}, true
}

var verbs = []string{"on", "off", "cycle", "reset", "soft", "poweroff", "reboot"}

// Driver is the ipmi driver of one host. It implements machine.PowerController,
// machine.Consoler and machine.Describer.
type Driver struct {
	cfg  config
	rep  machine.Reporter
	log  *slog.Logger
	path string

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // poller, verifiers, session closers
	kick   chan struct{}  // wakes the poller early
	once   sync.Once

	// sess is a one-slot lock guarding cl and closed; acquiring it honours
	// a context, which a sync.Mutex cannot.
	sess   chan struct{}
	cl     *client.Client
	closed bool

	mu          sync.Mutex // guards everything below
	closing     bool
	last        machine.Status
	haveLast    bool
	sessState   string
	sessOpens   int
	lastPoll    time.Time
	lastPollRes string
	failures    int
	nextPoll    time.Time
	cmdGen      int              // bumped by every power command
	following   machine.Follower // the command being verified
	verifyNote  string
	device      string
	sols        map[*solConn]bool // open SOL streams
}

var (
	_ machine.PowerController = (*Driver)(nil)
	_ machine.Consoler        = (*Driver)(nil)
	_ machine.Describer       = (*Driver)(nil)
	_ machine.StatusReader    = (*Driver)(nil)
)

func start(cfg config, env machine.DriverEnv) *Driver {
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		cfg:       cfg,
		rep:       env.Report,
		log:       log.With("driver", "ipmi", "bmc", cfg.hostPort()),
		path:      env.Path,
		kick:      make(chan struct{}, 1),
		sess:      make(chan struct{}, 1),
		sessState: "closed (not opened yet)",
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(1)
	go d.pollLoop()
	return d
}

// Kind implements machine.Driver.
func (d *Driver) Kind() string { return "ipmi" }

// Verbs implements machine.PowerController.
func (d *Driver) Verbs() []string { return append([]string(nil), verbs...) }

// Close stops polling and verification, closes the BMC session and waits
// for every goroutine of the driver. It is bounded by ipmi.timeout plus the
// time running calls take to notice their contexts.
func (d *Driver) Close() error {
	d.once.Do(func() {
		d.mu.Lock()
		d.closing = true
		d.following.Stop()
		sols := d.sols
		d.sols = nil
		d.mu.Unlock()
		d.cancel()
		for s := range sols {
			s.shutdown()
		}
		d.sess <- struct{}{} // calls in flight are bounded by their contexts
		d.closed = true
		cl := d.cl
		d.cl = nil
		<-d.sess
		if cl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), d.cfg.timeout)
			if cerr := cl.Close(ctx); cerr != nil {
				d.log.Debug("closing IPMI session", "err", d.redact(oneLine(cerr.Error())))
			}
			cancel()
		}
		d.setSession("closed (driver closed)")
		d.wg.Wait()
	})
	return nil
}

func (d *Driver) setSession(s string) {
	d.mu.Lock()
	d.sessState = s
	d.mu.Unlock()
}

// report forwards st to the model. Unless force is set, an error-free
// report with the same power and reachability as the previous one is
// dropped, so steady polls stay silent and keep a verdict's reason.
func (d *Driver) report(st machine.Status, force bool) {
	d.mu.Lock()
	same := d.haveLast && d.last.Power == st.Power && d.last.Reachable == st.Reachable &&
		d.last.Err == nil && st.Err == nil
	if same && !force {
		d.mu.Unlock()
		return
	}
	d.last, d.haveLast = st, true
	d.mu.Unlock()
	if d.rep != nil {
		d.rep.Report(st)
	}
}

func (d *Driver) lastPower() machine.Power {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.haveLast || d.last.Power == "" {
		return machine.PowerUnknown
	}
	return d.last.Power
}

// newClient builds an unconnected go-ipmi client from the config.
func (d *Driver) newClient() (*client.Client, error) {
	c, err := client.NewClient(d.cfg.address, d.cfg.port, d.cfg.user, d.cfg.password)
	if err != nil {
		return nil, err
	}
	if d.cfg.iface == "lan" {
		c.WithInterface(client.InterfaceLan)
	} else {
		c.WithInterface(client.InterfaceLanplus)
		if d.cfg.cipher >= 0 {
			c.WithCipherSuiteID(types.CipherSuiteID(d.cfg.cipher))
		}
	}
	c.WithTimeout(d.cfg.timeout)
	c.WithRetry(d.cfg.retries)
	// Every datagram is checked before it leaves: no password in clear
	// (see auth.go).
	c.WithUDPProxy(guardDialer{secret: d.cfg.password != ""})
	return c, nil
}

// dial opens a new session.
func (d *Driver) dial(ctx context.Context) (*client.Client, error) {
	c, err := d.newClient()
	if err != nil {
		return nil, err
	}
	if err := c.Connect(ctx); err != nil {
		d.discard(c, false)
		return nil, err
	}
	return c, nil
}

// discard closes c in the background: politely (Close Session, bounded by
// ipmi.timeout) when the BMC is known to answer, else at once. Must be
// called with the session lock held, so Close's wg.Wait sees the Add.
func (d *Driver) discard(c *client.Client, polite bool) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.timeout)
		if !polite {
			cancel() // no Close Session round trip; just release the socket
		}
		defer cancel()
		_ = c.Close(ctx)
	}()
}

// with runs fn on the host's session, opening one if needed, and throws the
// session away after any error. The returned error is classified.
func (d *Driver) with(ctx context.Context, what string, fn func(context.Context, *client.Client) error) error {
	select {
	case d.sess <- struct{}{}:
	case <-ctx.Done():
		return d.classify(ctx, what, fmt.Errorf("the session is busy with another request: %w", ctx.Err()))
	}
	defer func() { <-d.sess }()
	if ctx.Err() != nil {
		// Expired while waiting for the session (select picks at random):
		// nothing was sent, the session is fine.
		return d.classify(ctx, what, fmt.Errorf("the session is busy with another request: %w", ctx.Err()))
	}
	if d.closed {
		return machine.Errorf(syscall.ENODEV, "ipmi %s: driver closed", d.cfg.hostPort())
	}
	if d.cl == nil {
		c, err := d.dial(ctx)
		if err != nil {
			err = d.classify(ctx, "open session", err)
			d.setSession("closed (open failed: " + errnoName(err) + ")")
			return err
		}
		d.cl = c
		d.mu.Lock()
		d.sessOpens++
		d.sessState = fmt.Sprintf("open (%s, since %s, %d opened)", d.sessionKind(), time.Now().Format("15:04:05"), d.sessOpens)
		d.mu.Unlock()
	}
	err := fn(ctx, d.cl)
	if err == nil {
		return nil
	}
	// Close Session politely when the BMC is alive (it answered with a
	// completion code) or may well be (the call was cancelled, e.g. by
	// Close, rather than timed out), so sessions do not pile up on the BMC.
	_, answered := types.IsResponseError(err)
	polite := (answered && ctx.Err() == nil) || ctx.Err() == context.Canceled
	d.discard(d.cl, polite)
	d.cl = nil
	err = d.classify(ctx, what, err)
	d.setSession("closed (after error: " + errnoName(err) + "; reopened on next use)")
	return err
}

func (d *Driver) sessionKind() string {
	if d.cfg.iface == "lan" {
		return "lan"
	}
	if d.cfg.cipher < 0 {
		return "lanplus, cipher auto"
	}
	return fmt.Sprintf("lanplus, cipher %d", d.cfg.cipher)
}

func errnoName(err error) string {
	switch e := machine.ErrnoOf(err); e {
	case syscall.EACCES:
		return "EACCES"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.EIO:
		return "EIO"
	case syscall.EINTR:
		return "EINTR"
	default:
		return e.Error()
	}
}

// readPower reads chassis status.
func (d *Driver) readPower(ctx context.Context) (machine.Power, error) {
	var on bool
	err := d.with(ctx, "chassis status", func(ctx context.Context, c *client.Client) error {
		st, err := c.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		on = st.PowerIsOn
		return nil
	})
	if err != nil {
		return machine.PowerUnknown, err
	}
	if on {
		return machine.PowerOn, nil
	}
	return machine.PowerOff, nil
}

// Status implements machine.StatusReader: one Get Chassis Status on the
// kept session, so a command is not answered "already on" from a poll
// that predates an ipmitool command. The answer also becomes what the next
// poll compares with, so the model does not hear it twice.
func (d *Driver) Status(ctx context.Context) (machine.Status, error) {
	d.mu.Lock()
	closing := d.closing
	d.mu.Unlock()
	if closing {
		return machine.Status{}, machine.Errorf(syscall.ENODEV, "ipmi %s: driver closed", d.cfg.hostPort())
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.budget())
	defer cancel()
	p, err := d.readPower(ctx)
	if err != nil {
		return machine.Status{}, err
	}
	st := machine.Status{Power: p, Reachable: true, Reason: "BMC reports " + string(p)}
	d.mu.Lock()
	if !d.following.Active() { // a verification reports its own verdict
		d.last, d.haveLast = st, true
	}
	d.mu.Unlock()
	return st, nil
}

// pollLoop polls chassis status until Close.
func (d *Driver) pollLoop() {
	defer d.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		case <-d.kick:
		}
		wait := d.pollOnce()
		if d.ctx.Err() != nil {
			return
		}
		d.mu.Lock()
		d.nextPoll = time.Now().Add(wait)
		d.mu.Unlock()
		t.Reset(wait)
	}
}

// backoff is the wait after n consecutive failures.
func (d *Driver) backoff(n int) time.Duration {
	limit := max(maxBackoff, d.cfg.poll)
	w := d.cfg.poll
	for i := 1; i < n && w < limit; i++ {
		w *= 2
	}
	return min(w, limit)
}

// pollOnce reads status once and reports; it returns the time to wait.
func (d *Driver) pollOnce() time.Duration {
	d.mu.Lock()
	verifying := d.following.Active()
	gen := d.cmdGen
	d.mu.Unlock()
	if verifying {
		return d.cfg.poll
	}
	select {
	case pollSem <- struct{}{}:
	case <-d.ctx.Done():
		return 0
	}
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.budget())
	start := time.Now()
	p, err := d.readPower(ctx)
	cancel()
	<-pollSem
	if d.ctx.Err() != nil {
		return 0
	}
	d.mu.Lock()
	d.lastPoll = start
	stale := d.cmdGen != gen || d.following.Active()
	var wait time.Duration
	if err != nil {
		d.failures++
		wait = d.backoff(d.failures)
		d.lastPollRes = fmt.Sprintf("failed (%s) after %v", errnoName(err), time.Since(start).Round(time.Millisecond))
	} else {
		d.failures = 0
		wait = d.cfg.poll
		d.lastPollRes = fmt.Sprintf("%s (%v)", p, time.Since(start).Round(time.Microsecond))
	}
	d.mu.Unlock()
	if stale {
		return wait
	}
	if err != nil {
		d.log.Debug("poll failed", "err", err, "retry-in", wait)
		d.report(machine.Status{Power: machine.PowerUnknown, Reachable: false, Reason: "BMC " + unreachableWord(err), Err: err}, true)
		return wait
	}
	d.report(machine.Status{Power: p, Reachable: true, Reason: "BMC reports " + string(p)}, false)
	return wait
}

func unreachableWord(err error) string {
	switch machine.ErrnoOf(err) {
	case syscall.EACCES:
		if isRefusedAuth(err) {
			return "offers no authentication that keeps the password secret"
		}
		return "rejected the credentials"
	case syscall.EIO:
		return "answered with an error"
	}
	return "unreachable"
}

// Verifies implements machine.Verifier: every verb the driver runs is
// followed until the BMC reports its target or the command's deadline
// passes, and the verdict is reported either way.
func (d *Driver) Verifies(cmd machine.Command) bool {
	_, ok := actionOf(cmd.Verb)
	return ok
}

// Power implements machine.PowerController: it returns once the BMC accepted
// the command; the verification runs in the background until
// cmd.Deadline and reports its verdict.
func (d *Driver) Power(ctx context.Context, cmd machine.Command) error {
	act, ok := actionOf(cmd.Verb)
	if !ok {
		return machine.Errorf(syscall.EINVAL, "ipmi: verb %q not supported (%s)", cmd.Verb, strings.Join(verbs, ", "))
	}
	from := d.lastPower()
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return machine.Errorf(syscall.ENODEV, "ipmi %s: driver closed", d.cfg.hostPort())
	}
	d.cmdGen++
	d.following.Stop() // superseded
	d.mu.Unlock()

	if err := d.send(ctx, act); err != nil {
		d.report(machine.Status{Reachable: reachableAfter(err), Reason: act.verb + " failed", Err: err}, true)
		return err
	}
	d.log.Info("power command accepted", "verb", act.verb)
	d.report(machine.Status{Power: act.transit, Reachable: true,
		Reason: fmt.Sprintf("BMC accepted %s; waiting for %s", act.verb, act.target)}, true)

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil
	}
	// The verification ends at the command's deadline, the one the
	// model's wait ends at, or earlier when a newer command or Close
	// cancels it.
	vctx, id := d.following.Start(d.ctx, cmd)
	deadline, _ := vctx.Deadline()
	d.verifyNote = fmt.Sprintf("%s: waiting for %s (since %s, until %s)", act.verb, act.target, time.Now().Format("15:04:05"), deadline.Format("15:04:05"))
	d.wg.Add(1)
	go d.verify(vctx, id, act, from)
	return nil
}

// send sends one chassis control.
func (d *Driver) send(ctx context.Context, act action) error {
	return d.with(ctx, "chassis control "+act.verb, func(ctx context.Context, c *client.Client) error {
		_, err := c.ChassisControl(ctx, act.control)
		return err
	})
}

// verify follows act until its target shows or ctx's deadline (the
// command's) passes, and reports the verdict. poweroff first gives the
// soft shutdown the shorter of ipmi.verify-timeout and half the window up
// to the deadline, then powers off hard and follows that to the deadline:
// the hard off is verified before the model's wait ends. Nothing is
// reported once ctx is cancelled (superseded or closing).
func (d *Driver) verify(ctx context.Context, id int, act action, from machine.Power) {
	defer d.wg.Done()
	var f followed
	defer func() {
		d.mu.Lock()
		d.following.Done(id)
		d.mu.Unlock()
		if f.reached {
			// Its last read is as fresh as a poll: the poller goes on
			// at its interval. Polling now costs the BMC a read for
			// nothing (a group command: one per member, while the
			// other members' commands still run).
			return
		}
		select {
		case d.kick <- struct{}{}: // resume normal polling now
		default:
		}
	}()
	deadline, _ := ctx.Deadline()
	window := time.Until(deadline)
	follow := act
	if act.verb == "poweroff" {
		soft := min(d.cfg.verifyTimeout, window/2)
		sctx, scancel := context.WithTimeout(ctx, soft)
		f = d.follow(sctx, act, window)
		scancel()
		if f.reached || ctx.Err() != nil {
			d.verdict(ctx, act, from, window, f)
			return
		}
		msg := fmt.Sprintf("poweroff: not off %v after the soft shutdown; powering off hard", soft.Round(100*time.Millisecond))
		if d.rep != nil {
			d.rep.Event(machine.EventNotify, msg)
		}
		d.log.Info(msg)
		follow, _ = actionOf("off")
		follow.verb = "poweroff (hard off)"
		hctx, hcancel := context.WithTimeout(ctx, d.cfg.budget())
		err := d.send(hctx, follow)
		hcancel()
		if err != nil {
			if ctx.Err() == nil {
				// The verdict: the machine stays where the soft
				// phase left it, and the errno says why.
				p := f.last
				if p == "" {
					p = machine.PowerUnknown
				}
				reason := "poweroff: hard off failed"
				d.setVerify(reason + ": " + errnoName(err))
				d.report(machine.Status{Power: p, Reachable: reachableAfter(err), Reason: reason, Err: err}, true)
			}
			return
		}
		from = f.last
	}
	f = d.follow(ctx, follow, window)
	d.verdict(ctx, follow, from, window, f)
}

// followed is what a verification saw.
type followed struct {
	reached bool
	last    machine.Power // last power read, "" if none
	lastErr error         // error of the last read, nil if it answered
}

// follow re-reads chassis status every verifyInterval until act.target
// shows (reported at once as verified) or ctx ends. window is the
// command's whole window, which bounds the settle time of a cycle.
func (d *Driver) follow(ctx context.Context, act action, window time.Duration) followed {
	start := time.Now()
	seenOff := false
	var f followed
	_ = machine.Poll(ctx, verifyInterval, func(ctx context.Context) (bool, error) {
		rctx, rcancel := context.WithTimeout(ctx, d.cfg.budget())
		p, err := d.readPower(rctx)
		rcancel()
		if err != nil {
			// A read the deadline cut short says nothing about the
			// BMC: the verdict must not blame an answering BMC.
			if ctx.Err() == nil {
				f.lastErr = err
			}
			return false, err
		}
		f.last, f.lastErr = p, nil
		if p == machine.PowerOff {
			seenOff = true
		}
		elapsed := time.Since(start)
		cycle := act.control == chassis.ChassisControlPowerCycle
		if p != act.target || (cycle && !seenOff && elapsed < min(cycleSettle, window/2)) {
			return false, nil // for a cycle, wait a little for its off part
		}
		note := ""
		if cycle && !seenOff {
			note = " (no off observed)"
		}
		reason := fmt.Sprintf("verified: BMC reports %s %v after %s%s", p, elapsed.Round(time.Millisecond), act.verb, note)
		d.setVerify(reason)
		d.report(machine.Status{Power: p, Reachable: true, Reason: reason}, true)
		f.reached = true
		return true, nil
	})
	return f
}

// verdict reports a verification that ended without its target, unless it
// was cancelled: the machine's last seen power with ETIMEDOUT, or the errno
// of the last read when the BMC stopped answering.
func (d *Driver) verdict(ctx context.Context, act action, from machine.Power, window time.Duration, f followed) {
	if f.reached || errors.Is(ctx.Err(), context.Canceled) {
		return
	}
	last := f.last
	if last == "" {
		last = machine.PowerUnknown
	}
	if from == machine.PowerUnknown || from == "" || from.Transitional() {
		from = last
	}
	reason := fmt.Sprintf("BMC never transitioned from %s to %s within %v after %s (last seen: %s)", from, act.target, window.Round(time.Millisecond), act.verb, last)
	verr := machine.Errorf(syscall.ETIMEDOUT, "ipmi %s: %s", d.cfg.hostPort(), reason)
	if f.lastErr != nil {
		verr = machine.Errorf(machine.ErrnoOf(f.lastErr), "ipmi %s: %s: %v", d.cfg.hostPort(), reason, f.lastErr)
	}
	d.setVerify(reason)
	d.report(machine.Status{Power: last, Reachable: f.lastErr == nil, Reason: reason, Err: verr}, true)
}

func (d *Driver) setVerify(s string) {
	d.mu.Lock()
	d.verifyNote = s
	d.mu.Unlock()
}
