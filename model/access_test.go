package model_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"unicode"

	"github.com/machinefs/machinefs/drivers/ipmi"
	"github.com/machinefs/machinefs/drivers/ns"
	"github.com/machinefs/machinefs/drivers/sim"
	"github.com/machinefs/machinefs/drivers/uml"
	"github.com/machinefs/machinefs/drivers/wol"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/store"
)

var (
	root     = model.Caller{Uid: 0, Gid: 0, Pid: 1}
	operator = model.Caller{Uid: 4711, Gid: 4711, Pid: 0}
	admin    = model.Caller{Uid: 4712, Gid: 900, Pid: 0}
)

// accessTree knows every driver's keys (hosts run the simulator, so no
// driver but sim is built) and has admin group 900.
func accessTree(t *testing.T) *model.Tree {
	t.Helper()
	tree := model.NewTree(model.Options{
		Store:         store.NewDir(t.TempDir()),
		Drivers:       []machine.DriverSpec{sim.Spec, ipmi.Spec, wol.Spec, ns.Spec, uml.Spec},
		AdminGid:      900,
		HasAdminGroup: true,
	})
	t.Cleanup(tree.Close)
	return tree
}

func TestPrivilegedKeys(t *testing.T) {
	tree := accessTree(t)
	ctx := context.Background()
	h, err := tree.Add(ctx, nil, "a", nil, operator)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"uml.kernel = /bin/sh",
		"ns.root = /",
		"ns.base = /",
		"ns.disks = vda:0:/dev/sda",
		"uml.root = hostfs:/",
		"ns.state-dir = /etc",
		"uml.dir = /etc",
		"ns.cgroup = system",
		"ns.bridges = br0:02:00:00:00:00:01",
		"wol.interface = lo",
		"allow-self = yes",
		"local = yes",
	} {
		err := h.SetConfig(ctx, "label = x\n"+line+"\n", operator)
		if machine.ErrnoOf(err) != syscall.EACCES || !strings.Contains(err.Error(), "privileged") {
			t.Errorf("operator wrote %q: %v, want EACCES privileged", line, err)
		}
	}
	if v, ok := h.Config().Get("label"); ok {
		t.Fatalf("a refused write applied label = %q", v)
	}
	// Operators keep everything else.
	if err := h.SetConfig(ctx, "label = rack 3\ntimeout = 5s\nwait-timeout = 1m\ndrivers = sim\n", operator); err != nil {
		t.Fatalf("operator keys: %v", err)
	}
	// Root and the admin group may; writing the same value back is no
	// change, so an operator's tool that rewrites the file works.
	if err := h.SetConfig(ctx, "ns.root = /srv/a\n", root); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConfig(ctx, "uml.kernel = /usr/bin/linux\n", admin); err != nil {
		t.Fatalf("admin group member: %v", err)
	}
	if err := h.SetConfig(ctx, "ns.root = /srv/a\nlabel = again\n", operator); err != nil {
		t.Fatalf("unchanged privileged value: %v", err)
	}
	if err := h.SetConfig(ctx, "ns.root =\n", operator); machine.ErrnoOf(err) != syscall.EACCES {
		t.Fatalf("operator removed ns.root: %v", err)
	}
	// Through ctl and mkdir alike.
	if _, err := tree.Add(ctx, nil, "b", configOf("ns.root", "/"), operator); machine.ErrnoOf(err) != syscall.EACCES {
		t.Fatalf("operator added a host with ns.root: %v", err)
	}
	if err := tree.Ctl(ctx, "add c uml.kernel=/bin/sh\n", operator); machine.ErrnoOf(err) != syscall.EACCES {
		t.Fatalf("ctl add with uml.kernel: %v", err)
	}
	if tree.Host("hosts/b") != nil || tree.Host("hosts/c") != nil {
		t.Fatal("a refused add created a host")
	}
}

func configOf(kv ...string) *model.ConfigFile {
	cf := &model.ConfigFile{}
	for i := 0; i+1 < len(kv); i += 2 {
		cf.Set(kv[i], kv[i+1])
	}
	return cf
}

// A stored password never follows an operator's edit of where it goes.
func TestSecretBoundToDestination(t *testing.T) {
	tree := accessTree(t)
	ctx := context.Background()
	h, err := tree.Add(ctx, nil, "bmc", configOf("ipmi.address", "10.0.0.5", "ipmi.password", "s3cret", "mac", "02:00:00:00:00:01", "wol.password", "01:02:03:04"), root)
	if err != nil {
		t.Fatal(err)
	}
	sub := tree.Subscribe("hosts/bmc")
	defer sub.Close()
	// Not a destination: the secret stays.
	if err := h.SetConfig(ctx, "ipmi.user = admin\n", operator); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Config().Get("ipmi.password"); !ok {
		t.Fatal("ipmi.user change cleared the password")
	}
	for _, dest := range []string{"ipmi.address = 10.6.6.6", "ipmi.port = 6623", "ipmi.interface = lan", "ipmi.cipher = 17"} {
		if err := h.SetConfig(ctx, "ipmi.password = s3cret\n", root); err != nil {
			t.Fatal(err)
		}
		if err := h.SetConfig(ctx, dest+"\n", operator); err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		if _, ok := h.Config().Get("ipmi.password"); ok {
			t.Fatalf("operator's %q kept the stored password", dest)
		}
	}
	if _, ok := h.Config().Get("wol.password"); !ok {
		t.Fatal("an IPMI destination change cleared the WoL password")
	}
	if err := h.SetConfig(ctx, "wol.port = 7\n", operator); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Config().Get("wol.password"); ok {
		t.Fatal("wol.port change kept the SecureOn password")
	}
	// An operator who writes the password along with the address knows it.
	if err := h.SetConfig(ctx, "ipmi.address = 10.0.0.9\nipmi.password = mine\n", operator); err != nil {
		t.Fatal(err)
	}
	if v, _ := h.Config().Get("ipmi.password"); v != "mine" {
		t.Fatalf("password written with the address: %q", v)
	}
	// An admin moves the BMC and keeps the password.
	if err := h.SetConfig(ctx, "ipmi.address = 10.0.0.10\n", admin); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Config().Get("ipmi.password"); !ok {
		t.Fatal("an admin's address change cleared the password")
	}
	found := false
	for len(sub.C) > 0 {
		ev := <-sub.C
		if strings.Contains(ev.Detail, "s3cret") || strings.Contains(ev.Detail, "mine") {
			t.Fatalf("an event shows a secret: %s", ev.Line())
		}
		found = found || strings.Contains(ev.Detail, "cleared ipmi.password")
	}
	if !found {
		t.Fatal("no event says the password was cleared")
	}
}

