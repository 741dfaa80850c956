package local

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/internal/nsthread"
	"github.com/machinefs/machinefs/drivers/internal/wolarm"
	"github.com/machinefs/machinefs/machine"
)

// driver carries out power verbs on the machine its process runs on.
type driver struct {
	cfg settings
	rep machine.Reporter
	log *slog.Logger
	// ns is the network namespace of the thread that called New, where
	// local.wol-interface is looked up.
	ns nsthread.Home

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	init     initSystem
	wol      string             // the "wol" line of state
	last     string             // the last command and how it was carried out
	sleeping context.CancelFunc // ends the wait for a resume, nil when none
}

var (
	_ machine.PowerController = (*driver)(nil)
	_ machine.Describer       = (*driver)(nil)
	_ machine.ThisMachine     = (*driver)(nil)
)

// New builds the driver: it detects the init system and reports the
// machine on (it runs this process); on a machine that is not the one
// local.hostname names it reports nothing (state's local-machine line and
// the check report say why).
func New(_ context.Context, env machine.DriverEnv) (machine.Driver, error) {
	cfg, err := parseConfig(env.Config)
	if err != nil {
		return nil, err
	}
	d := &driver{cfg: cfg, rep: env.Report, log: env.Log, ns: nsthread.CallerHome(), init: detectInit()}
	if d.rep == nil {
		d.rep = machine.NopReporter{}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if cfg.wolIface == "" {
		d.wol = "not configured (" + KeyWoLInterface + " is empty)"
	} else {
		d.wol = "not armed yet: armed on " + cfg.wolIface + " before poweroff, off, init 0 and suspend"
	}
	if err := checkMachine(cfg.hostname); err != nil {
		// Another machine: in a cluster, the agent that runs the host
		// while its own agent is gone (to wake and probe it). What power
		// the machine has is the other drivers' to say, not this one's.
		d.log.Info("local driver on another machine: it reports nothing and refuses every verb", "reason", err)
	} else {
		d.rep.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "this machine (" + cfg.hostname + ") runs machinefs; init " + d.init.kind})
	}
	d.log.Info("local driver", "hostname", cfg.hostname, "init", d.init.String())
	return d, nil
}

func (d *driver) Kind() string { return "local" }

// Verbs: what an init system does for the machine it runs. pause is
// suspend: a physical machine has no CPUs to stop but its own.
func (d *driver) Verbs() []string {
	return []string{"poweroff", "off", "reboot", "init", "suspend", "pause"}
}

// RunsThisProcess implements machine.ThisMachine: the machine is this one
// when its name is local.hostname.
func (d *driver) RunsThisProcess() bool { return checkMachine(d.cfg.hostname) == nil }

// verbOf names cmd without modifiers: "poweroff", "init 3".
func verbOf(cmd machine.Command) string {
	if cmd.Verb == "init" {
		return fmt.Sprintf("init %d", cmd.InitLevel)
	}
	return cmd.Verb
}

// armsWoL says whether cmd leaves the machine where only Wake-on-LAN can
// bring it back.
func armsWoL(cmd machine.Command) bool {
	switch cmd.Verb {
	case "poweroff", "off", "suspend", "pause":
		return true
	}
	return cmd.Verb == "init" && cmd.InitLevel == 0
}

