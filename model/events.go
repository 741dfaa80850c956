package model

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/machinefs/machinefs/machine"
)

// Event is one line of the events stream: "TIME PATH KIND DETAIL", libvirt
// style (an event and its detail: "power on", `command "on" uid=0 ok`).
type Event struct {
	Time   time.Time
	Path   string // "hosts/lab01", or "" for the tree itself
	Kind   machine.EventKind
	Detail string
	// Item names the part of the host the event is about, when there is
	// one: the switch of a vswitch event. It is not part of the line.
	Item string
	// Refused says the event records a change that was refused: nothing
	// but the event logs changed. It is not part of the line.
	Refused bool
	// Node is the agent the event happened on, in a cluster ("" on a
	// single machine); Remote says it came from another agent, so it is
	// not sent on again.
	Node   string
	Remote bool
}

// Line renders the event as one line with its newline.
func (e Event) Line() string {
	path := e.Path
	if path == "" {
		path = "/"
	}
	detail := Escape(e.Detail)
	at := e.Time.UTC().Format("2006-01-02T15:04:05.000000Z") + " "
	if e.Node != "" {
		// A cluster's logs merge every agent's events: each names its
		// agent after the time.
		at += e.Node + " "
	}
	return at + path + " " + string(e.Kind) + " " + detail + "\n"
}

// Under reports whether the event concerns path or something below it.
func (e Event) Under(path string) bool {
	return path == "" || e.Path == path || strings.HasPrefix(e.Path, path+"/")
}

// EventLog is the text of events.log: every event line, with a real size so
// `tail -f` works. It rotates as logrotate does with a rename, never in
// place: when the current generation (events.log) would outgrow half the
// limit, it becomes the previous one (events.log.1) and a new, empty
// generation (a new file, a new inode) takes its place. So a follower
// never reads a line twice or a cut line, and the two generations together
// hold at most the limit.
//
// A generation that left events.log.1 lives on while a reader still holds
// it (a deleted but open file, as on a disk), and at every later rotation
// it gets a `lost N events` line: a follower that still reads it will miss
// the N events of the generation that just went to events.log.1 when it
// opens events.log again (tail -F), or for good (tail -f). No line is lost
// without that line saying so.
type EventLog struct {
	mu    sync.Mutex
	limit int
	name  string // "events.log", "serial.log": what the lost lines say
	unit  string // what it holds: "events", "lines"
	owner string // path of the log's directory, for the lost lines
	cur   *LogGen
	prev  *LogGen // events.log.1; nil before the first rotation
	// gone are generations rotated out of events.log.1 that a reader
	// may still hold: they get the lost lines. Weak: the log must not
	// keep them alive.
	gone []weak.Pointer[LogGen]
}

// LogGen is one generation of an event log: the content of one events.log
// file from its creation to its rotation.
type LogGen struct {
	log    *EventLog
	seq    uint64
	buf    []byte
	events int64
	mtime  time.Time
}

func newEventLog(limit int) *EventLog {
	l := &EventLog{limit: limit, name: "events.log", unit: "events"}
	l.cur = &LogGen{log: l, mtime: time.Now()}
	return l
}

// SetOwner names the log's directory ("" for the tree, "hosts/lab01"), the
// path of the lost lines it writes.
func (l *EventLog) SetOwner(path string) {
	l.mu.Lock()
	l.owner = path
	l.mu.Unlock()
}

func (l *EventLog) append(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if len(l.cur.buf) > 0 && len(l.cur.buf)+len(line) > l.limit/2 {
		l.rotateLocked(now)
	}
	l.cur.buf = append(l.cur.buf, line...)
	l.cur.events++
	l.cur.mtime = now
}

// rotateLocked moves the current generation to events.log.1 and starts a
// new one. Every older generation a reader may still hold is told what
// its reader will not see: the events of the generation just rotated.
func (l *EventLog) rotateLocked(now time.Time) {
	marker := Event{Time: now, Path: l.owner, Kind: machine.EventLost, Detail: strconv.FormatInt(l.cur.events, 10) + " " + l.unit + " (" + l.name + " rotated before this reader reached them; see " + l.name + ".1)"}.Line()
	kept := l.gone[:0]
	for _, w := range l.gone {
		if g := w.Value(); g != nil {
			g.buf = append(g.buf, marker...)
			g.mtime = now
			kept = append(kept, w)
		}
	}
	l.gone = kept
	if l.prev != nil {
		l.prev.buf = append(l.prev.buf, marker...)
		l.prev.mtime = now
		l.gone = append(l.gone, weak.Make(l.prev))
	}
	l.prev = l.cur
	l.cur = &LogGen{log: l, seq: l.prev.seq + 1, mtime: now}
}

