package qemu

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
)

// keySpec returns the spec of key, as the model uses it to check a write.
func keySpec(t *testing.T, key string) machine.KeySpec {
	t.Helper()
	for _, k := range keys {
		if k.Name == key {
			return k
		}
	}
	t.Fatalf("no key %s", key)
	return machine.KeySpec{}
}

// badValue is a value the model refuses: EINVAL with this reason, the
// text a user reads in the error and in events.
type badValue struct{ key, value, reason string }

func checkBad(t *testing.T, cases []badValue) {
	t.Helper()
	for _, c := range cases {
		_, err := keySpec(t, c.key).Parse(c.value)
		if machine.ErrnoOf(err) != syscall.EINVAL || err.Error() != c.reason {
			t.Errorf("%s = %q: %v (errno %v), want EINVAL %q", c.key, c.value, err, machine.ErrnoOf(err), c.reason)
		}
	}
}

func TestNetKey(t *testing.T) {
	for _, c := range []struct {
		value, bridge, mac string
		vde                bool
	}{
		{"sw0:02:00:5e:10:20:30", "sw0", "02:00:5e:10:20:30", false},
		{" sw0:02:00:5E:10:20:30 ", "sw0", "02:00:5e:10:20:30", false},
		{"sw0:02-00-5e-10-20-30", "sw0", "02:00:5e:10:20:30", false},
		{"vde:lab:06:a7:dd:b4:02:f2", "lab", "06:a7:dd:b4:02:f2", true},
		{" vde:lab:06:a7:dd:b4:02:f2", "lab", "06:a7:dd:b4:02:f2", true},
		// A Linux bridge may be named vde: seven fields are BRIDGE:MAC,
		// eight vde:SWITCH:MAC.
		{"vde:02:00:5e:10:20:30", "vde", "02:00:5e:10:20:30", false},
		{"vde:vde:02:00:5e:10:20:30", "vde", "02:00:5e:10:20:30", true},
		{"vde:02-00-5e-10-20-30", "vde", "02:00:5e:10:20:30", false},
		{"vde:lab:02-00-5e-10-20-30", "lab", "02:00:5e:10:20:30", true},
	} {
		x, err := keySpec(t, "qemu.net").Parse(c.value)
		if err != nil {
			t.Errorf("qemu.net = %q: %v", c.value, err)
			continue
		}
		n := x.(netSpec)
		if n.bridge != c.bridge || n.mac.String() != c.mac || n.vde != c.vde {
			t.Errorf("qemu.net = %q: %+v, want switch %s MAC %s vde %v", c.value, n, c.bridge, c.mac, c.vde)
		}
		want := c.bridge + ":" + c.mac
		if c.vde {
			want = "vde:" + want
		}
		if n.String() != want {
			t.Errorf("qemu.net = %q reads back as %q, want %q", c.value, n, want)
		}
	}
	checkBad(t, []badValue{
		{"qemu.net", "sw0", `qemu.net: "sw0": want BRIDGE:MAC (e.g. sw0:06:a7:dd:b4:02:f2)`},
		{"qemu.net", "", `qemu.net: "": want BRIDGE:MAC (e.g. sw0:06:a7:dd:b4:02:f2)`},
		{"qemu.net", "vde:lab", `qemu.net: "vde:lab": want vde:SWITCH:MAC (e.g. vde:lab:06:a7:dd:b4:02:f2)`},
		{"qemu.net", "vde:", `qemu.net: "vde:": want vde:SWITCH:MAC (e.g. vde:lab:06:a7:dd:b4:02:f2)`},
		{"qemu.net", "vde:lab:06:a7:dd:b4:02", `qemu.net: VDE switch "lab:06:a7:dd:b4:02": MAC "06:a7:dd:b4:02": not a MAC address (want six hex pairs like 02:00:5e:10:20:30)`},
		{"qemu.net", "sw0:02:00:5e:10:20", `qemu.net: "sw0:02:00:5e:10:20": MAC "02:00:5e:10:20": not a MAC address (want six hex pairs like 02:00:5e:10:20:30)`},
		{"qemu.net", "sw0:03:00:5e:10:20:30", `qemu.net: "sw0:03:00:5e:10:20:30": MAC "03:00:5e:10:20:30" is a multicast address: want a machine's (unicast, first byte even)`},
		{"qemu.net", "sw0:02:00:5e:10:20:30:40:50", `qemu.net: "sw0:02:00:5e:10:20:30:40:50": MAC "02:00:5e:10:20:30:40:50": 8 bytes; want a 6-byte (EUI-48) address`},
		{"qemu.net", "a-very-long-bridge:02:00:5e:10:20:30", `qemu.net: "a-very-long-bridge:02:00:5e:10:20:30": bridge "a-very-long-bridge" is not an interface name: want 1-15 bytes, no '/', ':', '%' or spaces`},
		{"qemu.net", ":02:00:5e:10:20:30", `qemu.net: ":02:00:5e:10:20:30": bridge "" is not an interface name: want 1-15 bytes, no '/', ':', '%' or spaces`},
		{"qemu.net", "vde::02:00:5e:10:20:30", `qemu.net: VDE switch ":02:00:5e:10:20:30": bridge "" is not an interface name: want 1-15 bytes, no '/', ':', '%' or spaces`},
	})
}

