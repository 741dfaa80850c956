// Package local is the driver of the machine machinefs runs on: the agent
// on a physical machine carries out poweroff, off, reboot, init N and
// suspend for its own host through the machine's own init system, as
// ctys-PM runs the shutdown tools on the target itself, and arms
// Wake-on-LAN first so that wol can wake the machine again.
//
// Which machine. local.hostname (required, privileged) names the machine
// the host is; every power verb first compares it with uname's node name
// and is EPERM ("this machine is X, not Y") when they differ. A cluster's
// agents share one config: only the machine of that name acts. The host
// is usually also local = yes, so "poweroff self" needs allow-self = yes.
//
// Init systems. PID 1 of the process's own PID namespace is looked at on
// every command (/proc/1/exe, else /proc/1/comm; a /proc of another PID
// namespace is refused as unknown):
//
//	systemd   logind over D-Bus, as systemctl does: PowerOff(false),
//	          Reboot(false), Suspend(false) (pause is suspend); init
//	          1-5 isolates runlevelN.target, init 0 and 6 are PowerOff
//	          and Reboot. A polkit or inhibitor refusal is EACCES.
//	sysvinit  struct init_request written to /run/initctl (a FIFO, as
//	          telinit does): init N is run level N, reboot 6, poweroff
//	          INIT_HALT=POWEROFF then 0 (as shutdown -P).
//	busybox   signals to PID 1, as its applets send them: SIGUSR2
//	          poweroff, SIGTERM reboot; init 0 and 6 are those, 1-5 are
//	          ENOTSUP (busybox init has no run levels).
//
// Any other init is ENOTSUP, naming what PID 1 is. off is the same on
// every init, as poweroff -f and systemctl poweroff -ff are: sync, then
// reboot(2) LINUX_REBOOT_CMD_POWER_OFF, with no orderly stop; it does not
// return, so what it does is reported first. suspend and pause need
// systemd-logind; elsewhere ENOTSUP with the reason. The driver never
// writes /sys/power/state: sleeping is logind's (inhibitors, hooks,
// hibernate configuration). After a suspend the driver reports paused and
// waits for logind's PrepareForSleep(false) to report on again.
//
// Wake-on-LAN. With local.wol-interface set, poweroff, off, init 0,
// suspend and pause first enable magic-packet wake on that interface
// through ethtool's netlink interface (ETHTOOL_MSG_WOL_SET, other modes
// left as they are) and read it back. A NIC that cannot (a veth: "the
// driver (veth) supports no Wake-on-LAN modes"), a missing interface or a
// missing CAP_NET_ADMIN does not stop the command: the machine still goes
// down, with a warning event and state's "wol: not armed: REASON".
// Success is a wol event and "wol: armed (magic, modes g) on eth0 at T".
//
// Verify after act. The driver cannot see its own machine go down: it
// reports stopping, rebooting or paused once the init accepted the
// command, and the model (machine.ThisMachine), or the cluster when this
// agent's lease goes, concludes off. At New it reports the machine on,
// with its init system, or unknown with the reason when local.hostname
// names another machine. state shows local-machine, local-init, wol and
// local-last.
package local
