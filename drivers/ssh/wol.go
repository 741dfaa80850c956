package ssh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// armsWoL says whether cmd leaves the machine where only Wake-on-LAN can
// bring it back: then ssh.wol-interface, when set, is armed first.
func armsWoL(cmd machine.Command) bool {
	switch cmd.Verb {
	case "poweroff", "off", "suspend":
		return true
	}
	return cmd.Verb == "init" && cmd.InitLevel == 0
}

// armWoL enables magic-packet wake on ssh.wol-interface with the
// machine's ethtool and reads it back, over c. The commands are fixed;
// the interface name, checked when written (letters, digits, '.', '_',
// '-'), is the only word from the config in them, and means nothing to
// the remote shell that reads the line (SSH runs every command through
// the user's shell: there is no exec without one). Failing to arm never
// stops the command: it is a warning event and state's ssh-wol line.
func (d *driver) armWoL(ctx context.Context, c *conn, cmd machine.Command) {
	iface := d.cfg.wolIface
	line, err := d.wolArm(ctx, c, iface)
	if err != nil {
		line = "not armed: " + err.Error()
		d.log.Warn("wake-on-lan not armed", "interface", iface, "err", err)
		d.rep.Event(machine.EventWarning, fmt.Sprintf("ssh: %s: Wake-on-LAN not armed, wol will not wake the machine: %v", verbOf(cmd), err))
	} else {
		d.rep.Event(machine.EventWoL, fmt.Sprintf("ssh: %s: Wake-on-LAN %s", verbOf(cmd), line))
	}
	d.mu.Lock()
	d.wol = line
	d.mu.Unlock()
}

// wolArm runs `ethtool -s IFACE wol g`, then `ethtool IFACE`, whose
// "Wake-on:" line must then show g; when it does not, `ethtool -i IFACE`
// names the NIC's driver for the reason.
func (d *driver) wolArm(ctx context.Context, c *conn, iface string) (string, error) {
	_, setErr := run(ctx, c, "ethtool -s", "ethtool -s "+iface+" wol g", d.cfg.commandTimeout)
	if errors.Is(setErr, errGone) || machine.ErrnoOf(setErr) == syscall.ETIMEDOUT {
		return "", setErr
	}
	if setErr != nil && strings.Contains(setErr.Error(), "exited with status 127") {
		return "", machine.Errorf(syscall.ENOTSUP, "%s: ethtool is not installed on the machine", iface)
	}
	out, readErr := run(ctx, c, "ethtool", "ethtool "+iface, d.cfg.commandTimeout)
	supports, wakeOn := wakeOnLines(out)
	if setErr == nil && readErr == nil && strings.Contains(wakeOn, "g") {
		return fmt.Sprintf("armed (magic, modes %s) on %s at %s", wakeOn, iface, time.Now().Format("15:04:05")), nil
	}
	drv := ""
	if o, err := run(ctx, c, "ethtool -i", "ethtool -i "+iface, d.cfg.commandTimeout); err == nil {
		for l := range strings.SplitSeq(o, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "driver:"); ok {
				drv = " (" + strings.TrimSpace(v) + ")"
			}
		}
	}
	why := ""
	if setErr != nil {
		why = ": " + setErr.Error()
	}
	switch {
	case readErr != nil:
		return "", machine.Errorf(syscall.EIO, "%s: %v", iface, readErr)
	case supports == "" || supports == "d":
		return "", machine.Errorf(syscall.EOPNOTSUPP, "%s: the driver%s supports no Wake-on-LAN modes%s", iface, drv, why)
	case !strings.Contains(supports, "g"):
		return "", machine.Errorf(syscall.EINVAL, "%s: the driver%s does not support magic-packet wake (Supports Wake-on: %s)%s", iface, drv, supports, why)
	case setErr != nil:
		return "", machine.Errorf(syscall.EIO, "%s%s", iface, why)
	}
	return "", machine.Errorf(syscall.EIO, "%s: set, but the read-back shows Wake-on: %s", iface, quote(wakeOn))
}

// wakeOnLines reads ethtool's "Supports Wake-on: pumbg" and "Wake-on: g"
// lines.
func wakeOnLines(out string) (supports, wakeOn string) {
	for l := range strings.SplitSeq(out, "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "Supports Wake-on:"); ok {
			supports = strings.TrimSpace(v)
		} else if v, ok := strings.CutPrefix(l, "Wake-on:"); ok {
			wakeOn = strings.TrimSpace(v)
		}
	}
	return supports, wakeOn
}
