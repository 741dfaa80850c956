package nodes

import (
	"fmt"
	"strings"
)

// Errnos lists every errno a user of the tree can get and what it means,
// for README, the man page and the README file at the root of the mount.
var Errnos = [][2]string{
	{"EINVAL", "the line did not parse: unknown verb, modifier, key or bad value (reason in the message and events)"},
	{"ENOTSUP", "no configured driver supports the verb or file (reason in state: last-error); wol wait without a probe"},
	{"EBUSY", "a command is in flight on the host; or rmdir of a host that is on or has running subhosts"},
	{"ETIMEDOUT", "a driver did not answer within timeout, or a wait did not reach its state within wait-timeout/timeout="},
	{"EINTR", "the writer was interrupted while waiting (the command goes on)"},
	{"EACCES", "not allowed: file mode (root and the operators group write control files), an operator changing a privileged key, bad BMC credentials, or a BMC offering only authentication that would expose the password"},
	{"EIO", "the driver failed (its words in state: last-error and in events)"},
	{"EHOSTUNREACH", "the machine's controller cannot be reached"},
	{"EHOSTDOWN", "a woken machine never answered its probe (\"no answer after wake\")"},
	{"ECANCELED", "a waiting command was overridden by a later command with force, or its host was removed"},
	{"EEXIST", "mkdir or ctl add of a host that exists"},
	{"ENOENT", "no such host"},
	{"EROFS", "the tree is mounted read-only"},
	{"ENOBUFS", "a console session's unread transcript is full (1 MiB, or 32 MiB for the mount): read it, or open a write-only session"},
	{"EFBIG", "more than 1 MiB written through one open file of config, members or ctl"},
	{"ESHUTDOWN", "machinefs stopped (SIGTERM or unmount) while the write waited; the command goes on"},
	{"ENOSPC", "a 17th temporary file in one directory"},
	{"EXDEV", "rename of a temporary file into another directory (mv then copies)"},
	{"EOPNOTSUPP", "setxattr on a temporary file"},
	{"EXFULL", "a switch has no free port (the kernel's limit of ports on a bridge)"},
	{"EPERM", "the driver lacks a privilege (e.g. CAP_NET_RAW for Wake-on-LAN frames); poweroff/reboot self of the local host without allow-self; unlink or rename of a tree file"},
}

// README is the text of the README file at the root of the mount: the tree,
// the command grammar, console, config keys and errnos (like mconsole help).
func (t *Tree) README() string {
	var b strings.Builder
	b.WriteString(`machinefs: machines as files

README        this text
version       machinefs version
ctl           write "add NAME key=value ...", "remove NAME"; read: this usage
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
  serial      serial console stream (IPMI Serial-over-LAN): read output, write
              input (not listed: open it by name)
  vswitch/    virtual switches of the host machinefs runs on (local = yes): mkdir
              NAME makes a bridge; ctl ("cancel NAME ..."), all; in each switch
              ctl ("add tap", "remove PORT", "check"), config (uplink), info, ports
  subhosts/   machines running on this host, same shape as a host

`)
	b.WriteString(GrammarHelp())
	b.WriteString(`Stacks: poweroff/reboot act on the machines on top (subhosts, deepest first,
siblings in parallel); a host stays up unless "self"; "self force" acts on the
host alone at once; a subhost goes down after its own stack.
`)
	b.WriteString("\nConfig keys:\n")
	for _, k := range t.KeyDocs() {
		def := ""
		if k.Default != "" {
			def = " (default " + k.Default + ")"
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
	for _, e := range Errnos {
		fmt.Fprintf(&b, "  %-13s %s\n", e[0], e[1])
	}
	return b.String()
}
