package etcdstore_test

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/internal/etcdtest"
)

// startMember runs a one-member etcd cluster in the test's process and
// returns a client of it; cleanup closes both.
func startMember(t *testing.T) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t, etcdtest.StartMember(t))
}

// newClient returns another client of the member at addr (host:port),
// closed at cleanup.
func newClient(t *testing.T, addr string) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t, "http://"+addr)
}
