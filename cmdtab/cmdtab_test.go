package cmdtab_test

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// The tables of the files that use the package, in small: ctl (folded
// case, any option key), a switch's ctl (a two-word command with fixed
// options), vswitch/ctl (unbounded), and console entries (raw).
var (
	ctl = cmdtab.Table{File: "ctl", Fold: true, Cmds: []cmdtab.Cmd{
		{Name: "add", Args: "NAME [KEY=VALUE ...]", Min: 1, Max: 1, Opts: []string{cmdtab.AnyKey}, Help: "add a host"},
		{Name: "remove", Args: "NAME", Min: 1, Max: 1, Help: "remove a host"},
	}}
	sw = cmdtab.Table{File: "vswitch ctl", Cmds: []cmdtab.Cmd{
		{Name: "add tap", Args: "[owner=USER] [group=GROUP]", Opts: []string{"owner", "group"}},
		{Name: "remove", Args: "PORT", Min: 1, Max: 1},
		{Name: "check"},
	}}
	switches = cmdtab.Table{File: "vswitch ctl", Cmds: []cmdtab.Cmd{
		{Name: "cancel", Args: "NAME [NAME ...]", Min: 1, Max: cmdtab.Many},
	}}
	console = cmdtab.Table{File: "console", Cmds: []cmdtab.Cmd{
		{Name: "log", Args: "TEXT", Min: 1, Max: 1, Raw: true},
		{Name: "config", Args: "DEV=CONFIG | DEV", Max: 1, Raw: true},
		{Name: "flip", Args: "on|off [quiet]", Min: 1, Max: 2},
		{Name: "version"},
	}}
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		tab  *cmdtab.Table
		line string
		cmd  string // "" for a blank line
		args []string
		opts []cmdtab.Opt
	}{
		{&ctl, "", "", nil, nil},
		{&ctl, "  \t ", "", nil, nil},
		{&ctl, "add web1", "add", []string{"web1"}, nil},
		{&ctl, "ADD web1", "add", []string{"web1"}, nil},
		{&ctl, "  add\tweb1   drivers=sim  label=x=y \n", "add", []string{"web1"},
			[]cmdtab.Opt{{Key: "drivers", Value: "sim"}, {Key: "label", Value: "x=y"}}},
		// The first argument is positional even with '=': the caller
		// refuses it as a name.
		{&ctl, "add a=b", "add", []string{"a=b"}, nil},
		{&ctl, "remove web1", "remove", []string{"web1"}, nil},
		{&sw, "add tap", "add tap", []string{}, nil},
		{&sw, "add  tap owner=alice group=kvm owner=bob", "add tap", []string{},
			[]cmdtab.Opt{{Key: "owner", Value: "alice"}, {Key: "group", Value: "kvm"}, {Key: "owner", Value: "bob"}}},
		{&sw, "remove sw0t0", "remove", []string{"sw0t0"}, nil},
		{&sw, "check", "check", []string{}, nil},
		{&switches, "cancel a b c", "cancel", []string{"a", "b", "c"}, nil},
		{&switches, "cancel a=b", "cancel", []string{"a=b"}, nil},
		// Raw: the rest of the line as written, one argument.
		{&console, "log  two  spaces  and a\ttab  ", "log", []string{"two  spaces  and a\ttab"}, nil},
		{&console, "config", "config", nil, nil},
		{&console, "config ubd3=/img", "config", []string{"ubd3=/img"}, nil},
		{&console, "flip off quiet", "flip", []string{"off", "quiet"}, nil},
		{&console, "version", "version", []string{}, nil},
	} {
		l, err := c.tab.Parse(c.line)
		if err != nil {
			t.Errorf("%s %q: %v", c.tab.File, c.line, err)
			continue
		}
		if c.cmd == "" {
			if l != nil {
				t.Errorf("%s %q: %+v, want nothing", c.tab.File, c.line, l)
			}
			continue
		}
		if l == nil || l.Cmd.Name != c.cmd || !slices.Equal(l.Args, c.args) || !slices.Equal(l.Opts, c.opts) {
			t.Errorf("%s %q: %+v, want %s %q %v", c.tab.File, c.line, l, c.cmd, c.args, c.opts)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		tab  *cmdtab.Table
		line string
		want string // the whole reason
	}{
		{&ctl, "launch web2", `ctl: unknown command "launch" (add, remove)`},
		{&ctl, "launch", `ctl: unknown command "launch" (add, remove)`},
		{&ctl, "add", `ctl: usage: add NAME [KEY=VALUE ...]`},
		{&ctl, "add web1 colour", `ctl: "colour" is not KEY=VALUE (usage: add NAME [KEY=VALUE ...])`},
		{&ctl, "add web1 =blue", `ctl: "=blue" is not KEY=VALUE (usage: add NAME [KEY=VALUE ...])`},
		{&ctl, "add web1 colour=", `ctl: "colour=" is not KEY=VALUE (usage: add NAME [KEY=VALUE ...])`},
		{&ctl, "remove", `ctl: usage: remove NAME`},
		{&ctl, "remove a b", `ctl: usage: remove NAME`},
		{&ctl, "remove a b=c", `ctl: usage: remove NAME`},
		// Case matters where the table says so.
		{&sw, "ADD tap", `vswitch ctl: unknown command "ADD" (add, remove, check)`},
		{&sw, "add", `vswitch ctl: usage: add tap [owner=USER] [group=GROUP]`},
		{&sw, "add bridge", `vswitch ctl: usage: add tap [owner=USER] [group=GROUP]`},
		{&sw, "add tap foo", `vswitch ctl: "foo" is not KEY=VALUE (usage: add tap [owner=USER] [group=GROUP])`},
		{&sw, "add tap colour=blue", `vswitch ctl: add tap: unknown option "colour" (owner, group)`},
		{&sw, "check now", `vswitch ctl: usage: check`},
		{&sw, "explode", `vswitch ctl: unknown command "explode" (add, remove, check)`},
		{&switches, "cancel", `vswitch ctl: usage: cancel NAME [NAME ...]`},
		{&console, "log", `console: usage: log TEXT`},
		{&console, "log   ", `console: usage: log TEXT`},
		{&console, "flip", `console: usage: flip on|off [quiet]`},
		{&console, "flip on quiet now", `console: usage: flip on|off [quiet]`},
		{&console, "version 2", `console: usage: version`},
	} {
		l, err := c.tab.Parse(c.line)
		if err == nil {
			t.Errorf("%s %q: %+v, want an error", c.tab.File, c.line, l)
			continue
		}
		if err.Error() != c.want {
			t.Errorf("%s %q: %q, want %q", c.tab.File, c.line, err, c.want)
		}
		// The errno the shell shows, as every machinefs error carries it.
		if machine.ErrnoOf(err) != syscall.EINVAL || !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s %q: errno %v, want EINVAL", c.tab.File, c.line, machine.ErrnoOf(err))
		}
	}
}

