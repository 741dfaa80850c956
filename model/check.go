package model

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// The tool and permission report (ctys-plugins): for each of a host's
// drivers, what it needs (programs, devices, capabilities, kernel
// features, a BMC that takes the credentials, an SSH server with the
// known host key) and whether the host has it.
//
// A report is made when the drivers are (re)built, in the background and
// bounded by the host's timeout, so a config write never waits for it, and
// every requirement that is missing and was not in the host's previous
// report is published once as a warning event: the operator sees it
// before the first command needs it. Reading the host's check file makes
// a new report when the last one is older than checkFresh; readers at the
// same time share one run. A reader waits for that run only when the last
// report is of other drivers than the host has now (its config changed):
// otherwise it gets the last report at once, and the run's result shows at
// the next read, so a walk of the tree (grep -r) never waits for BMCs and
// SSH servers that do not answer. The tree's check file shows only the
// reports already made: one read never runs hundreds of network checks.

// checkFresh is how long a report is served as it is on a read.
const checkFresh = 5 * time.Second

// checkSlots bounds how many hosts of this process check at once: a tree
// loaded with hundreds of BMCs must not open hundreds of sessions at the
// same moment.
var checkSlots = make(chan struct{}, 16)

// CheckReport is one host's tool and permission report.
type CheckReport struct {
	// At is when the report was made, Took how long it took.
	At   time.Time
	Took time.Duration
	// Drivers are the host's drivers, in config order, and the
	// switches of the machine machinefs runs on (as "vswitch").
	Drivers []DriverCheck
	// Note says why there is no report, or what it lacks ("no driver
	// configured", "another agent runs the host").
	Note string
}

// DriverCheck is what one driver needs.
type DriverCheck struct {
	Driver       string
	Requirements []machine.Requirement
}

// Missing names the requirements that are missing and not optional,
// "DRIVER WHAT" each.
func (r *CheckReport) Missing() []string {
	var out []string
	for _, d := range r.Drivers {
		for _, q := range d.Requirements {
			if !q.Present && !q.Optional {
				out = append(out, d.Driver+" "+q.What)
			}
		}
	}
	return out
}

// hostChecks is a host's last report and the run in flight, if any.
type hostChecks struct {
	mu      sync.Mutex
	last    *CheckReport
	lastGen uint64        // the drivers' generation last was made for
	running chan struct{} // closed when the run in flight ends; nil: none
	again   bool          // the drivers changed during the run: run again after it
}

// checks returns the host's check state, made on first use.
func (h *Host) checks() *hostChecks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.check == nil {
		h.check = &hostChecks{}
	}
	return h.check
}

// checkSoon starts a report in the background (the drivers were built);
// one in flight runs again when it ends, since it read the old config.
func (h *Host) checkSoon() {
	c := h.checks()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running != nil {
		c.again = true
		return
	}
	c.running = make(chan struct{})
	go h.checkLoop(c, c.running)
}

// checkLoop makes reports until none is asked for any more, then closes
// done.
func (h *Host) checkLoop(c *hostChecks, done chan struct{}) {
	for {
		r, gen, warn := h.makeReport()
		c.mu.Lock()
		prev := c.last
		c.last, c.lastGen = r, gen
		again := c.again
		c.again = false
		if !again {
			c.running = nil
			close(done)
		}
		c.mu.Unlock()
		if warn && h.driverGen() == gen {
			h.warnMissing(prev, r)
		}
		if !again {
			return
		}
	}
}

// Check returns the host's report, made anew when the last is older than
// checkFresh. When the last report is of the drivers the host has, it is
// returned at once, noted as being checked again. Otherwise (none yet, or
// the config changed) the read waits for the run at most the host's
// timeout (and a second more for a run queued behind others); after that
// it gets the report it has, with a note that a new one is being made.
func (h *Host) Check(ctx context.Context) *CheckReport {
	c := h.checks()
	gen := h.driverGen()
	c.mu.Lock()
	last := c.last
	current := last != nil && c.lastGen == gen
	if current && time.Since(last.At) < checkFresh && c.running == nil {
		c.mu.Unlock()
		return last
	}
	done := c.running
	if done == nil {
		done = make(chan struct{})
		c.running = done
		go h.checkLoop(c, done)
	}
	c.mu.Unlock()
	if current {
		r := *last
		r.Note = strings.TrimSpace(r.Note + " (checked again now: read again for the result)")
		return &r
	}
	timer := time.NewTimer(h.Config().Duration("timeout") + time.Second)
	defer timer.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-timer.C:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last != last || last == nil {
		if c.last != nil {
			return c.last
		}
		return &CheckReport{Note: "being checked: no report yet"}
	}
	r := *last
	r.Note = strings.TrimSpace(r.Note + " (a new check is running)")
	return &r
}

