// Package wol is the Wake-on-LAN driver: it wakes a machine by sending it a
// magic packet and then watches for the machine to come up.
//
// A magic packet is 6 bytes 0xFF followed by the target's MAC address 16
// times, optionally followed by a 4- or 6-byte SecureOn password. A network
// card armed for Wake-on-LAN ("ethtool -s IFACE wol g") scans every frame it
// sees for that pattern, whatever the frame's type, so the packet can travel
// as a raw Ethernet broadcast frame with EtherType 0x0842 (local segment,
// like ether-wake; needs CAP_NET_RAW) or as a UDP datagram to port 9 of a
// directed broadcast address (another segment, through routers that forward
// directed broadcasts; no privilege needed). This follows ctys-PM's
// "create=wol,broadcast:ADDR": without a broadcast address the packet goes
// to the local segment through the first interface.
//
// The packet is built here rather than with github.com/mdlayher/wol, which
// the module proxy reachable from this project does not serve; raw frames go
// through github.com/mdlayher/packet (AF_PACKET) and UDP through the
// standard library.
//
// Wake-on-LAN is fire-and-forget: nothing answers a magic packet, and a
// sleeping machine is indistinguishable from a missing one. So the driver
// never claims a power state it has no evidence for. With the probe key set
// ("tcp:HOST:PORT", or "icmp:HOST") it probes every wol.probe-interval in
// the background, from the start, and reports what changes (on when the
// probe answers, unknown when it stops answering), as the ipmi driver polls
// its BMC. After a wake it probes every wol.probe-interval until the probe
// answers (power on) or the command's deadline passes (Command.Deadline,
// the model's wait-timeout or timeout=): then power is unknown with "no
// answer after wake" and EHOSTDOWN. The driver is a machine.Verifier, so
// that verdict is what `wol wait` returns; wol.probe-tries is ignored. A
// refused TCP connection proves something answers at that address but not
// that the machine's service is up, so it counts as no answer yet. A failed
// probe never reports off, since it cannot tell off from unreachable. The
// wol verb sends its packet whatever power the tree shows (Always in the
// grammar); on and resume ask the probe first. Without a probe, power stays unknown and each wake reports
// an ENOTSUP error ("cannot be confirmed"), which ends the model's wait for
// on at once instead of at wait-timeout.
//
// Wake-on-LAN cannot power a machine off: ctys maps pause and suspend to
// poweroff on WoL hosts, so those verbs fail with ENOTSUP and say why.
//
// The driver opens all its sockets in the network namespace of the thread
// that called New, so a driver created inside a namespace keeps working
// there when the model calls it from other goroutines.
package wol