// plan returns what carries out cmd on init, in words, or why nothing can.
func (d *driver) plan(cmd machine.Command, init initSystem) (func(context.Context) error, string, error) {
	verb := verbOf(cmd)
	if cmd.Verb == "off" {
		return func(context.Context) error { return hardPowerOff() }, "sync, then reboot(2) POWER_OFF (no orderly stop)", nil
	}
	if (cmd.Verb == "suspend" || cmd.Verb == "pause") && init.kind != initSystemd {
		return nil, "", machine.Errorf(syscall.ENOTSUP, "local: %s needs systemd-logind; this machine's init is %s (%s)", verb, init.kind, init.how)
	}
	switch init.kind {
	case initBusybox:
		sig, err := busyboxSignal(cmd)
		if err != nil {
			return nil, "", err
		}
		return func(context.Context) error { return signalInit(sig) }, sigName(sig) + " to PID 1 (busybox init)", nil
	case initSysV:
		reqs, words, err := sysvRequests(cmd)
		if err != nil {
			return nil, "", err
		}
		return func(context.Context) error { return writeInitctl(init.initctl, reqs) }, words + " through " + init.initctl, nil
	case initSystemd:
		sc, err := systemdCallFor(cmd)
		if err != nil {
			return nil, "", err
		}
		if cmd.Verb == "suspend" || cmd.Verb == "pause" {
			return func(ctx context.Context) error { return d.suspend(ctx, sc) }, sc.words, nil
		}
		return func(ctx context.Context) error {
			c, err := systemBus(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			return sc.call(ctx, c)
		}, sc.words, nil
	}
	return nil, "", machine.Errorf(syscall.ENOTSUP, "local: %s: this machine's init cannot be asked: %s (machinefs knows systemd, sysvinit and busybox init; off, which is the kernel's, still works)", verb, init.how)
}

// Power carries out cmd on this machine through its init system and
// returns once the init accepted it. What follows (the machine going
// down) the driver cannot see: it reports stopping, rebooting or paused,
// and the model, or the cluster when this agent's lease goes, concludes.
func (d *driver) Power(ctx context.Context, cmd machine.Command) error {
	if !slices.Contains(d.Verbs(), cmd.Verb) {
		return machine.Errorf(syscall.ENOTSUP, "local: %s: not supported (poweroff, off, reboot, init N, suspend, pause)", cmd.Verb)
	}
	if cmd.Verb == "init" && (cmd.InitLevel < 0 || cmd.InitLevel > 6) {
		return machine.Errorf(syscall.EINVAL, "local: init %d: level is not 0-6", cmd.InitLevel)
	}
	// The guard comes first: nothing is detected, armed or sent on a
	// machine this host does not name.
	if err := checkMachine(d.cfg.hostname); err != nil {
		d.log.Warn("power verb refused", "verb", cmd.String(), "err", err)
		return err
	}
	init := detectInit()
	d.mu.Lock()
	closed := d.closed
	d.init = init
	d.mu.Unlock()
	if closed {
		return machine.Errorf(syscall.ESHUTDOWN, "local: driver closed")
	}
	act, words, err := d.plan(cmd, init)
	if err != nil {
		d.setLast(fmt.Sprintf("%s refused at %s: %v", verbOf(cmd), stamp(), err))
		return err
	}
	if armsWoL(cmd) && d.cfg.wolIface != "" {
		d.armWoL(ctx, cmd)
	}
	what := fmt.Sprintf("%s: %s (init %s)", verbOf(cmd), words, init.kind)
	if cmd.Label != "" {
		what += " (" + cmd.Label + ")"
	}
	transit := transitOf(cmd)
	if cmd.Verb == "off" {
		// reboot(2) returns only when it fails: what is about to
		// happen is said first.
		d.accepted(what, transit)
		if err := act(ctx); err != nil {
			d.setLast(fmt.Sprintf("%s failed at %s: %v", verbOf(cmd), stamp(), err))
			return err
		}
		return nil
	}
	if err := act(ctx); err != nil {
		d.setLast(fmt.Sprintf("%s failed at %s: %v", verbOf(cmd), stamp(), err))
		d.log.Warn("power verb failed", "verb", cmd.String(), "err", err)
		return err
	}
	d.accepted(what, transit)
	return nil
}

// transitOf is the state the machine is in once cmd was accepted: the
// driver's last word on it.
func transitOf(cmd machine.Command) machine.Power {
	switch {
	case cmd.Verb == "poweroff", cmd.Verb == "off", cmd.Verb == "init" && cmd.InitLevel == 0:
		return machine.PowerStopping
	case cmd.Verb == "reboot", cmd.Verb == "init" && cmd.InitLevel == 6:
		return machine.PowerRebooting
	case cmd.Verb == "suspend", cmd.Verb == "pause":
		return machine.PowerPaused
	}
	return "" // init 1-5: what runs changes, not power
}

// accepted records and reports a command the init accepted.
func (d *driver) accepted(what string, transit machine.Power) {
	d.setLast(what + " at " + stamp())
	d.log.Info("power verb accepted", "what", what)
	d.rep.Event(machine.EventNotify, "local: "+what)
	if transit != "" {
		d.rep.Report(machine.Status{Power: transit, Reachable: true, Reason: what})
	}
}

// armWoL arms Wake-on-LAN on local.wol-interface. A failure does not stop
// the command: a machine that must go down goes down, and the operator
// learns from a warning event and state's wol line that wol will not
// wake it.
func (d *driver) armWoL(ctx context.Context, cmd machine.Command) {
	var res wolarm.Result
	err := d.inNS(func() error {
		var err error
		res, err = wolarm.Arm(ctx, d.cfg.wolIface)
		return err
	})
	var line string
	if err != nil {
		line = "not armed: " + err.Error()
		d.log.Warn("wake-on-lan not armed", "interface", d.cfg.wolIface, "err", err)
		d.rep.Event(machine.EventWarning, fmt.Sprintf("local: %s: Wake-on-LAN not armed, wol will not wake this machine: %v", verbOf(cmd), err))
	} else {
		line = res.String()
		d.rep.Event(machine.EventWoL, fmt.Sprintf("local: %s: Wake-on-LAN %s", verbOf(cmd), line))
	}
	d.mu.Lock()
	d.wol = line
	d.mu.Unlock()
}

func (d *driver) inNS(fn func() error) error { return d.ns.Run(fn) }

// suspend asks logind to suspend the machine, and waits in the background
// for its PrepareForSleep(false) signal to report the machine on again.
// The subscription is made before the call, so the signal cannot be
// missed.
func (d *driver) suspend(ctx context.Context, sc systemdCall) error {
	c, err := systemBus(ctx)
	if err != nil {
		return err
	}
	ch, err := watchSleep(ctx, c)
	if err == nil {
		err = sc.call(ctx, c)
	}
	if err != nil {
		_ = c.Close()
		return err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = c.Close()
		return nil
	}
	if d.sleeping != nil {
		d.sleeping() // a newer suspend waits instead
	}
	wctx, cancel := context.WithCancel(d.ctx)
	d.sleeping = cancel
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		defer c.Close()
		for {
			select {
			case s, ok := <-ch:
				if !ok {
					return
				}
				if woke(s) {
					d.setLast("resumed from suspend at " + stamp())
					d.rep.Report(machine.Status{Power: machine.PowerOn, Reachable: true, Reason: "resumed from suspend (logind PrepareForSleep)"})
					return
				}
			case <-wctx.Done():
				return
			}
		}
	}()
	return nil
}

func (d *driver) setLast(s string) {
	d.mu.Lock()
	d.last = s
	d.mu.Unlock()
}

func stamp() string { return time.Now().Format("15:04:05") }

// Describe adds which machine this is, its init system, whether
// Wake-on-LAN is armed and the last command.
func (d *driver) Describe() [][2]string {
	me := d.cfg.hostname + " (this machine)"
	if err := checkMachine(d.cfg.hostname); err != nil {
		me = err.Error()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	lines := [][2]string{
		{"local-machine", me},
		{"local-init", d.init.String()},
		{"wol", d.wol},
	}
	if d.last != "" {
		lines = append(lines, [2]string{"local-last", d.last})
	}
	return lines
}

// Close ends the wait for a resume. The machine is not touched.
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
