package tests

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The walk-through of the README on the demo: read power, switch on, watch
// state pass through starting to on, bad input refused.
func TestDemoPowerOn(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	if got := d.read("hosts/lab01/power"); got != "off\n" {
		t.Fatalf("power = %q, want off", got)
	}
	d.ok("echo on > hosts/lab01/power")
	st := d.read("hosts/lab01/state")
	if p := stateField(st, "power"); p != "starting" {
		t.Fatalf("state right after on: power %q, want starting\n%s", p, st)
	}
	if c := stateField(st, "last-command"); !strings.Contains(c, `"on" uid=0`) {
		t.Fatalf("last-command %q does not record the command and uid", c)
	}
	if dr := stateField(st, "drivers"); dr != "sim (simulation)" {
		t.Fatalf("drivers %q: a simulated host must say so", dr)
	}
	eventually(t, "lab01 on", func() bool { return d.read("hosts/lab01/power") == "on\n" })
	st = d.read("hosts/lab01/state")
	if _, err := time.Parse(time.RFC3339, stateField(st, "since")); err != nil {
		t.Fatalf("since is not RFC 3339: %v\n%s", err, st)
	}
	r := d.fails("echo bogus > hosts/lab01/power", "Invalid argument")
	if r.code != 1 {
		t.Fatalf("exit code %d, want 1", r.code)
	}
	d.fails("echo 'on sideways' > hosts/lab01/power", "Invalid argument")
	d.fails("echo 'init 9' > hosts/lab01/power", "Invalid argument")
	if got := d.read("hosts/lab01/power"); got != "on\n" {
		t.Fatalf("a refused command changed power to %q", got)
	}
}

func TestWaitReturnsAtTarget(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("w1", "drivers = sim\nsim.on-delay = 300ms\nsim.off-delay = 300ms")
	d.ok("echo 'on wait' > hosts/w1/power")
	if got := d.read("hosts/w1/power"); got != "on\n" {
		t.Fatalf("after 'on wait' power = %q, want on", got)
	}
	d.ok("echo 'poweroff self wait label=nightly' > hosts/w1/power")
	if got := d.read("hosts/w1/power"); got != "off\n" {
		t.Fatalf("after 'poweroff self wait' power = %q, want off", got)
	}
	if ev := d.read("hosts/w1/events.log"); !strings.Contains(ev, "label=nightly") {
		t.Fatalf("label not in events:\n%s", ev)
	}
	// "on" on a machine that is on succeeds and changes nothing.
	d.ok("echo 'on wait' > hosts/w1/power")
	d.ok("echo on > hosts/w1/power")
	if st := d.read("hosts/w1/state"); !strings.Contains(stateField(st, "last-command"), "already on") {
		t.Fatalf("idempotent on not recorded:\n%s", st)
	}
}

func TestWaitTimesOut(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("stuck", "drivers = sim\nsim.stuck = on")
	d.fails("echo 'on wait timeout=500ms' > hosts/stuck/power", "Connection timed out")
	st := d.read("hosts/stuck/state")
	if !strings.Contains(stateField(st, "last-error"), "expected on") {
		t.Fatalf("last-error does not explain the timeout:\n%s", st)
	}
	if p := stateField(st, "power"); p != "unknown" {
		t.Fatalf("power after a start that never finished: %q, want unknown", p)
	}
}

