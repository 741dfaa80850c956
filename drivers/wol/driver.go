package wol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/nsthread"
	"github.com/machinefs/machinefs/machine"
)

// driver wakes one machine.
type driver struct {
	cfg settings
	ns  nsthread.Home
	rep machine.Reporter
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu            sync.Mutex
	closed        bool
	following     machine.Follower // the wake being verified
	gen           int              // bumped by every wake: older watch probes are stale
	shown         machine.Power    // the power last reported, "" before the first report
	lastProbe     string
	lastInterface string // interface the last raw frame went out on
}

var (
	_ machine.PowerController = (*driver)(nil)
	_ machine.Verifier        = (*driver)(nil)
	_ machine.Describer       = (*driver)(nil)
	_ machine.StatusReader    = (*driver)(nil)
)

// New builds a Wake-on-LAN driver. The driver sends and probes from the
// network namespace of the thread that calls New (the process's namespace
// for an ordinary goroutine). Config errors wrap syscall.EINVAL; a
// wol.interface that does not exist is one. If a probe is configured, New
// starts watching the machine in the background: a probe at once and then
// every wol.probe-interval, reporting what changes.
func New(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return nil, err
	}
	ns := nsthread.CallerHome()
	if cfg.iface != "" {
		var ierr error
		if err := ns.Run(func() error { _, ierr = net.InterfaceByName(cfg.iface); return nil }); err != nil {
			ns.Close()
			return nil, err
		}
		if ierr != nil {
			ns.Close()
			return nil, machine.Errorf(syscall.EINVAL, "wol: wol.interface %q: no such interface (%v)", cfg.iface, ierr)
		}
	}
	d := &driver{cfg: cfg, ns: ns, rep: env.Report, log: env.Log, lastProbe: "never"}
	if d.rep == nil {
		d.rep = machine.NopReporter{}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if cfg.probe == nil {
		d.rep.Report(machine.Status{Power: machine.PowerUnknown, Reason: "no probe configured: WoL cannot report power"})
	} else {
		d.wg.Add(1)
		go d.watch()
	}
	return d, nil
}

func (d *driver) Kind() string { return "wol" }

// Verbs: wol, on and resume send a magic packet. pause and suspend are
// listed so that they fail with a reason instead of "unknown verb": ctys maps
// them to poweroff on WoL hosts, which Wake-on-LAN cannot do.
func (d *driver) Verbs() []string { return []string{"wol", "on", "resume", "pause", "suspend"} }

// Verifies implements machine.Verifier: with a probe, a wake is followed
// until the probe answers or the command's deadline passes, and the verdict
// is reported either way. Without one the wake is answered at once (it
// cannot be confirmed).
func (d *driver) Verifies(cmd machine.Command) bool {
	switch cmd.Verb {
	case "wol", "on", "resume":
		return d.cfg.probe != nil
	}
	return false
}

