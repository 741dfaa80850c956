package fs

import (
	"strings"
	"testing"
	"time"
)

// The kernel is handed a file's snapshot only while that snapshot is what
// the file says now, the kernel's view of its size is settled, and it fits
// a page; otherwise the first read asks the daemon, as before.
func TestStorableOnlyTheSettledSnapshot(t *testing.T) {
	content := "off\n"
	s := &statusFile{render: func() []byte { return []byte(content) }}
	if got := s.storable(); got != nil {
		t.Fatalf("no lookup yet: storable %q, want nothing", got)
	}
	s.cachedSize() // the first lookup's reply: the kernel has its size
	if got := string(s.storable()); got != "off\n" {
		t.Fatalf("after the first lookup: storable %q, want off", got)
	}
	content = "on\n" // a change the kernel has not asked about yet
	if got := s.storable(); got != nil {
		t.Fatalf("after a change: storable %q, want nothing (the kernel's size is of off)", got)
	}
	s.cachedSize() // a GETATTR: the kernel has the new size, just now
	if got := s.storable(); got != nil {
		t.Fatalf("right after the change reached the kernel: storable %q, want nothing until it settled", got)
	}
	s.rc.mu.Lock()
	s.rc.changedAt = time.Now().Add(-2 * settle)
	s.rc.mu.Unlock()
	if got := string(s.storable()); got != "on\n" {
		t.Fatalf("once settled: storable %q, want on", got)
	}
	end := s.rc.setattrBegin() // a truncation's SETATTR on its way
	if got := s.storable(); got != nil {
		t.Fatalf("during a SETATTR: storable %q, want nothing", got)
	}
	end()
	big := &statusFile{render: func() []byte { return []byte(strings.Repeat("x", pageSize+1)) }}
	big.cachedSize()
	if got := big.storable(); got != nil {
		t.Fatalf("a file over a page: storable %d bytes, want nothing", len(got))
	}
}
