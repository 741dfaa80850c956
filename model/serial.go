package model

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// SerialBacklog is how much of a console's output a host keeps: a new
// reader of serial starts with it.
const SerialBacklog = 64 << 10

// serialHub is a host's serial console shared by every open serial file,
// as conman shares a console: several readers at once, each at its own
// place in the output; one writer at a time; the last SerialBacklog bytes
// kept. Output is read from the driver by one goroutine into a ring, so a
// slow or stopped reader never blocks the machine: it skips what it fell
// behind by, and is told so.
//
// A SerialHolder's stream is read for the driver's whole life (a guest
// blocks on a full console otherwise). Any other driver's stream (IPMI
// SOL, one session per BMC) is opened by the first session and closed
// with the last, unless serial-log keeps it.
type serialHub struct {
	h *Host

	mu      sync.Mutex
	ring    []byte        // SerialBacklog bytes, made at the first output: most hosts have none
	end     int64         // bytes received since the hub was made
	more    chan struct{} // closed at new output or an end, then replaced
	src     io.ReadWriteCloser
	srcGen  uint64 // drivers generation src belongs to
	held    bool   // src is a SerialHolder's stream
	opening bool   // a session is opening a stream: others wait on more
	users   int
	writer  *SerialSession
	gone    bool   // the host left the tree: sessions end
	epoch   uint64 // bumped when sessions must end: their stream is gone for good
	logging bool   // serial-log: output also goes to serial.log
	line    []byte // the console line serial.log has not got yet
	// logPending: a change of serial.log is about to be told.
	logPending bool
	// writeSlot holds the one write to the driver's stream in flight.
	writeSlot chan struct{}
}

func newSerialHub(h *Host) *serialHub {
	return &serialHub{h: h, more: make(chan struct{}), writeSlot: make(chan struct{}, 1)}
}

// wakeLocked tells blocked readers something changed.
func (s *serialHub) wakeLocked() {
	close(s.more)
	s.more = make(chan struct{})
}

// pump copies the driver's output into the ring until src ends.
func (s *serialHub) pump(src io.ReadWriteCloser) {
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.appendLocked(buf[:n])
			if s.logging {
				s.logLocked(buf[:n])
			}
			s.wakeLocked()
			s.mu.Unlock()
		}
		if err != nil {
			s.ended(src, err)
			return
		}
	}
}

func (s *serialHub) appendLocked(p []byte) {
	for len(p) > 0 {
		at := int(s.end % SerialBacklog)
		if s.ring == nil {
			s.ring = make([]byte, SerialBacklog)
		}
		n := copy(s.ring[at:], p)
		s.end += int64(n)
		p = p[n:]
	}
}

// ended forgets a stream that returned an error or EOF.
func (s *serialHub) ended(src io.ReadWriteCloser, err error) {
	s.mu.Lock()
	if s.src != src {
		s.mu.Unlock()
		return
	}
	if !s.held {
		s.epoch++ // a session's stream (SOL) ended: its readers see EOF
	}
	s.src, s.held = nil, false
	s.wakeLocked()
	s.mu.Unlock()
	src.Close()
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		s.h.emit(machine.EventError, fmt.Sprintf("serial: console stream ended: %v", err))
	}
}

// hold starts reading the console of a SerialHolder the host's drivers
// have just been rebuilt with (gen), for the driver's life.
func (s *serialHub) hold(ctx context.Context, d machine.SerialHolder, gen uint64) {
	src, err := d.Serial(ctx)
	if err != nil {
		s.h.emit(machine.EventError, fmt.Sprintf("serial: %s: %v", d.Kind(), err))
		return
	}
	s.mu.Lock()
	if s.gone || s.h.driverGen() != gen {
		s.mu.Unlock()
		src.Close()
		return
	}
	old := s.src
	s.src, s.srcGen, s.held = src, gen, true
	s.wakeLocked()
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go s.pump(src)
}