// LastCheck is the host's last report without running one, nil if none
// was made yet.
func (h *Host) LastCheck() *CheckReport {
	c := h.checks()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// makeReport runs every driver's check at once, each bounded by the
// host's timeout. warn is false for a report that is not about this
// agent's drivers (another agent runs the host).
func (h *Host) makeReport() (r *CheckReport, gen uint64, warn bool) {
	if node, here := h.Owner(); !here {
		return &CheckReport{At: time.Now(), Note: "the host runs on agent " + node + ": read its check file there"}, 0, false
	}
	checkSlots <- struct{}{}
	defer func() { <-checkSlots }()
	h.mu.Lock()
	cfg := h.cfg.Clone()
	built := append([]machine.Driver(nil), h.drivers.list...)
	gen = h.drivers.gen
	h.mu.Unlock()
	names := driverNames(valueOr(cfg, "drivers", valueOr(cfg, "driver", "")))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration("timeout"))
	defer cancel()
	sw, ok := h.tree.switches.(machine.Requirer)
	if ok && !h.IsLocal() {
		sw = nil
	}
	r = &CheckReport{Drivers: make([]DriverCheck, len(names), len(names)+1)}
	if sw != nil {
		r.Drivers = append(r.Drivers, DriverCheck{Driver: "vswitch"})
	}
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { r.Drivers[i] = h.checkDriver(ctx, name, cfg, built) })
	}
	if sw != nil {
		wg.Go(func() { r.Drivers[len(names)].Requirements = sw.Requirements(ctx) })
	}
	wg.Wait()
	if len(names) == 0 {
		r.Note = "no driver configured"
	}
	r.At, r.Took = time.Now(), time.Since(start)
	return r, gen, true
}

// checkDriver runs one driver's check: the spec's Check with the driver
// New built, if it did.
func (h *Host) checkDriver(ctx context.Context, name string, cfg *ConfigFile, built []machine.Driver) DriverCheck {
	dc := DriverCheck{Driver: name}
	spec, ok := h.tree.specs[name]
	switch {
	case !ok:
		dc.Requirements = []machine.Requirement{machine.Lack("driver "+name, "no such driver in this machinefs")}
		return dc
	case spec.Check == nil:
		return dc
	}
	env := machine.CheckEnv{Path: h.path, Config: cfg,
		Log: h.tree.log.With(slog.String("host", h.path), slog.String("driver", name), slog.String("check", "yes"))}
	for _, d := range built {
		if d.Kind() == name {
			env.Driver = d
		}
	}
	dc.Requirements = spec.Check(ctx, env)
	if ctx.Err() != nil {
		// A check that ran out of time says so, whatever it returned.
		dc.Requirements = append(dc.Requirements, machine.Lack("check within timeout", fmt.Sprintf("the checks took longer than the host's timeout (%s)", cfg.Duration("timeout"))))
	}
	return dc
}

// warnMissing publishes, once, each missing requirement of r that prev
// did not have missing: "check: qemu: missing binary X (not in PATH)".
func (h *Host) warnMissing(prev, r *CheckReport) {
	had := map[string]bool{}
	if prev != nil {
		for _, d := range prev.Drivers {
			for _, q := range d.Requirements {
				if !q.Present && !q.Optional {
					had[d.Driver+"\x00"+q.What] = true
				}
			}
		}
	}
	for _, d := range r.Drivers {
		for _, q := range d.Requirements {
			if q.Present || q.Optional || had[d.Driver+"\x00"+q.What] {
				continue
			}
			h.emit(machine.EventWarning, fmt.Sprintf("check: %s: missing %s (%s)", d.Driver, q.What, q.Reason))
		}
	}
}

// CheckSummaries are the last reports of every host and subhost, in tree
// order, without running any.
func (t *Tree) CheckSummaries() []HostCheck {
	var out []HostCheck
	var walk func(parent *Host)
	walk = func(parent *Host) {
		for _, h := range t.Hosts(parent) {
			out = append(out, HostCheck{Host: h, Report: h.LastCheck()})
			walk(h)
		}
	}
	walk(nil)
	return out
}

// HostCheck is a host and its last report (nil: none made yet).
type HostCheck struct {
	Host   *Host
	Report *CheckReport
}
