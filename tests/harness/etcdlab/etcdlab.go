// Package etcdlab builds a lab of machines for multi-machine tests: each
// machine is a network namespace with one address on a shared segment, and
// runs an etcd member as a separate `machinefs member` process, so that the
// machines form one real etcd cluster whose members a test can kill and
// restart.
//
// The segment is a bridge inside its own "switch" namespace: nothing is
// created in the test's namespace. Processes run in a machine's network
// namespace only (setns on a locked thread before exec, or nsenter --net),
// never in a private mount namespace as `ip netns exec` would make, so FUSE
// mounts of agents started there are visible to the test.
//
//	lab := etcdlab.New(t, etcdlab.Options{Binary: bin, Machines: 3, Prefix: "mfc"})
//	cli := lab.Client(t)                  // from the test, through the switch
//	cmd := lab.Exec(0, bin, "-o", "node="+lab.Machine(0).Name+",cluster="+strings.Join(lab.Endpoints(), "+"), dir)
//	lab.StopMember(1)                     // kill -9
//	lab.StartMember(1)                    // back, with its data
//
// It needs root; it skips otherwise.
package etcdlab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/machinefs/machinefs/tests/harness/netns"
)

// Options describe a lab.
type Options struct {
	// Binary is the machinefs binary the members (and agents) run.
	Binary string
	// Machines is how many machines, each with a member (default 3).
	Machines int
	// Prefix starts the names of the lab's namespaces and devices; short,
	// naming the test ("mfc").
	Prefix string
	// Subnet is the segment's first three octets (default "10.71.0");
	// machine i has Subnet.(i+1), the switch Subnet.254.
	Subnet string
	// TLS runs the members with certificates from the lab's CA and
	// client-cert-auth; Client then presents a certificate for CN root.
	TLS bool
	// ReadyTimeout bounds each wait for a member to join (default 60s).
	ReadyTimeout time.Duration
}

// Machine is one machine of the lab.
type Machine struct {
	// Index is the machine's place in the lab, from 0.
	Index int
	// Name is its node name and its member's name: lab1, lab2, ...
	Name string
	// NS is its network namespace.
	NS *netns.NS
	// Addr is its address on the segment (no prefix length).
	Addr string
	// ClientURL and PeerURL are where its member serves clients and
	// peers.
	ClientURL, PeerURL string
	// Dir is the machine's scratch directory; the member keeps its data
	// in Dir/etcd.
	Dir string
	// Cert is its certificate (CN Name, SAN Addr) when the lab runs TLS,
	// good for its member and its agent alike.
	Cert Cert

	mu     sync.Mutex
	member *proc
	starts int
}

// Lab is a set of machines whose members form one etcd cluster.
type Lab struct {
	t        testing.TB
	opts     Options
	machines []*Machine
	// Switch is the namespace holding the segment's bridge; Client dials
	// from it.
	Switch *netns.NS
	// CA issued the lab's certificates when it runs TLS.
	CA *CA
}

// proc is a process the lab started, and its end.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// New builds the lab and starts one member per machine, returning once
// they form a cluster. Everything goes at cleanup.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	netns.NeedRoot(t)
	if opts.Binary == "" {
		t.Fatal("etcdlab: Options.Binary names no machinefs binary")
	}
	if opts.Machines == 0 {
		opts.Machines = 3
	}
	if opts.Prefix == "" {
		opts.Prefix = "mfl"
	}
	if opts.Subnet == "" {
		opts.Subnet = "10.71.0"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	dir := t.TempDir()
	l := &Lab{t: t, opts: opts, Switch: netns.New(t, opts.Prefix+"s")}
	bridge := opts.Prefix + "br"
	addBridge(t, l.Switch, bridge)
	if opts.TLS {
		l.CA = NewCA(t, filepath.Join(dir, "ca"))
	}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
	}
	for i := range opts.Machines {
		m := &Machine{Index: i, Name: fmt.Sprintf("lab%d", i+1), NS: netns.New(t, opts.Prefix),
			Addr: fmt.Sprintf("%s.%d", opts.Subnet, i+1), Dir: filepath.Join(dir, fmt.Sprintf("lab%d", i+1))}
		m.ClientURL = scheme + "://" + m.Addr + ":2379"
		m.PeerURL = scheme + "://" + m.Addr + ":2380"
		if err := os.MkdirAll(m.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if opts.TLS {
			m.Cert = l.CA.Issue(t, m.Name, m.Addr)
		}
		// The port's name says which machine it leads to, in the switch.
		port := fmt.Sprintf("%sp%d", opts.Prefix, i+1)
		netns.Veth(t, netns.End{NS: m.NS, Name: "eth0", Addr: m.Addr + "/24"}, netns.End{NS: l.Switch, Name: port})
		enslave(t, l.Switch, port, bridge)
		l.machines = append(l.machines, m)
	}
	setAddr(t, l.Switch, bridge, opts.Subnet+".254/24")
	// Members are killed before their namespaces go (cleanups run last
	// registered first).
	t.Cleanup(l.stopAll)
	for i := range l.machines {
		l.spawn(i, "new")
	}
	for i := range l.machines {
		l.waitReady(i)
	}
	return l
}

// Machine returns machine i (from 0).
func (l *Lab) Machine(i int) *Machine { return l.machines[i] }

// Machines returns how many machines the lab has.
func (l *Lab) Machines() int { return len(l.machines) }

