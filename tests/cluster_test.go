package tests

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/etcdlab"
	"github.com/machinefs/machinefs/tests/harness/ipmisim"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// One tree over three machines (issue 16). Each machine is a network
// namespace with an etcd member (the three form one cluster) and a
// machinefs agent mounted in the test's mount namespace, so the test
// drives three mounts of one tree, as operators on lab1, lab2 and lab3
// would. Machines are simulated (sim driver) so the test is about the
// cluster: where commands run, what every mount shows, and what happens
// when an agent or etcd members go.
type site struct {
	lab     *etcdlab.Lab
	agents  []*daemon
	siteKey string // the site key file every agent seals secrets with
}

func newSite(t *testing.T) *site {
	netns.NeedRoot(t)
	s := &site{lab: etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 3, Prefix: "mfc"})}
	s.siteKey = filepath.Join(t.TempDir(), "site.key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(s.siteKey, key, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s.agents = append(s.agents, s.startAgent(t, i))
	}
	return s
}

func (s *site) startAgent(t *testing.T, i int) *daemon {
	m := s.lab.Machine(i)
	opts := "node=" + m.Name + ",secret-key=" + s.siteKey
	for _, ep := range s.lab.Endpoints() {
		opts += ",cluster=" + ep
	}
	return startNS(t, m.NS, "-o", opts)
}

func TestCluster(t *testing.T) {
	// In parallel with the other cluster tests, after the rest of the
	// package: each has its own namespaces, prefixes and subnet.
	t.Parallel()
	s := newSite(t)
	a1, a3 := s.agents[0], s.agents[2]
	// Every mount lists every machine; each agent made its own host.
	for _, d := range s.agents {
		eventually(t, "every machine on every mount", func() bool {
			return strings.Fields(d.ok("ls hosts | tr '\\n' ' '"))[0] == "lab1" && len(strings.Fields(d.ok("ls hosts"))) == 3
		})
	}
	if st := a1.read("hosts/lab2/state"); stateField(st, "owner") != "lab2" {
		t.Fatalf("hosts/lab2 seen from lab1:\n%s", st)
	}

	// A subhost made on lab1's mount under lab2 runs on lab2, and a
	// command written on lab3's mount reaches it there.
	a1.ok("mkdir hosts/lab2/subhosts/vm3 && printf 'drivers = sim\\nsim.on-delay = 200ms\\nsim.off-delay = 200ms\\n' > hosts/lab2/subhosts/vm3/config")
	eventually(t, "vm3 on lab3's mount, owned by lab2", func() bool {
		r := a3.sh("cat hosts/lab2/subhosts/vm3/state")
		return r.code == 0 && stateField(r.out, "owner") == "lab2" && stateField(r.out, "drivers") == "sim (simulation)"
	})
	watch := exec.Command("inotifywait", "-q", "-e", "modify", a1.mnt+"/hosts/lab2/subhosts/vm3/power")
	var wout strings.Builder
	watch.Stdout = &wout
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // inotifywait sets its watch
	a3.ok("echo 'on wait label=from-lab3' > hosts/lab2/subhosts/vm3/power")
	// The writer's mount reads its own write at once (the owner answers
	// after its snapshot, and the writer's agent applies it first); the
	// others within one etcd watch delivery.
	if p := a3.read("hosts/lab2/subhosts/vm3/power"); p != "on\n" {
		t.Fatalf("lab3 shows power %q right after its waiting write returned", p)
	}
	for i, d := range s.agents {
		eventually(t, fmt.Sprintf("agent %d to show on", i+1), func() bool { return d.read("hosts/lab2/subhosts/vm3/power") == "on\n" })
	}
	if err := waitCmd(watch, 10*time.Second); err != nil || !strings.Contains(wout.String(), "MODIFY") {
		t.Fatalf("inotifywait on lab1's mount did not wake for a change on lab2: %v %q", err, wout.String())
	}
	if ev := a1.read("hosts/lab2/subhosts/vm3/events.log"); !strings.Contains(ev, " lab2 hosts/lab2/subhosts/vm3 command \"on wait label=from-lab3\"") || !strings.Contains(ev, "node=lab3 ok") {
		t.Fatalf("lab1's events.log does not name the node and the writer's node:\n%s", ev)
	}
	// The owner's refusal comes back with its errno: EBUSY while a slow
	// off is in flight there; force overrides it from another mount.
	a1.ok("echo 'sim.off-delay = 30s' >> hosts/lab2/subhosts/vm3/config")
	a3.ok("echo off > hosts/lab2/subhosts/vm3/power")
	a1.fails("echo on > hosts/lab2/subhosts/vm3/power", "Device or resource busy")
	a1.ok("echo 'on force wait' > hosts/lab2/subhosts/vm3/power")
	a1.ok("echo 'sim.off-delay = 200ms' >> hosts/lab2/subhosts/vm3/config")
	a1.ok("echo 'off wait' > hosts/lab2/subhosts/vm3/power")

	s.switchesAcrossAgents(t)
	s.bmcAcrossAgents(t)
	s.wolOnOneSegment(t)
	s.stackAcrossAgents(t)
	s.groupAcrossAgents(t)
	s.agentKilled(t)
	s.quorumLost(t)
	s.partitioned(t)
}

