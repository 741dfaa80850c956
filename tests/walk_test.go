package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// runTool runs a tool in the mount. The deadline only stops a hung tool so
// the test can report it (a walk that blocks on a stream never ends).
func runTool(t *testing.T, dir, script string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%q did not finish (hung on the tree)", script)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return result{out: out.String(), err: errb.String(), code: code}
}

// Recursive walks over the mount finish with exit status 0, and the
// streams they must not open still work by name.
func TestWalkFinishes(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("w1", "drivers = sim\nsim.initial = on")
	d.addHost("w2", "drivers = sim")
	d.ok("mkdir groups/wg && printf 'w1\\nw2\\n' > groups/wg/members")
	dst := t.TempDir()
	for _, script := range []string{
		"grep -r -l power .",
		"cp -r . " + dst + "/cp",
		"tar cf " + dst + "/t.tar .",
		"rsync -a . " + dst + "/rsync/",
		"find . -type f -exec cat {} + > /dev/null",
		"md5sum hosts/*/*",
		"du -s .",
	} {
		r := runTool(t, d.mnt, script)
		if r.code != 0 {
			t.Errorf("%s: exit %d, stderr %q", script, r.code, r.err)
		}
	}
	// What the walks copied is the tree's content.
	for _, f := range []string{"cp/hosts/w1/power", "rsync/hosts/w1/power"} {
		b, err := os.ReadFile(filepath.Join(dst, f))
		if err != nil || string(b) != "on\n" {
			t.Errorf("%s: %q %v, want on", f, b, err)
		}
	}
	list := runTool(t, d.mnt, "tar tf "+dst+"/t.tar").out
	if !strings.Contains(list, "./hosts/w2/state") || !strings.Contains(list, "./groups/wg/members") || strings.Contains(list, "events\n") {
		t.Errorf("tar lists:\n%s", list)
	}
	// A host lists what it has: no serial (the sim driver has no serial
	// console), no vswitch/ (not the local host), no streams.
	if got := d.ok("ls hosts/w1"); got != "check\nconfig\nconsole\nevents.log\npower\nstate\n" {
		t.Errorf("ls hosts/w1:\n%s", got)
	}
	// The streams are there by name: ls, stat and cat find them, and cat
	// blocks for the next event.
	d.ok("ls -l events hosts/w1/events groups/wg/events")
	cat := exec.Command("cat", "hosts/w2/events")
	cat.Dir = d.mnt
	var out syncBuf
	cat.Stdout = &out
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Process.Kill(); cat.Wait() })
	// The stream starts at open: poke until the reader has an event.
	eventually(t, "cat events to show an event", func() bool {
		d.ok("echo 'log walk-check' > hosts/w2/console")
		return strings.Contains(out.String(), "log walk-check")
	})
	if cat.ProcessState != nil {
		t.Fatalf("cat events ended")
	}
}

