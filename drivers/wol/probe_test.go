package wol

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/tests/harness/netns"
)

const probeAddr = "10.77.2.2:2222"

func TestProbeWake(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	rt := routed(t)
	s, tg := rt.Sender, rt.Target
	pw := []byte{1, 2, 3, 4, 5, 6}
	base := testConfig{
		"mac":                testMAC.String(),
		"wol.broadcast":      "10.77.2.255",
		"probe":              "tcp:" + probeAddr,
		"wol.probe-interval": "50ms",
		"wol.probe-tries":    "6", // ignored: the command's deadline ends the probing
	}
	with := func(kv ...string) testConfig {
		c := testConfig{}
		for k, v := range base {
			c[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			c[kv[i]] = kv[i+1]
		}
		return c
	}

	for _, tc := range []struct {
		name    string
		cfg     testConfig
		wantMAC net.HardwareAddr
		wantPW  []byte
		wake    bool
	}{
		{"right mac", with(), testMAC, nil, true},
		{"right password", with("wol.password", "01:02:03:04:05:06"), testMAC, pw, true},
		{"wrong mac", with(), macA, nil, false},
		{"wrong password", with("wol.password", "01:02:03:04:05:07"), testMAC, pw, false},
		{"missing password", with(), testMAC, pw, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := tg.StartResponder(t, netns.Sleeper{MAC: tc.wantMAC, Password: tc.wantPW, Interface: rt.TargetDev, Service: probeAddr})
			rec := &recorder{}
			d := newDriverIn(t, s, tc.cfg, rec)

			// The start-up probe finds the service closed: unknown, never off.
			i := rec.waitFor(t, 0, 3*time.Second, "initial probe", func(s machine.Status) bool { return s.Power != "" })
			if st := rec.statuses()[i]; st.Power != machine.PowerUnknown || st.Reachable || !strings.Contains(st.Reason, "refused") {
				t.Errorf("initial report %+v, want unknown (refused)", st)
			}

			start := time.Now()
			deadline := start.Add(time.Second)
			s.Do(t, func() error { return d.Power(t.Context(), machine.Command{Verb: "wol", Deadline: deadline}) })
			j := rec.waitFor(t, i+1, time.Second, "starting", func(s machine.Status) bool { return s.Power != "" })
			if st := rec.statuses()[j]; st.Power != machine.PowerStarting {
				t.Fatalf("after wol: %+v, want starting", st)
			}
			k := rec.waitFor(t, j+1, 5*time.Second, "result", func(s machine.Status) bool { return s.Power != "" })
			st := rec.statuses()[k]
			woke := resp.Woke()
			seen, wrong := resp.Seen()
			t.Logf("after %s: %+v (responder saw %d packets, %d wrong)", time.Since(start).Round(time.Millisecond), st, seen, wrong)
			if tc.wake {
				if st.Power != machine.PowerOn || !st.Reachable || st.Reason != "probe tcp:"+probeAddr+" answered" || st.Err != nil {
					t.Fatalf("got %+v, want on (probe answered)", st)
				}
				if !woke {
					t.Fatal("driver reports on but the responder never woke")
				}
				if lp := d.Describe()[3][1]; !strings.HasSuffix(lp, "answered") {
					t.Errorf("last-probe %q", lp)
				}
				return
			}
			if woke || seen == 0 {
				t.Fatalf("responder woke=%v seen=%d: the test is wrong", woke, seen)
			}
			if st.Power != machine.PowerUnknown || st.Reachable || st.Reason != "no answer after wake" || machine.ErrnoOf(st.Err) != syscall.EHOSTDOWN {
				t.Fatalf("got %+v, want unknown, no answer after wake, EHOSTDOWN", st)
			}
			if time.Now().Before(deadline) {
				t.Errorf("gave up after %s, before the command's deadline", time.Since(start))
			}
			if !strings.Contains(st.Err.Error(), "refused") {
				t.Errorf("error does not give the last probe result: %v", st.Err)
			}
		})
	}
}

func TestProbeICMP(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	s := routed(t).Sender
	run := func(t *testing.T, host string, wantOn bool) {
		// Make sure the intended socket kind is what the driver will get.
		pingOK := false
		s.Do(t, func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
			if err == nil {
				pingOK = true
				unix.Close(fd)
			}
			return nil
		})
		if wantPing := strings.HasPrefix(t.Name(), "TestProbeICMP/ping"); pingOK != wantPing {
			t.Fatalf("ping socket available=%v, want %v", pingOK, wantPing)
		}
		rec := &recorder{}
		newDriverIn(t, s, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.2.255", "probe": "icmp:" + host, "wol.probe-interval": "300ms"}, rec)
		i := rec.waitFor(t, 0, 3*time.Second, "initial probe", func(s machine.Status) bool { return s.Power != "" })
		st := rec.statuses()[i]
		t.Logf("%+v", st)
		if wantOn && (st.Power != machine.PowerOn || !st.Reachable) {
			t.Fatalf("icmp:%s: %+v, want on", host, st)
		}
		if !wantOn && (st.Power != machine.PowerUnknown || st.Reachable) {
			t.Fatalf("icmp:%s: %+v, want unknown", host, st)
		}
	}
	// ping_group_range is "1 0" in a new namespace: raw ICMP socket.
	t.Run("raw", func(t *testing.T) { run(t, "10.77.2.2", true) })
	t.Run("raw silent", func(t *testing.T) { run(t, "10.77.2.99", false) })
	s.Sysctl(t, "net/ipv4/ping_group_range", "0 2147483647")
	t.Run("ping socket", func(t *testing.T) { run(t, "10.77.2.2", true) })
	t.Run("ping socket silent", func(t *testing.T) { run(t, "10.77.2.99", false) })
}

// TestCloseStopsVerification checks that Close ends a long verification
// promptly and that nothing is reported after Close returns.
func TestCloseStopsVerification(t *testing.T) {
	netns.NeedRoot(t)
	leakCheck(t)
	s := routed(t).Sender
	rec := &recorder{}
	d := newDriverIn(t, s, testConfig{"mac": testMAC.String(), "wol.broadcast": "10.77.2.255", "probe": "tcp:10.77.2.99:22",
		"wol.probe-interval": "10s", "wol.probe-tries": "24"}, rec)
	if err := d.Power(t.Context(), machine.Command{Verb: "wol"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Close took %s", el)
	}
	n := len(rec.statuses())
	time.Sleep(50 * time.Millisecond)
	if len(rec.statuses()) != n {
		t.Errorf("reports after Close: %+v", rec.statuses()[n:])
	}
	if err := d.Power(t.Context(), machine.Command{Verb: "wol"}); err == nil {
		t.Error("Power after Close succeeded")
	}
	for _, st := range rec.statuses() {
		if st.Power == machine.PowerOn || st.Power == machine.PowerOff {
			t.Errorf("claimed %s without evidence: %+v", st.Power, st)
		}
	}
	if errors.Is(d.Close(), syscall.EIO) {
		t.Error("second Close failed")
	}
}