// waitCmd waits for cmd, killing it after d.
func waitCmd(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not end within %s", cmd.Path, d)
	}
}

// A stack poweroff of lab2, written on lab3, whose power lab1 runs (as an
// agent that reaches lab2's BMC would): lab2's agent stops its subhosts
// first, then lab1 powers lab2 off.
func (s *site) stackAcrossAgents(t *testing.T) {
	a1, a2, a3 := s.agents[0], s.agents[1], s.agents[2]
	a1.ok("printf 'drivers = sim\\nsim.initial = on\\nsim.off-delay = 200ms\\nagents = lab1\\n' >> hosts/lab2/config")
	eventually(t, "lab1 to run lab2's power", func() bool {
		return stateField(a3.read("hosts/lab2/state"), "owner") == "lab1" && a3.read("hosts/lab2/power") == "on\n"
	})
	a2.ok("echo 'on wait' > hosts/lab2/subhosts/vm3/power")
	a3.ok("echo 'poweroff self wait label=stackx' > hosts/lab2/power")
	if p := a2.read("hosts/lab2/subhosts/vm3/power"); p != "off\n" {
		t.Fatalf("vm3 after the stack poweroff: %q", p)
	}
	if p := a2.read("hosts/lab2/power"); p != "off\n" {
		t.Fatalf("lab2 after the stack poweroff: %q", p)
	}
	ev := a3.read("events.log")
	vmOff := strings.Index(ev, "lab2 hosts/lab2/subhosts/vm3 power off")
	hostOff := strings.Index(ev, "lab1 hosts/lab2 power off")
	if vmOff < 0 || hostOff < 0 || vmOff > hostOff {
		t.Fatalf("want vm3 off on lab2 before lab2 off by lab1 in lab3's events.log:\n%s", ev)
	}
}

// A group over subhosts of all three agents fans out to all three.
func (s *site) groupAcrossAgents(t *testing.T) {
	a1 := s.agents[0]
	for _, n := range []string{"lab1", "lab3"} {
		a1.ok(fmt.Sprintf("mkdir hosts/%s/subhosts/g && echo 'drivers = sim' > hosts/%s/subhosts/g/config", n, n))
	}
	eventually(t, "the group's members on every agent", func() bool {
		return s.agents[2].sh("cat hosts/lab1/subhosts/g/power").code == 0 && s.agents[1].sh("cat hosts/lab3/subhosts/g/power").code == 0
	})
	s.agents[1].ok("mkdir groups/all && printf 'lab1/subhosts/g\\nlab2/subhosts/vm3\\nlab3/subhosts/g\\n' > groups/all/members")
	eventually(t, "the group on lab1's mount", func() bool { return a1.sh("cat groups/all/members").code == 0 })
	a1.ok("echo 'on wait' > groups/all/power")
	for _, p := range []string{"hosts/lab1/subhosts/g", "hosts/lab2/subhosts/vm3", "hosts/lab3/subhosts/g"} {
		if got := s.agents[1].read(p + "/power"); got != "on\n" {
			t.Fatalf("%s after the group's on wait: %q", p, got)
		}
	}
}

