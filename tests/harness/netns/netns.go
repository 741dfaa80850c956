// Package netns builds throwaway network topologies for tests: named
// network namespaces, veth pairs created directly inside them, routes,
// sysctls, listeners and a simulated Wake-on-LAN machine. Nothing is created
// in the caller's own namespace, so a test never touches the host's
// interfaces, addresses or routes.
//
// Every helper takes a testing.TB, fails the test on error and registers
// its cleanup with t.Cleanup, so namespaces, devices, sockets and goroutines
// are gone when the test ends, also when it fails. Cleanups run in reverse
// order: sockets close before the namespace that holds them is deleted.
//
// A typical two-segment topology:
//
//	s, tg := netns.New(t, "mfws"), netns.New(t, "mfwt")
//	netns.Veth(t, netns.End{NS: s, Name: "mfws0", Addr: "10.77.1.1/24"},
//		netns.End{NS: tg, Name: "mfwt0", Addr: "10.77.1.2/24"})
//	s.Do(t, func() error { ... sockets opened here live in s ... })
//
// The helpers need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); call NeedRoot first
// to skip otherwise. Names of namespaces and devices should carry a short
// prefix that says which test made them ("mfw", "mfe"), so leftovers are
// easy to attribute.
package netns

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NeedRoot skips the test unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// NS is a named network namespace created by New.
type NS struct {
	// Name is the name under /run/netns (what `ip netns list` shows).
	Name string
	h    vnetns.NsHandle
}

var seq atomic.Int32

// New creates a network namespace named prefix<pid><n> (pid in hex, n
// counting up within the process), brings its lo up and deletes it at
// cleanup; the devices in it go with it.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	name := fmt.Sprintf("%s%x%d", prefix, os.Getpid()&0xffff, seq.Add(1))
	var h vnetns.NsHandle
	err := onThread(func() error {
		orig, err := vnetns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		h, err = vnetns.NewNamed(name) // switches this thread to it
		if serr := vnetns.Set(orig); serr != nil {
			return errThreadLost{serr}
		}
		return err
	})
	if err != nil {
		if _, serr := os.Stat(filepath.Join("/run/netns", name)); serr == nil {
			_ = vnetns.DeleteNamed(name)
		}
		t.Fatalf("create netns %s: %v", name, err)
	}
	n := &NS{Name: name, h: h}
	t.Cleanup(func() {
		_ = h.Close()
		if err := vnetns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	nl := n.Netlink(t)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return n
}

// Handle is the namespace's file descriptor, valid until cleanup.
func (n *NS) Handle() vnetns.NsHandle { return n.h }

func (n *NS) String() string { return n.Name }

// errThreadLost reports that a thread could not be switched back to its
// namespace; onThread then lets the runtime discard the thread.
type errThreadLost struct{ err error }

func (e errThreadLost) Error() string { return "restore thread namespace: " + e.err.Error() }

// onThread runs fn on a fresh goroutine locked to its OS thread and waits.
// If fn returns errThreadLost, the goroutine exits still locked, so the
// runtime throws the thread away instead of reusing it in a foreign
// namespace.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if _, lost := err.(errThreadLost); !lost {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Run calls fn on a locked OS thread switched into n and returns fn's error.
// Sockets fn opens belong to n for their whole life, whichever goroutine
// uses them later; processes fn starts run in n (see Start).
func (n *NS) Run(fn func() error) error {
	return onThread(func() error {
		orig, err := vnetns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := vnetns.Set(n.h); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.Name, err)
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			return errThreadLost{err}
		}
		return ferr
	})
}

// Do is Run that fails the test on error.
func (n *NS) Do(t testing.TB, fn func() error) {
	t.Helper()
	if err := n.Run(fn); err != nil {
		t.Fatalf("in netns %s: %v", n.Name, err)
	}
}

// Start starts cmd inside n: only its network namespace differs from the
// caller's. Unlike `ip netns exec`, which also unshares the mount namespace,
// a FUSE filesystem the process mounts is visible to the test. The caller
// waits for cmd as usual.
func (n *NS) Start(cmd *exec.Cmd) error { return n.Run(cmd.Start) }

// Netlink returns a netlink handle working in n, closed at cleanup.
func (n *NS) Netlink(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(n.h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink in %s: %v", n.Name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// Sysctl writes /proc/sys/KEY (e.g. "net/ipv4/ip_forward") from a thread in
// n: network sysctls belong to the namespace of the opening thread.
func (n *NS) Sysctl(t testing.TB, key, val string) {
	t.Helper()
	n.Do(t, func() error { return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0) })
}

// DefaultRoute adds a default route via gw on device dev in n.
func (n *NS) DefaultRoute(t testing.TB, dev, gw string) {
	t.Helper()
	h := n.Netlink(t)
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s in %s: %v", dev, n.Name, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
		t.Fatalf("default route via %s in %s: %v", gw, n.Name, err)
	}
}
