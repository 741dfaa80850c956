package model

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An event log rotates by generations: whole lines only, the two shown
// generations within the limit, and a generation a reader still holds is
// told how many events it will not see.
func TestEventLogGenerations(t *testing.T) {
	l := newEventLog(1000)
	l.SetOwner("hosts/a")
	line := func(i int) string {
		return Event{Time: time.Unix(0, 0), Path: "hosts/a", Kind: "log", Detail: strings.Repeat("x", 90) + string(rune('a'+i%26))}.Line()
	}
	held := l.Current() // a reader's open file of events.log
	for i := 0; i < 40; i++ {
		l.append(line(i))
	}
	cur, prev := l.Current(), l.Previous()
	if prev == nil || cur == held || prev == held {
		t.Fatalf("no rotation: cur %d prev %v", cur.Seq(), prev)
	}
	if cur.Size()+prev.Size() > 1000 {
		t.Fatalf("shown generations hold %d bytes, limit 1000", cur.Size()+prev.Size())
	}
	for _, g := range []*LogGen{cur, prev} {
		for _, l := range strings.SplitAfter(string(g.Bytes()), "\n") {
			if l != "" && (!strings.HasSuffix(l, "\n") || len(l) != len(line(0))) {
				t.Fatalf("generation %d has a cut line %q", g.Seq(), l)
			}
		}
	}
	if strings.Contains(string(prev.Bytes()), " lost ") {
		t.Fatalf("events.log.1 has a lost line:\n%s", prev.Bytes())
	}
	// The held generation got one lost line per rotation it missed,
	// counting every event of the generation that went to events.log.1.
	text := string(held.Bytes())
	perGen := 500 / len(line(0)) // half the limit holds this many whole lines
	if !strings.Contains(text, "hosts/a lost "+strconv.Itoa(perGen)+" events (events.log rotated before this reader reached them") {
		t.Fatalf("held generation:\n%s", text)
	}
	// Generations nobody holds are not kept.
	l.mu.Lock()
	n := len(l.gone)
	l.mu.Unlock()
	runtime.KeepAlive(held)
	held = nil
	runtime.GC()
	l.append(line(0))
	for i := 0; i < 20; i++ {
		l.append(line(i))
	}
	if got := len(l.Gone()); got >= n+2 {
		t.Fatalf("%d gone generations kept (had %d)", got, n)
	}
}