// kill -9 of lab3's agent: its host and subhosts show it gone and
// commands fail at once; an elected host it held is taken over within the
// TTL; when it comes back it runs its subhosts again.
func (s *site) agentKilled(t *testing.T) {
	a1 := s.agents[0]
	a1.ok("echo 'add bmc1 drivers=sim agents=lab3' > ctl")
	eventually(t, "lab3 to own bmc1", func() bool { return stateField(a1.read("hosts/bmc1/state"), "owner") == "lab3" })
	a1.ok("echo 'agents = lab3,lab1' >> hosts/bmc1/config")
	// A real subhost of lab3 (an ns subhost: its own PID 1), made and
	// started from lab1's mount.
	e := newNSEnv(t)
	nsv := "hosts/lab3/subhosts/nsv"
	a1.ok(fmt.Sprintf("mkdir %s && cat > %s/config <<'EOF'\n%s\nEOF", nsv, nsv, e.config("ns.root = "+e.root(""))))
	a1.ok("echo 'on wait timeout=20s' > " + nsv + "/power")
	var pid int
	eventually(t, "nsv's pid on lab1's mount", func() bool {
		pid, _ = strconv.Atoi(stateField(a1.read(nsv+"/state"), "pid"))
		return pid > 0
	})
	d3 := s.agents[2]
	d3.cmd.Process.Signal(syscall.SIGKILL)
	<-d3.exited
	syscall.Unmount(d3.mnt, syscall.MNT_DETACH)
	d3.cmd = nil
	eventually(t, "lab3 shown gone", func() bool {
		return strings.Contains(stateField(a1.read("hosts/lab3/subhosts/g/state"), "reachable"), "agent lab3 gone since")
	})
	start := time.Now()
	a1.fails("echo off > hosts/lab3/subhosts/g/power", "No route to host")
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("a command to a gone agent's host took %s", d)
	}
	eventually(t, "lab1 to take bmc1 over", func() bool { return stateField(a1.read("hosts/bmc1/state"), "owner") == "lab1" })
	a1.ok("echo 'on wait' > hosts/bmc1/power")
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("nsv's init (pid %d) did not outlive its agent: %v", pid, err)
	}
	s.agents[2] = s.startAgent(t, 2)
	eventually(t, "lab3 back", func() bool {
		return !strings.Contains(stateField(a1.read("hosts/lab3/subhosts/g/state"), "reachable"), "gone")
	})
	eventually(t, "nsv adopted by lab3's new agent", func() bool {
		st := a1.read(nsv + "/state")
		return stateField(st, "power") == "on" && stateField(st, "pid") == strconv.Itoa(pid) && stateField(st, "reachable") == "yes"
	})
	a1.ok("echo 'off wait' > hosts/lab3/subhosts/g/power")
	a1.ok("echo 'off wait timeout=20s' > " + nsv + "/power")
}

// One member down changes nothing; two down make every mount read-only
// with the reason, showing the last known state; back, writes work again.
func (s *site) quorumLost(t *testing.T) {
	a1 := s.agents[0]
	s.lab.StopMember(2)
	// The clients move to the other members (a write in flight while
	// they do may time out: see the README); then writes work as before.
	eventually(t, "a write with one member down", func() bool {
		return a1.sh("echo 'on wait' > hosts/lab2/subhosts/vm3/power").code == 0
	})
	s.lab.StopMember(1)
	eventually(t, "lab1's mount stale", func() bool {
		return strings.Contains(a1.read("hosts/lab2/state"), "stale: yes (etcd quorum lost since")
	})
	a1.fails("echo off > hosts/lab2/subhosts/vm3/power", "Read-only file system")
	if p := a1.read("hosts/lab2/subhosts/vm3/power"); p != "on\n" {
		t.Fatalf("last known power while stale: %q", p)
	}
	s.lab.StartMember(1)
	s.lab.StartMember(2)
	eventually(t, "lab1's mount current again", func() bool { return !strings.Contains(a1.read("hosts/lab2/state"), "stale:") })
	a1.ok("echo 'off wait' > hosts/lab2/subhosts/vm3/power")
}

