package machine

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	cases := []struct {
		line string
		want Command
	}{
		{"on", Command{Verb: "on"}},
		{"  POWEROFF  self  ", Command{Verb: "poweroff", Self: true}},
		{"reboot self force label=tst001", Command{Verb: "reboot", Self: true, Force: true, Label: "tst001"}},
		{"wol wait timeout=4m", Command{Verb: "wol", Wait: true, Timeout: 4 * time.Minute}},
		{"init 3", Command{Verb: "init", InitLevel: 3}},
		{"on wait timeout=90", Command{Verb: "on", Wait: true, Timeout: 90 * time.Second}},
	}
	for _, c := range cases {
		got, err := ParseCommand(c.line)
		if err != nil {
			t.Errorf("%q: %v", c.line, err)
			continue
		}
		c.want.Line = strings.TrimSpace(c.line)
		if got != c.want {
			t.Errorf("%q: got %+v, want %+v", c.line, got, c.want)
		}
	}
}

func TestParseCommandErrors(t *testing.T) {
	for line, reason := range map[string]string{
		"":                               "empty",
		"bogus":                          "unknown verb",
		"on sideways":                    "unknown modifier",
		"init":                           "needs N",
		"init 7":                         "not 0-6",
		"on label=":                      "label",
		"on label=a/b":                   "label",
		"on timeout=soon":                "timeout",
		"on timeout=-1s":                 "timeout",
		"on timeout=48h":                 "timeout",
		"on wait=yes":                    "unknown modifier",
		"off " + strings.Repeat("x", 10): "unknown modifier",
	} {
		_, err := ParseCommand(line)
		if err == nil || !strings.Contains(err.Error(), reason) || ErrnoOf(err) != syscall.EINVAL {
			t.Errorf("%q: err %v (errno %v), want EINVAL mentioning %q", line, err, ErrnoOf(err), reason)
		}
	}
}

// Every verb of the table parses, and its canonical form parses back to
// the same command.
func TestGrammarTableRoundTrip(t *testing.T) {
	for _, v := range Grammar {
		line := v.Name
		if v.Arg != "" {
			line += " 0"
		}
		c, err := ParseCommand(line + " self force wait label=x timeout=5s")
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		again, err := ParseCommand(c.String())
		if err != nil {
			t.Fatalf("%s: canonical %q: %v", v.Name, c.String(), err)
		}
		again.Line, c.Line = "", ""
		if again != c {
			t.Fatalf("%s: %+v != %+v", v.Name, again, c)
		}
	}
	if help := GrammarHelp(); !strings.Contains(help, "timeout=DURATION") || !strings.Contains(help, "init N") {
		t.Fatalf("GrammarHelp:\n%s", help)
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"on", "poweroff self force label=a timeout=3s", "init 6 wait", "reboot\tself"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseCommand(line)
		if err != nil {
			if ErrnoOf(err) != syscall.EINVAL {
				t.Fatalf("%q: errno %v, want EINVAL", line, ErrnoOf(err))
			}
			return
		}
		if _, ok := LookupVerb(c.Verb); !ok {
			t.Fatalf("%q parsed to unknown verb %q", line, c.Verb)
		}
		again, err := ParseCommand(c.String())
		if err != nil {
			t.Fatalf("%q: canonical form %q does not parse: %v", line, c.String(), err)
		}
		again.Line, c.Line = "", ""
		if again != c {
			t.Fatalf("%q: round trip %+v != %+v", line, again, c)
		}
	})
}
