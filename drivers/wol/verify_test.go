package wol

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

// TestWakeVerdictAtDeadline: a woken machine whose probe never answers is
// given up at the command's deadline, not after probe-interval x
// probe-tries (here 10s), and the verdict is EHOSTDOWN: the model's
// backstop (deadline + VerdictGrace) never has to speak.
func TestWakeVerdictAtDeadline(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	s := routed(t).Sender
	rec := &recorder{}
	d := newDriverIn(t, s, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.2.255", "probe": "tcp:10.77.2.99:22",
		"wol.probe-interval": "200ms", "wol.probe-tries": "50"}, rec)
	i := rec.waitFor(t, 0, 3*time.Second, "initial probe", func(s machine.Status) bool { return s.Power != "" })

	deadline := time.Now().Add(time.Second)
	cmd := machine.Command{Verb: "wol", Deadline: deadline}
	if !d.Verifies(cmd) {
		t.Fatal("a driver with a probe does not follow its wake")
	}
	s.Do(t, func() error { return d.Power(t.Context(), cmd) })
	k := rec.waitFor(t, i+1, 5*time.Second, "verdict", func(s machine.Status) bool { return s.Err != nil })
	at := time.Now()
	st := rec.statuses()[k]
	if st.Power != machine.PowerUnknown || st.Reason != "no answer after wake" || machine.ErrnoOf(st.Err) != syscall.EHOSTDOWN {
		t.Fatalf("verdict %+v, want unknown, no answer after wake, EHOSTDOWN", st)
	}
	if at.Before(deadline) {
		t.Fatalf("gave up before the deadline: %v", st.Err)
	}
	if !strings.Contains(st.Err.Error(), "every 200ms") {
		t.Errorf("the error does not say how it probed: %v", st.Err)
	}
	if st.Power == machine.PowerOn {
		t.Fatalf("claimed on: %+v", st)
	}
}

// TestWatchFollowsTheMachine: without any command, the background probe
// sees a machine go away (its service closes: unknown, never off) and come
// back (on), and reports only changes.
func TestWatchFollowsTheMachine(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	rec := &recorder{}
	d, err := New(t.Context(), machine.DriverEnv{Config: testConfig{"mac": testMAC.String(), "wol.broadcast": "192.0.2.255",
		"probe": "tcp:" + addr, "wol.probe-interval": "50ms"}, Report: rec})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	i := rec.waitFor(t, 0, 3*time.Second, "on", func(s machine.Status) bool { return s.Power == machine.PowerOn })

	ln.Close()
	j := rec.waitFor(t, i+1, 5*time.Second, "the machine gone", func(s machine.Status) bool { return s.Power != "" })
	if st := rec.statuses()[j]; st.Power != machine.PowerUnknown || st.Reachable || !strings.Contains(st.Reason, "did not answer") {
		t.Fatalf("after the service closed: %+v, want unknown (did not answer)", st)
	}

	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	k := rec.waitFor(t, j+1, 5*time.Second, "the machine back", func(s machine.Status) bool { return s.Power != "" })
	if st := rec.statuses()[k]; st.Power != machine.PowerOn || !st.Reachable {
		t.Fatalf("after the service came back: %+v, want on", st)
	}
	// Steady probes stay silent.
	time.Sleep(300 * time.Millisecond) // six probes
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, st := range rec.statuses()[k+1:] {
		t.Errorf("reported again without a change: %+v", st)
	}
	if lp := d.(machine.Describer).Describe()[3][1]; !strings.HasSuffix(lp, "answered") {
		t.Errorf("last-probe %q", lp)
	}
}