// Current is the generation that events.log shows now.
func (l *EventLog) Current() *LogGen {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

// Previous is the generation that events.log.1 shows, nil before the first
// rotation.
func (l *EventLog) Previous() *LogGen {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.prev
}

// Gone is the generations rotated out of events.log.1 that are still held
// by a reader; they change when the log rotates (lost lines).
func (l *EventLog) Gone() []*LogGen {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*LogGen
	for _, w := range l.gone {
		if g := w.Value(); g != nil {
			out = append(out, g)
		}
	}
	return out
}

// Bytes returns a copy of the current generation's text.
func (l *EventLog) Bytes() []byte { return l.Current().Bytes() }

// Size is the current generation's length in bytes.
func (l *EventLog) Size() int { return l.Current().Size() }

// ReadAt copies bytes of the current generation from off into dest.
func (l *EventLog) ReadAt(dest []byte, off int64) int { return l.Current().ReadAt(dest, off) }

// Seq numbers the generations of a log, from 0.
func (g *LogGen) Seq() uint64 { return g.seq }

// Bytes returns a copy of the generation's text.
func (g *LogGen) Bytes() []byte {
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	return append([]byte(nil), g.buf...)
}

// Size is the generation's length in bytes.
func (g *LogGen) Size() int {
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	return len(g.buf)
}

// Stat returns the generation's size and the time of its last change
// together.
func (g *LogGen) Stat() (int, time.Time) {
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	return len(g.buf), g.mtime
}

// ReadAt copies bytes from off into dest and returns how many.
func (g *LogGen) ReadAt(dest []byte, off int64) int {
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	if off >= int64(len(g.buf)) {
		return 0
	}
	return copy(dest, g.buf[off:])
}

// Subscription delivers events to one reader of an events stream. A reader
// that falls behind loses events rather than slowing the tree down; Lost
// says how many.
type Subscription struct {
	C      chan Event
	prefix string
	lost   atomic.Int64
	queued atomic.Int64 // bytes of the events in C, see subscriptionBytes
	bus    *bus
}

// A subscription holds at most subscriptionEvents events and
// subscriptionBytes bytes of them for a reader that does not read: details
// can be long (a console line of up to 64 KiB, quoted), so a count alone
// would let idle readers hold tens of megabytes each.
const (
	subscriptionEvents = 512
	subscriptionBytes  = 1 << 20
)

// size is what an event costs a subscription's queue.
func (e Event) size() int64 {
	return int64(len(e.Path) + len(e.Kind) + len(e.Detail) + len(e.Item) + 64)
}

// Received tells the subscription that its reader took ev from C, which
// frees ev's room in the queue.
func (s *Subscription) Received(ev Event) { s.queued.Add(-ev.size()) }

// Lost returns and resets the number of events dropped because the reader
// was slow.
func (s *Subscription) Lost() int64 { return s.lost.Swap(0) }

// Prefix is the path the subscription follows ("" for the whole tree).
func (s *Subscription) Prefix() string { return s.prefix }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	delete(s.bus.subs, s)
	s.bus.mu.Unlock()
}

type bus struct {
	mu       sync.Mutex
	subs     map[*Subscription]struct{}
	watchers map[int]func(Event)
	after    map[int]func(Event)
	afterN   atomic.Int32 // len(after), read without mu
	nextW    int
}

func newBus() *bus {
	return &bus{subs: map[*Subscription]struct{}{}, watchers: map[int]func(Event){}, after: map[int]func(Event){}}
}

func (b *bus) subscribe(prefix string) *Subscription {
	s := &Subscription{C: make(chan Event, subscriptionEvents), prefix: prefix, bus: b}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

func (b *bus) watch(fn func(Event)) func() { return b.add(b.watchers, fn) }

func (b *bus) watchAfter(fn func(Event)) func() {
	b.afterN.Add(1)
	stop := b.add(b.after, fn)
	var once sync.Once
	return func() { once.Do(func() { stop(); b.afterN.Add(-1) }) }
}

func (b *bus) add(set map[int]func(Event), fn func(Event)) func() {
	b.mu.Lock()
	id := b.nextW
	b.nextW++
	set[id] = fn
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(set, id)
		b.mu.Unlock()
	}
}

// publish calls the watchers and queues e for the subscriptions under
// the bus's lock, so all of them see events in one order; then, outside
// it, the after-watchers.
func (b *bus) publish(e Event) {
	b.deliver(e)
	if b.afterN.Load() == 0 {
		return
	}
	b.mu.Lock()
	after := make([]func(Event), 0, len(b.after))
	for _, fn := range b.after {
		after = append(after, fn)
	}
	b.mu.Unlock()
	for _, fn := range after {
		fn(e)
	}
}

func (b *bus) deliver(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, fn := range b.watchers {
		fn(e)
	}
	size := e.size()
	for s := range b.subs {
		if !e.Under(s.prefix) {
			continue
		}
		// Only publish adds to queued, under b.mu, so the room checked
		// here cannot be taken before the send.
		if s.queued.Load()+size > subscriptionBytes {
			s.lost.Add(1)
			continue
		}
		select {
		case s.C <- e:
			s.queued.Add(size)
		default:
			s.lost.Add(1)
		}
	}
}