// driversChanged follows a rebuild of the host's drivers (generation
// gen): a SerialHolder's console is read from now on; sessions on a
// stream that went with the old drivers end, unless a holder's console
// takes its place.
func (s *serialHub) driversChanged(ctx context.Context, built []machine.Driver, gen uint64) {
	for _, d := range built {
		if sh, ok := d.(machine.SerialHolder); ok && sh.HasSerial() {
			s.hold(ctx, sh, gen)
			return
		}
		if sr, ok := d.(machine.Serialer); ok && sr.HasSerial() {
			break
		}
	}
	s.mu.Lock()
	old := s.src
	if old != nil && s.srcGen == gen {
		old = nil
	}
	if old != nil || s.held {
		s.src, s.held = nil, false
	}
	s.epoch++
	s.wakeLocked()
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// close ends every session: the host left the tree, or the tree is
// unmounted.
func (s *serialHub) close() {
	s.mu.Lock()
	s.gone = true
	src := s.src
	s.src = nil
	s.wakeLocked()
	s.mu.Unlock()
	if src != nil {
		src.Close()
	}
}

// releaseLocked drops a stream that was opened for sessions, once the
// last session closed and nothing else needs it; the caller closes it.
func (s *serialHub) releaseLocked() io.Closer {
	if s.users > 0 || s.held || s.logging || s.src == nil {
		return nil
	}
	src := s.src
	s.src = nil
	return src
}

// SerialSession is one open serial file: it reads the console's output
// from where it joined (the backlog first), and writes if it was opened
// for writing.
type SerialSession struct {
	hub    *serialHub
	pos    int64
	epoch  uint64
	who    Caller
	writes bool
	closed bool
}

// Read returns output after the session's place, blocking until there is
// some, ctx ends (EINTR) or the console ends for good (io.EOF). A reader
// that fell more than SerialBacklog behind skips to the oldest byte kept
// and gets a line saying how much it missed.
func (ss *SerialSession) Read(ctx context.Context, p []byte) (int, error) {
	s := ss.hub
	s.mu.Lock()
	for ss.pos == s.end {
		if ss.closed || s.gone || ss.epoch != s.epoch {
			s.mu.Unlock()
			return 0, io.EOF
		}
		more := s.more
		s.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			return 0, machine.Errorf(syscall.EINTR, "serial: read interrupted")
		}
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if oldest := s.end - SerialBacklog; ss.pos < oldest {
		note := fmt.Sprintf("\r\n[machinefs: %d bytes of serial output lost: this reader fell behind]\r\n", oldest-ss.pos)
		ss.pos = oldest
		return copy(p, note), nil
	}
	at := int(ss.pos % SerialBacklog)
	avail := s.end - ss.pos
	chunk := s.ring[at:]
	if int64(len(chunk)) > avail {
		chunk = chunk[:avail]
	}
	n := copy(p, chunk)
	ss.pos += int64(n)
	return n, nil
}

// Write sends input to the machine's console. A guest that stops reading
// its console makes the driver's write block: the caller's wait then ends
// with EINTR when ctx does (Ctrl-C), while that write goes on in the
// background, and the next write waits for it. One write per console is
// in flight at a time, so a guest that never reads holds one buffer of
// the daemon's, not one per attempt.
func (ss *SerialSession) Write(ctx context.Context, p []byte) (int, error) {
	if !ss.writes {
		return 0, machine.Errorf(syscall.EBADF, "serial: not open for writing")
	}
	s := ss.hub
	select {
	case s.writeSlot <- struct{}{}:
	case <-ctx.Done():
		return 0, machine.Errorf(syscall.EINTR, "serial: write interrupted: an earlier write still waits for the machine to read its console")
	}
	s.mu.Lock()
	src := s.src
	s.mu.Unlock()
	if src == nil {
		<-s.writeSlot
		return 0, machine.Errorf(syscall.EIO, "serial: no console stream (the machine is not running)")
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	buf := append([]byte(nil), p...) // the caller's buffer is reused once Write returns
	go func() {
		n, err := src.Write(buf)
		<-s.writeSlot
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return r.n, fmt.Errorf("serial: %w", r.err)
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, machine.Errorf(syscall.EINTR, "serial: write interrupted: the machine is not reading its console (the input is still sent when it does)")
	}
}

// Close leaves the console: the writer's place is free for the next one.
func (ss *SerialSession) Close() {
	s := ss.hub
	s.mu.Lock()
	if ss.closed {
		s.mu.Unlock()
		return
	}
	ss.closed = true
	s.users--
	if s.writer == ss {
		s.writer = nil
	}
	c := s.releaseLocked()
	s.wakeLocked()
	s.mu.Unlock()
	if c != nil {
		c.Close()
	}
	ss.hub.h.emit(machine.EventSerial, "closed by "+ss.who.String())
}

// writerBusy says who holds the writer's place.
func writerBusy(w *SerialSession) error {
	return machine.Errorf(syscall.EBUSY, "serial: one writer at a time, and %s has it open for writing (open it read-only to watch)", w.who)
}

// settle waits while another session is opening the stream.
func (s *serialHub) settleLocked(ctx context.Context) error {
	for s.opening {
		more := s.more
		s.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			s.mu.Lock()
			return machine.Errorf(syscall.EINTR, "serial: open interrupted")
		}
		s.mu.Lock()
	}
	return nil
}

// sessionStart is where a new session starts reading: the backlog.
func (s *serialHub) sessionStartLocked() int64 {
	return max(0, s.end-SerialBacklog)
}

// join adds a session once the stream is there.
func (s *serialHub) joinLocked(write bool, who Caller) (*SerialSession, error) {
	if write && s.writer != nil {
		return nil, writerBusy(s.writer)
	}
	ss := &SerialSession{hub: s, pos: s.sessionStartLocked(), epoch: s.epoch, who: who, writes: write}
	s.users++
	if write {
		s.writer = ss
	}
	return ss, nil
}

// serialDriver is the host's first driver with a serial console, and its
// drivers' generation.
func (h *Host) serialDriver() (machine.Serialer, uint64, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.drivers.list {
		if s, ok := d.(machine.Serialer); ok && s.HasSerial() {
			return s, h.drivers.gen, h.cfg.Duration("timeout")
		}
	}
	return nil, h.drivers.gen, 0
}

// HasSerial says whether the host has a serial console: its serial file
// exists.
func (h *Host) HasSerial() bool {
	s, _, _ := h.serialDriver()
	return s != nil
}

func (h *Host) driverGen() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.drivers.gen
}

