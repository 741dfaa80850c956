package vswitch

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/machinefs/machinefs/machine"
)

// The Manager is the model's machine.Switches: these methods render its
// answers as the text of the tree's files.
var _ machine.Switches = (*Manager)(nil)

// InfoText is vswitch/NAME/info: "key: value" lines.
func (m *Manager) InfoText(ctx context.Context, name string) (string, error) {
	in, err := m.Info(ctx, name)
	if err != nil {
		return "", err
	}
	return infoText(in), nil
}

func infoText(in Info) string {
	var b strings.Builder
	line := func(k string, v any) { fmt.Fprintf(&b, "%s: %v\n", k, v) }
	line("bridge", in.Name)
	line("managed", yesNo(in.Managed))
	line("state", in.State)
	line("oper", in.Oper)
	line("mtu", in.MTU)
	line("mac", in.MAC)
	line("uplink", in.Uplink)
	line("ports", in.Ports)
	line("rx-bytes", in.RxBytes)
	line("tx-bytes", in.TxBytes)
	line("rx-packets", in.RxPackets)
	line("tx-packets", in.TxPackets)
	line("rx-errors", in.RxErrors)
	line("tx-errors", in.TxErrors)
	line("external", yesNo(in.External))
	if in.VDE == "" {
		line("vde", "none")
	} else {
		line("vde", in.VDE)
		line("vde-pid", in.VDEPid)
		line("vde-sock", in.VDESock)
		line("vde-mgmt", in.VDEMgmt)
	}
	line("tun", cmp.Or(in.Tun, "ok"))
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// PortsText is vswitch/NAME/ports: one line per port, "name kind mac
// state" (state is the administrative state, then the kernel's oper state).
func (m *Manager) PortsText(ctx context.Context, name string) (string, error) {
	ports, err := m.Ports(ctx, name)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&b, "%s %s %s %s %s", p.Name, p.Kind, p.MAC, p.State, p.Oper)
		if p.Owner != NoID {
			fmt.Fprintf(&b, " owner=%d", p.Owner)
		}
		if p.Group != NoID {
			fmt.Fprintf(&b, " group=%d", p.Group)
		}
		b.WriteString("\n")
	}
	for _, l := range m.vdeLines(ctx, name) {
		b.WriteString(l + "\n")
	}
	return b.String(), nil
}

// AllText is vswitch/all: every bridge in the namespace (listall), one
// line each: "name managed=yes|no state ports=N uplink=IFACE".
func (m *Manager) AllText(ctx context.Context) (string, error) {
	all, err := m.ListAll(ctx)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, in := range all {
		fmt.Fprintf(&b, "%s managed=%s %s ports=%d uplink=%s\n", in.Name, yesNo(in.Managed), in.State, in.Ports, in.Uplink)
	}
	return b.String(), nil
}

// Uplink is the switch's uplink interface, "" if none.
func (m *Manager) Uplink(ctx context.Context, name string) (string, error) {
	in, err := m.Info(ctx, name)
	if err != nil {
		return "", err
	}
	return in.Uplink, nil
}

// Exists reports whether a bridge of that name exists, managed or not. It
// asks for that one device: every lookup of a name in vswitch/ (each mkdir
// starts with one) must not cost a dump of every link.
func (m *Manager) Exists(ctx context.Context, name string) bool {
	if ctx.Err() != nil || validName(name) != nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l, err := m.link(name)
	return err == nil && l != nil && isBridge(l)
}

// WatchChanges reports link changes until ctx ends, then returns once its
// goroutines have stopped.
func (m *Manager) WatchChanges(ctx context.Context, fn func(machine.SwitchChange)) error {
	done, err := m.Watch(ctx, func(c Change) { fn(machine.SwitchChange{Switch: c.Switch, Link: c.Link, What: c.What}) })
	if err != nil {
		return err
	}
	<-done
	return nil
}
