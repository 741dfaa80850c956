package wol

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// leakCheck registers, as the first cleanup (so it runs last), a check that
// the test left no goroutines behind.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// testConfig is a host configuration snapshot.
type testConfig map[string]string

func (c testConfig) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// recorder is the model side of the Reporter: it keeps what the driver says.
type recorder struct {
	mu     sync.Mutex
	status []machine.Status
	events [][2]string
}

func (r *recorder) Report(s machine.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = append(r.status, s)
}

func (r *recorder) Event(kind machine.EventKind, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, [2]string{string(kind), detail})
}

func (r *recorder) statuses() []machine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]machine.Status(nil), r.status...)
}

// waitFor waits until a status after index from satisfies ok and returns
// its index.
func (r *recorder) waitFor(t *testing.T, from int, timeout time.Duration, what string, ok func(machine.Status) bool) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := r.statuses()
		for i := from; i < len(st); i++ {
			if ok(st[i]) {
				return i
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s report within %s; got %+v", what, timeout, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newDriverIn creates a driver from a thread inside ns, as the brief for the
// send tests asks; the driver then keeps working in ns.
func newDriverIn(t *testing.T, ns *netns.NS, cfg testConfig, rep machine.Reporter) *driver {
	t.Helper()
	var d machine.Driver
	ns.Do(t, func() error {
		var err error
		d, err = New(t.Context(), machine.DriverEnv{Path: "hosts/test", Config: cfg, Report: rep})
		return err
	})
	t.Cleanup(func() { _ = d.Close() })
	return d.(*driver)
}
