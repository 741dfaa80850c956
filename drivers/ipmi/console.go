package ipmi

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/app"
	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// ConsoleCommands implements machine.Consoler. help is provided by the model.
func (d *Driver) ConsoleCommands() []machine.ConsoleCommand {
	return []machine.ConsoleCommand{
		{Cmd: cmdtab.Cmd{Name: "version", Help: "BMC device id, firmware and IPMI version (Get Device ID)"}, Query: machine.AlwaysQuery},
		{Cmd: cmdtab.Cmd{Name: "halt", Help: "power off at once (= power off)"}},
		{Cmd: cmdtab.Cmd{Name: "reboot", Help: "hard reset (= power reset)"}},
		{Cmd: cmdtab.Cmd{Name: "cad", Help: "ACPI soft shutdown, like ctrl-alt-del on a console (= power soft)"}},
	}
}

// Console implements machine.Consoler. None of the commands takes
// arguments; the model checked that against the table.
func (d *Driver) Console(ctx context.Context, name string, _ []string) (string, error) {
	verb := ""
	switch name {
	case "version":
		return d.version(ctx)
	case "halt":
		verb = "off"
	case "reboot":
		verb = "reset"
	case "cad":
		verb = "soft"
	default:
		return "", machine.Errorf(syscall.EINVAL, "unknown command %q (version, halt, reboot, cad)", name)
	}
	if err := d.Power(ctx, machine.Command{Verb: verb, Line: name}); err != nil {
		return "", err
	}
	return fmt.Sprintf("BMC accepted %s (%s); verifying", name, verb), nil
}

func (d *Driver) version(ctx context.Context) (string, error) {
	var id *app.GetDeviceIDResponse
	err := d.with(ctx, "get device id", func(ctx context.Context, c *client.Client) error {
		var err error
		id, err = c.GetDeviceID(ctx)
		return err
	})
	if err != nil {
		return "", err
	}
	s := formatDeviceID(id)
	d.mu.Lock()
	d.device = s
	d.mu.Unlock()
	return s, nil
}

func formatDeviceID(id *app.GetDeviceIDResponse) string {
	s := fmt.Sprintf("device-id 0x%02x revision %d firmware %d.%02d ipmi %d.%d manufacturer %d (0x%06x) product %d (0x%04x)",
		id.DeviceID, id.DeviceRevision, id.MajorFirmwareRevision, id.MinorFirmwareRevision,
		id.MajorIPMIVersion, id.MinorIPMIVersion, id.ManufacturerID, id.ManufacturerID, id.ProductID, id.ProductID)
	if len(id.AuxiliaryFirmwareRevision) == 4 {
		s += fmt.Sprintf(" aux %x", id.AuxiliaryFirmwareRevision)
	}
	if !id.DeviceAvailable {
		s += " (firmware update or self-initialisation in progress)"
	}
	return s
}

// Describe implements machine.Describer. It never touches the network and
// never shows the password.
func (d *Driver) Describe() [][2]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := [][2]string{
		{"ipmi-bmc", fmt.Sprintf("%s %s user %q", d.cfg.hostPort(), d.sessionKind(), d.cfg.user)},
		{"ipmi-session", d.sessState},
	}
	poll := "never"
	if !d.lastPoll.IsZero() {
		poll = d.lastPoll.Format("15:04:05.000") + " " + d.lastPollRes
	}
	out = append(out, [2]string{"ipmi-last-poll", poll})
	if d.failures > 0 {
		out = append(out, [2]string{"ipmi-poll-failures", fmt.Sprintf("%d in a row, next try in %v",
			d.failures, time.Until(d.nextPoll).Round(time.Millisecond))})
	}
	if d.verifyNote != "" {
		out = append(out, [2]string{"ipmi-verify", d.verifyNote})
	}
	if d.device != "" {
		out = append(out, [2]string{"ipmi-device", d.device})
	}
	for i := range out {
		out[i][1] = strings.ReplaceAll(d.redact(out[i][1]), "\n", " ")
	}
	return out
}