// A driver that never answers fails with ETIMEDOUT after the host's
// timeout, and other hosts stay readable meanwhile.
func TestHungDriverDoesNotBlock(t *testing.T) {
	d := start(t)
	d.addHost("hang", "drivers = sim\nsim.hang = on\ntimeout = 1s")
	d.addHost("other", "drivers = sim")
	done := make(chan result, 1)
	go func() { done <- runIn(t, d.mnt, "bash", "-c", "echo on > hosts/hang/power") }()
	// While the write hangs in the driver, reads elsewhere answer.
	if got := d.read("hosts/other/power"); got != "off\n" {
		t.Fatalf("other power = %q", got)
	}
	if got := d.read("hosts/hang/power"); got != "starting\n" {
		t.Fatalf("hang power while in flight = %q, want starting", got)
	}
	r := <-done
	if r.code == 0 || !strings.Contains(r.err, "Connection timed out") {
		t.Fatalf("hung driver: exit %d stderr %q, want ETIMEDOUT", r.code, r.err)
	}
	st := d.read("hosts/hang/state")
	if !strings.Contains(stateField(st, "last-error"), "no answer within 1s") {
		t.Fatalf("state does not say why:\n%s", st)
	}
	// The driver may still run it (a BMC that answers late): unknown.
	if p := stateField(st, "power"); p != "unknown" {
		t.Fatalf("power after a timed out command = %q, want unknown", p)
	}
}

func TestBusyWhileInFlight(t *testing.T) {
	d := start(t)
	d.addHost("slow", "drivers = sim\nsim.on-delay = 3s")
	d.ok("echo on > hosts/slow/power")
	d.fails("echo off > hosts/slow/power", "Device or resource busy")
	ev := d.read("hosts/slow/events.log")
	if !strings.Contains(ev, `"off" uid=0`) || !strings.Contains(ev, "refused: busy") {
		t.Fatalf("refusal not in events:\n%s", ev)
	}
	// force overrides the command in flight.
	d.ok("echo 'off force' > hosts/slow/power")
}

// A program that retries a write a signal interrupted (Go's os.File,
// Python) writes "on wait" again while the first is in flight; it waits on
// for that one instead of getting EBUSY, from the same thread or another
// of the same process (Go may run the retry on another thread).
func TestWaitRetriedAfterSignal(t *testing.T) {
	d := start(t)
	d.addHost("slow", "drivers = sim\nsim.on-delay = 2s\nsim.off-delay = 100ms")
	power := filepath.Join(d.mnt, "hosts/slow/power")
	// Reads are in-process: a fork and exec of cat would close the
	// child's copy of the writer's descriptor, and that close (FUSE
	// FLUSH) waits for the write in flight.
	waitPower := func(want string) {
		eventually(t, "power "+want, func() bool { b, _ := os.ReadFile(power); return string(b) == want+"\n" })
	}
	// onThread writes "on wait" on a thread of its own, with retry (as
	// os.File does) or once (syscall.Write), and reports the thread.
	onThread := func(retry bool) (tid int, done chan error) {
		tids, done := make(chan int, 1), make(chan error, 1)
		go func() {
			runtime.LockOSThread() // a signal to tid reaches this write
			defer runtime.UnlockOSThread()
			f, err := os.OpenFile(power, os.O_WRONLY, 0)
			if err != nil {
				tids <- 0
				done <- err
				return
			}
			defer f.Close()
			tids <- syscall.Gettid()
			if retry {
				_, err = f.Write([]byte("on wait\n"))
			} else {
				_, err = syscall.Write(int(f.Fd()), []byte("on wait\n"))
			}
			done <- err
		}()
		return <-tids, done
	}
	interrupt := func(tid int) {
		waitPower("starting")
		if tid == 0 {
			t.Fatal("no writer thread")
		}
		syscall.Tgkill(os.Getpid(), tid, syscall.SIGWINCH)
	}

	// os.File retries on the same thread.
	tid, done := onThread(true)
	interrupt(tid)
	if err := <-done; err != nil {
		t.Fatalf("on wait, interrupted and written again: %v", err)
	}
	waitPower("on")

	// The retry from another thread of the process.
	os.WriteFile(power, []byte("off\n"), 0)
	waitPower("off")
	tid, done = onThread(false)
	interrupt(tid)
	if err := <-done; err != syscall.EINTR {
		t.Fatalf("interrupted on wait: %v, want EINTR", err)
	}
	_, again := onThread(false)
	if err := <-again; err != nil {
		t.Fatalf("on wait written again from another thread: %v", err)
	}
	waitPower("on")
	if ev := d.read("hosts/slow/events.log"); strings.Count(ev, "waits again for the one in flight") != 2 {
		t.Fatalf("the second writes did not both join the first:\n%s", ev)
	}
}

