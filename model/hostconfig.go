package model

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// HasSecrets reports whether a secret key is set (the config file is then
// readable by root only).
func (h *Host) HasSecrets() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hasSecretsLocked()
}

func (h *Host) hasSecretsLocked() bool {
	for _, k := range h.cfg.Keys() {
		if h.tree.IsSecret(k) {
			return true
		}
	}
	return false
}

// Config returns a snapshot of the host's configuration.
func (h *Host) Config() *ConfigFile {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg.Clone()
}

// SetConfig applies the "key = value" lines of text (one write to the
// config file): "key = value" sets, "key =" removes, comments are ignored.
// All lines are checked before any is applied; the file is then saved
// atomically and the drivers rebuilt once.
func (h *Host) SetConfig(ctx context.Context, text string, who Caller) error {
	err := h.setConfig(ctx, text, who)
	if err != nil {
		// The reason is safe to publish: config errors never quote a
		// line, and secret keys' checks never quote their value.
		h.emit(machine.EventConfig, fmt.Sprintf("refused %s: %v", who, err))
	}
	return err
}

func (h *Host) setConfig(ctx context.Context, text string, who Caller) error {
	if err := h.tree.writable(); err != nil {
		return err
	}
	if err := checkPrintable("config", text); err != nil {
		return err
	}
	edits, err := ParseConfig(text)
	if err != nil {
		return err
	}
	var set, removed []string
	written := map[string]bool{}
	for _, l := range edits.lines {
		if l.key == "" {
			continue
		}
		if l.value == "" {
			removed = append(removed, l.key)
			continue
		}
		if err := h.tree.checkKey(l.key, l.value); err != nil {
			return err
		}
		set = append(set, l.key)
		written[l.key] = true
	}
	if len(set)+len(removed) == 0 {
		return nil
	}
	if err := h.tree.checkPlacement(h, h.parent, edits); err != nil {
		return err
	}
	for _, k := range removed {
		if _, ok := h.tree.keySpec(k); !ok {
			return machine.Errorf(syscall.EINVAL, "unknown key %q", k)
		}
	}

	return h.commitConfig(ctx, who, written, func(cur *ConfigFile) *ConfigFile {
		next := cur.Clone()
		for _, l := range edits.lines {
			switch {
			case l.key == "":
			case l.value == "":
				next.Delete(l.key)
			default:
				next.setLine(l)
			}
		}
		return next
	}, func(_, _ *ConfigFile) []string { return keysDetail(nil, set, removed) })
}

// keysDetail is the config event's detail: "set K ..., removed K ...".
func keysDetail(detail, set, removed []string) []string {
	if len(set) > 0 {
		detail = append(detail, "set "+strings.Join(set, " "))
	}
	if len(removed) > 0 {
		detail = append(detail, "removed "+strings.Join(removed, " "))
	}
	return detail
}

// commitConfig makes a new config the host's under the rules every change
// through the tree obeys, a write (SetConfig) and a replacement
// (ReplaceConfig) alike: never while a command is in flight (EBUSY),
// privileged keys for admins only (EACCES), a secret cleared when an
// operator moves its destination, saved before it counts (EIO), and the
// drivers rebuilt only when a key they read changed. build makes the new
// config from the current one, nil for no change; written names the keys
// the caller wrote; describe says what changed, for the config event.
func (h *Host) commitConfig(ctx context.Context, who Caller, written map[string]bool,
	build func(cur *ConfigFile) *ConfigFile, describe func(old, next *ConfigFile) []string) error {
	h.mu.Lock()
	if h.op != nil {
		h.mu.Unlock()
		return machine.Errorf(syscall.EBUSY, "busy: %q is in flight; change the config when it is done", h.op.cmd.String())
	}
	old := h.cfg
	next := build(old)
	if next == nil {
		h.mu.Unlock()
		return nil
	}
	if err := h.tree.checkPrivileged(who, old, next); err != nil {
		h.mu.Unlock()
		return err
	}
	cleared, because := h.tree.unbindSecrets(who, old, next, written)
	if err := h.tree.saveConfig(h.path, next); err != nil {
		h.mu.Unlock()
		return machine.Errorf(syscall.EIO, "%v", err)
	}
	rebuild := h.tree.driverKeysChanged(old, next)
	h.cfg = next
	h.mu.Unlock()

	h.emit(machine.EventConfig, strings.Join(describe(old, next), ", ")+" "+who.String())
	if len(cleared) > 0 {
		h.emit(machine.EventConfig, fmt.Sprintf("cleared %s: an operator changed where it is sent (%s) %s; only root or the admin group keeps a secret across such a change",
			strings.Join(cleared, " "), strings.Join(because, " "), who))
	}
	if rebuild {
		h.rebuildDrivers(ctx)
	}
	h.serial.configChanged(ctx)
	return nil
}

// replaceConfig swaps in a config read from disk (SIGHUP reload).
func (h *Host) replaceConfig(ctx context.Context, cf *ConfigFile) {
	h.replaceStored(ctx, cf, "")
}

// replaceStored swaps in a config from the store. echo, when not "",
// is the store's text: an echo of this agent's own save, with a later
// one on its way, changes nothing. It is checked under h.mu, which a save
// holds while it notes its echo, so no older echo slips in after a newer
// save.
func (h *Host) replaceStored(ctx context.Context, cf *ConfigFile, echo string) {
	h.mu.Lock()
	if echo != "" && h.tree.ownEcho(h.path, echo) {
		h.mu.Unlock()
		return
	}
	same := h.cfg.Render(nil) == cf.Render(nil)
	rebuild := h.tree.driverKeysChanged(h.cfg, cf)
	if !same {
		h.cfg = cf
	}
	h.mu.Unlock()
	switch {
	case same:
	case echo != "":
		// Another agent's change: its event says so (see ApplyChange).
		h.tree.quiet(h.path, machine.EventConfig)
	default:
		h.emit(machine.EventConfig, "reloaded")
	}
	if rebuild {
		h.rebuildDrivers(ctx)
	}
	h.serial.configChanged(ctx)
}

