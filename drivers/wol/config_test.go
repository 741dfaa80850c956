package wol

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
)

func TestConfigErrors(t *testing.T) {
	leakCheck(t)
	ok := testConfig{"mac": testMAC.String(), "wol.broadcast": "192.0.2.255"}
	with := func(kv ...string) testConfig {
		c := testConfig{}
		for k, v := range ok {
			c[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(c, kv[i])
			} else {
				c[kv[i]] = kv[i+1]
			}
		}
		return c
	}
	for name, tc := range map[string]struct {
		cfg  testConfig
		want string // in the error text
	}{
		"no mac":            {with("mac", "-"), "mac is not set"},
		"malformed mac":     {with("mac", "00:11:22:33:44"), "not a MAC address"},
		"mac not hex":       {with("mac", "00:11:22:33:44:zz"), "not a MAC address"},
		"mac 8 bytes":       {with("mac", "00:11:22:33:44:55:66:77"), "6-byte"},
		"password 3 bytes":  {with("wol.password", "0a:0b:0c"), "3 bytes"},
		"password 5 bytes":  {with("wol.password", "0a:0b:0c:0d:0e"), "5 bytes"},
		"password garbage":  {with("wol.password", "secret"), "wol.password"},
		"no such interface": {with("wol.broadcast", "-", "wol.interface", "mfwnope0"), "no such interface"},
		"bad interface":     {with("wol.interface", "a/b"), "not an interface name"},
		"broadcast IPv6":    {with("wol.broadcast", "ff02::1"), "IPv4"},
		"broadcast name":    {with("wol.broadcast", "lab-bcast"), "IPv4"},
		"broadcast 0.0.0.0": {with("wol.broadcast", "0.0.0.0"), "not a broadcast"},
		"port 0":            {with("wol.port", "0"), "1-65535"},
		"port big":          {with("wol.port", "70000"), "1-65535"},
		"probe kind":        {with("probe", "udp:host:9"), "unknown kind"},
		"probe no port":     {with("probe", "tcp:host"), "tcp:HOST:PORT"},
		"probe icmp v6":     {with("probe", "icmp:fd00::1"), "icmp"},
		"interval":          {with("wol.probe-interval", "soon"), "wol.probe-interval"},
		"interval negative": {with("wol.probe-interval", "-1s"), "wol.probe-interval"},
		"tries":             {with("wol.probe-tries", "0"), "wol.probe-tries"},
	} {
		d, err := New(t.Context(), machine.DriverEnv{Config: tc.cfg})
		if err == nil {
			_ = d.Close()
			t.Errorf("%s: New succeeded", name)
			continue
		}
		if !errors.Is(err, syscall.EINVAL) || machine.ErrnoOf(err) != syscall.EINVAL {
			t.Errorf("%s: %v does not wrap EINVAL", name, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %q does not say %q", name, err, tc.want)
		}
		if strings.Contains(err.Error(), "0a:0b:0c") || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error echoes the password: %v", name, err)
		}
	}
}

// TestKeyChecks runs the Check functions the model uses on writes.
func TestKeyChecks(t *testing.T) {
	keys := map[string]machine.KeySpec{}
	for _, k := range Spec.Keys {
		if k.Doc == "" {
			t.Errorf("key %s has no Doc", k.Name)
		}
		keys[k.Name] = k
	}
	if Spec.Name != "wol" || Spec.New == nil || Spec.Simulated {
		t.Errorf("Spec %+v", Spec)
	}
	if !keys["wol.password"].Secret {
		t.Error("wol.password is not Secret")
	}
	for k, d := range map[string]string{"wol.port": "9", "wol.probe-interval": "10s", "wol.probe-tries": "24"} {
		if keys[k].Default != d {
			t.Errorf("%s default %q, want %q", k, keys[k].Default, d)
		}
	}
	good := map[string][]string{
		"mac":                {"00:11:22:33:44:55", "00-11-22-33-44-55"},
		"wol.interface":      {"lo"}, // must exist where the check runs
		"wol.broadcast":      {"192.168.3.255", "255.255.255.255"},
		"wol.port":           {"9", "7"},
		"wol.password":       {"01:02:03:04:05:06", "01:02:03:04", "192.168.1.1"},
		"probe":              {"tcp:lab01:22", "tcp:10.0.0.1:80", "tcp:[fd00::1]:22", "icmp:lab01", "icmp:10.0.0.1"},
		"wol.probe-interval": {"10s", "500ms", "30"},
		"wol.probe-tries":    {"24", "1"},
	}
	bad := map[string][]string{
		"mac":                {"", "00:11:22", "nope"},
		"wol.interface":      {"", "this-name-is-too-long", "a b", "eth0:1", "mfwnope0"},
		"wol.broadcast":      {"", "::1", "host", "192.168.3.255:9"},
		"wol.port":           {"", "0", "65536", "nine"},
		"wol.password":       {"", "01", "01:02:03:04:05", "1.2.3"},
		"probe":              {"", "tcp", "tcp:host", "tcp:host:0", "http:host:80", "icmp:", "icmp:[::1]"},
		"wol.probe-interval": {"", "0s", "-1s", "2h", "x"},
		"wol.probe-tries":    {"", "0", "-1", "x"},
	}
	for k, vs := range good {
		for _, v := range vs {
			if err := keys[k].Check(v); err != nil {
				t.Errorf("%s=%q rejected: %v", k, v, err)
			}
		}
	}
	for k, vs := range bad {
		for _, v := range vs {
			if err := keys[k].Check(v); err == nil {
				t.Errorf("%s=%q accepted", k, v)
			}
		}
	}
}

