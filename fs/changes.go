package fs

import (
	"strings"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// change says what an event changes in the directory of its path (a host's
// or a group's): which of its files the notifier invalidates, stamps and
// pokes, and what else it must refresh.
type change uint16

// Files of a host or group directory.
const (
	chLog       change = 1 << iota // events.log (and events.log.1 at a rotation): every event
	chState                        // state
	chPower                        // power: new content, watchers woken
	chPowerSize                    // power: only its cached size, watchers not woken (see eventChanges)
	chConfig                       // config of a host, members of a group
	chSerialLog                    // serial.log: the console's output (model/seriallog.go)
)

// What else an event changes.
const (
	chGroups   change = 1 << (iota + 8) // the power and state of every group holding the host
	chAppeared                          // the path appeared: its parent's entry, and the parent host's state
	chWent                              // the path went
	chSwitch                            // the host's switch Event.Item: its ports, info and vswitch/ entry
)

// fileChanges are the bits that name files of the directory itself.
const fileChanges = chLog | chState | chPower | chPowerSize | chConfig

// effect is what one kind of event changes.
type effect struct {
	host  change // when its path is a host or subhost
	group change // when its path is a group
	// refused are bits that do not apply when the model marks the event
	// as a refused change (Event.Refused).
	refused change
	// unlogged: the model writes the event to no event log (it only
	// tells that a file of the directory changed), so no log grows,
	// here or above.
	unlogged bool
}

// groupStatus is what any event of a group changes: state shows its last
// command and its members' outcomes, and power is poked with it.
const groupStatus = chState | chPower

// eventChanges declares, for every kind of event machinefs writes
// (machine.EventKind), which files of its directory it changes. Every
// event grows the event logs of its path, the path's ancestors and the
// tree; that is not repeated here. A kind that is not declared changes
// only the logs. TestEveryKindDeclared keeps this table in step with
// machine/events.go.
//
// A host's state shows the driver's Describe lines and its last error, so
// most kinds of a host change it. Console and serial sessions change
// nothing state shows (what a console command does to the machine comes as
// an event of its own), and a switch is not in state: those poke nothing,
// since each poke costs the poker four FUSE requests.
var eventChanges = map[machine.EventKind]effect{
	// Kinds a driver sends.
	machine.EventNotify:        {host: chState},
	machine.EventNotifyDropped: {host: chState},
	machine.EventLog:           {host: chState},
	machine.EventBackup:        {host: chState},
	machine.EventWoL:           {host: chState},
	machine.EventWarning:       {host: chState},
	machine.EventError:         {host: chState, group: groupStatus},

	// Kinds the model writes.
	machine.EventPower:     {host: chState | chPower | chGroups},
	machine.EventReachable: {host: chState},
	// Another agent's snapshot, power included, is what reads show now.
	machine.EventOwner: {host: chState | chPower | chGroups},
	machine.EventStale: {},
	// A writer's direct write may have grown the kernel's idea of
	// power's size: it is refreshed without waking watchers.
	machine.EventCommand: {host: chState | chPowerSize, group: groupStatus},
	machine.EventStack:   {host: chState},
	// The drivers decide what power shows (a rebuild may change it).
	machine.EventConfig:  {host: chState | chConfig | chPower},
	machine.EventDrivers: {host: chState | chConfig | chPower},
	machine.EventAdded:   {host: chState | chAppeared, group: groupStatus | chAppeared},
	machine.EventRemoved: {host: chState | chWent, group: groupStatus | chWent},
	machine.EventMembers: {group: groupStatus | chConfig, refused: chConfig},
	machine.EventMember:  {group: groupStatus},
	machine.EventConsole: {},
	machine.EventSerial:  {},
	// Never in an event log: serial.log grew.
	machine.EventSerialLog: {host: chSerialLog, unlogged: true},
	machine.EventVSwitch:   {host: chSwitch},
	// The tree's own (no directory): only the logs.
	machine.EventCtl:    {},
	machine.EventReload: {},
	// Written into a log at a rotation, never published.
	machine.EventLost: {},
}

// changesOf is what e changes in the directory of its path, logs included.
func changesOf(e model.Event) change {
	eff := eventChanges[e.Kind] // undeclared: the zero effect, logs only
	ch := eff.host
	if isGroupPath(e.Path) {
		ch = eff.group
	}
	if e.Refused {
		ch &^= eff.refused
	}
	if eff.unlogged {
		return ch
	}
	return ch | chLog
}

// isGroupPath reports whether path is a group's ("groups/NAME").
func isGroupPath(path string) bool { return strings.HasPrefix(path, "groups/") }
