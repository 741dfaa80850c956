package tests

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/internal/procfs"
)

// rssLimit is what the daemon's resident memory must stay under while a
// writer or reader misbehaves. It is generous: the test binary is built
// with -race, which multiplies the daemon's memory, and what it guards
// against is growth with the input (64 MiB and more per misbehaving file).
const rssLimit = 160 << 20

// rss returns the daemon's resident set size in bytes (VmRSS).
func (d *daemon) rss() int64 {
	d.t.Helper()
	st, err := procfs.ReadStatus(d.cmd.Process.Pid)
	if err != nil {
		d.t.Fatal(err)
	}
	kb, ok := st.VmKiB["VmRSS"]
	if !ok {
		d.t.Fatal("no VmRSS in /proc/PID/status")
	}
	return int64(kb) << 10
}

// checkRSS fails the test when the daemon holds more than limit.
func (d *daemon) checkRSS(after string, limit int64) {
	d.t.Helper()
	n := d.rss()
	d.t.Logf("RSS after %s: %d MiB", after, n>>20)
	if n > limit {
		d.t.Fatalf("after %s the daemon's RSS is %d MiB, want under %d MiB", after, n>>20, limit>>20)
	}
}

// A console session that writes without reading cannot grow the daemon: a
// write-only session keeps no transcript (nothing could read it) and runs
// every line, a read-write session gets ENOBUFS once 1 MiB of transcript
// waits for its reader, and works on once it has read.
func TestConsoleWriterBounded(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	// Long lines make 64 MiB cheap in commands: each is `version` (a
	// query) behind 60000 spaces.
	line := `l=$(printf '%60000s' version); `
	d.ok(line + `yes "$l" | head -c 64M > hosts/lab01/console`)
	d.checkRSS("64 MiB through a write-only console session", rssLimit)

	r := d.sh(line + `exec 3<>hosts/lab01/console
yes "$l" | head -c 64M >&3
echo "head: $?"
cat <&3 | grep -c '^OK machinefs sim'
echo version >&3; read -r v <&3; echo "$v"`)
	if !strings.Contains(r.err, "No buffer space available") {
		t.Fatalf("a read-write session that does not read: want ENOBUFS, got %+v", r)
	}
	out := strings.Split(strings.TrimSpace(r.out), "\n")
	if len(out) != 3 || out[0] == "head: 0" || !strings.HasPrefix(out[2], "OK machinefs sim") {
		t.Fatalf("session after ENOBUFS: want head failed, its replies, then a working session; got %q (stderr %q)", out, r.err)
	}
	// The lines taken before ENOBUFS were all answered: about 1 MiB of
	// 60 KiB lines.
	if n, err := strconv.Atoi(out[1]); err != nil || n < 10 || n > 20 {
		t.Fatalf("replies read after ENOBUFS: %q, want the ~17 lines that fit in 1 MiB", out[1])
	}
	d.checkRSS("64 MiB through a read-write console session", rssLimit)
	if got := d.ok("echo version > hosts/lab01/console; cat hosts/lab01/console"); !strings.HasPrefix(got, "OK machinefs sim") {
		t.Fatalf("a fresh session after the flood: %q", got)
	}
}

