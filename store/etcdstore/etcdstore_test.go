package etcdstore_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/store/etcdstore"
	"github.com/machinefs/machinefs/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newStore returns a store over cli with a site key.
func newStore(t *testing.T, cli *clientv3.Client, key []byte) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.New(cli, etcdstore.Options{SecretKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func siteKey(b byte) []byte {
	return []byte(strings.Repeat(string(rune('a'+b)), 32))
}

// The store behaves as every store must, over a real etcd member; a
// restart is a new store (and client) over the same cluster.
func TestStore(t *testing.T) {
	var addr string
	storetest.Run(t,
		func(t *testing.T) store.Store {
			cli := startMember(t)
			addr = cli.Endpoints()[0][len("http://"):]
			return newStore(t, cli, siteKey(0))
		},
		func(t *testing.T) store.Store { return newStore(t, newClient(t, addr), siteKey(0)) })
}

// A store whose etcd does not answer fails every call within its
// Timeout, saying so: a mount or a config write must not hang on it.
func TestDeadEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	s, err := etcdstore.New(newClient(t, addr), etcdstore.Options{Timeout: 300 * time.Millisecond, SecretKey: siteKey(0)})
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"read hosts":        func() error { _, err := s.Hosts(); return err },
		"read groups":       func() error { _, err := s.Groups(); return err },
		"save hosts/lab1":   func() error { return s.SaveHost("hosts/lab1", []byte("drivers = sim\n"), false) },
		"remove hosts/lab1": func() error { return s.RemoveHost("hosts/lab1") },
		"save group rack":   func() error { return s.SaveGroup("rack", []string{"hosts/lab1"}) },
		"remove group rack": func() error { return s.RemoveGroup("rack") },
	}
	for what, call := range calls {
		done := make(chan error, 1)
		go func() { done <- call() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Minute): // a hang, not a slow answer
			t.Fatalf("%s: no return after a minute with a 300ms timeout", what)
		}
		want := "etcd store: " + what + ": no answer from etcd within 300ms"
		if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: err = %v, want %q... (deadline exceeded)", what, err, want)
		}
	}
}

// Keys of the layout: a host's key ends in "/", so removing lab1 takes
// its subhosts and leaves lab10.
func TestLayout(t *testing.T) {
	cli := startMember(t)
	s, err := etcdstore.New(cli, etcdstore.Options{Prefix: "/site1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"hosts/lab1", "hosts/lab1/subhosts/vm", "hosts/lab10"} {
		if err := s.SaveHost(p, []byte("drivers = sim\n"), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SaveGroup("rack", []string{"hosts/lab1", "hosts/lab10"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/site1/config/hosts/lab1/=drivers = sim\n",
		"/site1/config/hosts/lab1/subhosts/vm/=drivers = sim\n",
		"/site1/config/hosts/lab10/=drivers = sim\n",
		"/site1/groups/rack=hosts/lab1\nhosts/lab10",
	}
	if got := rawKeys(t, cli, "/site1/"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("keys = %q, want %q", got, want)
	}
	if err := s.RemoveHost("hosts/lab1"); err != nil {
		t.Fatal(err)
	}
	want = []string{"/site1/config/hosts/lab10/=drivers = sim\n", "/site1/groups/rack=hosts/lab1\nhosts/lab10"}
	if got := rawKeys(t, cli, "/site1/"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("keys after removing hosts/lab1 = %q, want %q", got, want)
	}
	for _, bad := range []string{"", "hosts/", "hosts//a", "hosts/../x", "hosts/a/"} {
		if err := s.SaveHost(bad, nil, false); err == nil {
			t.Errorf("SaveHost(%q) took a path that is not one", bad)
		}
	}
}

// rawKeys lists "key=value" of every key under prefix, as etcdctl would.
func rawKeys(t *testing.T, cli *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key)+"="+string(kv.Value))
	}
	return out
}
