package wol

import (
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/machinefs/machinefs/nodes"
)

// netNS is the network namespace a driver was created in. Sockets belong to
// the namespace of the thread that opens them, so the driver opens every
// socket (raw frame, UDP datagram, probe) from a thread in this namespace,
// whichever goroutine asks. A driver created by an ordinary goroutine lives
// in the process's namespace and never calls setns.
type netNS struct{ h netns.NsHandle }

// callerNS returns the namespace of the calling thread; if it cannot be
// read, the driver simply works wherever it runs.
func callerNS() netNS {
	h, err := netns.Get()
	if err != nil {
		return netNS{h: netns.None()}
	}
	return netNS{h: h}
}

func (n netNS) close() {
	if n.h.IsOpen() {
		_ = n.h.Close()
	}
}

// run calls fn on a fresh locked thread in namespace n and returns its
// error. If the thread cannot be switched back, its goroutine exits locked
// and the runtime discards the thread rather than reuse it elsewhere.
func (n netNS) run(fn func() error) error {
	if !n.h.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		cur, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- nodes.Errorf(syscall.EIO, "wol: read this thread's network namespace: %v", err)
			return
		}
		defer cur.Close()
		if cur.Equal(n.h) {
			err := fn()
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		if err := netns.Set(n.h); err != nil {
			runtime.UnlockOSThread()
			errc <- nodes.Errorf(syscall.EPERM, "wol: enter the driver's network namespace: %v", err)
			return
		}
		ferr := fn()
		if err := netns.Set(cur); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