// Power sends the magic packet and returns once it is on the wire; the wake
// is verified in the background by the probe, until cmd.Deadline.
func (d *driver) Power(ctx context.Context, cmd machine.Command) error {
	switch cmd.Verb {
	case "wol", "on", "resume":
	case "pause", "suspend":
		return machine.Errorf(syscall.ENOTSUP, "wol: %s: Wake-on-LAN can only wake a machine; ctys maps %s to poweroff on WoL hosts, which needs a driver that can power off (e.g. ipmi)", cmd.Verb, cmd.Verb)
	default:
		return machine.Errorf(syscall.ENOTSUP, "wol: %s: Wake-on-LAN can only wake a machine (wol, on, resume)", cmd.Verb)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return machine.Errorf(syscall.EIO, "wol: driver is closed")
	}

	via, err := d.send(ctx)
	if err != nil {
		d.log.Warn("wake failed", "mac", d.cfg.packet.Target.String(), "err", err)
		return err
	}
	what := fmt.Sprintf("magic packet for %s sent %s", d.cfg.packet.Target, via)
	if cmd.Label != "" {
		what += " (" + cmd.Label + ")"
	}
	d.log.Info("magic packet sent", "mac", d.cfg.packet.Target.String(), "via", via)
	d.rep.Event(machine.EventWoL, what)

	if d.cfg.probe == nil {
		// The error ends the command: without it the model would keep
		// waiting for "on" until wait-timeout, the host busy meanwhile.
		d.rep.Report(machine.Status{Power: machine.PowerUnknown, Reason: "no probe configured: WoL cannot report power",
			Err: machine.Errorf(syscall.ENOTSUP, "wol: packet sent, but the wake cannot be confirmed: no probe configured (set probe = tcp:HOST:PORT or icmp:HOST)")})
		return nil
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	vctx, id := d.following.Start(d.ctx, cmd) // a newer wake supersedes the one verified
	d.gen++
	d.shown = machine.PowerStarting
	d.wg.Add(1)
	d.mu.Unlock()
	// Reported before the verification starts, so its verdict comes after;
	// and outside d.mu, which Describe takes.
	d.rep.Report(machine.Status{Power: machine.PowerStarting, Reachable: true, Reason: what + "; waiting for probe " + d.cfg.probe.String()})
	go d.verify(vctx, id)
	return nil
}

// Status implements machine.StatusReader: one probe attempt, so "on" is not
// answered "already on" for a machine that went to sleep since the last
// probe. A probe that does not answer cannot tell off from asleep or
// unreachable: unknown, and the model then sends the packet. The answer is
// what the next background probe compares with, so the model does not hear
// it twice.
func (d *driver) Status(ctx context.Context) (machine.Status, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return machine.Status{}, machine.Errorf(syscall.EIO, "wol: driver is closed")
	}
	if d.cfg.probe == nil {
		return machine.Status{Power: machine.PowerUnknown, Reason: "no probe configured: WoL cannot report power"}, nil
	}
	st := d.observe(d.probeOnce(ctx))
	d.mu.Lock()
	if !d.following.Active() { // a verification reports its own verdict
		d.shown = st.Power
	}
	d.mu.Unlock()
	return st, nil
}

// observe turns the result of one probe into what it says about power.
func (d *driver) observe(probeErr error) machine.Status {
	p := d.cfg.probe.String()
	if probeErr != nil {
		return machine.Status{Power: machine.PowerUnknown, Reason: "probe " + p + " did not answer (off, asleep or unreachable): " + probeErr.Error()}
	}
	return machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "probe " + p + " answered"}
}

func (d *driver) send(ctx context.Context) (string, error) {
	var via string
	err := d.ns.Run(func() error {
		if b := d.cfg.broadcast; b != nil {
			via = "by UDP to " + b.String()
			if d.cfg.iface != "" {
				via += " on " + d.cfg.iface
			}
			return SendUDP(ctx, b, d.cfg.iface, d.cfg.packet)
		}
		name := d.cfg.iface
		if name == "" {
			ifi, err := DefaultInterface()
			if err != nil {
				return err
			}
			name = ifi.Name
		}
		via = "as raw frame on " + name
		d.mu.Lock()
		d.lastInterface = name
		d.mu.Unlock()
		return SendRaw(ctx, name, d.cfg.packet)
	})
	return via, err
}

func (d *driver) probeOnce(ctx context.Context) error {
	p := *d.cfg.probe
	timeout := min(d.cfg.interval, maxProbeTimeout)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	ip, err := p.resolve(rctx)
	cancel()
	if err == nil {
		err = d.ns.Run(func() error { return p.try(ctx, ip, timeout) })
	}
	if ctx.Err() != nil {
		return ctx.Err() // superseded or closed: not a result
	}
	res := "answered"
	if err != nil {
		res = "no answer: " + err.Error()
		if errors.Is(err, errRefused) {
			res = err.Error()
		}
	}
	d.mu.Lock()
	d.lastProbe = time.Now().Format(time.RFC3339) + " " + p.String() + " " + res
	d.mu.Unlock()
	return err
}

