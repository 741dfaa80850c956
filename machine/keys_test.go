package machine

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

type mapConfig map[string]string

func (m mapConfig) Get(k string) (string, bool) { v, ok := m[k]; return v, ok }

// TestKinds runs every built-in kind's parser on values it must take and
// values it must refuse, with what a driver receives.
func TestKinds(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}
	for _, tc := range []struct {
		kind Kind
		in   string
		want any // nil: refused
	}{
		// One duration syntax: Go durations, and a bare number is seconds.
		{DurationKind(time.Millisecond, time.Hour), "30", 30 * time.Second},
		{DurationKind(time.Millisecond, time.Hour), "30s", 30 * time.Second},
		{DurationKind(time.Millisecond, time.Hour), "1m30s", 90 * time.Second},
		{DurationKind(time.Millisecond, time.Hour), "500ms", 500 * time.Millisecond},
		{DurationKind(time.Millisecond, time.Hour), " 2m ", 2 * time.Minute},
		{DurationKind(time.Millisecond, time.Hour), "1h", time.Hour},
		{DurationKind(time.Millisecond, time.Hour), "3601", nil},
		{DurationKind(time.Millisecond, time.Hour), "0", nil},
		{DurationKind(0, time.Hour), "0", time.Duration(0)},
		{DurationKind(0, time.Hour), "0s", time.Duration(0)},
		{DurationKind(time.Millisecond, time.Hour), "-1s", nil},
		{DurationKind(time.Millisecond, time.Hour), "-5", nil},
		{DurationKind(time.Millisecond, time.Hour), "1.5", nil},
		{DurationKind(time.Millisecond, time.Hour), "soon", nil},
		{DurationKind(time.Millisecond, time.Hour), "", nil},
		{IntKind(1, 65535), "623", 623},
		{IntKind(1, 65535), "0", nil},
		{IntKind(1, 65535), "65536", nil},
		{IntKind(1, 65535), "nine", nil},
		{IntKind(0, 10), "0", 0},
		{EnumKind("lanplus", "lan"), "lan", "lan"},
		{EnumKind("lanplus", "lan"), "LAN", nil},
		{EnumKind("lanplus", "lan"), "", nil},
		{BoolKind, "yes", true},
		{BoolKind, "On", true},
		{BoolKind, "1", true},
		{BoolKind, "TRUE", true},
		{BoolKind, "no", false},
		{BoolKind, "off", false},
		{BoolKind, "0", false},
		{BoolKind, "false", false},
		{BoolKind, "maybe", nil},
		{BoolKind, "", nil},
		{PathKind, "/run/machinefs", "/run/machinefs"},
		{PathKind, "run/machinefs", nil},
		{PathKind, "", nil},
		{StringKind, "", ""},
		{StringKind, "any text", "any text"},
		{MACKind, "02:00:5e:10:20:30", mac},
		{MACKind, "02-00-5E-10-20-30", mac},
		{MACKind, "0200.5e10.2030", mac},
		{MACKind, "02:00:5e:10:20", nil},
		{MACKind, "zz:00:5e:10:20:30", nil},
		{MACKind, "02:00:5e:10:20:30:40:50", nil},
		{MACKind, "01:00:5e:10:20:30", nil}, // multicast
		{MACKind, "", nil},
		{BridgeMACKind, "sw0:02:00:5e:10:20:30", BridgeMAC{"sw0", mac}},
		{BridgeMACKind, "sw0:02:00:5e:10:20", nil},
		{BridgeMACKind, "sw0:03:00:5e:10:20:30", nil},
		{BridgeMACKind, ":02:00:5e:10:20:30", nil},
		{BridgeMACKind, "this-is-too-long0:02:00:5e:10:20:30", nil},
		{BridgeMACKind, "sw0", nil},
		{BridgeMACListKind, "sw0:02:00:5e:10:20:30 br1:02:00:5e:10:20:30", []BridgeMAC{{"sw0", mac}, {"br1", mac}}},
		{BridgeMACListKind, "", []BridgeMAC(nil)},
		{BridgeMACListKind, "sw0:02:00:5e:10:20:30 br1:zz", nil},
	} {
		got, err := tc.kind.Parse(tc.in)
		switch {
		case tc.want == nil && err == nil:
			t.Errorf("%s: %q accepted as %v", tc.kind, tc.in, got)
		case tc.want == nil && !strings.Contains(err.Error(), "want"):
			t.Errorf("%s: %q: reason %q does not say what is wanted", tc.kind, tc.in, err)
		case tc.want != nil && err != nil:
			t.Errorf("%s: %q refused: %v", tc.kind, tc.in, err)
		case tc.want != nil && !reflect.DeepEqual(got, tc.want):
			t.Errorf("%s: %q = %#v, want %#v", tc.kind, tc.in, got, tc.want)
		}
	}
}

