package ipmi

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/transport"
	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/machinefs/machinefs/machine"
)

// solPoll is how often an idle SOL stream asks the BMC for output.
const solPoll = 50 * time.Millisecond

// SOL activates Serial over LAN on a session of its own (IPMI 2.0,
// lanplus only) and returns a stream: Read returns the host's serial
// output, Write sends input. Close deactivates the payload and closes the
// session; the driver's Close closes open streams too. ctx bounds
// activation only. A BMC allows one SOL session per host: a second SOL call
// fails with the BMC's completion code (EIO) until the first is closed.
func (d *Driver) SOL(ctx context.Context) (io.ReadWriteCloser, error) {
	if d.cfg.iface != "lanplus" {
		return nil, machine.Errorf(syscall.EOPNOTSUPP, "ipmi %s: serial over LAN needs ipmi.interface lanplus", d.cfg.hostPort())
	}
	d.mu.Lock()
	closing := d.closing
	d.mu.Unlock()
	if closing {
		return nil, machine.Errorf(syscall.ENODEV, "ipmi %s: driver closed", d.cfg.hostPort())
	}
	c, err := d.newClient()
	if err != nil {
		return nil, d.classify(ctx, "SOL session", err)
	}
	if err := c.Connect(ctx); err != nil {
		d.goTracked(func() { _ = c.Close(canceledCtx()) })
		return nil, d.classify(ctx, "SOL session", err)
	}
	if _, err := c.ActivatePayload(ctx, &transport.ActivatePayloadRequest{
		PayloadType:     types.PayloadTypeSOL,
		PayloadInstance: 1,
	}); err != nil {
		err = d.classify(ctx, "activate SOL", err)
		cctx, cancel := context.WithTimeout(context.Background(), d.cfg.timeout)
		c.Close(cctx)
		cancel()
		return nil, err
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	sctx, cancel := context.WithCancel(context.Background())
	s := &solConn{d: d, c: c, inW: inW, outR: outR, cancel: cancel, done: make(chan struct{})}
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		s.done = nil // the stream never started
		s.shutdown()
		return nil, machine.Errorf(syscall.ENODEV, "ipmi %s: driver closed", d.cfg.hostPort())
	}
	if d.sols == nil {
		d.sols = map[*solConn]bool{}
	}
	d.sols[s] = true
	d.mu.Unlock()
	go func() {
		defer close(s.done)
		err := c.SOLStream(sctx, inR, outW, &client.SOLStreamOptions{PollInterval: solPoll})
		if err != nil && sctx.Err() == nil {
			err = d.classify(sctx, "SOL stream", err)
			d.log.Info("SOL stream ended", "err", err)
		} else {
			err = io.EOF
		}
		outW.CloseWithError(err)
		inR.CloseWithError(err)
	}()
	return s, nil
}

// goTracked runs f in a goroutine Close waits for, or at once if the
// driver is closing.
func (d *Driver) goTracked(f func()) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		f()
		return
	}
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		f()
	}()
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// solConn is one active SOL stream.
type solConn struct {
	d      *Driver
	c      *client.Client
	inW    *io.PipeWriter
	outR   *io.PipeReader
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func (s *solConn) Read(p []byte) (int, error)  { return s.outR.Read(p) }
func (s *solConn) Write(p []byte) (int, error) { return s.inW.Write(p) }

// Close stops the stream, deactivates SOL and closes the session.
func (s *solConn) Close() error {
	s.d.mu.Lock()
	delete(s.d.sols, s)
	s.d.mu.Unlock()
	s.shutdown()
	return nil
}

func (s *solConn) shutdown() {
	s.once.Do(func() {
		s.cancel()
		s.inW.CloseWithError(errors.New("SOL closed"))
		s.outR.CloseWithError(errors.New("SOL closed"))
		if s.done != nil {
			<-s.done
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.d.cfg.timeout)
		defer cancel()
		_, _ = s.c.DeactivatePayload(ctx, &transport.DeactivatePayloadRequest{
			PayloadType:     types.PayloadTypeSOL,
			PayloadInstance: 1,
		})
		_ = s.c.Close(ctx)
	})
}

// Serial implements machine.Serialer: the host's serial file is its SOL
// stream.
func (d *Driver) Serial(ctx context.Context) (io.ReadWriteCloser, error) { return d.SOL(ctx) }

// HasSerial implements machine.Serialer: Serial-over-LAN is an IPMI 2.0
// payload, so only a lanplus host has a serial file.
func (d *Driver) HasSerial() bool { return d.cfg.iface == "lanplus" }
