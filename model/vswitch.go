package model

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// IsLocal reports whether this host is the machine machinefs runs on
// (config local = yes): only it has live virtual switches.
func (h *Host) IsLocal() bool {
	if h.parent != nil {
		return false
	}
	if h.tree.peers != nil {
		// In a cluster: the host whose node is this agent.
		node, _ := h.Config().Get("node")
		return node == h.tree.peers.Node()
	}
	return h.Config().Bool("local")
}

// HasSwitches reports whether vswitch/ of this host reaches switches: the
// host machinefs runs on, or in a cluster any host an agent runs on (its
// node key), whose switches that agent runs.
func (h *Host) HasSwitches() bool {
	if h.IsLocal() {
		return true
	}
	if h.tree.peers == nil || h.parent != nil {
		return false
	}
	node, _ := h.Config().Get("node")
	return node != ""
}

// switches returns the switch manager if this host may use it.
func (h *Host) switches() (machine.Switches, error) {
	if !h.IsLocal() {
		if h.tree.peers != nil {
			node, _ := h.Config().Get("node")
			if node == "" || h.parent != nil {
				return nil, machine.Errorf(syscall.ENOTSUP, "vswitch: %s has no agent (no node key): switches live on a machine an agent runs on", h.path)
			}
			return remoteSwitches{peers: h.tree.peers, node: node}, nil
		}
		return nil, machine.Errorf(syscall.ENOTSUP, "vswitch: only the host machinefs runs on (config local = yes) has virtual switches; %s is not it", h.path)
	}
	if h.tree.switches == nil {
		return nil, machine.Errorf(syscall.ENOTSUP, "vswitch: no switch manager in this daemon")
	}
	return h.tree.switches, nil
}

// SwitchNames lists the local host's managed switches (ls vswitch/).
func (h *Host) SwitchNames() []string {
	sw, err := h.switches()
	if err != nil {
		return nil
	}
	return sw.List()
}

// switchOp runs one change to the local host's switches: it refuses on a
// read-only mount and on other hosts, bounds the call, and records the
// outcome as a vswitch event about switch (what fn returns on success,
// "ACTION failed: reason" otherwise).
func (h *Host) switchOp(ctx context.Context, switchName, action string, who Caller, fn func(ctx context.Context, sw machine.Switches) (string, error)) error {
	if err := h.tree.writable(); err != nil {
		return err
	}
	sw, err := h.switches()
	if err != nil {
		return err
	}
	var done string
	err = callDriver(ctx, switchTimeout, func(ctx context.Context) error {
		var err error
		done, err = fn(ctx, sw)
		return err
	})
	if err != nil {
		h.emitSwitch(switchName, fmt.Sprintf("%s failed %s: %v", action, who, err))
		return err
	}
	h.emitSwitch(switchName, done+" "+who.String())
	return nil
}

// emitSwitch publishes a vswitch event naming the switch it is about, so
// the filesystem knows whose ports and info changed.
func (h *Host) emitSwitch(switchName, detail string) {
	h.tree.publish(Event{Time: time.Now(), Path: h.path, Kind: machine.EventVSwitch, Item: switchName, Detail: switchName + " " + detail})
}

// CreateSwitch creates (or reuses) a switch: mkdir vswitch/NAME.
func (h *Host) CreateSwitch(ctx context.Context, name string, who Caller) error {
	if !ValidName(name) || len(name) > 12 {
		return machine.Errorf(syscall.EINVAL, "vswitch %q: use 1-12 letters, digits, '.', '_' or '-' (TAP names add a suffix)", name)
	}
	return h.switchOp(ctx, name, "create", who, func(ctx context.Context, sw machine.Switches) (string, error) {
		created, err := sw.Create(ctx, name)
		if created {
			return "created", err
		}
		return "reused", err
	})
}

// DeleteSwitch removes what machinefs created for a switch: rmdir.
func (h *Host) DeleteSwitch(ctx context.Context, name string, who Caller) error {
	return h.switchOp(ctx, name, "delete", who, func(ctx context.Context, sw machine.Switches) (string, error) {
		return "deleted", sw.Delete(ctx, name)
	})
}

// SwitchesCtlTable is the command table of vswitch/ctl.
var SwitchesCtlTable = cmdtab.Table{File: "vswitch ctl", Cmds: []cmdtab.Cmd{
	{Name: "cancel", Args: "NAME [NAME ...]", Min: 1, Max: cmdtab.Many, Help: "delete the switches, in one kernel request"},
}}

// SwitchCtlTable is the command table of vswitch/NAME/ctl.
var SwitchCtlTable = cmdtab.Table{File: "vswitch ctl", Cmds: []cmdtab.Cmd{
	{Name: "add tap", Args: "[owner=USER|UID] [group=GROUP|GID]", Opts: []string{"owner", "group"}, Help: "add a persistent TAP port (packet info off)"},
	{Name: "add vde", Args: "[owner=USER|UID] [group=GROUP|GID] [mode=OCTAL]", Opts: []string{"owner", "group", "mode"}, Help: "run a VDE switch on a TAP port, as owner, sockets in " + machine.VDEDir},
	{Name: "remove", Args: "PORT|vde", Min: 1, Max: 1, Help: "remove a port; vde stops the VDE switch (EBUSY while guests use it)"},
	{Name: "check", Help: "fail with ENOENT, ENETDOWN, EIO or EACCES (a TAP's owner cannot open /dev/net/tun) and the reason unless the switch is whole and up"},
}}

