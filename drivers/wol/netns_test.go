package wol

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/nodes"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// leakCheck registers, as the first cleanup (so it runs last), a check that
// the test left no goroutines behind.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

var nsSeq atomic.Int32

// newNS creates a network namespace named mfw<pid><tag><n>, brings its lo
// up and deletes it at cleanup. Its devices go with it.
func newNS(t *testing.T, tag string) netns.NsHandle {
	t.Helper()
	name := fmt.Sprintf("mfw%x%s%d", os.Getpid()&0xffff, tag, nsSeq.Add(1))
	var h netns.NsHandle
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, e := netns.Get()
		if e != nil {
			err = e
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if e := netns.Set(orig); e != nil {
			if err == nil {
				err = e
			}
			return // exit locked: the runtime discards the thread
		}
		runtime.UnlockOSThread()
	}()
	<-done
	if err != nil {
		if _, serr := os.Stat(filepath.Join("/var/run/netns", name)); serr == nil {
			_ = netns.DeleteNamed(name)
		}
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	nl := nlHandle(t, h)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return h
}

func nlHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// inNS runs fn on a thread switched into ns and waits for it.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	if err := (netNS{h: ns}).run(fn); err != nil {
		t.Fatal(err)
	}
}

type end struct {
	ns   netns.NsHandle
	name string
	mac  net.HardwareAddr
	addr string // CIDR, "" for none
}

// veth creates a veth pair with a in a.ns and its peer directly in b.ns,
// sets addresses and brings both up. Nothing is created in the caller's
// namespace.
func veth(t *testing.T, a, b end) {
	t.Helper()
	ha, hb := nlHandle(t, a.ns), nlHandle(t, b.ns)
	la := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.name, HardwareAddr: a.mac},
		PeerName:         b.name,
		PeerHardwareAddr: b.mac,
		PeerNamespace:    netlink.NsFd(int(b.ns)),
	}
	if err := ha.LinkAdd(la); err != nil {
		t.Fatalf("veth %s/%s: %v", a.name, b.name, err)
	}
	for _, e := range []struct {
		h *netlink.Handle
		end
	}{{ha, a}, {hb, b}} {
		l, err := e.h.LinkByName(e.name)
		if err != nil {
			t.Fatal(err)
		}
		if e.addr != "" {
			addr, err := netlink.ParseAddr(e.addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.h.AddrAdd(l, addr); err != nil {
				t.Fatalf("addr %s on %s: %v", e.addr, e.name, err)
			}
		}
		if err := e.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	// Until linkwatch sees the carrier (it may wait up to a second) the
	// devices have no qdisc and drop what is sent: wait for oper up.
	for _, e := range []struct {
		h    *netlink.Handle
		name string
	}{{ha, a.name}, {hb, b.name}} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err := e.h.LinkByName(e.name)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is not oper up: %v", e.name, l.Attrs().OperState)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func defaultRoute(t *testing.T, ns netns.NsHandle, dev, gw string) {
	t.Helper()
	h := nlHandle(t, ns)
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
		t.Fatalf("default route via %s: %v", gw, err)
	}
}

// sysctl writes /proc/sys/KEY from a thread inside ns (net sysctls are per
// namespace of the opening thread).
func sysctl(t *testing.T, ns netns.NsHandle, key, val string) {
	t.Helper()
	inNS(t, ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0)
	})
}

// testConfig is a host configuration snapshot.
type testConfig map[string]string

func (c testConfig) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }
func (c testConfig) Duration(k string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(c[k]); err == nil {
		return d
	}
	return def
}

// recorder is the model side of the Reporter: it keeps what the driver says.
type recorder struct {
	mu     sync.Mutex
	status []nodes.Status
	events [][2]string
}

func (r *recorder) Report(s nodes.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = append(r.status, s)
}

func (r *recorder) Event(kind, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, [2]string{kind, detail})
}

func (r *recorder) statuses() []nodes.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]nodes.Status(nil), r.status...)
}

// waitFor waits until a status after index from satisfies ok and returns
// its index.
func (r *recorder) waitFor(t *testing.T, from int, timeout time.Duration, what string, ok func(nodes.Status) bool) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := r.statuses()
		for i := from; i < len(st); i++ {
			if ok(st[i]) {
				return i
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s report within %s; got %+v", what, timeout, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newDriverIn creates a driver from a thread inside ns, as the brief for the
// send tests asks; the driver then keeps working in ns.
func newDriverIn(t *testing.T, ns netns.NsHandle, cfg testConfig, rep nodes.Reporter) *driver {
	t.Helper()
	var d nodes.Driver
	inNS(t, ns, func() error {
		var err error
		d, err = New(t.Context(), nodes.DriverEnv{Path: "hosts/test", Config: cfg, Report: rep})
		return err
	})
	t.Cleanup(func() { _ = d.Close() })
	return d.(*driver)
}
