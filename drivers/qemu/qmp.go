package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// The QMP client is our own: QMP is JSON objects, one per line, over the
// guest's unix socket, and the driver needs only commands with an id,
// their replies and the asynchronous events. A client of ~200 lines keeps
// what a library would hide in view: every read is bounded (maxQMPLine),
// every wait ends at the caller's deadline (the console's Bounded calls
// carry a deadline without a timer, see machine.ConsoleCommand), and
// events reach the driver on one goroutine in QEMU's order, which the
// power state depends on (GUEST_PANICKED before STOP).

// maxQMPLine caps one QMP message: a guest with many block devices answers
// query-block in a few KiB; a line that does not end within this is not
// QEMU speaking QMP, and the connection is dropped.
const maxQMPLine = 1 << 20

// qmpEvent is one asynchronous QMP event.
type qmpEvent struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// qmpError is QMP's error reply.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// qmpMessage is any message QEMU sends after the greeting.
type qmpMessage struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	ID     *uint64         `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
}

type qmpReply struct {
	ret json.RawMessage
	err *qmpError
}

// qmpConn is one QMP session. Commands may be issued from any goroutine;
// events go to the handler given to dialQMP, on the reader goroutine, in
// the order QEMU sent them. The handler must not issue commands and wait
// for them (the reader would wait for itself).
type qmpConn struct {
	c       net.Conn
	timeout time.Duration // bound of one command, within the caller's
	onEvent func(qmpEvent)

	wmu sync.Mutex // one command written at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan qmpReply
	subs    map[*qmpSub]struct{}
	err     error         // why the session ended
	done    chan struct{} // closed when the reader ends
}

// qmpSub receives the events a caller waits for (a block job's end).
type qmpSub struct {
	name string
	ch   chan qmpEvent
}

// dialQMP connects to QEMU's QMP socket, reads the greeting and leaves
// capabilities negotiation mode. onEvent gets every event afterwards.
func dialQMP(ctx context.Context, path string, timeout time.Duration, onEvent func(qmpEvent)) (*qmpConn, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connecting to %s: %w", path, err)
	}
	q := &qmpConn{c: c, timeout: timeout, onEvent: onEvent, pending: map[uint64]chan qmpReply{}, subs: map[*qmpSub]struct{}{}, done: make(chan struct{})}
	br := bufio.NewReaderSize(c, 64<<10)
	if dl, ok := dctx.Deadline(); ok {
		c.SetReadDeadline(dl)
	}
	greeting, err := readLine(br)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: greeting from %s: %w", path, err)
	}
	if !bytes.Contains(greeting, []byte(`"QMP"`)) {
		c.Close()
		return nil, fmt.Errorf("qmp: %s does not greet as QMP: %.80q", path, greeting)
	}
	c.SetReadDeadline(time.Time{})
	go q.read(br)
	if _, err := q.execute(dctx, "qmp_capabilities", nil); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

// readLine reads one line of at most maxQMPLine bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > maxQMPLine {
			return nil, fmt.Errorf("a QMP message longer than %d bytes", maxQMPLine)
		}
		line = append(line, chunk...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}

// read dispatches QEMU's messages until the connection ends.
func (q *qmpConn) read(br *bufio.Reader) {
	var err error
	for {
		var line []byte
		if line, err = readLine(br); err != nil {
			break
		}
		var m qmpMessage
		if err = json.Unmarshal(line, &m); err != nil {
			err = fmt.Errorf("qmp: bad message %.80q: %w", line, err)
			break
		}
		if m.Event != "" {
			q.event(qmpEvent{Name: m.Event, Data: m.Data})
			continue
		}
		if m.ID == nil {
			continue // a reply to no command of ours
		}
		q.mu.Lock()
		ch := q.pending[*m.ID]
		delete(q.pending, *m.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- qmpReply{ret: m.Return, err: m.Error}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = errors.New("qmp: connection closed")
	}
	q.c.Close()
	q.mu.Lock()
	q.err = err
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	q.mu.Unlock()
	close(q.done)
}

func (q *qmpConn) event(ev qmpEvent) {
	q.mu.Lock()
	for s := range q.subs {
		if s.name == ev.Name {
			select {
			case s.ch <- ev:
			default: // the subscriber has what it waits for
			}
		}
	}
	q.mu.Unlock()
	if q.onEvent != nil {
		q.onEvent(ev)
	}
}

// subscribe starts collecting events called name, before the command that
// causes them is issued; unsubscribe ends it.
func (q *qmpConn) subscribe(name string) *qmpSub {
	s := &qmpSub{name: name, ch: make(chan qmpEvent, 16)}
	q.mu.Lock()
	q.subs[s] = struct{}{}
	q.mu.Unlock()
	return s
}

func (q *qmpConn) unsubscribe(s *qmpSub) {
	q.mu.Lock()
	delete(q.subs, s)
	q.mu.Unlock()
}

// execute runs one QMP command and returns its "return" value. It waits
// until ctx's deadline (enforced with a timer of its own: a Bounded
// console call's ctx does not close at its deadline), the client's
// timeout, or the end of the session, whichever comes first.
func (q *qmpConn) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	deadline := time.Now().Add(q.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	return q.executeUntil(ctx, deadline, cmd, args)
}

// executeUntil is execute with the deadline given (a backup waits longer
// than one request).
func (q *qmpConn) executeUntil(ctx context.Context, deadline time.Time, cmd string, args any) (json.RawMessage, error) {
	budget := time.Until(deadline).Round(time.Millisecond)
	ch := make(chan qmpReply, 1)
	q.mu.Lock()
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return nil, machine.Errorf(syscall.EHOSTDOWN, "qmp %s: %v", cmd, err)
	}
	q.nextID++
	id := q.nextID
	q.pending[id] = ch
	q.mu.Unlock()
	forget := func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		forget()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	q.wmu.Lock()
	q.c.SetWriteDeadline(deadline)
	_, err = q.c.Write(append(b, '\n'))
	q.wmu.Unlock()
	if err != nil {
		forget()
		return nil, machine.Errorf(syscall.EIO, "qmp %s: %v", cmd, err)
	}

	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, machine.Errorf(syscall.EHOSTDOWN, "qmp %s: %v", cmd, q.closedErr())
		}
		if r.err != nil {
			return nil, machine.Errorf(errnoOfClass(r.err.Class), "qmp %s: %s", cmd, r.err.Desc)
		}
		return r.ret, nil
	case <-t.C:
		forget()
		return nil, machine.Errorf(syscall.ETIMEDOUT, "qmp %s: no answer within %s", cmd, budget)
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// errnoOfClass maps QMP's error classes to what a user of the tree gets.
func errnoOfClass(class string) syscall.Errno {
	switch class {
	case "DeviceNotFound":
		return syscall.ENODEV
	case "CommandNotFound":
		return syscall.ENOTSUP
	case "DeviceNotActive":
		return syscall.EAGAIN
	}
	return syscall.EIO
}

func (q *qmpConn) closedErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

// close ends the session and waits for the reader.
func (q *qmpConn) close() {
	q.c.Close()
	<-q.done
}

// humanCommand runs an HMP command line through QMP.
func (q *qmpConn) humanCommand(ctx context.Context, line string) (string, error) {
	ret, err := q.execute(ctx, "human-monitor-command", map[string]string{"command-line": line})
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(ret, &out); err != nil {
		return "", fmt.Errorf("qmp human-monitor-command: %w", err)
	}
	return out, nil
}
