// Package machine is the contract between machinefs and its drivers, and
// all a driver imports of machinefs.
//
// A driver is a DriverSpec (its name, its typed config keys and a
// constructor) registered in package registry. What it builds implements
// Driver and the capabilities its machine has: PowerController to run
// power verbs, Verifier to follow a command to its end by
// Command.Deadline (with Poll), StatusReader to answer "what is the machine
// doing now", Consoler and QueryStarter for a management console,
// Serialer for a serial stream, Describer for lines of the state file,
// Remover for what outlives Close. It tells the model what it observes
// through a Reporter, as Status values and events of a declared
// EventKind, and fails with errors that carry an errno (Errorf, ErrnoOf).
//
// The power words (Power), the command grammar (Grammar, ParseCommand)
// and the key kinds (DurationKind, MACKind, BridgeMACKind, ...) live here
// too, so that what the model accepts and what a driver reads are parsed
// by the same code.
package machine
