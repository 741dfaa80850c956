package nodes

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Event is one line of the events stream: "TIME PATH KIND DETAIL", libvirt
// style (an event and its detail: "power on", `command "on" uid=0 ok`).
type Event struct {
	Time   time.Time
	Path   string // "hosts/lab01", or "" for the tree itself
	Kind   string // power, command, error, config, added, removed, notify...
	Detail string
	// Item names the part of the host the event is about, when there is
	// one: the switch of a vswitch event. It is not part of the line.
	Item string
}

// Line renders the event as one line with its newline.
func (e Event) Line() string {
	path := e.Path
	if path == "" {
		path = "/"
	}
	detail := Escape(e.Detail)
	return e.Time.UTC().Format("2006-01-02T15:04:05.000000Z") + " " + path + " " + e.Kind + " " + detail + "\n"
}

// Under reports whether the event concerns path or something below it.
func (e Event) Under(path string) bool {
	return path == "" || e.Path == path || strings.HasPrefix(e.Path, path+"/")
}

// EventLog is the text of events.log: every event line, with a real size so
// `tail -f` works. When it outgrows its limit the oldest half is dropped, as
// logrotate's copytruncate would (tail -f notices and carries on).
type EventLog struct {
	mu    sync.Mutex
	buf   []byte
	limit int
}

func newEventLog(limit int) *EventLog { return &EventLog{limit: limit} }

func (l *EventLog) append(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf)+len(line) > l.limit {
		cut := len(l.buf) / 2
		if i := strings.IndexByte(string(l.buf[cut:]), '\n'); i >= 0 {
			cut += i + 1
		}
		l.buf = append(l.buf[:0], l.buf[cut:]...)
	}
	l.buf = append(l.buf, line...)
}

// Bytes returns a copy of the log text.
func (l *EventLog) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.buf...)
}

// Size is the log's length in bytes.
func (l *EventLog) Size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf)
}

// ReadAt copies log bytes from off into dest.
func (l *EventLog) ReadAt(dest []byte, off int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if off >= int64(len(l.buf)) {
		return 0
	}
	return copy(dest, l.buf[off:])
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
	nextW    int
}

func newBus() *bus {
	return &bus{subs: map[*Subscription]struct{}{}, watchers: map[int]func(Event){}}
}

func (b *bus) subscribe(prefix string) *Subscription {
	s := &Subscription{C: make(chan Event, subscriptionEvents), prefix: prefix, bus: b}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

func (b *bus) watch(fn func(Event)) func() {
	b.mu.Lock()
	id := b.nextW
	b.nextW++
	b.watchers[id] = fn
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.watchers, id)
		b.mu.Unlock()
	}
}

func (b *bus) publish(e Event) {
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