// SwitchesCtl runs one line written to vswitch/ctl (SwitchesCtlTable).
// cancel deletes several switches in one kernel request: deleting devices
// is the slow part (tens of ms per request), so a batch is much faster
// than one rmdir per switch.
func (h *Host) SwitchesCtl(ctx context.Context, line string, who Caller) error {
	l, err := SwitchesCtlTable.Parse(line)
	if l == nil {
		return err
	}
	names := l.Args
	return h.switchOp(ctx, strings.Join(names, ","), "cancel", who, func(ctx context.Context, sw machine.Switches) (string, error) {
		return "deleted", sw.Delete(ctx, names...)
	})
}

// SwitchCtl runs one line written to vswitch/NAME/ctl (SwitchCtlTable).
func (h *Host) SwitchCtl(ctx context.Context, name, line string, who Caller) error {
	l, err := SwitchCtlTable.Parse(line)
	if l == nil {
		return err
	}
	switch l.Cmd.Name {
	case "add tap":
		owner, _ := l.Opt("owner")
		group, _ := l.Opt("group")
		return h.switchOp(ctx, name, "add tap", who, func(ctx context.Context, sw machine.Switches) (string, error) {
			tap, err := sw.AddTap(ctx, name, owner, group)
			return "tap " + tap + " added", err
		})
	case "add vde":
		owner, _ := l.Opt("owner")
		group, _ := l.Opt("group")
		mode, _ := l.Opt("mode")
		return h.switchOp(ctx, name, "add vde", who, func(ctx context.Context, sw machine.Switches) (string, error) {
			tap, err := sw.AddVDE(ctx, name, owner, group, mode)
			return "vde on " + tap + " added", err
		})
	case "remove":
		port := l.Args[0]
		return h.switchOp(ctx, name, "remove "+port, who, func(ctx context.Context, sw machine.Switches) (string, error) {
			return "port " + port + " removed", sw.RemovePort(ctx, name, port)
		})
	case "check":
		return h.switchOp(ctx, name, "check", who, func(ctx context.Context, sw machine.Switches) (string, error) {
			return "check ok", sw.Check(ctx, name)
		})
	}
	return machine.Errorf(syscall.EINVAL, "vswitch ctl: %s is in the table but not handled", l.Cmd.Name)
}

// SwitchConfig applies "uplink = IFACE" (or "uplink =") written to
// vswitch/NAME/config. The uplink must be named: machinefs never touches
// an interface it was not told to.
func (h *Host) SwitchConfig(ctx context.Context, name, text string, who Caller) error {
	cf, err := ParseConfig(text)
	if err != nil {
		return err
	}
	for _, k := range cf.Keys() {
		if k != "uplink" {
			return machine.Errorf(syscall.EINVAL, "vswitch config: unknown key %q (uplink)", k)
		}
	}
	v, ok := cf.Get("uplink")
	if !ok {
		return nil
	}
	if err := checkPrintable("vswitch config", text); err != nil {
		return err
	}
	if !h.tree.isAdmin(who) {
		// An uplink takes a host interface into the bridge (eth0 would
		// take the machine off its network): a device, so an admin's call.
		return machine.Errorf(syscall.EACCES, "vswitch uplink: privileged (it takes a host interface into the bridge): only root or the admin group may set it (uid %d is an operator)", who.Uid)
	}
	return h.switchOp(ctx, name, fmt.Sprintf("uplink %q", v), who, func(ctx context.Context, sw machine.Switches) (string, error) {
		return fmt.Sprintf("uplink %q", v), sw.SetUplink(ctx, name, v)
	})
}

// SwitchText renders one of a switch's status files: info, ports, config.
func (h *Host) SwitchText(ctx context.Context, name, file string) (string, error) {
	sw, err := h.switches()
	if err != nil {
		return "", err
	}
	var text string
	err = callDriver(ctx, switchTimeout, func(ctx context.Context) error {
		var err error
		switch file {
		case "info":
			text, err = sw.InfoText(ctx, name)
		case "ports":
			text, err = sw.PortsText(ctx, name)
		case "config":
			var up string
			up, err = sw.Uplink(ctx, name)
			text = "uplink = " + up + "\n"
		case "all":
			text, err = sw.AllText(ctx)
		}
		return err
	})
	return text, err
}

// HasSwitch reports whether vswitch/NAME exists (a bridge, managed or not).
func (h *Host) HasSwitch(ctx context.Context, name string) bool {
	sw, err := h.switches()
	return err == nil && sw.Exists(ctx, name)
}

// switchTimeout bounds every switch call; netlink answers in microseconds
// unless the kernel is busy deleting devices.
const switchTimeout = 30 * time.Second

// WatchSwitches turns the switch manager's link changes into events on the
// local host, until ctx ends.
func (t *Tree) WatchSwitches(ctx context.Context) error {
	if t.switches == nil {
		return nil
	}
	return t.switches.WatchChanges(ctx, func(c machine.SwitchChange) {
		var local *Host
		for _, h := range t.Hosts(nil) {
			if h.IsLocal() {
				local = h
				break
			}
		}
		if local == nil {
			return
		}
		local.emitSwitch(c.Switch, fmt.Sprintf("link %s %s", c.Link, c.What))
	})
}
