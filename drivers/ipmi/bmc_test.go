package ipmi

// Test helpers: a recording Reporter, a map Config and a driver built
// against a real OpenIPMI ipmi_sim BMC (tests/harness/ipmisim).

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

// mapConfig is a machine.Config.
type mapConfig map[string]string

func (m mapConfig) Get(k string) (string, bool) { v, ok := m[k]; return v, ok }

// recorder is a machine.Reporter that keeps everything.
type recorder struct {
	mu      sync.Mutex
	changed chan struct{}
	reports []stamped
	events  []string
}

type stamped struct {
	at time.Time
	machine.Status
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Report(s machine.Status) {
	r.mu.Lock()
	r.reports = append(r.reports, stamped{time.Now(), s})
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) Event(kind machine.EventKind, detail string) {
	r.mu.Lock()
	r.events = append(r.events, string(kind)+" "+detail)
	r.mu.Unlock()
}

func (r *recorder) all() []stamped {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]stamped(nil), r.reports...)
}

// waitFor waits until a report from index from on satisfies ok and returns
// it with its index.
func (r *recorder) waitFor(t *testing.T, from int, timeout time.Duration, what string, ok func(machine.Status) bool) (stamped, int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for i := from; i < len(r.reports); i++ {
			if ok(r.reports[i].Status) {
				s := r.reports[i]
				r.mu.Unlock()
				return s, i
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no report %s within %v; reports: %s", what, timeout, r.dump())
		}
	}
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reports)
}

func (r *recorder) dump() string {
	var b strings.Builder
	for _, s := range r.all() {
		fmt.Fprintf(&b, "\n  %s power=%q reachable=%v reason=%q err=%v", s.at.Format("15:04:05.000"), s.Power, s.Reachable, s.Reason, s.Err)
	}
	r.mu.Lock()
	for _, e := range r.events {
		fmt.Fprintf(&b, "\n  event %s", e)
	}
	r.mu.Unlock()
	return b.String()
}

// text is everything the driver said, for password checks.
func (r *recorder) text() string {
	var b strings.Builder
	b.WriteString(r.dump())
	return b.String()
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testHost struct {
	d   *Driver
	rec *recorder
	log *syncBuffer
}

// newHost builds a driver through Spec.New with the given config on top of
// test defaults (fast poll, short verify timeout).
func newHost(t *testing.T, port int, extra map[string]string) *testHost {
	t.Helper()
	cfg := mapConfig{
		"ipmi.address":        "127.0.0.1",
		"ipmi.port":           strconv.Itoa(port),
		"ipmi.user":           ipmisim.User,
		"ipmi.password":       ipmisim.Password,
		"ipmi.timeout":        "500ms",
		"ipmi.retries":        "1",
		"ipmi.poll":           "200ms",
		"ipmi.verify-timeout": "5s",
	}
	for k, v := range extra {
		cfg[k] = v
	}
	h := &testHost{rec: newRecorder(), log: &syncBuffer{}}
	drv, err := Spec.New(context.Background(), machine.DriverEnv{
		Path:   "hosts/" + t.Name(),
		Config: cfg,
		Report: h.rec,
		Log:    slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.d = drv.(*Driver)
	t.Cleanup(func() { h.d.Close() })
	return h
}

// describe returns the Describe lines as a map.
func (h *testHost) describe() map[string]string {
	m := map[string]string{}
	for _, kv := range h.d.Describe() {
		m[kv[0]] = kv[1]
	}
	return m
}
