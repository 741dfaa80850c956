// Package notifyline bounds what a subhost can make the daemon hold and
// publish through its notify channel (the ns driver's /run/machinefs/notify
// FIFO, UML's /proc/mconsole USER_NOTIFY datagrams). The guest is not
// trusted: a line is at most MaxLine bytes (a longer one is cut, and the
// event says so), and a flood is rate-limited by a token bucket, the
// dropped lines counted in a "notify-dropped" event that is itself
// rate-limited. Memory is bounded whatever the guest writes: one buffer of
// MaxLine+1 bytes per reader, a few counters per limiter.
package notifyline

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/machinefs/machinefs/machine"
)

// MaxLine is the most bytes of one notify line passed on, cut marker
// included.
const MaxLine = 4096

// cutMarker ends a line that was longer than MaxLine.
const cutMarker = " [cut: longer than 4096 bytes]"

// Defaults of the limiter: a burst of lines passes at once, then Rate
// lines a second; the count of dropped lines is published at most once
// per ReportEvery.
const (
	Burst       = 100
	Rate        = 20.0
	ReportEvery = time.Second
)

// Kind is the event kind of a notify line; DroppedKind that of the count
// of lines dropped by the limiter ("notify-dropped 250 lines dropped"), a
// kind of its own so that a guest cannot forge it with a notify line.
const (
	Kind        = machine.EventNotify
	DroppedKind = machine.EventNotifyDropped
)

// bound trims line and cuts it to MaxLine bytes (at a rune boundary, the
// marker included) when it is longer or when cut says that its source was.
func bound(line string, cut bool) string {
	line = strings.TrimSpace(line)
	if len(line) <= MaxLine && !cut {
		return line
	}
	n := min(len(line), MaxLine-len(cutMarker))
	for n > 0 && n < len(line) && !utf8.RuneStart(line[n]) {
		n--
	}
	return strings.TrimSpace(line[:n]) + cutMarker
}

// Lines splits text (one datagram, say) into its non-empty lines, each
// bounded.
func Lines(text string) []string {
	var out []string
	for l := range strings.SplitSeq(text, "\n") {
		if l = bound(l, false); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Reader reads lines from a stream with a fixed buffer: a line longer
// than MaxLine is returned cut at once (so an endless line is reported
// before its end), and the rest of it up to its newline is read and
// discarded.
type Reader struct {
	br   *bufio.Reader
	skip bool // inside the rest of a cut line
	// Cut counts the lines that were cut.
	Cut int
}

// NewReader reads lines from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, MaxLine+1)}
}

// Next returns the next non-empty line, trimmed and bounded (a cut one
// ends with a marker that says so). At the end of the stream or on a read
// error it returns "" and the error.
func (r *Reader) Next() (string, error) {
	for {
		b, err := r.br.ReadSlice('\n')
		switch {
		case r.skip:
			// The rest of a cut line: dropped up to its newline.
			if !errors.Is(err, bufio.ErrBufferFull) {
				r.skip = false
			}
		case errors.Is(err, bufio.ErrBufferFull):
			r.skip = true
			r.Cut++
			if l := bound(string(b[:MaxLine]), true); l != "" {
				return l, nil
			}
		default:
			if l := bound(string(b), false); l != "" {
				// A last line without newline is still a line.
				return l, nil
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
}

// Limiter passes lines on to emit at most Burst at once and Rate a second
// after that (a token bucket); it counts the lines it drops and publishes
// the count, at most once per ReportEvery, before the next line it passes
// or from a timer when no line comes. Its methods are safe for concurrent
// use; emit is never called with its lock held.
type Limiter struct {
	emit  func(kind machine.EventKind, detail string)
	burst float64
	rate  float64
	every time.Duration
	now   func() time.Time

	mu         sync.Mutex
	tokens     float64
	last       time.Time // of the last refill
	dropped    int       // not yet reported
	lastReport time.Time
	timer      *time.Timer
	closed     bool
	// Total counts every line dropped since the start.
	total int
}

// NewLimiter returns a limiter with the package's defaults.
func NewLimiter(emit func(kind machine.EventKind, detail string)) *Limiter {
	return NewLimiterRate(emit, Burst, Rate, ReportEvery, time.Now)
}

// NewLimiterRate returns a limiter with its own burst, rate (lines a
// second), report period and clock (tests).
func NewLimiterRate(emit func(kind machine.EventKind, detail string), burst int, rate float64, every time.Duration, now func() time.Time) *Limiter {
	return &Limiter{emit: emit, burst: float64(burst), rate: rate, every: every, now: now, tokens: float64(burst), last: now()}
}

// Line passes one notify line on as a Kind event, or counts it dropped.
func (l *Limiter) Line(text string) {
	var report string
	pass := false
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	now := l.now()
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(l.burst, l.tokens+d.Seconds()*l.rate)
		l.last = now
	}
	if l.tokens >= 1 {
		l.tokens--
		pass = true
	} else {
		l.dropped++
		l.total++
	}
	if l.dropped > 0 && now.Sub(l.lastReport) >= l.every {
		report = l.takeLocked(now)
	} else if l.dropped > 0 && l.timer == nil {
		// Said later, once, whether or not more lines come.
		l.timer = time.AfterFunc(l.every-now.Sub(l.lastReport), l.flush)
	}
	l.mu.Unlock()
	if report != "" {
		l.emit(DroppedKind, report)
	}
	if pass {
		l.emit(Kind, text)
	}
}

// takeLocked returns the report of the dropped lines and resets the count.
func (l *Limiter) takeLocked(now time.Time) string {
	lines := "lines"
	if l.dropped == 1 {
		lines = "line"
	}
	s := fmt.Sprintf("%d %s dropped (more than %d lines at once or %g a second)", l.dropped, lines, int(l.burst), l.rate)
	l.dropped = 0
	l.lastReport = now
	return s
}

// flush is the timer's: it reports what was dropped since the last report.
func (l *Limiter) flush() {
	l.mu.Lock()
	l.timer = nil
	report := ""
	if !l.closed && l.dropped > 0 {
		report = l.takeLocked(l.now())
	}
	l.mu.Unlock()
	if report != "" {
		l.emit(DroppedKind, report)
	}
}

// Dropped is the number of lines dropped since the start.
func (l *Limiter) Dropped() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Close reports the lines dropped and not yet reported, and stops the
// timer. Lines after Close are ignored.
func (l *Limiter) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	report := ""
	if l.dropped > 0 {
		report = l.takeLocked(l.now())
	}
	l.mu.Unlock()
	if report != "" {
		l.emit(DroppedKind, report)
	}
}