// TestWrittenAsRead: what Check accepts when a value is written is what
// a driver reads, and what it refuses a driver refuses too, with the
// same EINVAL reason (once "30" was refused when written and read as 30s).
func TestWrittenAsRead(t *testing.T) {
	keys := []KeySpec{
		{Name: "timeout", Default: "10s", Kind: DurationKind(time.Millisecond, 24*time.Hour)},
		{Name: "x.port", Default: "623", Kind: IntKind(1, 65535)},
		{Name: "x.on", Default: "no", Kind: BoolKind},
		{Name: "x.net", Kind: BridgeMACKind},
	}
	for _, tc := range []struct {
		key, value string
		want       any // nil: refused both ways
	}{
		{"timeout", "30", 30 * time.Second},
		{"timeout", "30s", 30 * time.Second},
		{"timeout", "25h", nil},
		{"timeout", "30x", nil},
		{"x.port", "7", 7},
		{"x.port", "0", nil},
		{"x.on", "yes", true},
		{"x.on", "perhaps", nil},
		{"x.net", "sw0:02:00:5e:10:20:30", BridgeMAC{"sw0", net.HardwareAddr{2, 0, 0x5e, 0x10, 0x20, 0x30}}},
		{"x.net", "sw0:02:00:5e", nil},
	} {
		var spec KeySpec
		for _, k := range keys {
			if k.Name == tc.key {
				spec = k
			}
		}
		werr := spec.Check(tc.value)
		v := ReadConfig(mapConfig{tc.key: tc.value}, keys)
		got := v.value(tc.key)
		rerr := v.Err()
		if tc.want == nil {
			if werr == nil || rerr == nil {
				t.Errorf("%s = %q: written: %v, read: %v; want both refused", tc.key, tc.value, werr, rerr)
				continue
			}
			if werr.Error() != rerr.Error() || !strings.HasPrefix(werr.Error(), tc.key+": ") {
				t.Errorf("%s = %q: written %q, read %q: want the same reason naming the key", tc.key, tc.value, werr, rerr)
			}
			if !errors.Is(werr, syscall.EINVAL) || ErrnoOf(rerr) != syscall.EINVAL {
				t.Errorf("%s = %q: %v, %v: want EINVAL both ways", tc.key, tc.value, werr, rerr)
			}
			continue
		}
		if werr != nil || rerr != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s = %q: written: %v, read: %#v, %v; want accepted as %#v", tc.key, tc.value, werr, got, rerr, tc.want)
		}
	}
}

// TestValuesDefaults: an unset key reads as its spec's Default; a
// malformed one reads as the default too and Err says why; a key without
// a default reads as the zero value.
func TestValuesDefaults(t *testing.T) {
	keys := []KeySpec{
		{Name: "d", Default: "2m", Kind: DurationKind(time.Millisecond, time.Hour)},
		{Name: "n", Default: "24", Kind: IntKind(1, 100)},
		{Name: "b", Default: "yes", Kind: BoolKind},
		{Name: "s", Default: "/run/x", Kind: PathKind},
		{Name: "m", Kind: MACKind},
		{Name: "free"},
	}
	v := ReadConfig(mapConfig{"free": "hello world"}, keys)
	if v.Duration("d") != 2*time.Minute || v.Int("n") != 24 || !v.Bool("b") || v.String("s") != "/run/x" || v.MAC("m") != nil || v.String("free") != "hello world" {
		t.Errorf("defaults: %v %v %v %q %v %q", v.Duration("d"), v.Int("n"), v.Bool("b"), v.String("s"), v.MAC("m"), v.String("free"))
	}
	if v.Err() != nil || v.IsSet("d") || !v.IsSet("free") {
		t.Errorf("err %v, set d %v free %v", v.Err(), v.IsSet("d"), v.IsSet("free"))
	}
	v = ReadConfig(nil, keys)
	if v.Duration("d") != 2*time.Minute || v.Err() != nil {
		t.Errorf("nil config: %v %v", v.Duration("d"), v.Err())
	}
	v = ReadConfig(mapConfig{"d": "forever"}, keys)
	if d := v.Duration("d"); d != 2*time.Minute || v.Err() == nil || !strings.Contains(v.Err().Error(), `d: "forever"`) {
		t.Errorf("malformed: %v, %v; want the default and an error", d, v.Err())
	}
	v = ReadConfig(mapConfig{}, keys)
	if v.Int("d"); v.Err() == nil {
		t.Error("reading a duration as an int: no error")
	}
	v = ReadConfig(mapConfig{}, keys)
	if v.String("nope"); v.Err() == nil {
		t.Error("reading an undeclared key: no error")
	}
}

