package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/machinefs/machinefs/tests/harness/etcdlab"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// tlsAgentOptions are the -o options of an agent named node that talks to
// lab's members over TLS with cert (CN node), plus extra ones.
func tlsAgentOptions(lab *etcdlab.Lab, node string, cert etcdlab.Cert, extra ...string) string {
	o := []string{"node=" + node, "cluster=" + strings.Join(lab.Endpoints(), "+"),
		"etcd-ca=" + lab.CA.File, "etcd-cert=" + cert.File, "etcd-key=" + cert.Key}
	return strings.Join(append(o, extra...), ",")
}

// siteKey writes a site key as an operator makes one (head -c 32
// /dev/urandom > FILE, mode 0600) and returns its path.
func siteKey(t *testing.T, mode os.FileMode) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "site.key")
	if err := os.WriteFile(path, key, mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode passes through the umask.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// certClient is an etcd client of lab's members that presents the given
// certificate files, as an agent with them would: the machine's own
// certificate, not one issued for the test (etcdlab's ClientFor would
// issue a new one for the CN and rewrite the machine's files).
func certClient(t *testing.T, lab *etcdlab.Lab, cert etcdlab.Cert) *clientv3.Client {
	t.Helper()
	tc, err := transport.TLSInfo{CertFile: cert.File, KeyFile: cert.Key, TrustedCAFile: lab.CA.File}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: lab.Endpoints(), DialTimeout: 5 * time.Second, TLS: tc,
		DialOptions: []grpc.DialOption{lab.DialOption()}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// One tree over three machines whose etcd runs TLS with client
// certificates and auth (issue 16): each agent is the etcd user named by
// its certificate's CN and may write only its own keys and the shared
// ones; secrets go to etcd sealed with the site key.
func TestClusterTLSAuth(t *testing.T) {
	t.Parallel() // with the other cluster tests: own names and subnets
	netns.NeedRoot(t)
	lab := etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 3, Prefix: "mft", Subnet: "10.75.0", TLS: true})
	root := lab.Client(t)
	// Auth on as an operator turns it on: machinefs auth with a root
	// certificate, from a machine of the site. lab4 is an agent without
	// the site key, started later.
	rootCert := lab.CA.Issue(t, "root")
	auth := lab.Exec(0, binary, "auth", "-o", "cluster="+lab.Machine(0).ClientURL+",etcd-ca="+lab.CA.File+",etcd-cert="+rootCert.File+",etcd-key="+rootCert.Key, "lab1", "lab2", "lab3", "lab4")
	if out, err := auth.CombinedOutput(); err != nil || !strings.Contains(string(out), "etcd auth on") {
		t.Fatalf("machinefs auth: %v\n%s", err, out)
	}
	key := siteKey(t, 0o600)
	var agents []*daemon
	for i := range 3 {
		m := lab.Machine(i)
		agents = append(agents, startNS(t, m.NS, "-o", tlsAgentOptions(lab, m.Name, m.Cert, "secret-key="+key)))
	}
	a1, a2, a3 := agents[0], agents[1], agents[2]
	for _, d := range agents {
		eventually(t, "every machine on every mount", func() bool { return d.ok("ls hosts | tr '\\n' ' '") == "lab1 lab2 lab3 " })
	}

	// The tree works over TLS with auth: a subhost made on lab1's mount
	// under lab2 runs on lab2, and a waiting command from lab3 reaches it.
	a1.ok("mkdir hosts/lab2/subhosts/vm3 && printf 'drivers = sim\\nsim.on-delay = 100ms\\n' > hosts/lab2/subhosts/vm3/config")
	eventually(t, "vm3 on lab3's mount, owned by lab2", func() bool {
		r := a3.sh("cat hosts/lab2/subhosts/vm3/state")
		return r.code == 0 && stateField(r.out, "owner") == "lab2" && stateField(r.out, "drivers") == "sim (simulation)"
	})
	a3.ok("echo 'on wait' > hosts/lab2/subhosts/vm3/power")
	// The writer reads its own write at once, the others within one etcd
	// watch delivery.
	if p := a3.read("hosts/lab2/subhosts/vm3/power"); p != "on\n" {
		t.Fatalf("lab3 shows vm3's power %q right after its on wait returned", p)
	}
	for i, d := range agents {
		eventually(t, fmt.Sprintf("lab%d to show vm3 on", i+1), func() bool { return d.read("hosts/lab2/subhosts/vm3/power") == "on\n" })
	}
	if ev := a2.read("hosts/lab2/subhosts/vm3/events.log"); !strings.Contains(ev, " lab2 hosts/lab2/subhosts/vm3 power on") {
		t.Fatalf("vm3 did not run on lab2; its events.log on lab2:\n%s", ev)
	}

	authRefusesOthersKeys(t, lab)
	secretsSealed(t, lab, root, agents, a1)
	agentWithoutKey(t, lab, agents)
}

