package member_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/machinefs/machinefs/cluster/member"
	"github.com/machinefs/machinefs/tests/harness/etcdlab"
)

// freePort returns a loopback port nobody listens on now. Another process
// may take it before the member binds it; tests run alone enough here.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// syncBuffer is a log sink the member's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, cfg member.Config) *member.Member {
	t.Helper()
	m, err := member.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func client(t *testing.T, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	cfg.DialTimeout = 5 * time.Second
	// The client warns on stderr of every denied request, which this test
	// makes on purpose.
	cfg.Logger = zap.NewNop()
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestStartPutGet(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m := start(t, member.Config{Name: "one", Dir: t.TempDir(), Log: log,
		PeerURL: "http://127.0.0.1:" + freePort(t), ClientURL: "http://127.0.0.1:" + freePort(t)})
	cli := client(t, clientv3.Config{Endpoints: m.Endpoints()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/machinefs/x", "1"); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(ctx, "/machinefs/x")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "1" {
		t.Fatalf("get: %v, %v", r, err)
	}
	// etcd's info lines (dozens at start) stay out of a warn-level log.
	if strings.Contains(logs.String(), "level=INFO") {
		t.Errorf("etcd info reached the log:\n%s", logs.String())
	}
}

func TestStartErrors(t *testing.T) {
	// A port in use: the member says so at once.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = member.Start(context.Background(), member.Config{Name: "busy", Dir: t.TempDir(),
		PeerURL: "http://127.0.0.1:" + freePort(t), ClientURL: "http://" + busy.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("client port in use: %v", err)
	}

	// Peers that do not answer: no quorum, reported within the bound.
	peer := "http://127.0.0.1:" + freePort(t)
	_, err = member.Start(context.Background(), member.Config{Name: "a", Dir: t.TempDir(),
		PeerURL: peer, ClientURL: "http://127.0.0.1:" + freePort(t), ReadyTimeout: 2 * time.Second,
		InitialCluster: "a=" + peer + "+b=http://127.0.0.1:" + freePort(t) + "+c=http://127.0.0.1:" + freePort(t)})
	if err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Errorf("peers gone: %v", err)
	}

	for _, c := range []struct {
		cfg  member.Config
		want string
	}{
		{member.Config{Name: "x", Dir: "/tmp/x", PeerURL: "127.0.0.1:2380", ClientURL: "http://127.0.0.1:2379"}, "want http(s)://IP:PORT"},
		{member.Config{Name: "x", Dir: "/tmp/x", PeerURL: "https://127.0.0.1:2380", ClientURL: "https://127.0.0.1:2379"}, "no certificate"},
		{member.Config{Name: "x", Dir: "/tmp/x", PeerURL: "http://127.0.0.1:2380", ClientURL: "http://127.0.0.1:2379", InitialState: "old"}, "want new or existing"},
		{member.Config{Name: "x", Dir: "/tmp/x", PeerURL: "http://etcd1:2380", ClientURL: "http://127.0.0.1:2379"}, "IP"},
	} {
		if _, err := member.Start(context.Background(), c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Start(%+v) = %v, want an error with %q", c.cfg, err, c.want)
		}
	}
}

func TestEnableAuth(t *testing.T) {
	ca := etcdlab.NewCA(t, t.TempDir())
	srv := ca.Issue(t, "m1", "127.0.0.1")
	m := start(t, member.Config{Name: "m1", Dir: t.TempDir(),
		PeerURL: "https://127.0.0.1:" + freePort(t), ClientURL: "https://127.0.0.1:" + freePort(t),
		TLS: member.TLS{CA: ca.File, Cert: srv.File, Key: srv.Key}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	admin := client(t, clientv3.Config{Endpoints: m.Endpoints(), TLS: ca.ClientTLS(t, "root")})
	if err := member.EnableAuth(ctx, admin, "", []string{"lab1", "lab2"}); err != nil {
		t.Fatal(err)
	}
	// Again, with one more agent: what exists stays, lab3 joins.
	if err := member.EnableAuth(ctx, admin, "", []string{"lab1", "lab2", "lab3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, "/machinefs/nodes/lab2/status", "on"); err != nil {
		t.Fatalf("root writes anywhere: %v", err)
	}

	lab1 := client(t, clientv3.Config{Endpoints: m.Endpoints(), TLS: ca.ClientTLS(t, "lab1")})
	for _, k := range []string{"/machinefs/nodes/lab1/status", "/machinefs/nodes/lab1/events/1", "/machinefs/agents/lab1",
		"/machinefs/config/hosts/bmc1", "/machinefs/groups/g", "/machinefs/requests/r1", "/machinefs/owners/bmc1"} {
		if _, err := lab1.Put(ctx, k, "x"); err != nil {
			t.Errorf("lab1 put %s: %v", k, err)
		}
	}
	for _, k := range []string{"/machinefs/nodes/lab2/status", "/machinefs/agents/lab2", "/machinefs/agents/lab10",
		"/machinefs/nodes/lab10/status", "/machinefs/other", "/elsewhere"} {
		if _, err := lab1.Put(ctx, k, "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("lab1 put %s: %v, want %v", k, err, rpctypes.ErrPermissionDenied)
		}
	}
	if r, err := lab1.Get(ctx, "/machinefs/nodes/", clientv3.WithPrefix()); err != nil || r.Count != 3 {
		t.Errorf("lab1 reads all nodes: %v, %v", r, err)
	}
	if _, err := lab1.Get(ctx, "/elsewhere"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("lab1 get outside the prefix: %v", err)
	}

	// A certificate the CA signed for a name that is no agent.
	stranger := client(t, clientv3.Config{Endpoints: m.Endpoints(), TLS: ca.ClientTLS(t, "stranger")})
	if _, err := stranger.Get(ctx, "/machinefs/config/", clientv3.WithPrefix()); err == nil {
		t.Errorf("an unknown user reads the config")
	}
}
