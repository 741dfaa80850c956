package netns

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Sleeper describes a machine that is asleep with Wake-on-LAN armed.
type Sleeper struct {
	// MAC is the address its NIC wakes for.
	MAC net.HardwareAddr
	// Password is the SecureOn password (4 or 6 bytes) the magic packet
	// must carry after the sixteen MACs; nil accepts any packet for MAC.
	Password []byte
	// Interface is the NIC, a device in the responder's namespace. It
	// watches every frame on it, whatever its EtherType or addresses, as a
	// real NIC does: raw 0x0842 frames and UDP datagrams alike.
	Interface string
	// Service is the TCP address (host:port in the namespace) the machine
	// listens on once awake: what a probe sees.
	Service string
	// Boot is how long the machine takes from the magic packet to its
	// service being up; 0 opens the service at once.
	Boot time.Duration
}

// Responder is a running Sleeper: it opens its TCP service only after a
// valid magic packet, so a probe that answers proves the packet arrived,
// with the right MAC and password.
type Responder struct {
	ns  *NS
	cfg Sleeper

	stop chan struct{} // closed at cleanup: a pending boot gives up

	mu    sync.Mutex
	woke  bool
	magic int // frames holding a magic packet (any target)
	wrong int // of which not for this machine (MAC or password)
	ln    net.Listener
	wg    sync.WaitGroup
}

// StartResponder starts a Sleeper in n. At cleanup its sockets close and
// its goroutines end.
func (n *NS) StartResponder(t testing.TB, s Sleeper) *Responder {
	t.Helper()
	r := &Responder{ns: n, cfg: s, stop: make(chan struct{})}
	capture := n.Capture(t, s.Interface, unix.ETH_P_ALL)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 65536)
		for {
			m, _, err := capture.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			magic, ok := matchMagic(buf[:m], s.MAC, s.Password)
			if magic {
				r.frame(t, ok)
			}
		}
	}()
	t.Cleanup(func() {
		_ = capture.Close()
		close(r.stop)
		r.mu.Lock()
		if r.ln != nil {
			_ = r.ln.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// frame counts a frame with a magic packet and wakes the machine if it is
// for it.
func (r *Responder) frame(t testing.TB, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.magic++
	if !ok {
		r.wrong++
		return
	}
	if r.woke {
		return
	}
	r.woke = true
	r.wg.Add(1)
	go r.boot(t)
}

// boot opens the service after the boot time and serves it until cleanup.
func (r *Responder) boot(t testing.TB) {
	defer r.wg.Done()
	if r.cfg.Boot > 0 {
		tm := time.NewTimer(r.cfg.Boot)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-r.stop:
			return
		}
	}
	r.mu.Lock()
	select {
	case <-r.stop:
		r.mu.Unlock()
		return
	default:
	}
	err := r.ns.Run(func() error {
		var err error
		r.ln, err = net.Listen("tcp4", r.cfg.Service)
		return err
	})
	ln := r.ln
	r.mu.Unlock()
	if err != nil {
		t.Errorf("responder: open %s after wake: %v", r.cfg.Service, err)
		return
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_ = c.Close()
	}
}

// Woke reports whether a valid magic packet arrived (the service may still
// be booting).
func (r *Responder) Woke() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.woke
}

// Seen returns how many frames carried a magic packet and how many of those
// were for another MAC or had the wrong password.
func (r *Responder) Seen() (magic, wrong int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.magic, r.wrong
}

var magicSync = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// matchMagic looks for a magic packet anywhere in frame (six 0xff, then
// sixteen copies of a 6-byte address) as a NIC does. magic says whether
// there is one; ok whether one is for mac and, if pw is set, is followed by
// pw. It is written independently of the driver's encoder on purpose.
func matchMagic(frame, mac, pw []byte) (magic, ok bool) {
	const n = 6 + 16*6
	for i := 0; i+n <= len(frame); i++ {
		if !bytes.Equal(frame[i:i+6], magicSync) {
			continue
		}
		target := frame[i+6 : i+12]
		same := true
		for k := 1; k < 16 && same; k++ {
			same = bytes.Equal(frame[i+6+6*k:i+12+6*k], target)
		}
		if !same {
			continue
		}
		magic = true
		if bytes.Equal(target, mac) && (len(pw) == 0 || bytes.HasPrefix(frame[i+n:], pw)) {
			return true, true
		}
	}
	return magic, false
}