// watch probes the machine every wol.probe-interval until Close, as the
// ipmi driver polls its BMC: a machine switched off or on behind
// machinefs's back shows within an interval. It reports only changes, so
// a verdict's reason ("no answer after wake") stays until something new
// is seen, and it stands aside while a wake is verified.
func (d *driver) watch() {
	defer d.wg.Done()
	_ = machine.Poll(d.ctx, d.cfg.interval, func(ctx context.Context) (bool, error) {
		d.mu.Lock()
		verifying, gen := d.following.Active(), d.gen
		d.mu.Unlock()
		if verifying {
			return false, nil // the verification probes and reports
		}
		err := d.probeOnce(ctx)
		if ctx.Err() != nil {
			return false, nil // closed: not a result
		}
		st := d.observe(err)
		d.mu.Lock()
		// A wake since this probe started owns the state now.
		report := d.gen == gen && !d.following.Active() && d.shown != st.Power
		if report {
			d.shown = st.Power
		}
		d.mu.Unlock()
		if report {
			d.rep.Report(st)
		}
		return false, nil
	})
}

// verify probes every wol.probe-interval after a wake until the probe
// answers (on) or ctx's deadline, the command's, passes: then the verdict
// is unknown with EHOSTDOWN, "no answer after wake". A cancelled ctx (a
// newer wake, Close) reports nothing.
func (d *driver) verify(ctx context.Context, id int) {
	defer d.wg.Done()
	defer func() {
		d.mu.Lock()
		d.following.Done(id)
		d.mu.Unlock()
	}()
	p := d.cfg.probe.String()
	start := time.Now()
	tries := 0
	var last error
	err := machine.Poll(ctx, d.cfg.interval, func(ctx context.Context) (bool, error) {
		tries++
		err := d.probeOnce(ctx)
		if err != nil && ctx.Err() == nil {
			last = err
		}
		return err == nil, err
	})
	var st machine.Status
	switch {
	case err == nil:
		st = d.observe(nil)
	case errors.Is(err, context.Canceled):
		return
	default:
		why := "none finished before the deadline"
		if last != nil {
			why = "last: " + last.Error()
		}
		st = machine.Status{
			Power:  machine.PowerUnknown,
			Reason: "no answer after wake",
			Err: machine.Errorf(syscall.EHOSTDOWN, "wol: no answer after wake: probe %s failed %d times in %s, every %s; %s",
				p, tries, time.Since(start).Round(time.Millisecond), d.cfg.interval, why),
		}
	}
	d.mu.Lock()
	current := d.following.Current(id) && !d.closed
	if current {
		d.shown = st.Power
	}
	d.mu.Unlock()
	if current {
		d.rep.Report(st)
	}
}

// Describe adds wol-target, wol-via, probe and last-probe to state.
func (d *driver) Describe() [][2]string {
	target := d.cfg.packet.Target.String()
	if len(d.cfg.packet.Password) > 0 {
		target += " (SecureOn password set)"
	}
	var via string
	switch {
	case d.cfg.broadcast != nil:
		via = "udp " + d.cfg.broadcast.String()
		if d.cfg.iface != "" {
			via += " on " + d.cfg.iface
		}
	case d.cfg.iface != "":
		via = "raw frame on " + d.cfg.iface
	default:
		via = "raw frame on first up interface"
	}
	probe := "none"
	if d.cfg.probe != nil {
		probe = fmt.Sprintf("%s every %s", d.cfg.probe, d.cfg.interval)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.broadcast == nil && d.cfg.iface == "" && d.lastInterface != "" {
		via += " (last: " + d.lastInterface + ")"
	}
	return [][2]string{
		{"wol-target", target},
		{"wol-via", via},
		{"probe", probe},
		{"last-probe", d.lastProbe},
	}
}

// Close stops the probes and waits for them.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
	d.ns.Close()
	return nil
}
