// Package ssh is the driver for machines without a BMC and without a
// machinefs agent: it powers them off, reboots and suspends them and
// relays init N by running their own shutdown tools over SSH, as ctys-PM
// does, arms Wake-on-LAN first, and probes them so the tree shows when
// they go away.
//
// Trust. The driver authenticates with a private key (ssh.key) and checks
// the machine's host key against a known_hosts file (ssh.known-hosts),
// both privileged keys. A host key that is not listed, or that changed,
// is EACCES with the fingerprints in the reason: a key is never trusted on
// first use. known_hosts is thereby the list of machines the daemon's key
// may be used on, whatever ssh.address an operator writes. Power verbs
// aimed at an address of the machine machinefs runs on (loopback, or an
// address of one of its interfaces) are EPERM: that machine is the local
// host, guarded by allow-self.
//
// Commands. Nothing from the tree is passed to the remote shell: the
// command lines are fixed here, and init N adds only a digit the grammar
// and the driver checked. On each connection the driver asks which init
// the machine runs (systemd when /run/systemd/system exists, busybox when
// PID 1 is busybox, else sysvinit when /run/initctl is a FIFO):
//
//	poweroff  systemctl poweroff (systemd), else poweroff
//	off       poweroff -f (no orderly stop of services)
//	reboot    systemctl reboot (systemd), else reboot
//	init N    telinit N (systemd, sysvinit); on busybox init, which has
//	          no run levels, init 0 is poweroff, init 6 is reboot and
//	          1-5 are ENOTSUP with that reason
//	suspend   systemctl suspend (systemd only: sleeping is logind's);
//	          elsewhere ENOTSUP with the reason
//
// Wake-on-LAN. With ssh.wol-interface set, poweroff, off, init 0 and
// suspend first run "ethtool -s IFACE wol g" on the machine and read it
// back with "ethtool IFACE" (its Wake-on: line must show g); when it does
// not, "ethtool -i IFACE" names the NIC's driver for the reason. SSH runs
// every command through the remote user's shell, so the interface name,
// the only word from the config in these lines, is checked when written:
// letters, digits, '.', '_' and '-', not starting with '-'. Failing to arm
// (a veth: "the driver (veth) supports no Wake-on-LAN modes"; no ethtool
// on the machine) does not stop the command: it is a warning event and
// state's ssh-wol line ("not armed: REASON", or "armed (magic, modes g)
// on eth0 at T").
//
// A suspend is not followed: to a probe, a sleeping machine looks like a
// switched-off one. Until the machine answers again, probes that find it
// down show paused ("suspended: ssh does not answer"); resume is wol's.
//
// A command is accepted when it exits 0 or when the connection closes
// under it (the machine going down); a non-zero exit is EIO with its
// output, escaped and cut to 200 bytes (at most 4 KiB is read). on, wol
// and resume are not the driver's: a switched-off or sleeping machine
// runs no sshd.
// Combine drivers ("drivers = ssh wol") to wake it.
//
// Verify after act. The driver is a machine.Verifier: after poweroff, off
// and init 0 it connects to the SSH port every 200 ms (or
// ssh.probe-interval if shorter) until the connect fails (refused,
// unreachable, no answer) and only then reports off; after reboot and
// init 6 it waits for that down, then for a new connection whose host key
// checks, and reports on. The verdict comes by the command's deadline:
// ETIMEDOUT when the machine never went down, EHOSTDOWN when it went down
// and did not come back (EACCES when it came back with another host key).
//
// Probing. Every ssh.probe-interval the driver sends a keepalive on its
// kept connection, or connects anew: an answer with the known host key is
// on; a refused connection or an unreachable address is off; a timeout,
// a port that accepts but never speaks SSH, a wrong host key or a refused
// login is unknown with the reason (ETIMEDOUT, EHOSTUNREACH, EACCES).
// Every call is bounded by ssh.connect-timeout or ssh.command-timeout and
// by its context: a target that hangs cannot hold the tree.
//
// The driver opens its sockets in the network namespace of the thread
// that called New, so a driver created inside a namespace keeps working
// there when the model calls it from other goroutines.
package ssh