// With lab1's certificate, lab2's keys read but do not write: etcd
// refuses with "permission denied", and lab2's status stays lab2's.
func authRefusesOthersKeys(t *testing.T, lab *etcdlab.Lab) {
	lab1 := certClient(t, lab, lab.Machine(0).Cert)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	status := "/machinefs/nodes/lab2/status/hosts/lab2/subhosts/vm3"
	r, err := lab1.Get(ctx, status)
	if err != nil || len(r.Kvs) == 0 {
		t.Fatalf("lab1's certificate reads lab2's status %s: %v, %d keys", status, err, len(r.Kvs))
	}
	was := string(r.Kvs[0].Value)
	for _, k := range []string{status, "/machinefs/nodes/lab2/events", "/machinefs/agents/lab2"} {
		_, err := lab1.Put(ctx, k, "forged by lab1")
		if !errors.Is(err, rpctypes.ErrPermissionDenied) || err.Error() != "etcdserver: permission denied" {
			t.Fatalf("lab1's certificate puts %s: %v, want etcdserver: permission denied", k, err)
		}
	}
	if _, err := lab1.Delete(ctx, status); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("lab1's certificate deletes %s: %v, want permission denied", status, err)
	}
	if r, err := lab1.Get(ctx, status); err != nil || len(r.Kvs) == 0 || string(r.Kvs[0].Value) != was {
		t.Fatalf("lab2's status changed under lab1's refused writes: %v %v", err, r.Kvs)
	}
}

// A secret set on one mount goes to etcd sealed with the site key: no
// value under the prefix holds it, the host's config key starts with the
// sealed marker, and every mount reads <set>.
func secretsSealed(t *testing.T, lab *etcdlab.Lab, root *clientv3.Client, agents []*daemon, a1 *daemon) {
	const secret = "Zq7-s3cret-pw"
	a1.ok("echo 'add bmc1 drivers=sim' > ctl")
	a1.ok("echo 'ipmi.password = " + secret + "' >> hosts/bmc1/config")
	for i, d := range agents {
		eventually(t, fmt.Sprintf("the password on lab%d's mount", i+1), func() bool {
			r := d.sh("cat hosts/bmc1/config")
			return r.code == 0 && strings.Contains(r.out, "ipmi.password = <set>\n")
		})
		if c := d.read("hosts/bmc1/config"); strings.Contains(c, secret) {
			t.Fatalf("lab%d's mount shows the secret:\n%s", i+1, c)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := root.Get(ctx, "/machinefs/config/hosts/bmc1/")
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get bmc1's config: %v", err)
	}
	if v := string(r.Kvs[0].Value); !strings.HasPrefix(v, "mfs-sealed-v1:") || strings.Contains(v, secret) {
		t.Fatalf("bmc1's config in etcd is not sealed: %q", v)
	}
	all, err := root.Get(ctx, "/machinefs/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		if bytes.Contains(kv.Value, []byte(secret)) {
			t.Fatalf("etcd holds the secret in clear at %s: %q", kv.Key, kv.Value)
		}
	}
}

// An agent started without secret-key= cannot set a secret key: the write
// fails with EIO, and the reason reaches its events.log. It cannot open
// the sealed config either, and says so.
func agentWithoutKey(t *testing.T, lab *etcdlab.Lab, agents []*daemon) {
	m := lab.Machine(2)
	cert := lab.CA.Issue(t, "lab4", m.Addr)
	a4 := startNS(t, m.NS, "-o", tlsAgentOptions(lab, "lab4", cert))
	eventually(t, "lab4's host on lab1's mount", func() bool { return agents[0].sh("cat hosts/lab4/state").code == 0 })
	r := a4.fails("echo 'ipmi.password = other-pw' >> hosts/lab4/config", "Input/output error")
	t.Logf("lab4 sets a secret without the site key: exit %d, %s", r.code, strings.TrimSpace(r.err))
	if c := a4.read("hosts/lab4/config"); strings.Contains(c, "ipmi.password") {
		t.Fatalf("the refused secret is in lab4's config:\n%s", c)
	}
	const why = ": a config holding secrets is sealed with the site key, and this machinefs has none (-o secret-key=FILE)"
	refused := regexp.MustCompile(` lab4 hosts/lab4 config refused uid=0 gid=0 pid=\d+: etcd store: save hosts/lab4` + regexp.QuoteMeta(why) + "\n")
	eventually(t, "the reason in lab4's events.log", func() bool { return refused.MatchString(a4.read("events.log")) })
	// The host whose config is sealed is not on lab4's mount, and its
	// events.log says why.
	ev := a4.read("events.log")
	if !strings.Contains(ev, " lab4 hosts/bmc1 error config: etcd store: /machinefs/config/hosts/bmc1/"+why+"\n") {
		t.Fatalf("lab4's events.log does not say why bmc1's sealed config is not shown:\n%s", ev)
	}
	if r := a4.sh("cat hosts/bmc1/config"); r.code == 0 {
		t.Fatalf("lab4, without the site key, shows bmc1's config:\n%s", r.out)
	}
	// Stored configs that name other agents load without complaint: at
	// load an agent has not heard of the others yet.
	if strings.Contains(ev, "ever joined") {
		t.Fatalf("lab4's events.log complains about agents named in stored configs:\n%s", ev)
	}
}

