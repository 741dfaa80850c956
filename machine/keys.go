package machine

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// KeySpec describes one config key: its name, its kind (the one parser
// of its values) and its default.
//
// The model checks a value with Check when it is written (EINVAL with the
// reason), and a driver reads it through Values, which parses with the
// same kind: a value accepted when written is read back the same way.
type KeySpec struct {
	Name string
	// Doc says what the key means. Kind.String and Default add the type,
	// its bounds and the default in the documentation.
	Doc string
	// Kind parses the key's values; nil is free text (StringKind).
	Kind Kind
	// Default is the value an unset key has: documentation shows it, and
	// Values parses it with Kind when the key is not set. Empty: no
	// default (the accessor returns the zero value; Values.IsSet tells).
	Default string
	// Secret keys read back as "<set>" and are never logged. Their kind
	// must not repeat the value in its errors.
	Secret bool
	// Destination, for a secret, lists the keys that say where it is sent
	// (address, port, interface, authentication type). An operator who
	// changes one of them without writing the secret again clears it, so
	// a stored password never follows an edit to another machine.
	Destination []string
	// Privileged keys choose a program, a root file system, a host path,
	// a device or a directory the daemon writes in: only root or the
	// admin group may change them (EACCES for operators).
	Privileged bool
}

// Parse parses value with the key's kind. The error is EINVAL and starts
// with the key's name; its text is the reason the user sees.
func (k KeySpec) Parse(value string) (any, error) {
	kind := k.Kind
	if kind == nil {
		kind = StringKind
	}
	v, err := kind.Parse(value)
	if err != nil {
		// A secret's reason goes to events and state: whatever its
		// kind says, the value itself never does.
		if k.Secret && value != "" && strings.Contains(err.Error(), strings.TrimSpace(value)) {
			return nil, Errorf(syscall.EINVAL, "%s: not a valid value (want %s)", k.Name, kind.String())
		}
		if strings.HasPrefix(err.Error(), k.Name) {
			return nil, Errorf(syscall.EINVAL, "%v", err)
		}
		return nil, Errorf(syscall.EINVAL, "%s: %v", k.Name, err)
	}
	return v, nil
}

// Check validates a value as it is written: Parse without the result.
func (k KeySpec) Check(value string) error {
	_, err := k.Parse(value)
	return err
}

// Type says in words which values the key takes ("duration 10ms-1m0s").
func (k KeySpec) Type() string {
	if k.Kind == nil {
		return StringKind.String()
	}
	return k.Kind.String()
}

// Config is a read-only snapshot of one host's configuration as written.
// Drivers read it through Values, never by parsing Get's text themselves.
type Config interface {
	// Get returns the value of key as written and whether it is set.
	Get(key string) (string, bool)
}

// Kind is the type of a config key's values: one parser for the check when
// a value is written and for the value a driver reads. The kinds below cover
// durations, numbers, words, paths, MACs, cables and booleans; a driver
// with a syntax of its own (wol's probe = tcp:HOST:PORT) makes one with
// CustomKind.
type Kind interface {
	// Parse checks a value and returns what drivers receive. Its error
	// says what is wanted ("want ..."); KeySpec adds the key's name.
	Parse(value string) (any, error)
	// String names the kind and its bounds for documentation, e.g.
	// "duration 10ms-1m0s", "number 1-65535", "one of lan, lanplus".
	String() string
}

// CustomKind is a kind with a parser of its own; desc is its String.
func CustomKind[T any](desc string, parse func(string) (T, error)) Kind {
	return customKind[T]{desc, parse}
}

type customKind[T any] struct {
	desc  string
	parse func(string) (T, error)
}

func (c customKind[T]) Parse(v string) (any, error) { return c.parse(v) }
func (c customKind[T]) String() string              { return c.desc }

// CheckedKind is free text that check accepts; desc is its String.
func CheckedKind(desc string, check func(string) error) Kind {
	return CustomKind(desc, func(v string) (string, error) { return v, check(v) })
}

// StringKind is free text: every value, the empty one included.
var StringKind Kind = CustomKind("text", func(v string) (string, error) { return v, nil })

// ParseDuration is the one duration syntax of machinefs, for config keys
// and the timeout= modifier alike: a Go duration ("500ms", "10s", "1m30s",
// "2h") or a bare whole number of seconds ("30" is 30s), as shell tools
// read it. Spaces around the value are not part of it.
func ParseDuration(v string) (time.Duration, error) {
	s := strings.TrimSpace(v)
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want a duration such as 30s, 500ms or 2m (a bare number is seconds)", v)
	}
	return d, nil
}

// DurationKind is a duration (ParseDuration) from lo to hi inclusive;
// drivers receive a time.Duration.
func DurationKind(lo, hi time.Duration) Kind { return durationKind{lo, hi} }

