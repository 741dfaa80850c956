package etcdlab_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/cluster/member"
	"github.com/machinefs/machinefs/tests/harness/etcdlab"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

var binary string

// TestMain builds machinefs once for the package (without -race: three
// members share two CPUs, and the members are etcd's code, not ours).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "etcdlab")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "machinefs")
	if out, err := exec.Command("go", "build", "-o", binary, "../../../cmd/machinefs").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic("build machinefs: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func put(t *testing.T, cli *clientv3.Client, key, val string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := cli.Put(ctx, key, val)
	return err
}

func get(t *testing.T, cli *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(r.Kvs) == 0 {
		return ""
	}
	return string(r.Kvs[0].Value)
}

func TestLabQuorum(t *testing.T) {
	netns.NeedRoot(t)
	lab := etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 3, Prefix: "mfc"})
	on0 := lab.ClientFor(t, "root", lab.Machine(0).ClientURL)
	on2 := lab.ClientFor(t, "root", lab.Machine(2).ClientURL)
	if err := put(t, on0, "/t/a", "1"); err != nil {
		t.Fatal(err)
	}
	if got := get(t, on2, "/t/a"); got != "1" {
		t.Fatalf("member 2 has /t/a = %q, want 1 (put on member 0)", got)
	}

	// One of three down: a quorum stays. If the member was the leader,
	// the others elect one first (a second or two, more on a busy CPU).
	lab.StopMember(1)
	netns.WaitFor(t, 20*time.Second, "a write with one member down", func() bool { return put(t, on0, "/t/b", "2") == nil })

	// Two down: no quorum, and a write fails rather than hang.
	lab.StopMember(2)
	start := time.Now()
	err := put(t, on0, "/t/c", "3")
	if err == nil {
		t.Fatal("put with two of three members down succeeded")
	}
	t.Logf("without quorum, put fails after %s: %v", time.Since(start).Round(time.Millisecond), err)

	// Back: the restarted members rejoin with their data and catch up.
	lab.StartMember(1)
	lab.StartMember(2)
	all := lab.Client(t)
	netns.WaitFor(t, 20*time.Second, "a write after recovery", func() bool { return put(t, all, "/t/c", "3") == nil })
	if got := get(t, on2, "/t/b"); got != "2" {
		t.Fatalf("member 2 after restart has /t/b = %q, want 2 (written while it was down)", got)
	}
}

func TestLabTLSAuth(t *testing.T) {
	netns.NeedRoot(t)
	lab := etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 3, Prefix: "mfd", Subnet: "10.72.0", TLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := member.EnableAuth(ctx, lab.Client(t), "", []string{"lab1", "lab2", "lab3"}); err != nil {
		t.Fatal(err)
	}
	// Agent lab1, as its machine's certificate, through another member.
	lab1 := lab.ClientFor(t, "lab1", lab.Machine(2).ClientURL)
	if err := put(t, lab1, "/machinefs/nodes/lab1/status", "on"); err != nil {
		t.Fatalf("lab1 writes its own status: %v", err)
	}
	if err := put(t, lab1, "/machinefs/nodes/lab2/status", "off"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("lab1 writes lab2's status: %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}

func TestExecSharesMounts(t *testing.T) {
	netns.NeedRoot(t)
	lab := etcdlab.New(t, etcdlab.Options{Binary: binary, Machines: 1, Prefix: "mfe", Subnet: "10.73.0"})
	// The command sees the machine's interface, and the test's mounts.
	out, err := lab.Exec(0, "sh", "-c", "ip -o -4 addr show dev eth0; readlink /proc/self/ns/mnt").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "10.73.0.1/24") || !strings.Contains(string(out), self) {
		t.Fatalf("in machine 0: %s; want 10.73.0.1/24 and mount namespace %s", out, self)
	}
}