func TestDiskKey(t *testing.T) {
	for _, c := range []struct {
		value string
		want  []disk
	}{
		{"/srv/a.img", []disk{{"/srv/a.img", "raw"}}},
		{"/srv/a.qcow2", []disk{{"/srv/a.qcow2", "qcow2"}}},
		// The prefix wins over the name: a raw image called .qcow2 is
		// never read as qcow2 (and the reverse).
		{"raw:/srv/a.qcow2", []disk{{"/srv/a.qcow2", "raw"}}},
		{"qcow2:/srv/a.img", []disk{{"/srv/a.img", "qcow2"}}},
		{"/srv/a.QCOW2", []disk{{"/srv/a.QCOW2", "raw"}}},
		{"  /srv/a.img\tqcow2:/srv/b  /srv/c.qcow2 ", []disk{{"/srv/a.img", "raw"}, {"/srv/b", "qcow2"}, {"/srv/c.qcow2", "qcow2"}}},
		{"/srv/x:y@z+1.img", []disk{{"/srv/x:y@z+1.img", "raw"}}},
		{"", nil},
	} {
		x, err := keySpec(t, "qemu.disk").Parse(c.value)
		if err != nil {
			t.Errorf("qemu.disk = %q: %v", c.value, err)
			continue
		}
		got := x.([]disk)
		if len(got) != len(c.want) {
			t.Errorf("qemu.disk = %q: %v, want %v", c.value, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("qemu.disk = %q: disk%d is %+v, want %+v", c.value, i, got[i], c.want[i])
			}
		}
	}
	seventeen := strings.Repeat("/d.img ", 17)
	checkBad(t, []badValue{
		{"qemu.disk", "a.img", `qemu.disk: "a.img": want an absolute path`},
		{"qemu.disk", "raw:", `qemu.disk: "": want an absolute path`},
		{"qemu.disk", "raw:a.img", `qemu.disk: "a.img": want an absolute path`},
		{"qemu.disk", "vmdk:/srv/a.vmdk", `qemu.disk: "vmdk:/srv/a.vmdk": want an absolute path`},
		{"qemu.disk", "/srv/a.img,format=qcow2", `qemu.disk: "/srv/a.img,format=qcow2": use letters, digits and . _ + - @ : / only (no commas: the path goes into QEMU's options)`},
		{"qemu.disk", "/srv/a.img /srv/b c", `qemu.disk: "c": want an absolute path`},
		{"qemu.disk", seventeen, `qemu.disk: 17 disks: at most 16`},
	})
	if _, err := keySpec(t, "qemu.disk").Parse(strings.Repeat("/d.img ", 16)); err != nil {
		t.Errorf("16 disks: %v", err)
	}
}

func TestMemKey(t *testing.T) {
	for _, c := range []struct {
		value string
		mib   int
	}{
		{"256M", 256}, {"256m", 256}, {" 512M ", 512}, {"1G", 1024}, {"2g", 2048},
		{"16M", 16}, {"1024G", 1 << 20}, {"1048576M", 1 << 20}, {"0016M", 16},
	} {
		x, err := keySpec(t, "qemu.mem").Parse(c.value)
		if err != nil || x.(int) != c.mib {
			t.Errorf("qemu.mem = %q: %v %v, want %d MiB", c.value, x, err, c.mib)
		}
	}
	checkBad(t, []badValue{
		{"qemu.mem", "256", `qemu.mem: "256": want a number and a unit M or G (e.g. 256M)`},
		{"qemu.mem", "256MB", `qemu.mem: "256MB": want a number and a unit M or G (e.g. 256M)`},
		{"qemu.mem", "1.5G", `qemu.mem: "1.5G": want a number and a unit M or G (e.g. 256M)`},
		{"qemu.mem", "-1G", `qemu.mem: "-1G": want a number and a unit M or G (e.g. 256M)`},
		{"qemu.mem", "", `qemu.mem: "": want a number and a unit M or G (e.g. 256M)`},
		{"qemu.mem", "15M", `qemu.mem: "15M": want between 16M and 1024G`},
		{"qemu.mem", "0G", `qemu.mem: "0G": want between 16M and 1024G`},
		{"qemu.mem", "1025G", `qemu.mem: "1025G": want between 16M and 1024G`},
		{"qemu.mem", "1048577M", `qemu.mem: "1048577M": number too large`},
		{"qemu.mem", "99999999999999999999999M", `qemu.mem: "99999999999999999999999M": number too large`},
	})
}