func TestPickInterface(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	ifs := []net.Interface{
		{Name: "lo", Flags: net.FlagUp | net.FlagLoopback},
		{Name: "down0", Flags: net.FlagBroadcast, HardwareAddr: mac},
		{Name: "tun0", Flags: net.FlagUp | net.FlagPointToPoint},
		{Name: "ib0", Flags: net.FlagUp | net.FlagBroadcast, HardwareAddr: make(net.HardwareAddr, 20)},
		{Name: "eth1", Flags: net.FlagUp | net.FlagBroadcast | net.FlagMulticast, HardwareAddr: mac},
		{Name: "eth2", Flags: net.FlagUp | net.FlagBroadcast, HardwareAddr: mac},
	}
	ifi, err := pickInterface(ifs)
	if err != nil || ifi.Name != "eth1" {
		t.Fatalf("picked %v, %v; want eth1", ifi, err)
	}
	if _, err := pickInterface(ifs[:4]); machine.ErrnoOf(err) != syscall.ENODEV {
		t.Fatalf("no candidate: %v, want ENODEV", err)
	}
}

func TestNoProbeReport(t *testing.T) {
	leakCheck(t)
	rec := &recorder{}
	// 192.0.2.255: nothing is sent by this test, New only parses.
	d, err := New(t.Context(), machine.DriverEnv{Config: testConfig{"mac": testMAC.String(), "wol.broadcast": "192.0.2.255"}, Report: rec})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st := rec.statuses()
	if len(st) != 1 || st[0].Power != machine.PowerUnknown || st[0].Reason != "no probe configured: WoL cannot report power" {
		t.Fatalf("reports %+v", st)
	}
	desc := d.(machine.Describer).Describe()
	want := [][2]string{{"wol-target", testMAC.String()}, {"wol-via", "udp 192.0.2.255:9"}, {"probe", "none"}, {"last-probe", "never"}}
	for i := range want {
		if desc[i] != want[i] {
			t.Errorf("Describe %v, want %v", desc, want)
			break
		}
	}
	if got := d.(machine.PowerController).Verbs(); strings.Join(got, " ") != "wol on resume pause suspend" {
		t.Errorf("Verbs %v", got)
	}
}

// Status probes once: on while the probed service answers, unknown (never
// off) when it does not; without a probe, unknown.
func TestStatusProbes(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(t.Context(), machine.DriverEnv{Config: testConfig{"mac": testMAC.String(), "wol.broadcast": "192.0.2.255",
		"probe": "tcp:" + ln.Addr().String(), "wol.probe-interval": "500ms"}, Report: &recorder{}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sr := d.(machine.StatusReader)
	if st, err := sr.Status(t.Context()); err != nil || st.Power != machine.PowerOn || !st.Reachable {
		t.Fatalf("probe answers: %+v %v", st, err)
	}
	ln.Close()
	if st, err := sr.Status(t.Context()); err != nil || st.Power != machine.PowerUnknown || st.Reachable {
		t.Fatalf("probe closed: %+v %v, want unknown", st, err)
	}
	np, err := New(t.Context(), machine.DriverEnv{Config: testConfig{"mac": testMAC.String(), "wol.broadcast": "192.0.2.255"}, Report: &recorder{}})
	if err != nil {
		t.Fatal(err)
	}
	defer np.Close()
	if st, err := np.(machine.StatusReader).Status(t.Context()); err != nil || st.Power != machine.PowerUnknown {
		t.Fatalf("no probe: %+v %v", st, err)
	}
}