// Console sessions together keep at most 32 MiB for a mount: a user who
// opens many read-write sessions and fills each gets ENOBUFS for the next
// one, write-only sessions (which keep nothing) still work, and closing
// sessions gives the room back.
func TestConsoleSessionsBounded(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	console := filepath.Join(d.mnt, "hosts/lab01/console")
	line := []byte(strings.Repeat(" ", 60000) + "version\n")
	var sessions []*os.File
	for {
		f, err := os.OpenFile(console, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		sessions = append(sessions, f)
		n := 0
		for ; n < 40; n++ { // 40 lines: 2.4 MB, past a session's 1 MiB
			if _, err = f.Write(line); err != nil {
				break
			}
		}
		if !errors.Is(err, syscall.ENOBUFS) {
			t.Fatalf("session %d: %d lines written without reading, then %v; want ENOBUFS", len(sessions), n, err)
		}
		if n == 0 {
			break // the mount's room is used up
		}
		if len(sessions) > 100 {
			t.Fatal("100 sessions of 1 MiB each and no bound for the mount")
		}
	}
	if len(sessions) < 16 || len(sessions) > 40 {
		t.Fatalf("%d sessions filled before the mount's bound, want about 32 (32 MiB of 1 MiB sessions)", len(sessions))
	}
	// What the sessions keep (32 MiB) costs the -race daemon about five
	// times as much.
	d.checkRSS(fmt.Sprintf("%d console sessions filled", len(sessions)), 2*rssLimit)
	if got := d.ok("echo version > hosts/lab02/console; cat hosts/lab02/console"); !strings.HasPrefix(got, "OK machinefs sim") {
		t.Fatalf("a write-only session while the room is used up: %q", got)
	}
	d.fails("exec 3<>hosts/lab02/console; echo version >&3", "No buffer space available")
	for _, f := range sessions[:4] {
		f.Close()
	}
	// RELEASE comes after close returns: the room is back soon after.
	eventually(t, "a read-write session to work after others closed", func() bool {
		r := d.sh("exec 3<>hosts/lab02/console; echo version >&3; read -r v <&3; echo \"$v\"")
		return r.code == 0 && strings.HasPrefix(r.out, "OK machinefs sim")
	})
}

// A line longer than 64 KiB is refused with EINVAL and not kept, in every
// file that takes lines; the tail of such a line never runs as a command of
// its own, and the next line does.
func TestLongLineRefused(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	for _, f := range []string{"hosts/lab01/power", "hosts/lab01/config", "ctl", "hosts/lab01/console", "groups/g/members"} {
		if f == "groups/g/members" {
			d.ok("mkdir groups/g")
		}
		d.fails(`head -c 100M /dev/zero | tr '\0' x > `+f, "Invalid argument")
		d.checkRSS("a 100 MB line to "+f, rssLimit)
	}
	// `on` after 70000 bytes is the end of one long line, not a command.
	// (Builtins: the process that wrote the start of a line ends it
	// when it closes the file, so all of it comes from one process.)
	r := d.sh(`{ printf '%070000d' 0; echo on; echo off; } > hosts/lab01/power`)
	if n := strings.Count(r.err, "Invalid argument"); n != 2 {
		t.Fatalf("want printf's write and the echo that ends the long line refused, got %d: %q", n, r.err)
	}
	if log := d.read("hosts/lab01/events.log"); strings.Contains(log, `hosts/lab01 command "on"`) {
		t.Fatalf("the tail of a refused line ran as a command:\n%s", log)
	}
	// The same open file takes the next line.
	if log := d.read("hosts/lab01/events.log"); !strings.Contains(log, `hosts/lab01 command "off"`) {
		t.Fatalf("the line after the long one did not run:\n%s", log)
	}
	// The console alike, in a read-write session that then works on.
	r = d.sh(`exec 3<>hosts/lab01/console
{ printf '%070000d' 0; echo 'log tail-of-long-line'; } >&3
echo version >&3; cat <&3 | grep '^OK machinefs sim'`)
	if !strings.Contains(r.err, "Invalid argument") || !strings.Contains(r.out, "OK machinefs sim") {
		t.Fatalf("console long line: %+v", r)
	}
	if log := d.read("hosts/lab01/events.log"); strings.Contains(log, "tail-of-long-line") {
		t.Fatalf("the tail of a refused console line ran:\n%s", log)
	}
}

// A file that takes a whole text takes at most 1 MiB per open file: past
// it writes fail with EFBIG, so `yes > config` ends.
func TestConfigTextBounded(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	d.fails(`yes 'timeout = 7s' | head -c 2M > hosts/lab01/config`, "File too large")
	if cfg := d.read("hosts/lab01/config"); !strings.Contains(cfg, "timeout = 7s") {
		t.Fatalf("config after EFBIG: %q", cfg)
	}
	d.ok("mkdir groups/g")
	d.fails(`yes 'lab01' | head -c 2M > groups/g/members`, "File too large")
	d.ok(`echo 'timeout = 8s' > hosts/lab01/config`)
	if cfg := d.read("hosts/lab01/config"); !strings.Contains(cfg, "timeout = 8s") {
		t.Fatalf("config not writable after EFBIG: %q", cfg)
	}
}

// openEvents opens an events file the way cat does, without reading.
func openEvents(t *testing.T, path string) (*os.File, error) {
	f, err := os.Open(path)
	if err == nil {
		t.Cleanup(func() { f.Close() })
	}
	return f, err
}

// At most max-readers events streams are open at once, all events files
// of the mount together; one more gets EBUSY, and closing one frees its
// slot. The default is 64.
func TestEventsMaxReaders(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo", "-o", "max-readers=3")
	var open []*os.File
	for _, p := range []string{"events", "hosts/lab01/events", "events"} {
		f, err := openEvents(t, filepath.Join(d.mnt, p))
		if err != nil {
			t.Fatalf("reader %d of 3: %v", len(open)+1, err)
		}
		open = append(open, f)
	}
	d.fails("cat events", "Device or resource busy")
	d.fails("cat hosts/lab02/events", "Device or resource busy")
	// The kernel sends RELEASE after close returns, so the slot frees
	// soon after, not at once.
	open[0].Close()
	eventually(t, "cat events to get the slot a closed reader freed", func() bool {
		// cat blocks for events until timeout ends it (124).
		return d.sh("timeout 1 cat events").code == 124
	})
	var f *os.File
	eventually(t, "the slot of timeout's cat to be freed", func() bool {
		var err error
		f, err = os.Open(filepath.Join(d.mnt, "events"))
		return err == nil
	})
	t.Cleanup(func() { f.Close() })
	if _, err := openEvents(t, filepath.Join(d.mnt, "events")); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("4th reader: %v, want EBUSY", err)
	}

	d2 := start(t, "--demo")
	for i := range 64 {
		if _, err := openEvents(t, filepath.Join(d2.mnt, "events")); err != nil {
			t.Fatalf("default: reader %d of 64: %v", i+1, err)
		}
	}
	d2.fails("cat events", "Device or resource busy")
}

