// Package view renders the model as the text of the files users read:
// state, power, config, members, README. It holds no machine logic: each
// renderer takes a snapshot from the model and formats it.
package view

import (
	"fmt"
	"strings"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// README is the text of the README file at the root of the mount: the tree,
// the command grammar, console, config keys and errnos (like mconsole help).
func README(t *model.Tree) string {
	var b strings.Builder
	b.WriteString(`machinefs: machines as files

README        this text
version       machinefs version
ctl           write "add NAME key=value ...", "remove NAME"; read: this usage
check         every host's tool and permission report in one line: NAME ok, or
              NAME missing: DRIVER WHAT, ... (the last reports; runs no check)
events        stream of every event: TIME PATH EVENT DETAIL (blocks; Ctrl-C ends
              it; not listed: open it by name)
events.log    the same events as a regular file (tail -F works; rotated to
              events.log.1)
groups/NAME/  members (hostranges: node[01-40]), power, state, events: commands on all
              members in parallel
hosts/NAME/   one directory per machine; mkdir adds a host, rmdir removes it
  power       read: on off starting stopping rebooting paused unknown crashed
              write: a command (below); returns when the driver accepted it
  state       "key: value" lines: power, since, reason, drivers, reachable,
              last-command, last-error, label, subhosts, driver details
  console     management console: write a command line, read "OK ..." or
              "ERR ..." on the same open file; "help" lists commands
  config      "key = value" lines; writing "key = value" sets, "key =" removes;
              secrets read back as <set>
  events, events.log   this host's (and its subhosts') events only
  check       what the drivers need (programs, devices, capabilities, BMC
              login, ssh host key): present, missing or optional, and why
  serial      serial console (IPMI SOL, a guest's console): read output, write
              input; many readers, one writer (EBUSY), the last 64 KiB for a new
              reader; only on hosts with one (not listed: open it by name)
  serial.log  with serial-log = yes: the console's lines, each with its time
  vswitch/    virtual switches of the host machinefs runs on (local = yes): mkdir
              NAME makes a bridge; ctl ("cancel NAME ..."), all; in each switch
              ctl ("add tap", "add vde", "remove PORT|vde", "check"), config
              (uplink), info, ports
  subhosts/   machines running on this host, same shape as a host

`)
	b.WriteString(machine.GrammarHelp())
	b.WriteString(`Stacks: poweroff/reboot act on the machines on top (subhosts, deepest first,
siblings in parallel); a host stays up unless "self"; "self force" acts on the
host alone at once; a subhost goes down after its own stack.
`)
	for _, f := range []struct {
		name  string
		table *cmdtab.Table
	}{{"ctl", &model.CtlTable}, {"vswitch/ctl", &model.SwitchesCtlTable}, {"vswitch/NAME/ctl", &model.SwitchCtlTable}} {
		b.WriteString("\n" + f.name + " commands:\n" + cmdtab.HelpText(f.table.Cmds, "  "))
	}
	b.WriteString("\nConfig keys:\n")
	for _, k := range t.KeyDocs() {
		def := " (" + k.Type() + ")"
		if k.Default != "" {
			def = " (" + k.Type() + ", default " + k.Default + ")"
		}
		sec := ""
		if k.Secret {
			sec = " [secret]"
		}
		if k.Privileged {
			sec += " [privileged: root or the admin group]"
		}
		fmt.Fprintf(&b, "  %-18s %s%s%s\n", k.Name, k.Doc, def, sec)
	}
	b.WriteString("\nDrivers:\n")
	for _, d := range t.DriverSpecs() {
		fmt.Fprintf(&b, "  %-8s %s\n", d.Name, d.Doc)
	}
	b.WriteString("\nErrors a write can get:\n")
	for _, e := range machine.Errnos {
		fmt.Fprintf(&b, "  %-13s %s\n", e[0], e[1])
	}
	return b.String()
}
