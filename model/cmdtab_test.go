package model_test

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// Every ctl-like file parses its lines with its command table: the same
// errnos for the same kinds of mistakes, and the usage in the reason.
func TestCtlTable(t *testing.T) {
	tree := newTree(t)
	addSim(t, tree, "web1")
	root := model.Caller{}
	for _, c := range []struct {
		text   string
		errno  syscall.Errno
		reason string
	}{
		{"launch web2", syscall.EINVAL, `unknown command "launch" (add, remove)`},
		{"add", syscall.EINVAL, "usage: add NAME [KEY=VALUE ...]"},
		{"add web2 colour", syscall.EINVAL, `"colour" is not KEY=VALUE`},
		{"add web2 colour=blue", syscall.EINVAL, "colour"},
		{"remove", syscall.EINVAL, "usage: remove NAME"},
		{"remove web1 web2", syscall.EINVAL, "usage: remove NAME"},
		{"add web1", syscall.EEXIST, "exists"},
		{"remove nosuch", syscall.ENOENT, "no host"},
		// A bad line anywhere in a write changes nothing.
		{"add web2 drivers=sim\nexplode", syscall.EINVAL, `unknown command "explode"`},
		{"add web2 drivers=sim\nadd web2", syscall.EINVAL, "appears twice"},
		{"\n  \nADD web3 drivers=sim label=x=y\n", 0, ""},
		{"Remove web3", 0, ""},
	} {
		err := tree.Ctl(context.Background(), c.text, root)
		if machine.ErrnoOf(err) != c.errno || (err != nil && !strings.Contains(err.Error(), c.reason)) {
			t.Errorf("ctl %q: %v (%v), want %v %q", c.text, err, machine.ErrnoOf(err), c.errno, c.reason)
		}
	}
	if tree.Host("hosts/web2") != nil || tree.Host("hosts/web3") != nil {
		t.Error("a refused ctl write added a host, or remove did not remove it")
	}
}

// The console checks a line against the driver's table before the driver
// sees it; Raw commands get the rest of the line as typed.
func TestConsoleTable(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "c")
	ctx := context.Background()
	for _, c := range []struct{ line, want string }{
		{"flip", "ERR usage: flip on|off [quiet]\n"},
		{"flip on quiet now", "ERR usage: flip on|off [quiet]\n"},
		{"flip sideways", "ERR flip on|off [quiet]\n"}, // the driver checks the words
		{"log", "ERR usage: log TEXT\n"},
		{"halt now", "ERR usage: halt\n"},
		{"version 2", "ERR usage: version\n"},
		{"nosuch", "ERR unknown command \"nosuch\" (try help)\n"},
		{"  VERSION  ", "OK machinefs sim 1 (simulated machine)\n"},
		{"log  two  spaces\tand a tab ", "OK \n"},
	} {
		if got := h.Console(ctx, c.line, model.Caller{}); got != c.want {
			t.Errorf("console %q: %q, want %q", c.line, got, c.want)
		}
	}
	if ev := string(h.Log().Bytes()); !strings.Contains(ev, "log two  spaces\tand a tab") {
		t.Errorf("log TEXT did not keep its spaces:\n%s", ev)
	}
	help := h.Console(ctx, "help", model.Caller{})
	for _, want := range []string{"OK commands:\n", "  help ", "  flip on|off [quiet]  change power", "  log TEXT ", "(sim)\n"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
}

// A switch's ctl and vswitch/ctl refuse a bad line with EINVAL before they
// look for the switch manager; a good line on a host that is not local
// gets ENOTSUP.
func TestSwitchCtlTables(t *testing.T) {
	tree := newTree(t)
	h := addSim(t, tree, "notlocal")
	ctx := context.Background()
	for _, c := range []struct {
		line  string
		errno syscall.Errno
	}{
		{"", 0},
		{"explode", syscall.EINVAL},
		{"add", syscall.EINVAL},
		{"add bridge", syscall.EINVAL},
		{"ADD tap", syscall.EINVAL},
		{"add tap colour=blue", syscall.EINVAL},
		{"add tap owner", syscall.EINVAL},
		{"add tap owner=no-such-user-mf", syscall.ENOTSUP}, // names are the driver's to resolve: no switches here
		{"add tap owner=0 group=0", syscall.ENOTSUP},
		{"remove", syscall.EINVAL},
		{"remove p1 p2", syscall.EINVAL},
		{"remove p1", syscall.ENOTSUP},
		{"check now", syscall.EINVAL},
		{"check", syscall.ENOTSUP},
	} {
		if err := h.SwitchCtl(ctx, "sw0", c.line, model.Caller{}); machine.ErrnoOf(err) != c.errno {
			t.Errorf("vswitch/sw0/ctl %q: %v, want %v", c.line, err, c.errno)
		}
	}
	for _, c := range []struct {
		line  string
		errno syscall.Errno
	}{
		{" ", 0},
		{"cancel", syscall.EINVAL},
		{"explode", syscall.EINVAL},
		{"cancel sw1 sw2", syscall.ENOTSUP},
	} {
		if err := h.SwitchesCtl(ctx, c.line, model.Caller{}); machine.ErrnoOf(err) != c.errno {
			t.Errorf("vswitch/ctl %q: %v, want %v", c.line, err, c.errno)
		}
	}
}
