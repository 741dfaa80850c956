package machine

// EventKind is the word after the path in an events line ("power",
// "command", "notify"): what an event is about. Every kind machinefs writes
// is declared here, so a reader of events and the filesystem's notifier
// (which files an event changes) work from one list; a word that is not
// declared changes only the event logs.
type EventKind string

// Kinds a driver sends through Reporter.Event.
const (
	EventNotify EventKind = "notify" // a line the machine itself sent (guest notify, BMC note)
	// EventNotifyDropped counts notify lines a rate limit dropped; a kind
	// of its own, so a machine cannot forge it with a notify line.
	EventNotifyDropped EventKind = "notify-dropped"
	EventLog           EventKind = "log"     // a console "log" command's text
	EventBackup        EventKind = "backup"  // a guest's backup file, synced or failed
	EventWoL           EventKind = "wol"     // a magic packet sent
	EventWarning       EventKind = "warning" // something the operator should know
	EventError         EventKind = "error"   // a failure, with its reason
)

// Kinds the model writes.
const (
	EventPower     EventKind = "power"     // the power state changed
	EventReachable EventKind = "reachable" // the machine or its controller answers, or stops answering
	EventOwner     EventKind = "owner"     // another agent runs the host now, or its agent went away
	EventStale     EventKind = "stale"     // the cluster's store went out of reach, or came back
	EventCommand   EventKind = "command"   // a command was accepted, refused, or ended
	EventStack     EventKind = "stack"     // a step or the end of a stack command
	EventConfig    EventKind = "config"    // the config changed, or a change was refused
	EventDrivers   EventKind = "drivers"   // the drivers were built again
	EventAdded     EventKind = "added"     // a host, subhost or group appeared
	EventRemoved   EventKind = "removed"   // a host, subhost or group went
	EventMembers   EventKind = "members"   // a group's members changed, or a change was refused
	EventMember    EventKind = "member"    // a group member's command result
	EventConsole   EventKind = "console"   // a console command and its reply
	EventSerial    EventKind = "serial"    // a serial session opened or closed
	EventVSwitch   EventKind = "vswitch"   // a switch, its ports or uplink changed
	EventCtl       EventKind = "ctl"       // a ctl line was refused
	EventReload    EventKind = "reload"    // the config directory was read again (SIGHUP)
	EventLost      EventKind = "lost"      // a reader of a rotated log missed events
	// EventSerialLog is never written to an event log: it tells the
	// filesystem that a host's serial.log grew.
	EventSerialLog EventKind = "serial-log"
)