type durationKind struct{ lo, hi time.Duration }

func (k durationKind) Parse(v string) (any, error) {
	d, err := ParseDuration(v)
	if err != nil || d < k.lo || d > k.hi {
		return nil, fmt.Errorf("%q: want a duration from %s to %s (e.g. 30s, 500ms, 2m; a bare number is seconds)", v, shortDuration(k.lo), shortDuration(k.hi))
	}
	return d, nil
}

func (k durationKind) String() string {
	return "duration " + shortDuration(k.lo) + "-" + shortDuration(k.hi)
}

// shortDuration writes a bound as people write it: 1h, not 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// IntKind is a whole number from lo to hi inclusive; drivers receive an int.
func IntKind(lo, hi int) Kind { return intKind{lo, hi} }

type intKind struct{ lo, hi int }

func (k intKind) Parse(v string) (any, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < k.lo || n > k.hi {
		return nil, fmt.Errorf("%q: want a number %d-%d", v, k.lo, k.hi)
	}
	return n, nil
}

func (k intKind) String() string { return fmt.Sprintf("number %d-%d", k.lo, k.hi) }

// EnumKind is one of words, exactly as listed; drivers receive the word.
func EnumKind(words ...string) Kind { return enumKind(words) }

type enumKind []string

func (k enumKind) Parse(v string) (any, error) {
	if !slices.Contains(k, v) {
		return nil, fmt.Errorf("%q: want one of %s", v, strings.Join(k, ", "))
	}
	return v, nil
}

func (k enumKind) String() string { return "one of " + strings.Join(k, ", ") }

// ParseBool reads yes/no, true/false, on/off and 1/0, in any case.
func ParseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "yes", "true", "on", "1":
		return true, nil
	case "no", "false", "off", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q: want yes or no (or true/false, on/off, 1/0)", v)
}

// BoolKind is ParseBool's yes or no; drivers receive a bool.
var BoolKind Kind = CustomKind("yes or no", ParseBool)

// PathKind is an absolute path, as written; drivers receive a string.
var PathKind Kind = CustomKind("absolute path", func(v string) (string, error) {
	if !filepath.IsAbs(v) {
		return "", fmt.Errorf("%q: want an absolute path", v)
	}
	return v, nil
})

// ParseMAC reads a machine's Ethernet address: EUI-48 in any form
// net.ParseMAC accepts ("02:00:5e:10:20:30", "02-00-...", "0200.5e10.2030"),
// unicast (a machine's address; a multicast one cannot be woken, cabled or
// given to a guest).
func ParseMAC(v string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(strings.TrimSpace(v))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%q: not a MAC address (want six hex pairs like 02:00:5e:10:20:30)", v)
	case len(mac) != 6:
		return nil, fmt.Errorf("%q: %d bytes; want a 6-byte (EUI-48) address", v, len(mac))
	case mac[0]&1 != 0:
		return nil, fmt.Errorf("%q is a multicast address: want a machine's (unicast, first byte even)", v)
	}
	return mac, nil
}

// MACKind is ParseMAC's address; drivers receive a net.HardwareAddr.
var MACKind Kind = CustomKind("MAC address", ParseMAC)

// CheckInterfaceName applies the kernel's rules for a network interface
// name (dev_valid_name): 1-15 bytes, not "." or "..", no '/', ':', '%' or
// white space. Too long is ENAMETOOLONG, anything else EINVAL.
func CheckInterfaceName(name string) error {
	const want = "want 1-15 bytes, no '/', ':', '%' or spaces"
	switch {
	case len(name) > 15:
		return Errorf(syscall.ENAMETOOLONG, "%q is not an interface name: %s", name, want)
	case name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\r\v\f%"):
		return Errorf(syscall.EINVAL, "%q is not an interface name: %s", name, want)
	}
	return nil
}

// BridgeMAC is one network cable: a NIC with address MAC plugged into the
// Linux bridge (a vswitch) Bridge.
type BridgeMAC struct {
	Bridge string
	MAC    net.HardwareAddr
}

func (c BridgeMAC) String() string { return c.Bridge + ":" + c.MAC.String() }

// ParseBridgeMAC reads BRIDGE:MAC ("sw0:06:a7:dd:b4:02:f2"): an interface
// name (CheckInterfaceName) and a ParseMAC address.
func ParseBridgeMAC(v string) (BridgeMAC, error) {
	br, mac, ok := strings.Cut(strings.TrimSpace(v), ":")
	if !ok {
		return BridgeMAC{}, fmt.Errorf("%q: want BRIDGE:MAC (e.g. sw0:06:a7:dd:b4:02:f2)", v)
	}
	if err := CheckInterfaceName(br); err != nil {
		return BridgeMAC{}, fmt.Errorf("%q: bridge %w", v, err)
	}
	hw, err := ParseMAC(mac)
	if err != nil {
		return BridgeMAC{}, fmt.Errorf("%q: MAC %w", v, err)
	}
	return BridgeMAC{Bridge: br, MAC: hw}, nil
}

