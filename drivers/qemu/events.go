package qemu

import (
	"encoding/json"
	"fmt"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// onEvent follows the guest's QMP events, so power shows at once what the
// guest did on its own (halted, rebooted, panicked) and what a command
// did, with the reason. It runs on the QMP reader, in QEMU's order, and
// only reports: it never waits for QEMU.
func (m *Machine) onEvent(g *guest, ev qmpEvent) {
	var d struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
		Action string `json:"action"`
		Info   *struct {
			Type string `json:"type"`
		} `json:"info"`
	}
	json.Unmarshal(ev.Data, &d)
	// Reports go out after the lock is released: the model may hold
	// its own lock while it asks the driver.
	var out []machine.Status
	defer func() {
		for _, st := range out {
			m.report.Report(st)
		}
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.g != g {
		return // a guest Close let go of, or one that ended
	}
	report := func(p machine.Power, reason string) {
		out = append(out, machine.Status{Power: p, Reachable: true, Reason: reason})
	}
	switch ev.Name {
	case "SHUTDOWN":
		// QEMU exits after it (no -no-shutdown): the watcher reports
		// off when the process is gone, so "on" then starts a new one.
		g.shutdown = d.Reason
	case "POWERDOWN":
		m.log.Info("qemu: ACPI power button pressed", "pid", g.pid)
	case "RESET":
		g.crashed = ""
		why := g.take("guest reset (" + d.Reason + ")")
		if d.Guest {
			why = "guest rebooted itself (" + d.Reason + ")"
		}
		if !g.paused {
			report(machine.PowerOn, why)
		}
	case "STOP":
		if g.crashed != "" || g.shutdown != "" {
			return // the panic or the shutdown said it
		}
		g.paused = true
		report(machine.PowerPaused, g.take("guest paused (QMP STOP: see info status)"))
	case "RESUME":
		g.paused, g.crashed = false, ""
		report(machine.PowerOn, g.take("guest resumed (QMP RESUME)"))
	case "GUEST_PANICKED":
		what := "guest panicked"
		if d.Info != nil && d.Info.Type != "" {
			what += " (" + d.Info.Type + ")"
		}
		g.crashed = fmt.Sprintf("%s; QEMU's panic action: %s", what, d.Action)
		out = append(out, machine.Status{Power: machine.PowerCrashed, Reachable: true, Reason: g.crashed, Err: machine.Errorf(syscall.EIO, "%s", what)})
	}
}

// take returns the reason a command left for the event it causes, or def.
// Called with Machine.mu held.
func (g *guest) take(def string) string {
	why := g.next
	g.next = ""
	if why == "" {
		return def
	}
	return why
}

// expectEvent leaves the reason for the event the next command causes.
func (m *Machine) expectEvent(g *guest, why string) {
	m.mu.Lock()
	g.next = why
	m.mu.Unlock()
}
