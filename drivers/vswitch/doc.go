// Package vswitch manages virtual switches for machinefs (hosts/LOCAL/vswitch/):
// Linux bridges with persistent TAP devices, in the spirit of ctys-setupVDE
// (create, cancel, check, info, ports, list, listall).
//
// A Manager works in one network namespace, through netlink sockets opened
// in it, so it may be called from any goroutine. Every switch it creates
// gets a private interface group (IFLA_GROUP): the bridge and its TAPs are
// created in that group, and Delete removes them all with one RTM_DELLINK
// by group, which the kernel unregisters as one batch (deleting is the slow
// part: ~30-50 ms per unregister batch on the reference machine).
//
// What machinefs created is remembered twice: a JSON record per switch in
// Options.StateDir (written before the bridge exists, so a crash leaves a
// record of a half-made switch that Delete can clear), and the interface
// alias "machinefs:managed" on the bridge ("machinefs:NAME" on its TAPs).
// A bridge with neither is "managed: no"; Delete refuses it with EPERM.
//
// Interfaces are only ever touched when they belong to a managed switch or
// are named explicitly (SetUplink, RemovePort). The uplink is never put in
// the switch's group, so deleting a switch only releases it.
//
// Errors are *nodes.Error values carrying the errno a filesystem call should
// return (nodes.ErrnoOf).
package vswitch
