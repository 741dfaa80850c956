package model

import (
	"context"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// maxSerialLine is the longest console line serial.log keeps whole; a
// guest that never ends its line gets it cut here, so one line cannot
// grow without bound.
const maxSerialLine = 4096

// serialLogDelay gathers the lines of a burst of output into one change
// of serial.log for the filesystem (one invalidation, one wake-up of
// tail -f), instead of one per line.
const serialLogDelay = 20 * time.Millisecond

func newSerialLog(limit int) *EventLog {
	l := newEventLog(limit)
	l.name, l.unit = "serial.log", "lines"
	return l
}

// SerialLog is the host's serial.log: its console's output, a line per
// console line with the time it ended, while serial-log is yes.
func (h *Host) SerialLog() *EventLog { return h.serialLog }

// SerialLogging says whether the host records its console (serial-log =
// yes and a serial console): its serial.log file exists.
func (h *Host) SerialLogging() bool {
	h.mu.Lock()
	on := h.cfg.Bool("serial-log")
	h.mu.Unlock()
	return on && h.HasSerial()
}

// logLocked adds console output to serial.log: complete lines, stamped,
// escaped as event details are (the guest is untrusted: no control
// characters reach a terminal that runs tail).
func (s *serialHub) logLocked(p []byte) {
	wrote := false
	for _, c := range p {
		switch {
		case c == '\n' || len(s.line) == maxSerialLine:
			s.h.serialLog.append(time.Now().UTC().Format("2006-01-02T15:04:05.000000Z") + " " + Escape(string(s.line)) + "\n")
			s.line = s.line[:0]
			wrote = true
			if c != '\n' {
				s.line = append(s.line, c)
			}
		case c == '\r':
		default:
			s.line = append(s.line, c)
		}
	}
	if wrote && !s.logPending {
		s.logPending = true
		time.AfterFunc(serialLogDelay, s.logChanged)
	}
}

// logChanged tells the filesystem serial.log grew: an event on the bus
// only, never in the event logs.
func (s *serialHub) logChanged() {
	s.mu.Lock()
	s.logPending = false
	s.mu.Unlock()
	s.h.tree.bus.publish(Event{Time: time.Now(), Path: s.h.path, Kind: machine.EventSerialLog})
}

// configChanged follows a config write: serial-log = yes keeps the
// console open (IPMI SOL too) so its output is recorded; no lets a stream
// nobody reads go.
func (s *serialHub) configChanged(ctx context.Context) {
	h := s.h
	d, gen, timeout := h.serialDriver()
	h.mu.Lock()
	on := h.cfg.Bool("serial-log")
	h.mu.Unlock()
	s.mu.Lock()
	s.logging = on && d != nil
	var release interface{ Close() error }
	if s.logging && s.src == nil && !s.gone {
		if _, held := d.(machine.SerialHolder); !held {
			if err := s.openLocked(ctx, d, gen, timeout); err != nil {
				s.mu.Unlock()
				h.emit(machine.EventError, "serial-log: "+err.Error())
				return
			}
		}
	} else if c := s.releaseLocked(); c != nil {
		s.src = nil
		release = c
	}
	s.mu.Unlock()
	if release != nil {
		release.Close()
	}
}
