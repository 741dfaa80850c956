package model

import (
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
)

const sample = `# lab machine
drivers = ipmi
ipmi.address = 192.0.2.7   # BMC
ipmi.password = se#cret

label = rack 3
`

func TestConfigKeepsComments(t *testing.T) {
	cf, err := ParseConfig(sample)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := cf.Get("ipmi.address"); v != "192.0.2.7" {
		t.Fatalf("address = %q", v)
	}
	if v, _ := cf.Get("ipmi.password"); v != "se#cret" {
		t.Fatalf("a '#' without a space before it is part of the value: %q", v)
	}
	cf.Set("ipmi.address", "192.0.2.8")
	cf.Set("ipmi.port", "624")
	cf.Delete("label")
	want := "# lab machine\ndrivers = ipmi\nipmi.address = 192.0.2.8   # BMC\nipmi.password = se#cret\n\nipmi.port = 624\n"
	if got := cf.Render(nil); got != want {
		t.Fatalf("render:\n%s\nwant:\n%s", got, want)
	}
	masked := cf.Render(func(k string) bool { return k == "ipmi.password" })
	if strings.Contains(masked, "se#cret") || !strings.Contains(masked, "ipmi.password = <set>\n") {
		t.Fatalf("secret not masked:\n%s", masked)
	}
}

func TestConfigErrorsDoNotQuoteTheLine(t *testing.T) {
	_, err := ParseConfig("drivers = ipmi\nipmi.password s3cret\n")
	if err == nil || machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error quotes a possible secret: %v", err)
	}
}

func TestEventLogRotates(t *testing.T) {
	l := newEventLog(100)
	for i := 0; i < 20; i++ {
		l.append("0123456789\n")
	}
	b := l.Bytes()
	if len(b) > 100 || len(b) == 0 || b[0] != '0' || b[len(b)-1] != '\n' {
		t.Fatalf("log after rotation: %q", b)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(sample)
	f.Add("a = b # c\n#x\n\nk=v")
	f.Fuzz(func(t *testing.T, text string) {
		cf, err := ParseConfig(text)
		if err != nil {
			if machine.ErrnoOf(err) != syscall.EINVAL && !strings.Contains(err.Error(), "too long") {
				t.Fatalf("errno %v: %v", machine.ErrnoOf(err), err)
			}
			return
		}
		// What parses renders to text that parses to the same keys.
		again, err := ParseConfig(cf.Render(nil))
		if err != nil {
			t.Fatalf("render of %q does not parse: %v", text, err)
		}
		for _, k := range cf.Keys() {
			a, _ := cf.Get(k)
			b, _ := again.Get(k)
			if a != b {
				t.Fatalf("key %q: %q != %q", k, a, b)
			}
		}
	})
}
