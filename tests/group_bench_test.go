package tests

// BenchmarkGroupOnIPMI: a group of 50 IPMI hosts switched on with
// `echo 'on wait' > groups/G/power`, against FreeIPMI's
// `ipmipower --on --wait-until-on` over the same 50 BMCs, measured in the
// same run (make bench). Target (issue 19): the tree 1.25x faster
// (tree-x-faster-* >= 1.25).
//
// The BMCs are real OpenIPMI ipmi_sim processes on 127.0.0.1, started as
// the IPMI tests start them (tests/harness/ipmisim: one per free UDP port,
// user admin, the harness's password). Both tools talk to the same BMCs, so
// the BMCs' own cost (ipmi_sim forks its chassis-control hook for every
// power command and every status read) is the same on both sides.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

// groupBenchBMCs is the group's size, the 50.
const groupBenchBMCs = 50

// groupBench is the fleet and the daemon of BenchmarkGroupOnIPMI.
type groupBench struct {
	b     *testing.B
	bmcs  []*ipmisim.BMC
	d     *benchDaemon
	power string   // the group's power file
	tool  []string // ipmipower's arguments, without the command
}

// BenchmarkGroupOnIPMI alternates the two sides, each from every machine
// off, and reports their means and medians and the tree's speed-up:
//
//	tree-*-ms       `echo 'on wait' > groups/G/power` by bash in the mount,
//	                process start to exit
//	ipmipower-*-ms  `ipmipower ... --on --wait-until-on`, process start to
//	                exit
//	*-last-cmd-ms   when the last BMC's hook logged its power command,
//	                after the process started (the fan-out figure);
//	                *-first-cmd-ms the first
//	*-bmc-reads     status reads the BMCs answered during a round, all
//	                50 together (each forks the hook, as a command does:
//	                the BMCs' work, which bounds both sides)
//
// One op is two rounds, the tree first in one and ipmipower first in the
// other. Between rounds everything goes off: ipmipower switches off what
// it switched on (--off --wait-until-off), then the tree writes
// `off wait` (after ipmipower, its hosts ask their BMCs and find them off),
// so the tree never starts a round from a stale "on", which would cost it
// a status read per host. A round starts when every BMC's own state file
// and the group's power say off.
func BenchmarkGroupOnIPMI(b *testing.B) {
	g := newGroupBench(b)
	var trees, tools, treeLast, toolLast, treeFirst, toolFirst []time.Duration
	var treeReads, toolReads int
	tree := func() {
		r := g.reads()
		took, first, last := g.round(g.treeOn)
		treeReads += g.reads() - r
		trees, treeFirst, treeLast = append(trees, took), append(treeFirst, first), append(treeLast, last)
		g.treeOff()
	}
	tool := func() {
		r := g.reads()
		took, first, last := g.round(g.toolOn)
		toolReads += g.reads() - r
		tools, toolFirst, toolLast = append(tools, took), append(toolFirst, first), append(toolLast, last)
		g.toolOff()
		g.treeOff()
	}
	// One untimed round each: the first exec of ipmipower reads its
	// libraries from disk, the daemon's first command warms its paths.
	g.round(g.treeOn)
	g.treeOff()
	g.round(g.toolOn)
	g.toolOff()
	g.treeOff()
	for b.Loop() {
		tree()
		tool()
		tool()
		tree()
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	treeMean, treeMedian := meanMedian(trees)
	toolMean, toolMedian := meanMedian(tools)
	b.ReportMetric(ms(treeMean), "tree-mean-ms")
	b.ReportMetric(ms(treeMedian), "tree-median-ms")
	b.ReportMetric(ms(toolMean), "ipmipower-mean-ms")
	b.ReportMetric(ms(toolMedian), "ipmipower-median-ms")
	b.ReportMetric(float64(toolMean)/float64(treeMean), "tree-x-faster-mean")
	b.ReportMetric(float64(toolMedian)/float64(treeMedian), "tree-x-faster-median")
	for _, m := range []struct {
		name string
		ds   []time.Duration
	}{{"tree-first-cmd-ms", treeFirst}, {"tree-last-cmd-ms", treeLast}, {"ipmipower-first-cmd-ms", toolFirst}, {"ipmipower-last-cmd-ms", toolLast}} {
		mean, _ := meanMedian(m.ds)
		b.ReportMetric(ms(mean), m.name)
	}
	b.ReportMetric(float64(treeReads)/float64(len(trees)), "tree-bmc-reads")
	b.ReportMetric(float64(toolReads)/float64(len(tools)), "ipmipower-bmc-reads")
	b.ReportMetric(float64(len(trees)), "rounds")
}

// newGroupBench starts the BMCs, powered off, and machinefs (without
// -race) with one host per BMC and the group G over them, and waits until
// the tree shows every member off.
func newGroupBench(b *testing.B) *groupBench {
	b.Helper()
	if _, err := exec.LookPath("ipmipower"); err != nil {
		b.Skip("no ipmipower (apt-get install freeipmi-tools)")
	}
	g := &groupBench{b: b}
	etc := b.TempDir()
	if err := os.MkdirAll(filepath.Join(etc, "hosts"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(etc, "groups"), 0o755); err != nil {
		b.Fatal(err)
	}
	var hosts []string
	for i := 1; i <= groupBenchBMCs; i++ {
		bmc := ipmisim.Start(b)
		g.bmcs = append(g.bmcs, bmc)
		hosts = append(hosts, fmt.Sprintf("%s:%d", bmc.Addr, bmc.Port))
		// The driver's defaults but for the BMC's address and
		// credentials: lanplus, cipher suite 3 (ipmi.cipher), answer
		// timeout 2 s with one retry, status poll every 5 s.
		conf := fmt.Sprintf("drivers = ipmi\nipmi.address = %s\nipmi.port = %d\nipmi.user = %s\nipmi.password = %s\n",
			bmc.Addr, bmc.Port, bmc.User, bmc.Password)
		if err := os.WriteFile(filepath.Join(etc, "hosts", fmt.Sprintf("bmc%02d.conf", i)), []byte(conf), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	members := fmt.Sprintf("bmc[01-%02d]\n", groupBenchBMCs)
	if err := os.WriteFile(filepath.Join(etc, "groups", "G.members"), []byte(members), 0o644); err != nil {
		b.Fatal(err)
	}
	// ipmipower as the same client: IPMI 2.0 (-D LAN_2_0, the driver's
	// lanplus), cipher suite 3 (-I 3, ipmi.cipher's default, the one
	// ipmi_sim needs), the same user and password, and the administrator
	// privilege go-ipmi asks for (-l ADMIN; ipmipower's default is
	// operator). -W opensesspriv: ipmi_sim answers an Open Session that
	// asks for "the highest level" (0, FreeIPMI's default) with 0, which
	// ipmipower refuses ("privilege level cannot be obtained"); the
	// workaround asks for ADMIN by name and adds no packet.
	//
	// Timeouts: both wait 2 s for an answer before sending a request
	// again, the driver's ipmi.timeout default. ipmipower's own default
	// (--retransmission-timeout 400 ms) does not survive this fleet on a
	// busy 2-vCPU machine: ipmi_sim runs every Chassis Control it gets,
	// forking its hook each time, so the 50 BMCs answer later than
	// 400 ms, ipmipower resends, the BMCs fork again, and every host ends
	// in "session timeout" after 20 s. The rest are ipmipower's defaults:
	// 500 ms between status queries while it waits (its first query
	// follows the command at once, as the driver's does), 20 s per
	// session. Its fan-out is its default too, as the daemon's is
	// (fanout=32).
	g.tool = []string{"-D", "LAN_2_0", "-I", "3", "-l", "ADMIN", "-W", "opensesspriv", "--retransmission-timeout=2000",
		"-u", ipmisim.User, "-p", ipmisim.Password, "-h", strings.Join(hosts, ",")}
	g.d, _ = startBench(b, "groups/G/power", "-c", etc)
	g.power = filepath.Join(g.d.mnt, "groups/G/power")
	g.waitOff()
	return g
}

// round runs on (a side's `on` with its wait) from every machine off and
// returns how long it took, and when the first and the last BMC logged
// their power command, after on started.
func (g *groupBench) round(on func()) (took, first, last time.Duration) {
	g.b.Helper()
	start := time.Now()
	on()
	took = time.Since(start)
	first, last = time.Duration(1<<62), time.Duration(0)
	for _, bmc := range g.bmcs {
		if p := bmc.Power(); p != "on" {
			g.b.Fatalf("BMC %d is %s after the side returned", bmc.Port, p)
		}
		at := time.Unix(0, lastCommandNs(g.b, bmc)).Sub(start)
		first, last = min(first, at), max(last, at)
	}
	return took, first, last
}

// reads is how many status reads the BMCs have answered, together.
func (g *groupBench) reads() int {
	n := 0
	for _, bmc := range g.bmcs {
		n += bmc.Reads()
	}
	return n
}

// lastCommandNs is the time the BMC's hook logged its last command: the
// mtime of its log (the kernel's coarse clock, a few ms), which the hook
// appends to with no fork.
func lastCommandNs(b *testing.B, bmc *ipmisim.BMC) int64 {
	b.Helper()
	cmds := bmc.Commands()
	if len(cmds) == 0 || cmds[len(cmds)-1] != "power 1" {
		b.Fatalf("BMC %d: commands %q, want a power on last", bmc.Port, cmds)
	}
	fi, err := os.Stat(filepath.Join(bmc.Dir, "commands.log"))
	if err != nil {
		b.Fatal(err)
	}
	return fi.ModTime().UnixNano()
}

// treeOn is what a user types in the mount.
func (g *groupBench) treeOn() { g.sh("echo 'on wait' > groups/G/power") }

// treeOff switches every member off through the tree and waits for it.
func (g *groupBench) treeOff() {
	g.sh("echo 'off wait' > groups/G/power")
	g.waitOff()
}

func (g *groupBench) sh(script string) {
	g.b.Helper()
	c := exec.Command("bash", "-c", script)
	c.Dir = g.d.mnt
	if out, err := c.CombinedOutput(); err != nil {
		g.b.Fatalf("%s: %v: %s\n%s", script, err, out, g.d.log())
	}
}

// toolOn is ipmipower's group power on.
func (g *groupBench) toolOn() { g.ipmipower("--on", "--wait-until-on") }

// toolOff is ipmipower's group power off, after which the tree is told
// (treeOff) by the caller.
func (g *groupBench) toolOff() { g.ipmipower("--off", "--wait-until-off") }

// ipmipower runs it with the group's BMCs and checks that every BMC
// answered "ok".
func (g *groupBench) ipmipower(args ...string) {
	g.b.Helper()
	out, err := exec.Command("ipmipower", append(append([]string(nil), g.tool...), args...)...).CombinedOutput()
	if err != nil || bytes.Count(out, []byte(": ok\n")) != groupBenchBMCs {
		g.b.Fatalf("ipmipower %v: %v:\n%s", args, err, out)
	}
}

// waitOff waits until every BMC's state file says off and the group's
// power file reads off.
func (g *groupBench) waitOff() {
	g.b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		off := true
		for _, bmc := range g.bmcs {
			off = off && bmc.Power() == "off"
		}
		if p, err := os.ReadFile(g.power); off && err == nil && string(p) == "off\n" {
			return
		}
		if time.Now().After(deadline) {
			p, _ := os.ReadFile(g.power)
			g.b.Fatalf("not every member off within 60 s: group power %q\n%s", p, g.d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