// An agent cut off from etcd (its machine's link down: its member is in
// the minority) loses its lease: the others take over the host it won,
// and when it is back it is refused by the fence - a request written
// straight into etcd for it, as a writer that still thought it the owner
// would, is answered "does not own" and runs nothing.
func (s *site) partitioned(t *testing.T) {
	a1 := s.agents[0]
	a1.ok("echo 'add bmc2 drivers=sim agents=lab3,lab1' > ctl")
	eventually(t, "an owner for bmc2", func() bool { return stateField(a1.read("hosts/bmc2/state"), "owner") != "" })
	if stateField(a1.read("hosts/bmc2/state"), "owner") != "lab3" {
		// Make lab3 the owner: lab1 gives it up when not eligible.
		a1.ok("echo 'agents = lab3' > hosts/bmc2/config")
		eventually(t, "lab3 to own bmc2", func() bool { return stateField(a1.read("hosts/bmc2/state"), "owner") == "lab3" })
		a1.ok("echo 'agents = lab3,lab1' > hosts/bmc2/config")
	}
	link := func(state string) {
		if out, err := exec.Command("ip", "-n", s.lab.Machine(2).NS.Name, "link", "set", "eth0", state).CombinedOutput(); err != nil {
			t.Fatalf("ip link set eth0 %s in lab3: %v %s", state, err, out)
		}
	}
	link("down")
	eventually(t, "lab1 to take bmc2 over", func() bool { return stateField(a1.read("hosts/bmc2/state"), "owner") == "lab1" })
	eventually(t, "lab3's mount stale", func() bool {
		return strings.Contains(s.agents[2].read("hosts/bmc2/state"), "stale: yes")
	})
	s.agents[2].fails("echo on > hosts/bmc2/power", "Read-only file system")
	a1.ok("echo 'on wait' > hosts/bmc2/power")
	link("up")
	eventually(t, "lab3 current again", func() bool { return !strings.Contains(s.agents[2].read("hosts/bmc2/state"), "stale:") })
	eventually(t, "lab3 to see lab1 as bmc2's owner", func() bool { return stateField(s.agents[2].read("hosts/bmc2/state"), "owner") == "lab1" })

	cli := s.lab.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The request format is the cluster's (cluster/forward.go): a test
	// writes one by hand because no agent would send it now.
	req := `{"Path":"hosts/bmc2","Line":"off","Who":{"Uid":0,"Gid":0,"Pid":1,"Node":"test"},"Own":false,"InStack":false}`
	w := cli.Watch(ctx, "/machinefs/nodes/lab3/results/stale-1")
	if _, err := cli.Put(ctx, "/machinefs/requests/lab3/stale-1", req); err != nil {
		t.Fatal(err)
	}
	select {
	case wr := <-w:
		// EHOSTUNREACH (113): the fence found another lease on the host,
		// or (right after the link came back) could not confirm its own.
		if len(wr.Events) == 0 || !strings.Contains(string(wr.Events[0].Kv.Value), `"errno":113`) ||
			!regexp.MustCompile(`does not own hosts/bmc2 any more|cannot confirm it owns hosts/bmc2`).Match(wr.Events[0].Kv.Value) {
			t.Fatalf("lab3's answer to a request for a host it lost: %v", wr.Events)
		}
	case <-ctx.Done():
		t.Fatal("lab3 did not answer the request")
	}
	cli.Delete(ctx, "/machinefs/requests/lab3/stale-1")
	if p := a1.read("hosts/bmc2/power"); p != "on\n" {
		t.Fatalf("bmc2 after the fenced request: %q", p)
	}
}