// A reader that does not read holds a bounded queue: the daemon drops what
// does not fit and tells the reader how many events it lost.
func TestEventsReaderBounded(t *testing.T) {
	// CPU-bound: it runs with the cluster tests, which mostly wait. Its
	// RSS check is of its own daemon.
	t.Parallel()
	d := start(t, "--demo")
	var idle []*os.File
	for range 16 {
		f, err := openEvents(t, filepath.Join(d.mnt, "events"))
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, f)
	}
	// 600 console lines of 60 KB, each a `log` and a `console` event
	// carrying the text.
	d.ok(`pad=$(head -c 60000 /dev/zero | tr '\0' x); for i in $(seq 600); do echo "log $pad"; done > hosts/lab01/console`)
	d.checkRSS("1200 events of 60 KB for 16 readers that do not read", rssLimit)
	d.ok(`echo 'log after-the-flood' > hosts/lab01/console`)

	got := make(chan string, 1)
	go func() {
		var seen []string
		sc := bufio.NewScanner(idle[0])
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			l := sc.Text()
			if len(l) > 200 {
				l = l[:200]
			}
			seen = append(seen, l)
			if strings.Contains(l, "after-the-flood") {
				break
			}
		}
		got <- strings.Join(seen, "\n")
	}()
	var text string
	select {
	case text = <-got:
	case <-time.After(30 * time.Second): // a hang guard, not a timing assertion
		t.Fatal("the idle reader did not get to the event after the flood")
	}
	if !regexp.MustCompile(`(?m)^\S+ / lost \d+ events`).MatchString(text) {
		t.Fatalf("the reader was not told it lost events:\n%s", text)
	}
	if !strings.Contains(text, "after-the-flood") {
		t.Fatalf("the reader missed the event after the flood:\n%s", text)
	}
}
