// Package etcdtest runs a real etcd member inside a test's process, for
// the packages that speak to etcd (the etcd store, the cluster agent).
// Tests of whole agents on machines of their own use tests/harness/etcdlab.
package etcdtest

import (
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// StartMember runs a one-member etcd cluster on 127.0.0.1 ports the
// kernel picks, with its data in a temporary directory, and returns its
// client URL. Cleanup stops it.
func StartMember(t testing.TB) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "m1"
	cfg.Dir = t.TempDir()
	// Port 0: tests running at once never collide; the URL returned is
	// the listener's real address. A one-member cluster never dials its
	// own peer URL.
	local := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{local}, []url.URL{local}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{local}, []url.URL{local}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// A member elects itself within a few ticks; short ticks keep tests
	// quick.
	cfg.TickMs, cfg.ElectionMs = 10, 100
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("starting an etcd member: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd member: %v", err)
	}
	return "http://" + e.Clients[0].Addr().String()
}

// Client returns a client of the member at endpoint, closed at cleanup.
func Client(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
