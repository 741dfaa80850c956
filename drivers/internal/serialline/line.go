// Package serialline is a guest's serial console as one stream across the
// guest's lives: a driver attaches each new incarnation's console (a pty
// master, a QEMU chardev socket) and hands the model a Line once, as a
// machine.SerialHolder's stream.
package serialline

import (
	"errors"
	"io"
	"sync"
	"syscall"
)

// Line is a console that outlives the processes behind it. Read blocks
// while no console is attached and returns io.EOF only after Close; Write
// goes to the console attached now, or fails with EIO while none is.
type Line struct {
	pr *io.PipeReader
	pw *io.PipeWriter

	mu     sync.Mutex
	cur    io.ReadWriteCloser
	closed bool
	wg     sync.WaitGroup
}

// New returns a Line with no console attached.
func New() *Line {
	pr, pw := io.Pipe()
	return &Line{pr: pr, pw: pw}
}

// ErrNoConsole is what Write returns while no console is attached (the
// machine is off).
var ErrNoConsole = errors.New("no console: the machine is not running")

// Attach makes rwc the console and copies its output to Read until rwc
// ends; a console attached before is closed. After Close, Attach closes
// rwc at once.
func (l *Line) Attach(rwc io.ReadWriteCloser) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		rwc.Close()
		return
	}
	old := l.cur
	l.cur = rwc
	l.wg.Add(1)
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go l.pump(rwc)
}

// Detach closes the console attached now, if it is rwc (nil: whichever).
func (l *Line) Detach(rwc io.ReadWriteCloser) {
	l.mu.Lock()
	cur := l.cur
	if cur != nil && (rwc == nil || cur == rwc) {
		l.cur = nil
	} else {
		cur = nil
	}
	l.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
}

// pump copies one console's output into the pipe. The pipe blocks it until
// the model reads, which it always does, so memory stays bounded.
func (l *Line) pump(rwc io.ReadWriteCloser) {
	defer l.wg.Done()
	buf := make([]byte, 4096)
	for {
		n, err := rwc.Read(buf)
		if n > 0 {
			if _, werr := l.pw.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			l.Detach(rwc)
			return
		}
	}
}

// Read returns console output, blocking while there is none.
func (l *Line) Read(p []byte) (int, error) { return l.pr.Read(p) }

// Write sends input to the attached console.
func (l *Line) Write(p []byte) (int, error) {
	l.mu.Lock()
	cur := l.cur
	l.mu.Unlock()
	if cur == nil {
		return 0, &errnoError{ErrNoConsole, syscall.EIO}
	}
	return cur.Write(p)
}

// Close detaches the console (closing it) and ends Read with io.EOF. The
// model calls it when it stops reading; the driver calls it from its own
// Close. It waits for the pump to stop.
func (l *Line) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	cur := l.cur
	l.cur = nil
	l.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
	l.pw.Close() // Read returns io.EOF; a pump stuck in Write returns
	l.wg.Wait()
	return nil
}

// errnoError carries the errno machine.ErrnoOf finds through Unwrap.
type errnoError struct {
	err   error
	errno syscall.Errno
}

func (e *errnoError) Error() string { return e.err.Error() }
func (e *errnoError) Unwrap() []error {
	return []error{e.err, e.errno}
}