// events.log rotates like a logrotate'd log. GNU tail -F, following it by
// name through a burst much larger than its limit, never sees a line twice,
// never a cut line, and every line it misses is counted in a lost line;
// once the burst is over it follows each rotation without missing a line.
// tail -f, following the open file, never sees a line twice or a cut line.
func TestEventsLogRotationFollowedByTailF(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("r1", "drivers = sim")
	follow := func(mode string) (*syncBuf, *syncBuf) {
		tail := exec.Command("tail", "-s", "0.2", "-n", "+1", mode, "hosts/r1/events.log") // -s: poll five times a second, not once (tail polls files on FUSE)
		tail.Dir = d.mnt
		var out, errb syncBuf
		tail.Stdout, tail.Stderr = &out, &errb
		if err := tail.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tail.Process.Kill(); tail.Wait() })
		eventually(t, "tail to print the log", func() bool { return strings.Contains(out.String(), " added") })
		return &out, &errb
	}
	byName, byNameErr := follow("-F")
	byFd, _ := follow("-f")
	// Each console line is two events (log, console) of about 2 KiB
	// (an event's detail is cut at 4 KiB). A burst of 1.6 MiB through a
	// host log of 256 KiB (128 KiB a generation), as fast as the console
	// takes them.
	pad := strings.Repeat("x", 2000)
	const burst, calm, batch = 400, 100, 10
	d.ok(fmt.Sprintf(`exec 3>hosts/r1/console; for i in $(seq 1 %d); do printf 'log seq=%%05d %s\n' $i >&3; done`, burst, pad))
	// Once tail -F follows the current generation again (it shows a
	// line written now)...
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(byName.String(), "log caught-up") {
		if time.Now().After(deadline) {
			t.Fatalf("tail -F never caught up; stderr %q", byNameErr.String())
		}
		d.ok("echo 'log caught-up' > hosts/r1/console")
		time.Sleep(200 * time.Millisecond)
	}
	// ...batches of 40 KiB, each once tail -F has shown the batch
	// before: three more rotations, which tail -F must follow without a
	// loss.
	for i := burst + batch; i <= burst+calm; i += batch {
		d.ok(fmt.Sprintf(`exec 3>hosts/r1/console; for i in $(seq %d %d); do printf 'log seq=%%05d %s\n' $i >&3; done`, i-batch+1, i, pad))
		want := fmt.Sprintf("log seq=%05d ", i)
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(byName.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("tail -F never showed seq %d; stderr %q", i, byNameErr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	lineRE := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z hosts/r1 (log seq=(\d{5}) (x+)|lost (\d+) events .*|\S+ .*)$`)
	// check returns the seqs a follower missed and the events its lost
	// lines count; it fails on a cut or replayed line.
	check := func(who, out string) (missed []int, lost int) {
		last := 0
		for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			m := lineRE.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("%s printed a line that is no event line (cut?): %.200q", who, l)
			}
			if m[2] != "" {
				seq, _ := strconv.Atoi(m[2])
				if len(m[3]) != len(pad) {
					t.Fatalf("%s: seq %d is cut (%d bytes of padding)", who, seq, len(m[3]))
				}
				if seq <= last {
					t.Fatalf("%s: seq %d replayed after %d", who, seq, last)
				}
				for s := last + 1; s < seq; s++ {
					missed = append(missed, s)
				}
				last = seq
			}
			if m[4] != "" {
				k, _ := strconv.Atoi(m[4])
				lost += k
			}
		}
		return missed, lost
	}
	missed, lost := check("tail -F", byName.String())
	t.Logf("tail -F: missed %d of %d events, lost lines count %d", len(missed), burst+calm, lost)
	if len(missed) > lost {
		t.Fatalf("tail -F missed %d events but lost lines count %d", len(missed), lost)
	}
	for _, s := range missed {
		if s > burst {
			t.Fatalf("tail -F missed seq %d, after the burst", s)
		}
	}
	if strings.Contains(byNameErr.String(), "truncated") {
		t.Fatalf("tail -F saw a truncation: %q", byNameErr.String())
	}
	check("tail -f", byFd.String())
	// What rotated out is in events.log.1, whole lines only.
	prev := d.read("hosts/r1/events.log.1")
	if !strings.HasSuffix(prev, "\n") || !strings.Contains(prev, "log seq=") || strings.Contains(prev, " lost ") {
		t.Fatalf("events.log.1: %.200q", prev)
	}
}

// mtime and ctime follow changes; statfs, the root inode and the dot
// entries are what tools expect of a filesystem.
func TestTimesAndStatfs(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("t1", "drivers = sim\nsim.on-delay = 0s")
	d.ok("mkdir groups/tg && echo t1 > groups/tg/members")
	if got := d.ok("stat -c %i ."); got != "1\n" {
		t.Errorf("root inode %q, want 1", got)
	}
	if got := d.ok("ls -a hosts/t1 | head -2"); got != ".\n..\n" {
		t.Errorf("ls -a hosts/t1 starts with %q", got)
	}
	if got := d.ok("df -P | awk '{print $6}'"); !strings.Contains(got, d.mnt+"\n") {
		t.Errorf("df does not list the mount:\n%s", got)
	}
	if got := d.ok("df -P . | awk 'NR==2 {print $2}'"); got == "0\n" {
		t.Errorf("df: 0 blocks")
	}
	ref := filepath.Join(t.TempDir(), "ref")
	if err := os.WriteFile(ref, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Nothing has changed since ref.
	if got := d.ok("find hosts/t1 groups/tg -newer " + ref + " -type f | sort"); got != "" {
		t.Errorf("changed before any change: %q", got)
	}
	d.ok("echo 'on wait' > hosts/t1/power")
	eventually(t, "group power on", func() bool { return d.read("groups/tg/power") == "on\n" })
	got := d.ok("find hosts/t1 groups/tg -newer " + ref + " -type f | sort")
	want := "groups/tg/power\ngroups/tg/state\nhosts/t1/events.log\nhosts/t1/power\nhosts/t1/state\n"
	if got != want {
		t.Errorf("find -newer after power on:\n%s\nwant\n%s", got, want)
	}
	if err := os.WriteFile(ref, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d.ok("echo 'label = lt' >> hosts/t1/config && echo 't1' >> groups/tg/members")
	eventually(t, "config and members newer", func() bool {
		got := d.ok("find hosts/t1/config groups/tg/members -newer " + ref)
		return got == "hosts/t1/config\ngroups/tg/members\n"
	})
	if got := d.ok("ls -t hosts/t1 | head -1"); got != "events.log\n" && got != "config\n" {
		t.Errorf("ls -t: newest %q", got)
	}
	if a, b := d.ok("stat -c %Y hosts/t1/config"), d.ok("stat -c %Z hosts/t1/config"); a != b {
		t.Errorf("config mtime %s ctime %s", a, b)
	}
}

// syncBuf is an io.Writer a test may read while a process writes it.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Every way a host, subhost or group appears or goes raises IN_CREATE or
// IN_DELETE on its parent directory, once: mkdir and rmdir, ctl add and
// remove, and a SIGHUP reload.
func TestEntriesRaiseInotify(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("e1", "drivers = sim")
	w := exec.Command("inotifywait", "-m", "-e", "create,delete", "--format", "%w%f %e", "hosts", "groups", "hosts/e1/subhosts")
	w.Dir = d.mnt
	var out, errb syncBuf
	w.Stdout, w.Stderr = &out, &errb
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait() })
	eventually(t, "inotifywait to watch", func() bool { return strings.Contains(errb.String(), "Watches established") })
	conf := filepath.Join(d.config, "hosts", "r1.conf")
	steps := []struct {
		script, want string
	}{
		{"echo 'add c1 drivers=sim' > ctl", "hosts/c1 CREATE,ISDIR"},
		{"echo 'remove c1' > ctl", "hosts/c1 DELETE,ISDIR"},
		{"mkdir hosts/m1", "hosts/m1 CREATE,ISDIR"},
		{"rmdir hosts/m1", "hosts/m1 DELETE,ISDIR"},
		{"echo 'add e1/subhosts/s1 drivers=sim' > ctl", "hosts/e1/subhosts/s1 CREATE,ISDIR"},
		{"echo 'remove e1/subhosts/s1' > ctl", "hosts/e1/subhosts/s1 DELETE,ISDIR"},
		{"mkdir groups/g1", "groups/g1 CREATE,ISDIR"},
		{"rmdir groups/g1", "groups/g1 DELETE,ISDIR"},
		{"echo 'drivers = sim' > " + conf + " && kill -HUP " + strconv.Itoa(d.cmd.Process.Pid), "hosts/r1 CREATE,ISDIR"},
		{"rm " + conf + " && kill -HUP " + strconv.Itoa(d.cmd.Process.Pid), "hosts/r1 DELETE,ISDIR"},
	}
	var want []string
	for _, s := range steps {
		d.ok(s.script)
		want = append(want, s.want)
		eventually(t, s.want, func() bool { return strings.Count(out.String(), s.want+"\n") >= 1 })
	}
	// Nothing twice, nothing else.
	if got := strings.TrimSuffix(out.String(), "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("inotifywait saw:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// A switch cancelled through vswitch/ctl raises IN_DELETE on vswitch/, as
// rmdir does; mkdir raises one IN_CREATE, not two.
func TestSwitchEntriesRaiseInotify(t *testing.T) {
	t.Parallel()
	netns.NeedRoot(t)
	ns := netns.New(t, "mfi")
	d := startNS(t, ns)
	d.addHost("loc", "drivers = sim\nlocal = yes")
	w := exec.Command("inotifywait", "-m", "-e", "create,delete", "--format", "%w%f %e", "hosts/loc/vswitch")
	w.Dir = d.mnt
	var out, errb syncBuf
	w.Stdout, w.Stderr = &out, &errb
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait() })
	eventually(t, "inotifywait to watch", func() bool { return strings.Contains(errb.String(), "Watches established") })
	var want []string
	for _, s := range []struct{ script, want string }{
		{"mkdir hosts/loc/vswitch/mfis0", "hosts/loc/vswitch/mfis0 CREATE,ISDIR"},
		{"echo 'cancel mfis0' > hosts/loc/vswitch/ctl", "hosts/loc/vswitch/mfis0 DELETE,ISDIR"},
		{"mkdir hosts/loc/vswitch/mfis1", "hosts/loc/vswitch/mfis1 CREATE,ISDIR"},
		{"rmdir hosts/loc/vswitch/mfis1", "hosts/loc/vswitch/mfis1 DELETE,ISDIR"},
	} {
		d.ok(s.script)
		want = append(want, s.want)
		eventually(t, s.want, func() bool { return strings.Contains(out.String(), s.want+"\n") })
	}
	if got := strings.TrimSuffix(out.String(), "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("inotifywait saw:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}
