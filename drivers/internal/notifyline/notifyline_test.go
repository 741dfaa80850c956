package notifyline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// endless is an io.Reader of n bytes of 'y' and no newline.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), e.n)
	for i := range p[:k] {
		p[i] = 'y'
	}
	e.n -= k
	return int(k), nil
}

func readAll(t testing.TB, r io.Reader) ([]string, int) {
	t.Helper()
	nr := NewReader(r)
	var lines []string
	for {
		l, err := nr.Next()
		if l != "" {
			lines = append(lines, l)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("Next: %v", err)
			}
			return lines, nr.Cut
		}
	}
}

func TestReaderLines(t *testing.T) {
	long := strings.Repeat("x", 10000)
	in := "booted\n\n  spaced  \n" + long + "\nafter\n" + strings.Repeat("é", 3000) + "\nlast"
	lines, cut := readAll(t, strings.NewReader(in))
	if cut != 2 || len(lines) != 6 {
		t.Fatalf("%d lines, %d cut: %q", len(lines), cut, lines)
	}
	if lines[0] != "booted" || lines[1] != "spaced" || lines[3] != "after" || lines[5] != "last" {
		t.Fatalf("lines %q", lines)
	}
	for _, i := range []int{2, 4} {
		if len(lines[i]) > MaxLine || !strings.HasSuffix(lines[i], cutMarker) {
			t.Fatalf("cut line %d: %d bytes, ends %q", i, len(lines[i]), lines[i][max(0, len(lines[i])-40):])
		}
	}
	if !strings.HasPrefix(lines[4], "éé") || strings.ContainsRune(lines[4], '\uFFFD') || !utf8Valid(lines[4]) {
		t.Fatalf("a cut in the middle of a rune: %q", lines[4][len(lines[4])-40:])
	}
	// A line of exactly MaxLine bytes is whole.
	exact := strings.Repeat("z", MaxLine)
	if lines, cut := readAll(t, strings.NewReader(exact+"\nnext\n")); cut != 0 || len(lines) != 2 || lines[0] != exact {
		t.Fatalf("a line of MaxLine bytes: cut %d, %d lines", cut, len(lines))
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "?") == s }

// One endless line (100 MB, no newline) costs a bounded amount of memory
// and is reported cut as soon as MaxLine bytes are in.
func TestReaderEndlessLineBoundedMemory(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	lines, cut := readAll(t, &endless{n: 100 << 20})
	runtime.ReadMemStats(&after)
	if len(lines) != 1 || cut != 1 || len(lines[0]) > MaxLine {
		t.Fatalf("%d lines, %d cut, first %d bytes", len(lines), cut, len(lines[0]))
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("reading a 100 MB line allocated %d bytes", alloc)
	}
	// The cut line comes before the end of the line: a reader that
	// blocks after the first chunk still yields it.
	pr, pw := io.Pipe()
	go func() {
		pw.Write(bytes.Repeat([]byte("y"), 3*MaxLine))
		// no newline, no close until the line was seen
	}()
	nr := NewReader(pr)
	if l, err := nr.Next(); err != nil || len(l) > MaxLine || !strings.HasSuffix(l, cutMarker) {
		t.Fatalf("endless line: %d bytes, %v", len(l), err)
	}
	pw.Close()
}

type events struct {
	mu  sync.Mutex
	all []string
}

func (e *events) emit(kind machine.EventKind, detail string) {
	e.mu.Lock()
	e.all = append(e.all, string(kind)+" "+detail)
	e.mu.Unlock()
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.all...)
}

