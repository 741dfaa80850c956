// Package nsthread runs code on an OS thread switched into a network
// namespace. Namespaces belong to threads, not goroutines: the code runs
// on a fresh goroutine locked to its thread, which is switched in and back
// out. If the thread cannot be switched back, its goroutine exits still
// locked, and the Go runtime discards the thread instead of reusing it in
// a foreign namespace (a thread left there once pinned a namespace alive).
package nsthread

import (
	"errors"
	"runtime"
	"syscall"

	"github.com/machinefs/machinefs/machine"
	"github.com/vishvananda/netns"
)

// Run calls fn in namespace ns and returns fn's error. When the calling
// thread's namespace already is ns, fn runs without switching. Failing to
// enter ns is EPERM (or the kernel's errno) with the reason.
func Run(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		cur, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- machine.Errorf(syscall.EIO, "read this thread's network namespace: %v", err)
			return
		}
		defer cur.Close()
		if cur.Equal(ns) {
			err := fn()
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			code := syscall.EPERM
			var e syscall.Errno
			if errors.As(err, &e) {
				code = e
			}
			errc <- machine.Errorf(code, "enter network namespace: %v", err)
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

// Home is the network namespace a driver was created in. Sockets belong
// to the namespace of the thread that opens them, so a driver opens every
// socket from a thread in its home, whichever goroutine asks: a driver
// made inside a subhost's or a test's namespace keeps working there. A
// driver created by an ordinary goroutine lives in the process's
// namespace and never calls setns. The zero Home is the process's
// namespace: fn runs wherever it is called.
type Home struct {
	h    netns.NsHandle
	open bool
}

// CallerHome is the namespace of the calling thread; if it cannot be
// read, the driver works wherever it runs.
func CallerHome() Home {
	h, err := netns.Get()
	if err != nil {
		return Home{}
	}
	return Home{h: h, open: true}
}

// Run calls fn on a thread in the home namespace and returns its error.
func (n Home) Run(fn func() error) error {
	if !n.open {
		return fn()
	}
	return Run(n.h, fn)
}

// Close lets go of the namespace.
func (n Home) Close() {
	if n.open {
		_ = n.h.Close()
	}
}
