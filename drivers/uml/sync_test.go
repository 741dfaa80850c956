package uml

import "testing"

// A sync's end is the report after that sync's own echo: a report of an
// earlier sync that the console holder wrote to the log late is not it,
// and a report split across two reads is found.
func TestSyncScan(t *testing.T) {
	var s syncScan
	if s.feed([]byte("[  1.0] Emergency Sync complete\n")) {
		t.Fatal("an earlier sync's report, before this sync's echo, was taken")
	}
	if s.feed([]byte("[  2.0] sysrq: Emergency Sync\n[  2.1] Emergency Sy")) {
		t.Fatal("half a report was taken")
	}
	if !s.feed([]byte("nc complete\n")) {
		t.Fatal("the report split across two reads was missed")
	}
	var old syncScan
	if !old.feed([]byte("SysRq : Emergency Sync\nEmergency Sync complete\n")) {
		t.Fatal("the echo of kernels before 5.x was missed")
	}
}