// A switch of lab2, made on lab1's mount, is a bridge in lab2's kernel;
// every mount lists it, and it goes when removed from a third.
func (s *site) switchesAcrossAgents(t *testing.T) {
	a1, a3 := s.agents[0], s.agents[2]
	ns2 := s.lab.Machine(1).NS.Name
	a1.ok("mkdir hosts/lab2/vswitch/mfcs0")
	if out, err := exec.Command("ip", "-n", ns2, "link", "show", "mfcs0").CombinedOutput(); err != nil {
		t.Fatalf("no bridge mfcs0 in lab2's namespace after mkdir on lab1: %v %s", err, out)
	}
	if ls := a3.ok("ls hosts/lab2/vswitch"); !strings.Contains(ls, "mfcs0") {
		t.Fatalf("lab3 lists hosts/lab2/vswitch as %q", ls)
	}
	a3.ok("echo 'add tap' > hosts/lab2/vswitch/mfcs0/ctl")
	if ports := a1.read("hosts/lab2/vswitch/mfcs0/ports"); !strings.Contains(ports, "mfcs0") {
		t.Fatalf("ports of lab2's switch read on lab1: %q", ports)
	}
	a3.ok("rmdir hosts/lab2/vswitch/mfcs0")
	if err := exec.Command("ip", "-n", ns2, "link", "show", "mfcs0").Run(); err == nil {
		t.Fatal("bridge mfcs0 still in lab2's namespace after rmdir on lab3")
	}
}

// A real BMC (ipmi_sim) on the site's segment, which lab1 and lab2 reach:
// one of them wins the host, a command written on lab3 powers the machine
// through it, and its password is sealed in etcd and "<set>" on every
// mount.
func (s *site) bmcAcrossAgents(t *testing.T) {
	a3 := s.agents[2]
	b := ipmisim.Start(t, ipmisim.InNetNS(s.lab.Switch.Run), ipmisim.ListenAddr(s.lab.SwitchAddr()))
	a3.addHost("bmcx", ipmiConfig(b.Port, b.Password, "ipmi.address = "+b.Addr, "agents = lab1,lab2"))
	eventually(t, "lab1 or lab2 to win bmcx", func() bool {
		o := stateField(a3.read("hosts/bmcx/state"), "owner")
		return o == "lab1" || o == "lab2"
	})
	a3.ok("echo 'on wait' > hosts/bmcx/power")
	if p := b.Power(); p != "on" {
		t.Fatalf("the BMC says %q after on wait from lab3", p)
	}
	for i, d := range s.agents {
		if cfg := d.read("hosts/bmcx/config"); !strings.Contains(cfg, "ipmi.password = <set>") || strings.Contains(cfg, b.Password) {
			t.Fatalf("agent %d shows the BMC's config as:\n%s", i+1, cfg)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.lab.Client(t).Get(ctx, "/machinefs/config/hosts/bmcx/")
	if err != nil || len(resp.Kvs) != 1 || strings.Contains(string(resp.Kvs[0].Value), b.Password) {
		t.Fatalf("the BMC's config in etcd: %v %v", err, resp)
	}
}

// A Wake-on-LAN segment only lab2 is on: the host's agents key says so,
// lab2 wins it, and a wake written on lab1's mount goes out on lab2's NIC.
// (The host's config is written on lab2's mount: wol.interface is checked
// where it is written, and only lab2 has the interface.)
func (s *site) wolOnOneSegment(t *testing.T) {
	a1, a2 := s.agents[0], s.agents[1]
	tg := netns.New(t, "mfcw")
	netns.Veth(t, netns.End{NS: s.lab.Machine(1).NS, Name: "mfcw0", Addr: "10.74.2.1/24"}, netns.End{NS: tg, Name: "mfcwt0", Addr: "10.74.2.2/24"})
	mac := net.HardwareAddr{0x02, 0x6d, 0x66, 0x63, 0x00, 0x01}
	pc := tg.StartResponder(t, netns.Sleeper{MAC: mac, Interface: "mfcwt0", Service: "10.74.2.2:2250", Boot: 200 * time.Millisecond})
	a2.addHost("pc", wolConfig(mac, "wol.interface = mfcw0", "tcp:10.74.2.2:2250", "agents = lab2"))
	eventually(t, "lab2 to win pc", func() bool { return stateField(a1.read("hosts/pc/state"), "owner") == "lab2" })
	a1.ok("echo 'wol wait timeout=20s' > hosts/pc/power")
	if !pc.Woke() {
		t.Fatal("the machine on lab2's segment did not get the magic packet")
	}
	if p := a1.read("hosts/pc/power"); p != "on\n" {
		t.Fatalf("pc on lab1's mount after wol wait: %q", p)
	}
}
