// Package ipmi drives a machine through its BMC over IPMI-over-LAN
// (RMCP "lan" for IPMI 1.5, RMCP+ "lanplus" for IPMI 2.0), using
// github.com/bougou/go-ipmi. It knows nothing about FUSE: it implements the
// capability interfaces of package machine (PowerController, Verifier,
// StatusReader, Consoler, Describer) and tells the model what it observes
// through machine.Reporter.
//
// # Power commands are open loop, so every command is verified
//
// A BMC answers "Chassis Control" with success as soon as it has queued the
// request; many act seconds later, some never (a soft shutdown the OS
// ignores, a reset of a machine that is off). Power therefore returns when
// the BMC accepted the command (that is all IPMI can tell), reports the
// transitional state (starting, stopping, rebooting), and a background
// verifier re-reads "Get Chassis Status" (machine.Poll, every 200ms) until
// the expected resting state is seen or the command's deadline passes. The
// deadline is the model's (Command.Deadline: wait-timeout, or timeout=), so
// the driver is a machine.Verifier: it never gives up earlier or later than
// the user's wait, and the model takes its verdict. The verdict is reported
// either way: "verified: BMC reports on 1.1s after cycle" or, like
// freeipmi's --wait-until-on and MAAS, "BMC never transitioned from off to
// on within 2m0s" with an ETIMEDOUT error (or the errno of the last read,
// when the BMC stopped answering). A read the deadline cuts short is not
// held against the BMC. A newer command supersedes a running verification.
//
// The verbs and what they send:
//
//	on        Chassis Control power up      -> expect on. ipmitool semantics:
//	          on a machine that is on succeeds and changes nothing.
//	off       power down (hard)              -> expect off
//	cycle     power cycle                    -> expect on (preferably after
//	          an observed off; "on" without an observed off is accepted after
//	          a short settle time, because fast BMCs cycle between two reads)
//	reset     hard reset                     -> expect on (power unchanged)
//	reboot    = reset
//	soft      soft shutdown (ACPI)           -> expect off
//	poweroff  orderly power off: soft shutdown first; if the machine is not
//	          off after ipmi.verify-timeout or half the command's window,
//	          whichever is shorter, a hard power down follows (announced as
//	          a "notify" event) and is verified in turn, before the
//	          deadline: the wait ends with off, not with a timeout that the
//	          hard off then contradicts.
//
// # Status polling
//
// New starts one goroutine per host that reads chassis status every
// ipmi.poll, so changes made behind machinefs's back (ipmitool, the front
// panel, the OS shutting down) show within one poll interval. A
// package-wide semaphore bounds how many hosts poll at once
// (MaxConcurrentPolls), so a thousand BMCs do not become a thousand
// simultaneous UDP exchanges. An unreachable BMC is retried with
// exponential back-off (poll, 2*poll, 4*poll ... capped at one minute, or at
// ipmi.poll if that is longer); meanwhile power is reported unknown with
// Reachable false and the last error. Polls pause while a verification runs
// (it reads the same status more often).
//
// # Sessions are reused, and thrown away after any error
//
// Opening an RMCP+ session costs four to six round trips, so one session is
// kept per host and shared by polls, power commands and console commands
// (serialised: IPMI sessions carry sequence numbers). After any error the
// session is closed and the next call opens a new one: a session whose BMC
// restarted, timed out the session or lost a packet never recovers, and a
// fresh session is cheap next to a wedged one. Sessions after transport
// errors are closed without waiting for the BMC; sessions after a
// completion-code error (the BMC is alive) are closed politely so they do
// not pile up against the BMC's session limit. Close closes the session and
// stops every goroutine of the driver.
//
// # Never block longer than the caller allows
//
// go-ipmi honours a context deadline but does not return
// context.DeadlineExceeded, so every error is checked against ctx.Err().
// Waiting for the host's session (held by a poll of a hung BMC) is bounded
// by ctx too. Cleaning up a broken session happens in the background.
//
// # Errors
//
// Returned errors are *machine.Error carrying a syscall.Errno: bad credentials
// EACCES, unreachable EHOSTUNREACH (nothing listening, no route, unknown
// name) or ETIMEDOUT (no answer), a BMC completion code other than success
// EIO with the BMC's words ("BMC answered: cc 0xcc ... Invalid data field in
// request"). Over IPMI 1.5 ("lan") a BMC does not answer "Activate Session"
// when the password is wrong; a timeout at exactly that step is reported as
// EACCES. Passwords never appear in errors, logs, reports or Describe.
//
// # The password never goes on the wire in clear
//
// Over IPMI 1.5 ("lan") the client picks one of the authentication types
// the BMC offers, and two of them give the password away: "straight
// password" sends it in clear in every packet, "none" logs in without it
// (neither side proves anything).
// With ipmi.password set, the driver uses only MD5 (preferred) or MD2,
// which send a keyed digest; a BMC that offers neither gets no session:
// EACCES, "the BMC offers only straight password authentication for IPMI
// 1.5 ...", reason "BMC offers no authentication that keeps the password
// secret". Every datagram go-ipmi sends passes a check on the socket
// (auth.go), so the rule also holds when a BMC answers differently the
// second time or names straight password in its Activate Session answer.
// With an empty password nothing is secret and any type is used.
//
// RMCP+ ("lanplus") never sends the password, with any cipher suite: it
// keys an HMAC. Cipher suite 0 (no authentication, integrity or
// confidentiality) does not use the password at all and authenticates
// neither side; it is never chosen by ipmi.cipher auto and only used when
// set explicitly, for BMCs that offer nothing else.
//
// # Serial over LAN
//
// Driver.SOL activates the SOL payload on a dedicated session (lanplus only)
// and returns an io.ReadWriteCloser: reads stream the host's serial output,
// writes send input.
package ipmi
