package contrib

import (
	"os"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/registry"
	"github.com/machinefs/machinefs/store"
)

// The man page's key entries (CONFIGURATION, from "Core keys" to EVENTS)
// are made from the key specs, as README's table is: a driver's keys are
// documented where they are declared, and a new driver gets its section
// from its spec. Each section's own prose (before its first entry, and a
// .PP paragraph after its last) is the page's and is kept; a new driver's
// section starts with its spec's Doc.
// go test ./contrib -run ManPageKeys -update

const (
	keysBegin = "\n.SS Core keys\n"
	keysEnd   = "\n.SH EVENTS\n"
)

// manSection is one .SS of the key entries, as the page has it.
type manSection struct{ intro, outro string }

func TestManPageKeys(t *testing.T) {
	raw, err := os.ReadFile("machinefs.8")
	if err != nil {
		t.Fatal(err)
	}
	page := string(raw)
	i, j := strings.Index(page, keysBegin), strings.Index(page, keysEnd)
	if i < 0 || j < i {
		t.Fatalf("machinefs.8: no key entries between %q and %q", keysBegin, keysEnd)
	}
	old := parseKeySections(page[i+1 : j+1])
	want := keySections(t, old)
	if page[i+1:j+1] == want {
		return
	}
	if !*update {
		t.Fatalf("machinefs.8: the key entries are not the specs' (run go test ./contrib -run ManPageKeys -update)")
	}
	page = page[:i+1] + want + page[j+1:]
	if err := os.WriteFile("machinefs.8", []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
}

// parseKeySections splits the key entries into sections by title, keeping
// what is not an entry.
func parseKeySections(text string) map[string]manSection {
	out := map[string]manSection{}
	for _, part := range strings.Split(text, ".SS ")[1:] {
		title, body, _ := strings.Cut(part, "\n")
		var s manSection
		if k := strings.Index(body, ".TP\n"); k >= 0 {
			s.intro, body = body[:k], body[k:]
		} else {
			s.intro, body = body, ""
		}
		if k := strings.Index(body, "\n.PP\n"); k >= 0 {
			s.outro = body[k+1:]
		}
		out[title] = s
	}
	return out
}

// keySections renders every section: the core keys, then each driver's.
func keySections(t *testing.T, old map[string]manSection) string {
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: registry.Drivers()})
	defer tree.Close()
	var b strings.Builder
	section := func(title, intro string, keys []machine.KeySpec) {
		s, ok := old[title]
		if !ok {
			s.intro = roffText(intro)
		}
		b.WriteString(".SS " + title + "\n" + s.intro)
		for _, k := range keys {
			b.WriteString(keyEntry(k))
		}
		b.WriteString(s.outro)
	}
	section("Core keys", "", model.CoreKeys())
	for _, d := range tree.DriverSpecs() {
		section(d.Name+" driver keys", d.Doc, d.Keys)
	}
	return b.String()
}

// keyEntry is one key's .TP entry.
func keyEntry(k machine.KeySpec) string {
	var b strings.Builder
	b.WriteString(".TP\n.B " + roffEscape(k.Name) + "\n" + roffText(k.Doc))
	if typ := k.Type(); typ != "text" {
		b.WriteString("Values: " + roffEscape(typ) + ".\n")
	}
	if k.Default != "" {
		b.WriteString("Default: \\fB" + roffEscape(k.Default) + "\\fR.\n")
	}
	if k.Secret {
		b.WriteString("A secret: it reads back as <set> and is never logged.\n")
	}
	if k.Privileged {
		b.WriteString("Privileged: only root or the admin group may set, change or remove it (see\n.BR ACCESS ).\n")
	}
	return b.String()
}

// roffText is s as a sentence of roff text: as written (a key's doc may
// start with a value, "lanplus ..."), a full stop, escaped, one line.
func roffText(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return roffEscape(s) + "\n"
}

// roffEscape keeps s from being read as roff: backslashes and hyphens
// escaped, no control character at the start of a line.
func roffEscape(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
