package wol

import (
	"github.com/vishvananda/netns"

	"github.com/machinefs/machinefs/drivers/internal/nsthread"
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

// run calls fn on a locked thread in namespace n and returns its error.
func (n netNS) run(fn func() error) error {
	if !n.h.IsOpen() {
		return fn()
	}
	return nsthread.Run(n.h, fn)
}