func TestLookup(t *testing.T) {
	if c, err := ctl.Lookup("Remove"); err != nil || c.Name != "remove" {
		t.Errorf("Lookup(Remove): %v %v", c, err)
	}
	if _, err := sw.Lookup("explode"); machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), `unknown command "explode"`) {
		t.Errorf("Lookup(explode): %v", err)
	}
}

func TestSplitAndLines(t *testing.T) {
	for _, c := range [][3]string{
		{"", "", ""},
		{"help", "help", ""},
		{"  log \t a  b ", "log", "a  b"},
	} {
		if first, rest := cmdtab.Split(c[0]); first != c[1] || rest != c[2] {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", c[0], first, rest, c[1], c[2])
		}
	}
	if got := slices.Collect(cmdtab.Lines("a\n\n  b c \r\n\t\n# d\n")); !slices.Equal(got, []string{"a", "b c", "# d"}) {
		t.Errorf("Lines: %q", got)
	}
	if !cmdtab.IsComment("# d") || cmdtab.IsComment("d # e") {
		t.Error("IsComment")
	}
}

func TestHelp(t *testing.T) {
	if got, want := ctl.Usage(), "add NAME [KEY=VALUE ...]\nremove NAME\n"; got != want {
		t.Errorf("Usage:\n%s\nwant:\n%s", got, want)
	}
	want := "add NAME [KEY=VALUE ...]  add a host\n" +
		"remove NAME               remove a host\n"
	if got := ctl.Help(); got != want {
		t.Errorf("Help:\n%s\nwant:\n%s", got, want)
	}
	if got := cmdtab.HelpText(sw.Cmds[1:], "  "); got != "  remove PORT\n  check\n" {
		t.Errorf("HelpText without help: %q", got)
	}
}