func TestUnsupportedVerb(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.ok("mkdir hosts/bare")
	d.fails("echo on > hosts/bare/power", "Operation not supported")
	st := d.read("hosts/bare/state")
	if !strings.Contains(stateField(st, "last-error"), "no driver configured") {
		t.Fatalf("state does not say why:\n%s", st)
	}
	if p := stateField(st, "power"); p != "unknown" {
		t.Fatalf("power of a host without drivers = %q, want unknown", p)
	}
	d.addHost("s", "drivers = sim")
	d.fails("echo hibernate > hosts/s/power", "Operation not supported")
	if e := stateField(d.read("hosts/s/state"), "last-error"); !strings.Contains(e, "not supported by drivers sim") {
		t.Fatalf("last-error %q", e)
	}
}

func TestDriverFailureIsEIO(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	d.fails("echo on > hosts/lab03/power", "Input/output error")
	st := d.read("hosts/lab03/state")
	if !strings.Contains(stateField(st, "last-error"), "simulated failure") {
		t.Fatalf("driver's words not in state:\n%s", st)
	}
	if ev := d.read("events.log"); !strings.Contains(ev, "hosts/lab03 error sim: simulated failure") {
		t.Fatalf("error event missing:\n%s", ev)
	}
}

// Commands split over several writes, appended with >>, several per write,
// and without a final newline.
func TestWriteShapes(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("h", "drivers = sim\nsim.on-delay = 0s\nsim.off-delay = 0s")
	d.ok("{ printf 'o'; sleep 0.1; printf 'n wait\\n'; } > hosts/h/power")
	if got := d.read("hosts/h/power"); got != "on\n" {
		t.Fatalf("split write: power %q", got)
	}
	d.ok("echo 'off wait' >> hosts/h/power")
	if got := d.read("hosts/h/power"); got != "off\n" {
		t.Fatalf(">>: power %q", got)
	}
	d.ok("printf 'on wait\\noff wait\\n' > hosts/h/power")
	if ev := d.read("hosts/h/events.log"); strings.Count(ev, "power off") < 2 {
		t.Fatalf("two commands in one write did not both run:\n%s", ev)
	}
	d.ok("printf 'on wait' > hosts/h/power")
	if got := d.read("hosts/h/power"); got != "on\n" {
		t.Fatalf("no final newline: power %q", got)
	}
	// A bad line anywhere in one write(2) fails it before anything runs
	// (coreutils printf writes once; bash builtins may write per line).
	d.fails("/usr/bin/printf 'off\\nbogus\\n' > hosts/h/power", "Invalid argument")
	if got := d.read("hosts/h/power"); got != "on\n" {
		t.Fatalf("a write with a bad line ran its good line: power %q", got)
	}
}