// driverKeysChanged says whether going from old to next changes what the
// host's drivers read: drivers or driver, or a key that one of the drivers
// named in either declares (DriverSpec.Keys). Only then are the drivers
// rebuilt: a label, a timeout or any other key the model alone reads must
// not close a BMC session, restart a simulated machine or touch a guest.
func (t *Tree) driverKeysChanged(old, next *ConfigFile) bool {
	val := func(cf *ConfigFile, k string) string { v, _ := cf.Get(k); return v }
	for _, k := range []string{"drivers", "driver"} {
		if val(old, k) != val(next, k) {
			return true
		}
	}
	names := driverNames(valueOr(old, "drivers", valueOr(old, "driver", "")))
	for _, name := range names {
		spec, ok := t.specs[name]
		if !ok {
			continue
		}
		for _, ks := range spec.Keys {
			if val(old, ks.Name) != val(next, ks.Name) {
				return true
			}
		}
	}
	return false
}

// rebuildDrivers closes the host's drivers and builds them anew from the
// config (when a key they read changed, see driverKeysChanged). A driver that cannot be built leaves the host "not ready" with the
// reason in state; the config stays as written.
func (h *Host) rebuildDrivers(ctx context.Context) {
	if !h.runsHere() {
		// Another agent runs the machine; its drivers are there.
		return
	}
	h.mu.Lock()
	old := h.drivers.list
	h.drivers.list = nil
	h.drivers.err = nil
	h.drivers.gen++
	gen := h.drivers.gen
	cfg := h.cfg.Clone()
	observed := h.state.power
	h.mu.Unlock()
	for _, d := range old {
		if err := d.Close(); err != nil {
			h.tree.log.Warn("closing driver", "host", h.path, "driver", d.Kind(), "err", err)
		}
	}

	names := driverNames(valueOr(cfg, "drivers", valueOr(cfg, "driver", "")))
	var built []machine.Driver
	var errs []error
	for _, name := range names {
		spec, ok := h.tree.specs[name]
		if !ok {
			errs = append(errs, fmt.Errorf("unknown driver %q", name))
			continue
		}
		env := machine.DriverEnv{
			Path:   h.path,
			Config: cfg,
			Report: reporter{h: h, gen: gen, kind: name},
			Log:    h.tree.log.With(slog.String("host", h.path), slog.String("driver", name)),
			// The machine outlives its driver: a rebuilt driver that
			// cannot ask it starts from what was observed.
			Observed: observed,
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Duration("timeout"))
		d, err := spec.New(cctx, env)
		cancel()
		if err != nil {
			errs = append(errs, prefixed(name, err))
			continue
		}
		built = append(built, d)
	}

	h.mu.Lock()
	if h.drivers.gen != gen {
		// A newer rebuild raced us; it owns the host now.
		h.mu.Unlock()
		for _, d := range built {
			d.Close()
		}
		return
	}
	h.drivers.list = built
	h.drivers.err = errors.Join(errs...)
	if len(names) == 0 {
		h.setPowerLocked(machine.PowerUnknown, "no driver configured")
	}
	if h.drivers.err != nil {
		h.state.lastErr = h.drivers.err.Error()
	}
	h.mu.Unlock()
	if len(errs) > 0 {
		h.emit(machine.EventError, errors.Join(errs...).Error())
	}
	h.emit(machine.EventDrivers, strings.Join(names, " "))
	h.serial.driversChanged(ctx, built, gen)
	h.serial.configChanged(ctx)
	h.checkSoon() // the tool report, in the background (check.go)
}

func valueOr(cf *ConfigFile, key, def string) string {
	if v, ok := cf.Get(key); ok && v != "" {
		return v
	}
	return def
}

// removeDrivers lets drivers release what outlives Close (Remover), then
// closes them: the host is leaving the tree.
func (h *Host) removeDrivers(ctx context.Context) {
	h.mu.Lock()
	drivers := append([]machine.Driver(nil), h.drivers.list...)
	timeout := h.cfg.Duration("timeout")
	h.mu.Unlock()
	for _, d := range drivers {
		if r, ok := d.(machine.Remover); ok {
			if err := callDriver(ctx, timeout, r.Remove); err != nil {
				h.tree.log.Warn("releasing a removed host's resources", "host", h.path, "driver", d.Kind(), "err", err)
				h.emit(machine.EventError, prefixed(d.Kind(), fmt.Errorf("remove: %w", err)).Error())
			}
		}
	}
	h.closeDrivers()
}

// closeDrivers closes the host's drivers for good.
func (h *Host) closeDrivers() { h.dropDrivers("host removed") }

// closeDriversKeepMachine closes the drivers of a host another agent now
// runs: the machine goes on as it is, that agent's drivers adopt it.
func (h *Host) closeDriversKeepMachine() { h.dropDrivers("another agent owns the host now") }

func (h *Host) dropDrivers(why string) {
	h.mu.Lock()
	old := h.drivers.list
	h.drivers.list = nil
	h.drivers.gen++
	if h.op != nil {
		h.finishLocked(h.op, machine.Errorf(syscall.ECANCELED, "%s", why))
	}
	h.mu.Unlock()
	h.serial.close()
	for _, d := range old {
		d.Close()
	}
}