func TestPathKeys(t *testing.T) {
	long := "/" + strings.Repeat("d", 64)
	checkBad(t, []badValue{
		{"qemu.kernel", "vmlinuz", `qemu.kernel: "vmlinuz": want an absolute path`},
		{"qemu.kernel", "/boot/vmlinuz,if=none", `qemu.kernel: "/boot/vmlinuz,if=none": use letters, digits and . _ + - @ : / only (no commas: the path goes into QEMU's options)`},
		{"qemu.initrd", "/boot/initrd img", `qemu.initrd: "/boot/initrd img": use letters, digits and . _ + - @ : / only (no commas: the path goes into QEMU's options)`},
		{"qemu.dir", long, `qemu.dir: "` + long + `" is 65 bytes: keep it at most 64, the sockets inside must fit 107`},
		{"qemu.dir", "run/qemu", `qemu.dir: "run/qemu": want an absolute path`},
		{"qemu.accel", "hvf", `qemu.accel: "hvf": want one of auto, kvm, tcg`},
		{"qemu.cpus", "0", `qemu.cpus: "0": want a number 1-256`},
	})
	if _, err := keySpec(t, "qemu.dir").Parse(long[:64]); err != nil {
		t.Errorf("a 64-byte qemu.dir: %v", err)
	}
}

// TestSettings covers what only the keys together say, and what New
// refuses for the host's name: each is EINVAL or ENAMETOOLONG with the
// reason a user reads.
func TestSettings(t *testing.T) {
	for _, c := range []struct {
		name   string
		path   string
		cfg    config
		errno  syscall.Errno
		reason string
	}{
		{"nothing to boot", "hosts/h/subhosts/q1", config{}, syscall.EINVAL,
			"qemu.kernel or qemu.disk is required: nothing to boot"},
		{"initrd without kernel", "hosts/h/subhosts/q1", config{"qemu.disk": "/srv/a.img", "qemu.initrd": "/boot/initrd"}, syscall.EINVAL,
			"qemu.initrd and qemu.append need qemu.kernel"},
		{"append without kernel", "hosts/h/subhosts/q1", config{"qemu.disk": "/srv/a.img", "qemu.append": "console=ttyS0"}, syscall.EINVAL,
			"qemu.initrd and qemu.append need qemu.kernel"},
		{"bad value among good", "hosts/h/subhosts/q1", config{"qemu.kernel": "/boot/vmlinuz", "qemu.mem": "lots"}, syscall.EINVAL,
			`qemu.mem: "lots": want a number and a unit M or G (e.g. 256M)`},
		{"TAP name", "hosts/h/subhosts/a-very-long-guest", config{"qemu.kernel": "/boot/vmlinuz", "qemu.net": "sw0:02:00:5e:10:20:30"}, syscall.EINVAL,
			`qemu.net: the TAP is named after the host: "a-very-long-guest" is not an interface name: want 1-15 bytes, no '/', ':', '%' or spaces`},
		{"socket path", "hosts/h/subhosts/" + strings.Repeat("g", 90), config{"qemu.kernel": "/boot/vmlinuz", "qemu.dir": "/run/machinefs/qemu"}, syscall.ENAMETOOLONG,
			"socket /run/machinefs/qemu/" + strings.Repeat("g", 90) + "/serial.sock is longer than 107 bytes: shorten qemu.dir"},
	} {
		_, err := New(context.Background(), machine.DriverEnv{Path: c.path, Config: c.cfg, Report: discard{}})
		if machine.ErrnoOf(err) != c.errno || err.Error() != c.reason {
			t.Errorf("%s: %v (errno %v), want %v %q", c.name, err, machine.ErrnoOf(err), c.errno, c.reason)
		}
	}
	s, err := readSettings(config{"qemu.disk": "/srv/a.img"})
	if err != nil {
		t.Fatal(err)
	}
	// The defaults, as the key table documents them.
	if s.memMiB != 256 || s.cpus != 1 || s.accel != "auto" || s.dir != "/run/machinefs/qemu" || s.monitor || s.net != nil || s.binary != "/usr/bin/qemu-system-x86_64" {
		t.Errorf("defaults: %+v", s)
	}
}

type config map[string]string

func (c config) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

type discard struct{}

func (discard) Report(machine.Status)           {}
func (discard) Event(machine.EventKind, string) {}