// Endpoints are the members' client URLs, for cluster=.
func (l *Lab) Endpoints() []string {
	var eps []string
	for _, m := range l.machines {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// InitialCluster is the members' list as initial-cluster= takes it.
func (l *Lab) InitialCluster() string {
	var ms []string
	for _, m := range l.machines {
		ms = append(ms, m.Name+"="+m.PeerURL)
	}
	return strings.Join(ms, "+")
}

// MemberOptions are the -o options machine i's member runs with.
func (l *Lab) MemberOptions(i int, state string) string {
	m := l.machines[i]
	o := fmt.Sprintf("node=%s,member=%s,peer-url=%s,client-url=%s,initial-cluster=%s,initial-state=%s",
		m.Name, filepath.Join(m.Dir, "etcd"), m.PeerURL, m.ClientURL, l.InitialCluster(), state)
	if l.opts.TLS {
		o += fmt.Sprintf(",etcd-ca=%s,etcd-cert=%s,etcd-key=%s", l.CA.File, m.Cert.File, m.Cert.Key)
	}
	return o
}

// Exec returns a command that runs name inside machine i's network
// namespace (nsenter --net; the mount namespace stays the test's). The
// caller starts and waits for it, and kills it by its PID.
func (l *Lab) Exec(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + l.machines[i].NS.Name, "--", name}, args...)...)
}

// spawn starts machine i's member process.
func (l *Lab) spawn(i int, state string) {
	t, m := l.t, l.machines[i]
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.member != nil {
		t.Fatalf("etcdlab: member %s runs already", m.Name)
	}
	m.starts++
	logPath := filepath.Join(m.Dir, fmt.Sprintf("member.%d.log", m.starts))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Debug is off: the member's own etcd info lines would flood its log.
	cmd := l.Exec(i, l.opts.Binary, "member", "-o", l.MemberOptions(i, state))
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcdlab: start member %s: %v", m.Name, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	m.member = p
}

// waitReady waits until machine i's member logs that it joined the
// cluster, and fails the test with its log if it exits or does not within
// the bound.
func (l *Lab) waitReady(i int) {
	t, m := l.t, l.machines[i]
	t.Helper()
	m.mu.Lock()
	p := m.member
	m.mu.Unlock()
	deadline := time.Now().Add(l.opts.ReadyTimeout)
	for {
		data, _ := os.ReadFile(p.log)
		if bytes.Contains(data, []byte("etcd member ready")) {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("etcdlab: member %s exited (%v) before it was ready:\n%s", m.Name, p.err, data)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcdlab: member %s not ready after %s:\n%s", m.Name, l.opts.ReadyTimeout, data)
		}
	}
}

// StopMember kills machine i's member with SIGKILL, as a crash or a power
// cut would, and waits until it is gone.
func (l *Lab) StopMember(i int) {
	l.t.Helper()
	m := l.machines[i]
	m.mu.Lock()
	p := m.member
	m.member = nil
	m.mu.Unlock()
	if p == nil {
		l.t.Fatalf("etcdlab: member %s is not running", m.Name)
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// StartMember restarts machine i's member with its data, as existing, and
// waits until it has joined the cluster, which needs a quorum: with two
// of three members down, start one, and it waits for no other.
func (l *Lab) StartMember(i int) {
	l.t.Helper()
	l.spawn(i, "existing")
	l.waitReady(i)
}

// MemberLog returns what machine i's running (or last) member logged.
func (l *Lab) MemberLog(i int) string {
	m := l.machines[i]
	m.mu.Lock()
	n := m.starts
	m.mu.Unlock()
	data, _ := os.ReadFile(filepath.Join(m.Dir, fmt.Sprintf("member.%d.log", n)))
	return string(data)
}

// stopAll kills the members still running, and shows their logs when the
// test failed.
func (l *Lab) stopAll() {
	for i, m := range l.machines {
		m.mu.Lock()
		p := m.member
		m.member = nil
		m.mu.Unlock()
		if p != nil {
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.done
		}
		if l.t.Failed() {
			l.t.Logf("etcdlab: member %s log:\n%s", m.Name, tail(l.MemberLog(i), 40))
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// DialOption makes an etcd client (or any gRPC client) dial from the
// switch namespace, which reaches every machine: the test itself lives in
// a namespace that has no route to the segment.
func (l *Lab) DialOption() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		// A socket stays in the namespace it was made in, whichever
		// thread uses it later.
		err := l.Switch.Run(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	})
}

// Client returns an etcd client for all members, from the test (as root
// when the lab runs TLS), closed at cleanup.
func (l *Lab) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return l.ClientFor(t, "root", l.Endpoints()...)
}

// ClientFor returns an etcd client for the given endpoints (all members
// when none) presenting a certificate for cn when the lab runs TLS,
// closed at cleanup.
func (l *Lab) ClientFor(t testing.TB, cn string, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		endpoints = l.Endpoints()
	}
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{l.DialOption()},
		// The client warns on stderr at every failed attempt, which fault
		// tests cause on purpose.
		Logger: zap.NewNop(),
	}
	if l.opts.TLS {
		cfg.TLS = l.CA.ClientTLS(t, cn)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcdlab: client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// SwitchAddr is the switch namespace's address on the segment (every
// machine reaches it): where a test puts a peer all machines share, such
// as a BMC.
func (l *Lab) SwitchAddr() string { return l.opts.Subnet + ".254" }