// Status files are fresh at once and carry their real size.
func TestReadsAreFresh(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("f", "drivers = sim\nsim.on-delay = 0s\nsim.off-delay = 0s")
	// Hold the file open and pread it, as watch(1) and monitoring agents do.
	f, err := os.Open(filepath.Join(d.mnt, "hosts/f/power"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64)
	for i, cmd := range []string{"on", "off", "on", "off"} {
		d.ok("echo '" + cmd + " wait' > hosts/f/power")
		n, _ := f.ReadAt(buf, 0)
		if got := string(buf[:n]); got != cmd+"\n" {
			t.Fatalf("round %d: pread on open fd = %q, want %q", i, got, cmd)
		}
		fi, err := os.Stat(filepath.Join(d.mnt, "hosts/f/power"))
		if err != nil || fi.Size() != int64(len(cmd)+1) {
			t.Fatalf("round %d: size %d, want %d (%v)", i, fi.Size(), len(cmd)+1, err)
		}
	}
}

func TestInotifySeesDaemonChanges(t *testing.T) {
	d := start(t)
	d.addHost("n", "drivers = sim\nsim.on-delay = 300ms")
	cmd := exec.Command("inotifywait", "-m", "-e", "close_write", "--format", "%w%f %e", "hosts/n/power", "hosts/n/state")
	cmd.Dir = d.mnt
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	time.Sleep(300 * time.Millisecond) // let inotifywait set its watches
	// A change the daemon makes by itself: the simulated machine comes up
	// 300ms after the command, long after the writer closed the file.
	d.ok("echo on > hosts/n/power")
	drain := func(d time.Duration) []string {
		var got []string
		timeout := time.After(d)
		for {
			select {
			case l := <-lines:
				got = append(got, l)
			case <-timeout:
				return got
			}
		}
	}
	first := drain(100 * time.Millisecond)
	eventually(t, "power on", func() bool { return strings.HasPrefix(d.read("hosts/n/power"), "on") })
	later := drain(500 * time.Millisecond)
	if !contains(later, "hosts/n/power CLOSE_WRITE,CLOSE") || !contains(later, "hosts/n/state CLOSE_WRITE,CLOSE") {
		t.Fatalf("no inotify event for the daemon's own change to on; before: %q after: %q", first, later)
	}
	// A change behind machinefs's back (the simulator flips by itself).
	d.ok("echo 'flip off' > hosts/n/console")
	if got := drain(500 * time.Millisecond); !contains(got, "hosts/n/power CLOSE_WRITE,CLOSE") {
		t.Fatalf("no inotify event for an outside change: %q", got)
	}
	if got := d.read("hosts/n/power"); got != "off\n" {
		t.Fatalf("power after flip = %q", got)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestEventsStreamAndInterrupt(t *testing.T) {
	d := start(t, "--demo")
	cmd := exec.Command("cat", "events")
	cmd.Dir = d.mnt
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	sc := bufio.NewScanner(out)
	time.Sleep(200 * time.Millisecond) // cat is blocked in read by now
	d.ok("echo on > hosts/lab02/power; echo 'log hello there' > hosts/lab01/console")
	var got []string
	for len(got) < 2 && sc.Scan() {
		got = append(got, sc.Text())
	}
	if len(got) < 2 || !strings.Contains(got[0], "hosts/lab02 command \"on\" uid=0") && !strings.Contains(strings.Join(got, "\n"), `hosts/lab02 command "on" uid=0`) {
		t.Fatalf("events stream: %q", got)
	}
	for _, l := range got {
		f := strings.SplitN(l, " ", 4)
		if len(f) < 4 {
			t.Fatalf("event %q is not TIME PATH EVENT DETAIL", l)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Fatalf("event time %q: %v", f[0], err)
		}
	}
	// Ctrl-C releases the blocked reader cleanly.
	go func() { exited <- cmd.Wait() }()
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("cat events did not end on SIGINT")
	}
	// Per-host stream shows only that host.
	r := d.sh("timeout 1 cat hosts/lab01/events & sleep 0.3; echo 'log only-me' > hosts/lab01/console; echo 'log not-me' > hosts/lab02/console; wait")
	if !strings.Contains(r.out, "only-me") || strings.Contains(r.out, "not-me") {
		t.Fatalf("host events stream: %q", r.out)
	}
}

func TestEventsLogTail(t *testing.T) {
	d := start(t, "--demo")
	r := d.sh("tail -n 0 -f events.log > ../tail.out & pid=$!; sleep 0.5; echo 'log tailed-line' > hosts/lab01/console; sleep 2.5; kill $pid")
	if r.code != 0 {
		t.Fatalf("tail: %+v", r)
	}
	out, _ := os.ReadFile(filepath.Join(filepath.Dir(d.mnt), "tail.out"))
	if !strings.Contains(string(out), "hosts/lab01 log tailed-line") {
		t.Fatalf("tail -f events.log did not see the new event: %q", out)
	}
}

// A last line without a newline runs when the file is released, just
// after close returns (a console close sends no FLUSH), from a write-only
// open and from a read-write session. A line that ends in a newline has
// run, and its reply is the console's, when the write returns.
func TestConsoleUnterminatedLine(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	if got := d.ok("echo 'log from-echo' > hosts/lab01/console; cat hosts/lab01/console; cat hosts/lab01/events.log"); !strings.HasPrefix(got, "OK") || !strings.Contains(got, "hosts/lab01 log from-echo") {
		t.Fatalf("a whole line had not run, or its reply was not the console's, when echo returned:\n%s", got)
	}
	d.ok("printf 'log from-wronly' > hosts/lab01/console")
	eventually(t, "write-only session's last line in events", func() bool {
		return strings.Contains(d.ok("cat hosts/lab01/events.log"), "hosts/lab01 log from-wronly")
	})
	d.ok("exec 3<>hosts/lab01/console; printf 'log from-rdwr' >&3; exec 3>&-")
	eventually(t, "read-write session's last line in events", func() bool {
		return strings.Contains(d.ok("cat hosts/lab01/events.log"), "hosts/lab01 log from-rdwr")
	})
}

// A session that stays open keeps answering at the offsets its reader
// expects after the daemon has dropped the transcript's old part (it keeps
// 64 KiB behind the reader).
func TestConsoleLongSession(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	r := runIn(t, d.mnt, "bash", "-c", `exec 3<>hosts/lab01/console
pad=$(printf 'x%.0s' $(seq 1000))
for i in $(seq 200); do
  echo "log $pad" >&3; read -r r <&3
  case "$r" in OK*) ;; *) echo "reply $i: $r"; exit 1;; esac
done
echo version >&3; read -r v <&3; echo "$v"`)
	if r.code != 0 || !strings.HasPrefix(r.out, "OK machinefs sim") {
		t.Fatalf("long session: %+v", r)
	}
}

// `log TEXT` gets the text as typed: runs of spaces stay.
func TestConsoleKeepsSpaces(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	d.ok("echo '  log  two  spaces  and a	tab' > hosts/lab01/console")
	if log := d.ok("cat hosts/lab01/events.log"); !strings.Contains(log, "hosts/lab01 log two  spaces  and a\ttab\n") {
		t.Fatalf("log text changed on the way:\n%s", log)
	}
}

func TestConsoleSession(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	r := runIn(t, d.mnt, "bash", "-c", `exec 3<>hosts/lab01/console
echo version >&3; read -r a <&3
echo nosuch >&3; read -r b <&3
echo "log x" >&3; read -r c <&3
printf '%s\n%s\n%s\n' "$a" "$b" "$c"`)
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	if r.code != 0 || len(lines) != 3 {
		t.Fatalf("console session: %+v", r)
	}
	if !strings.HasPrefix(lines[0], "OK machinefs sim") || !strings.HasPrefix(lines[1], `ERR unknown command "nosuch"`) || lines[2] != "OK " && lines[2] != "OK" {
		t.Fatalf("console replies: %q", lines)
	}
	// Commands are events, queries are not: a script polling version
	// must not flood the event log.
	log := d.ok("cat hosts/lab01/events.log")
	if !strings.Contains(log, `console "log x"`) || !strings.Contains(log, `console "nosuch"`) || strings.Contains(log, `console "version"`) {
		t.Fatalf("console events: want log x and nosuch, not version:\n%s", log)
	}
	help := d.ok("echo help > hosts/lab01/console; cat hosts/lab01/console")
	for _, w := range []string{"OK commands:", "version", "halt", "reboot", "cad", "flip"} {
		if !strings.Contains(help, w) {
			t.Fatalf("help lacks %q:\n%s", w, help)
		}
	}
}