// clock is a settable clock (the limiter's timer reads it too).
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiterFlood(t *testing.T) {
	ev := &events{}
	c := &clock{t: time.Unix(1000, 0)}
	l := NewLimiterRate(ev.emit, 10, 5, time.Second, c.now)
	for i := range 1000 {
		l.Line(fmt.Sprint("line ", i))
	}
	// The burst passed; the first drop is said at once, the rest are
	// counted and said once the report period is over (here: at the
	// next line, a second on).
	got := ev.list()
	if len(got) != 11 || got[0] != "notify line 0" || got[9] != "notify line 9" || got[10] != "notify-dropped 1 line dropped (more than 10 lines at once or 5 a second)" {
		t.Fatalf("events %q", got)
	}
	c.add(time.Second)
	l.Line("later")
	got = ev.list()
	if len(got) != 13 || !strings.HasPrefix(got[11], "notify-dropped 989 lines dropped") || got[12] != "notify later" {
		t.Fatalf("after a second: %q", got[10:])
	}
	c.add(200 * time.Millisecond) // 4 + 1 tokens
	for i := range 20 {
		l.Line(fmt.Sprint("again ", i))
	}
	l.Close()
	got = ev.list()
	if n := len(got); n != 13+5+1 || got[n-1] != "notify-dropped 15 lines dropped (more than 10 lines at once or 5 a second)" {
		t.Fatalf("after close: %q", got[13:])
	}
	if l.Dropped() != 1005 {
		t.Fatalf("Dropped = %d", l.Dropped())
	}
	l.Line("after close")
	if len(ev.list()) != 19 {
		t.Fatal("a line after Close was passed on")
	}
}

// With no line after the flood, the timer says how many were dropped.
func TestLimiterTimerReport(t *testing.T) {
	ev := &events{}
	l := NewLimiterRate(ev.emit, 1, 1, 50*time.Millisecond, time.Now)
	defer l.Close()
	l.Line("a") // passes, and is the first: no report yet
	l.Line("b") // dropped; the last report is long ago: said at once
	l.Line("c") // dropped; said by the timer
	deadline := time.Now().Add(5 * time.Second)
	for len(ev.list()) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("events %q", ev.list())
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := ev.list()
	if got[0] != "notify a" || !strings.HasPrefix(got[1], "notify-dropped 1 line dropped") || !strings.HasPrefix(got[2], "notify-dropped 1 line dropped") {
		t.Fatalf("events %q", got)
	}
}

// FuzzNotifyLines: whatever bytes a guest writes, no line passed on is
// longer than MaxLine or holds a newline, the reader never panics, its
// buffer never grows, and the lines of a datagram obey the same bounds.
// The limiter never passes more than its burst plus its rate.
func FuzzNotifyLines(f *testing.F) {
	f.Add([]byte("booted\n"), uint16(3))
	f.Add(bytes.Repeat([]byte("x"), 3*MaxLine), uint16(1))
	f.Add(append(bytes.Repeat([]byte("é"), MaxLine), '\n', 'a'), uint16(7))
	f.Add([]byte("\x00\x1b[2J\r\nok\n\n\n"), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16) {
		var r io.Reader = bytes.NewReader(data)
		if chunk%4 == 1 {
			r = iotest.OneByteReader(r)
		} else if chunk%4 == 2 {
			r = iotest.HalfReader(r)
		}
		nr := NewReader(r)
		n := 0
		for {
			l, err := nr.Next()
			if len(l) > MaxLine || strings.Contains(l, "\n") {
				t.Fatalf("line of %d bytes: %q", len(l), l)
			}
			if l != "" {
				n++
			}
			if err != nil {
				break
			}
		}
		if max := bytes.Count(data, []byte("\n")) + 1; n > max {
			t.Fatalf("%d lines from %d newlines", n, max-1)
		}
		if nr.br.Size() != MaxLine+1 {
			t.Fatalf("reader buffer grew to %d", nr.br.Size())
		}
		for _, l := range Lines(string(data)) {
			if len(l) > MaxLine || l == "" || strings.Contains(l, "\n") {
				t.Fatalf("datagram line of %d bytes: %q", len(l), l)
			}
		}
		c := &clock{t: time.Unix(0, 0)}
		var mu sync.Mutex
		passed := 0
		lim := NewLimiterRate(func(kind machine.EventKind, _ string) {
			mu.Lock()
			if kind == Kind {
				passed++
			}
			mu.Unlock()
		}, 3, 2, time.Second, c.now)
		for i, b := range data {
			c.add(time.Duration(b) * time.Millisecond)
			lim.Line(fmt.Sprint(i))
		}
		lim.Close()
		mu.Lock()
		defer mu.Unlock()
		elapsed := c.now().Sub(time.Unix(0, 0)).Seconds()
		if float64(passed) > 3+2*elapsed+1e-9 {
			t.Fatalf("%d lines passed in %gs with burst 3, rate 2", passed, elapsed)
		}
		if passed+lim.Dropped() != len(data) {
			t.Fatalf("%d passed + %d dropped != %d lines", passed, lim.Dropped(), len(data))
		}
	})
}