// BridgeMACKind is one ParseBridgeMAC cable; drivers receive a BridgeMAC.
var BridgeMACKind Kind = CustomKind("BRIDGE:MAC", ParseBridgeMAC)

// BridgeMACListKind is cables separated by spaces, possibly none; drivers
// receive a []BridgeMAC.
var BridgeMACListKind Kind = CustomKind("BRIDGE:MAC ...", func(v string) ([]BridgeMAC, error) {
	var cs []BridgeMAC
	for _, f := range strings.Fields(v) {
		c, err := ParseBridgeMAC(f)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, nil
})

// Values reads one host's configuration through key specs (a driver's
// DriverSpec.Keys, or the model's core keys). Each accessor parses the
// key's value with its spec's kind, the same parser that checked it when
// it was written, and an unset key has the spec's Default. A value that
// does not parse (a file edited by hand) makes the accessor return the
// default, and Err reports it, so a driver builds from
//
//	v := machine.ReadConfig(env.Config, Spec.Keys)
//	c := config{timeout: v.Duration("ipmi.timeout"), port: v.Int("ipmi.port")}
//	if err := v.Err(); err != nil {
//		return nil, err
//	}
//
// An accessor for a key the specs do not declare, or of the wrong type
// for the key's kind, is a programming error that Err reports too.
type Values struct {
	cfg  Config
	keys []KeySpec
	err  error
}

// ReadConfig reads cfg (nil: every key unset) through keys.
func ReadConfig(cfg Config, keys []KeySpec) *Values { return &Values{cfg: cfg, keys: keys} }

// Err is the first error an accessor met: EINVAL with the key's name and
// the reason, as a write of that value would have been refused.
func (v *Values) Err() error { return v.err }

func (v *Values) fail(err error) {
	if v.err == nil {
		v.err = err
	}
}

// IsSet reports whether key is set in the config.
func (v *Values) IsSet(key string) bool {
	if v.cfg == nil {
		return false
	}
	_, ok := v.cfg.Get(key)
	return ok
}

func (v *Values) spec(key string) (KeySpec, bool) {
	for _, k := range v.keys {
		if k.Name == key {
			return k, true
		}
	}
	return KeySpec{}, false
}

// value returns key's parsed value, its parsed default, or nil when the
// key is unset without a default.
func (v *Values) value(key string) any {
	k, ok := v.spec(key)
	if !ok {
		v.fail(fmt.Errorf("config key %q is not declared in the key specs", key))
		return nil
	}
	var def any
	if k.Default != "" {
		var err error
		if def, err = k.Parse(k.Default); err != nil {
			v.fail(fmt.Errorf("default of %w", err))
			def = nil
		}
	}
	if v.cfg == nil {
		return def
	}
	text, ok := v.cfg.Get(key)
	if !ok {
		return def
	}
	x, err := k.Parse(text)
	if err != nil {
		v.fail(err)
		return def
	}
	return x
}

// Value returns key's parsed value as T (the type its kind returns: a
// CustomKind's parse result), or T's zero value when the key is unset
// without a default.
func Value[T any](v *Values, key string) T {
	var zero T
	x := v.value(key)
	if x == nil {
		return zero
	}
	t, ok := x.(T)
	if !ok {
		v.fail(fmt.Errorf("config key %q holds a %T, read as a %T", key, x, zero))
		return zero
	}
	return t
}

// Duration reads a DurationKind key.
func (v *Values) Duration(key string) time.Duration { return Value[time.Duration](v, key) }

// Int reads an IntKind key.
func (v *Values) Int(key string) int { return Value[int](v, key) }

// Bool reads a BoolKind key.
func (v *Values) Bool(key string) bool { return Value[bool](v, key) }

// String reads a text, EnumKind, PathKind or CheckedKind key.
func (v *Values) String(key string) string { return Value[string](v, key) }

// MAC reads a MACKind key.
func (v *Values) MAC(key string) net.HardwareAddr { return Value[net.HardwareAddr](v, key) }

// BridgeMAC reads a BridgeMACKind key.
func (v *Values) BridgeMAC(key string) BridgeMAC { return Value[BridgeMAC](v, key) }

// BridgeMACs reads a BridgeMACListKind key.
func (v *Values) BridgeMACs(key string) []BridgeMAC { return Value[[]BridgeMAC](v, key) }