// TestCustomKind: a driver's own syntax has one parser too, and Check
// names the key.
func TestCustomKind(t *testing.T) {
	type probe struct{ host, port string }
	k := KeySpec{Name: "probe", Kind: CustomKind("tcp:HOST:PORT", func(v string) (probe, error) {
		rest, ok := strings.CutPrefix(v, "tcp:")
		h, p, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 {
			return probe{}, errors.New("want tcp:HOST:PORT")
		}
		return probe{h, p}, nil
	})}
	if err := k.Check("udp:x"); err == nil || err.Error() != "probe: want tcp:HOST:PORT" {
		t.Errorf("Check: %v", err)
	}
	v := ReadConfig(mapConfig{"probe": "tcp:lab01:22"}, []KeySpec{k})
	if p := Value[probe](v, "probe"); p != (probe{"lab01", "22"}) || v.Err() != nil {
		t.Errorf("read %v, %v", p, v.Err())
	}
	if k.Type() != "tcp:HOST:PORT" || (KeySpec{}).Type() != "text" {
		t.Errorf("Type %q %q", k.Type(), (KeySpec{}).Type())
	}
}

func TestKindStrings(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		want string
	}{
		{DurationKind(time.Millisecond, 24*time.Hour), "duration 1ms-24h"},
		{DurationKind(0, time.Hour), "duration 0s-1h"},
		{DurationKind(90*time.Second, 10*time.Minute), "duration 1m30s-10m"},
		{IntKind(1, 65535), "number 1-65535"},
		{EnumKind("on", "off"), "one of on, off"},
	} {
		if tc.kind.String() != tc.want {
			t.Errorf("%q, want %q", tc.kind.String(), tc.want)
		}
	}
}

func TestCheckInterfaceName(t *testing.T) {
	for _, ok := range []string{"sw0", "br-lab.1", "a_b", "abcdefghijklmno"} {
		if err := CheckInterfaceName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for name, want := range map[string]syscall.Errno{"": syscall.EINVAL, ".": syscall.EINVAL, "..": syscall.EINVAL, "a/b": syscall.EINVAL, "a:b": syscall.EINVAL, "a b": syscall.EINVAL, "a%d": syscall.EINVAL, "abcdefghijklmnop": syscall.ENAMETOOLONG} {
		if err := CheckInterfaceName(name); ErrnoOf(err) != want {
			t.Errorf("%q: %v, want %v", name, err, want)
		}
	}
}

// TestTimeoutModifier: the timeout= modifier reads durations as keys do.
func TestTimeoutModifier(t *testing.T) {
	for in, want := range map[string]time.Duration{"30": 30 * time.Second, "30s": 30 * time.Second, "4m": 4 * time.Minute} {
		c, err := ParseCommand("on wait timeout=" + in)
		if err != nil || c.Timeout != want {
			t.Errorf("timeout=%s: %v, %v", in, c.Timeout, err)
		}
	}
}

// A secret's reason never carries its value, even when its kind's error
// would quote it.
func TestSecretReasonHidesValue(t *testing.T) {
	quoting := CheckedKind("a secret", func(v string) error { return fmt.Errorf("%q is no good", v) })
	k := KeySpec{Name: "x.password", Kind: quoting, Secret: true}
	err := k.Check("hunter2")
	if ErrnoOf(err) != syscall.EINVAL || strings.Contains(err.Error(), "hunter2") || !strings.HasPrefix(err.Error(), "x.password: ") {
		t.Fatalf("secret check: %v", err)
	}
	open := KeySpec{Name: "x.label", Kind: quoting}
	if err := open.Check("hunter2"); !strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a key that is not secret may quote its value: %v", err)
	}
}