// failedMount is how a machinefs that was to fail at mount ended.
type failedMount struct {
	code   int
	stderr string
	took   time.Duration
}

// mountFails runs machinefs with -o opts in ns (the test's when nil) and
// waits up to 30s for it to exit: bad input must end the mount with an
// exit status and a message, not a hang and not a mount.
func mountFails(t *testing.T, ns *netns.NS, opts string) failedMount {
	t.Helper()
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	cmd := exec.Command(binary, "-c", filepath.Join(dir, "etc"), "-o", "statedir="+filepath.Join(dir, "run"), "-o", opts, mnt)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	start := time.Now()
	run := cmd.Start
	if ns != nil {
		run = func() error { return ns.Start(cmd) }
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	err := waitCmd(cmd, 30*time.Second)
	took := time.Since(start)
	if mounted(mnt) {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		t.Fatalf("-o %s mounted (%v):\n%s", opts, err, stderr.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("-o %s: %v after %s (want an exit status):\n%s", opts, err, took.Round(time.Millisecond), stderr.String())
	}
	return failedMount{code: ee.ExitCode(), stderr: stderr.String(), took: took}
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Bad input at mount (issue 16): a cluster that does not answer,
// certificates that do not match, options that name no node or no etcd
// URL, a site key others may read. Each ends the mount quickly with an
// exit status and a message naming the cause.
func TestClusterBadInput(t *testing.T) {
	t.Parallel() // with the other cluster tests: own names and subnets
	netns.NeedRoot(t)
	lab := etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 1, Prefix: "mfi", Subnet: "10.76.0", TLS: true})
	m := lab.Machine(0)
	other := etcdlab.NewCA(t, filepath.Join(t.TempDir(), "other-ca"))
	// The same CN and address as the machine's own, from another CA.
	stranger := other.Issue(t, m.Name, m.Addr)
	nobody := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	openKey := siteKey(t, 0o644)
	tlsOpts := func(ca string, cert etcdlab.Cert, extra ...string) string {
		o := []string{"node=" + m.Name, "cluster=" + m.ClientURL, "etcd-ca=" + ca, "etcd-cert=" + cert.File, "etcd-key=" + cert.Key}
		return strings.Join(append(o, extra...), ",")
	}
	cases := []struct {
		name string
		ns   *netns.NS
		opts string
		code int
		want []string
		// wantAny: one of them
		wantAny []string
	}{
		{name: "cluster does not answer", opts: "node=lab1,cluster=" + nobody, code: 1,
			want: []string{"machinefs: etcd cluster [" + nobody + "] does not answer within 10s", "connection refused"}},
		// With TLS 1.3 the client mostly sees the member close the
		// connection (the reason is in the member's log), sometimes the
		// member's alert.
		{name: "client certificate of another CA", ns: m.NS, opts: tlsOpts(lab.CA.File, stranger), code: 1,
			want:    []string{"machinefs: etcd cluster [" + m.ClientURL + "] does not answer within 10s"},
			wantAny: []string{"may refuse the client certificate " + stranger.File, "tls: bad certificate", "tls: unknown certificate authority"}},
		{name: "server certificate of another CA", ns: m.NS, opts: tlsOpts(other.File, stranger), code: 1,
			want: []string{"machinefs: etcd cluster [" + m.ClientURL + "] does not answer within 10s", "tls: failed to verify certificate: x509: certificate signed by unknown authority"}},
		{name: "node name", opts: "node=-x,cluster=http://127.0.0.1:2379", code: 2,
			want: []string{`mount option "node=-x": node wants a host name`}},
		{name: "cluster URL scheme", opts: "node=lab1,cluster=ftp://127.0.0.1:2379", code: 2,
			want: []string{`mount option "cluster=ftp://127.0.0.1:2379": cluster: "ftp://127.0.0.1:2379": want http://HOST:PORT or https://HOST:PORT`}},
		{name: "site key others may read", ns: m.NS, opts: tlsOpts(lab.CA.File, m.Cert, "secret-key="+openKey), code: 1,
			want: []string{"machinefs: secret key " + openKey + ": mode 0644 lets group or others read it (chmod 600 " + openKey + ")"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			// The waits for an answer run side by side.
			t.Parallel()
			r := mountFails(t, c.ns, c.opts)
			t.Logf("exit %d after %s: %s", r.code, r.took.Round(time.Millisecond), lastLine(r.stderr))
			if r.code != c.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", r.code, c.code, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, r.stderr)
				}
			}
			if len(c.wantAny) > 0 && !slices.ContainsFunc(c.wantAny, func(w string) bool { return strings.Contains(r.stderr, w) }) {
				t.Errorf("stderr says none of %q:\n%s", c.wantAny, r.stderr)
			}
		})
	}
}

// lastLine is the message a failed mount ends with.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
