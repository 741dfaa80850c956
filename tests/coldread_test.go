package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A status file looked up for the first time has its content handed to
// the kernel's page cache a moment later, so that its first read needs no
// READ (fs/storecache.go). A change between the lookup and the hand-over
// must win: after `echo on > power`, no read of the file says off,
// whether it comes before the hand-over, just after it, or once the
// snapshot settled (150 ms; the simulated host is on by then, unless the
// machine is slow). Each round takes a host nobody looked up.
func TestColdLookupNeverStale(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo", "--demo-hosts", "40")
	out := d.ok(`for i in $(seq 1 40); do
		h=hosts/$(printf node%05d $i)
		stat $h/power > /dev/null || exit 3
		echo on > $h/power
		a=$(cat $h/power); sleep 0.003; b=$(cat $h/power); sleep 0.15; c=$(cat $h/power)
		echo "$h $a $b $c"
	done`)
	for _, f := range rounds(t, out, 40, 4) {
		if f[1] == "off" || f[2] == "off" || f[3] == "off" {
			t.Fatalf("read after `echo on`: %q (want starting or on, never off)\n%s", f, out)
		}
	}
}

// rounds splits a loop's output into its n lines of k fields each.
func rounds(t *testing.T, out string, n, k int) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != n {
		t.Fatalf("%d rounds, want %d:\n%s", len(lines), n, out)
	}
	var all [][]string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != k {
			t.Fatalf("round %q: %d fields, want %d\n%s", l, len(f), k, out)
		}
		all = append(all, f)
	}
	return all
}

// The same for a change that keeps the size, which only the content
// tells: a hand-over of what the lookup saw, landing after the change,
// would leave the old label in the page cache for every later open. The
// hosts come from the config directory, so the kernel never looked their
// config up before the round.
func TestColdLookupSameSizeChange(t *testing.T) {
	t.Parallel()
	d := start(t)
	if err := os.MkdirAll(filepath.Join(d.config, "hosts"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 40; i++ {
		if err := os.WriteFile(filepath.Join(d.config, "hosts", fmt.Sprintf("c%02d.conf", i)), []byte("drivers = sim\nlabel = aaa\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "the reload of 40 hosts", func() bool {
		_, err := os.Stat(filepath.Join(d.mnt, "hosts/c40"))
		return err == nil
	})
	out := d.ok(`for i in $(seq 1 40); do
		h=hosts/$(printf c%02d $i)
		s1=$(stat -c %s $h/config)
		printf 'drivers = sim\nlabel = bbb\n' > $h/config
		sleep 0.08
		echo "$h $s1 $(stat -c %s $h/config) $(grep -h label $h/config)"
	done`)
	for _, f := range rounds(t, out, 40, 6) {
		if f[1] != f[2] || f[5] != "bbb" {
			t.Fatalf("config after the same-size change: %q (want the sizes equal and label = bbb)\n%s", f, out)
		}
	}
}
