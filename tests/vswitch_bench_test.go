package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// BenchmarkVswitchTree creates N switches with one TAP each through the
// tree and deletes them again, next to a shell script doing the same with
// `ip` commands, in one run (issue 5). N is 100 (MACHINEFS_VSWITCH_BENCH_N
// overrides). Each side works in its own fresh network namespace:
//
//   - tree: one bash in the mount runs `mkdir b00 b01 ...` in
//     hosts/lab01/vswitch (one mkdir(1) for all, as a user makes many
//     directories), then, for each switch, `echo 'add tap' > bNN/ctl`,
//     then one `echo "cancel b00 b01 ..." > ctl`, which deletes every
//     switch's devices in one kernel request. The daemon is the non-race
//     build (benchBinary) with a host `local = yes`, started inside the
//     namespace.
//   - shell: one `sh -c` under `ip netns exec` runs, for each switch, `ip
//     link add bNN type bridge; ip link set bNN up; ip tuntap add bNNt0 mode
//     tap; ip link set bNNt0 master bNN up`, then `ip link del` of each TAP
//     and bridge, as drivers/vswitch's BenchmarkCreateDelete100 does.
//
// It reports tree-ms, shell-ms and x-shell (tree time over shell time).
// Target: the tree at least 3x faster, x-shell <= 0.33 (checked by reading
// the output, not asserted). Run with -benchtime=1x.
func BenchmarkVswitchTree(b *testing.B) {
	netns.NeedRoot(b)
	n := 100
	if v := os.Getenv("MACHINEFS_VSWITCH_BENCH_N"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 1 {
			b.Fatalf("MACHINEFS_VSWITCH_BENCH_N=%q: want a positive number", v)
		}
		n = k
	}
	// Names b00, b01, ... (seq -f keeps them short: a TAP is bNNt0).
	names := fmt.Sprintf("$(seq -f 'b%%02g' 0 %d)", n-1)

	treeNS := netns.New(b, "mfbt")
	shellNS := netns.New(b, "mfbs")

	etc := b.TempDir()
	if err := os.MkdirAll(filepath.Join(etc, "hosts"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "hosts/lab01.conf"), []byte("drivers = sim\nlocal = yes\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	d, _ := startBenchIn(b, treeNS, "hosts/lab01/power", "-c", etc, "-o", "statedir="+b.TempDir())

	treeScript := fmt.Sprintf(`set -e
cd hosts/lab01/vswitch
mkdir %s
for s in %s; do
  echo 'add tap' > $s/ctl
done
echo cancel %s > ctl
`, names, names, names)
	shellScript := fmt.Sprintf(`set -e
for s in %s; do
  ip link add $s type bridge
  ip link set $s up
  ip tuntap add ${s}t0 mode tap
  ip link set ${s}t0 master $s up
done
for s in %s; do
  ip link del ${s}t0
  ip link del $s
done
`, names, names)

	// onlyLo fails the benchmark unless ns holds nothing but lo: both sides
	// must have created and deleted everything.
	onlyLo := func(ns *netns.NS, what string) {
		b.Helper()
		out, err := exec.Command("ip", "-n", ns.Name, "-br", "link").CombinedOutput()
		if err != nil {
			b.Fatalf("ip -n %s link: %v: %s", ns.Name, err, out)
		}
		if l := strings.Fields(string(out)); len(l) == 0 || l[0] != "lo" || strings.Count(string(out), "\n") != 1 {
			b.Fatalf("%s left links behind in %s:\n%s", what, ns.Name, out)
		}
	}

	var tree, shell time.Duration
	for b.Loop() {
		cmd := exec.Command("bash", "-c", treeScript)
		cmd.Dir = d.mnt
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		tree += time.Since(t0)
		if err != nil {
			b.Fatalf("tree: %v: %s\nmachinefs log: %s", err, out, d.log())
		}

		cmd = exec.Command("ip", "netns", "exec", shellNS.Name, "sh", "-c", shellScript)
		t0 = time.Now()
		out, err = cmd.CombinedOutput()
		shell += time.Since(t0)
		if err != nil {
			b.Fatalf("shell: %v: %s", err, out)
		}

		b.StopTimer()
		if ls, err := os.ReadDir(filepath.Join(d.mnt, "hosts/lab01/vswitch")); err != nil || len(ls) != 2 {
			b.Fatalf("hosts/lab01/vswitch after cancel: %v %v (want all and ctl)", ls, err)
		}
		onlyLo(treeNS, "tree")
		onlyLo(shellNS, "shell")
		b.StartTimer()
	}
	ms := func(t time.Duration) float64 { return float64(t.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(tree), "tree-ms")
	b.ReportMetric(ms(shell), "shell-ms")
	b.ReportMetric(float64(tree)/float64(shell), "x-shell")
}