// OpenSerial joins the host's serial console: a reader, or the writer if
// write (EBUSY while another has it). The first session opens the
// driver's stream when nothing holds it yet.
func (h *Host) OpenSerial(ctx context.Context, write bool, who Caller) (*SerialSession, error) {
	d, gen, timeout := h.serialDriver()
	if d == nil {
		return nil, machine.Errorf(syscall.ENOTSUP, "serial: no driver with a serial console (drivers: %s)", h.driverKinds())
	}
	ss, err := h.serial.open(ctx, d, gen, timeout, write, who)
	if err != nil {
		if machine.ErrnoOf(err) != syscall.EBUSY {
			h.emit(machine.EventError, err.Error())
		}
		return nil, err
	}
	mode := "read"
	if write {
		mode = "read-write"
	}
	h.emit(machine.EventSerial, "opened "+mode+" by "+who.String())
	return ss, nil
}

func (s *serialHub) open(ctx context.Context, d machine.Serialer, gen uint64, timeout time.Duration, write bool, who Caller) (*SerialSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.settleLocked(ctx); err != nil {
		return nil, err
	}
	if s.gone {
		return nil, machine.Errorf(syscall.ENOENT, "serial: host removed")
	}
	if write && s.writer != nil {
		return nil, writerBusy(s.writer)
	}
	if _, held := d.(machine.SerialHolder); s.src == nil && !held {
		if err := s.openLocked(ctx, d, gen, timeout); err != nil {
			return nil, err
		}
	}
	return s.joinLocked(write, who)
}

// openLocked opens a driver's stream for sessions (IPMI SOL), with the
// hub unlocked while the driver works.
func (s *serialHub) openLocked(ctx context.Context, d machine.Serialer, gen uint64, timeout time.Duration) error {
	s.opening = true
	s.mu.Unlock()
	var rwc io.ReadWriteCloser
	err := callDriver(ctx, timeout, func(ctx context.Context) error {
		c, err := d.Serial(ctx)
		if err == nil && ctx.Err() != nil {
			c.Close() // too late: the caller has gone
			return ctx.Err()
		}
		rwc = c
		return err
	})
	s.mu.Lock()
	s.opening = false
	s.wakeLocked()
	if err != nil {
		return fmt.Errorf("serial: %w", err)
	}
	if s.gone {
		rwc.Close()
		return machine.Errorf(syscall.ENOENT, "serial: host removed")
	}
	s.src, s.srcGen, s.held = rwc, gen, false
	go s.pump(rwc)
	return nil
}