func TestControlCharactersRefused(t *testing.T) {
	tree := accessTree(t)
	ctx := context.Background()
	h := addSim(t, tree, "a")
	for _, v := range []string{"\x1b[2J", "a\rb", "a\x00b", "bell\x07", "x\u2028y", "\xff"} {
		err := h.SetConfig(ctx, "label = "+v+"\n", root)
		if machine.ErrnoOf(err) != syscall.EINVAL {
			t.Errorf("label %q: %v, want EINVAL", v, err)
		}
	}
	if err := h.SetConfig(ctx, "label = tab\tand ünïcode\n", root); err != nil {
		t.Fatalf("printable label: %v", err)
	}
	if err := tree.Ctl(ctx, "add e label=\x1b[31mred\n", root); machine.ErrnoOf(err) != syscall.EINVAL {
		t.Fatalf("ctl with ESC: %v", err)
	}
}

// A ctl write with a bad line applies nothing.
func TestCtlAllOrNothing(t *testing.T) {
	tree := accessTree(t)
	ctx := context.Background()
	for _, text := range []string{
		"add x1 drivers=sim\nbogus y\n",
		"add x1 drivers=sim\nadd x2 nokey=1\n",
		"add x1 drivers=sim\nremove nosuch\n",
		"add x1 drivers=sim\nadd x1 drivers=sim\n",
		"add x1 drivers=sim\nadd x2 ns.root=/\n",
	} {
		if err := tree.Ctl(ctx, text, operator); err == nil {
			t.Fatalf("%q: no error", text)
		}
		if tree.Host("hosts/x1") != nil {
			t.Fatalf("%q: the good line ran although the write failed", text)
		}
	}
	if err := tree.Ctl(ctx, "add x1 drivers=sim\nadd x2 drivers=sim\n", operator); err != nil {
		t.Fatal(err)
	}
	if tree.Host("hosts/x1") == nil || tree.Host("hosts/x2") == nil {
		t.Fatal("a good two-line write did not add both")
	}
}

func TestEventLineEscaped(t *testing.T) {
	e := model.Event{Path: "hosts/a", Kind: "notify", Detail: "x\n2026-01-01T00:00:00.000000Z hosts/b power off\x1b[2J\r\x00\a\u0085\xfe"}
	line := e.Line()
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Fatalf("not one line: %q", line)
	}
	for _, r := range strings.TrimSuffix(line, "\n") {
		if unicode.IsControl(r) && r != '\t' {
			t.Fatalf("control character %U in %q", r, line)
		}
	}
	if !strings.Contains(line, `\x1b[2J\x0d\x00\x07\u{0085}\xfe`) {
		t.Fatalf("escapes: %q", line)
	}
	long := model.Event{Detail: strings.Repeat("\x01", 100000)}.Line()
	if len(long) > 8192 || !strings.Contains(long, "bytes cut") {
		t.Fatalf("a long detail is %d bytes: %.80q", len(long), long)
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "plain", "a\nb", "\x1b]0;title\a", "\xff\xfe", "ü\u2028", strings.Repeat("x", 5000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := model.Escape(s)
		for _, r := range out {
			if (unicode.IsControl(r) && r != '\t') || r == '\u2028' || r == '\u2029' {
				t.Fatalf("Escape(%q) = %q keeps %U", s, out, r)
			}
		}
		if len(out) > 4096+64 {
			t.Fatalf("Escape of %d bytes gave %d", len(s), len(out))
		}
		if !strings.ContainsFunc(s, func(r rune) bool { return (r < 0x20 && r != '\t') || r >= 0x7f }) && len(s) <= 4096 && out != s {
			t.Fatalf("printable %q changed to %q", s, out)
		}
	})
}

// A switch uplink takes a host interface into a bridge: the privilege is
// checked before the switch is even looked up (this tree has none).
func TestUplinkPrivileged(t *testing.T) {
	tree := accessTree(t)
	h := addSim(t, tree, "a")
	if err := h.SwitchConfig(context.Background(), "sw0", "uplink = eth9\n", operator); machine.ErrnoOf(err) != syscall.EACCES {
		t.Fatalf("operator's uplink: %v, want EACCES", err)
	}
	if err := h.SwitchConfig(context.Background(), "sw0", "uplink = eth9\n", root); machine.ErrnoOf(err) != syscall.ENOTSUP {
		t.Fatalf("root's uplink on a host without switches: %v, want ENOTSUP", err)
	}
}
