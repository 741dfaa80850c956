// Package contrib holds files for installing machinefs (systemd unit, fstab
// example, man page). Its test keeps the man page in step with the code.
package contrib

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/mountopts"
	"github.com/machinefs/machinefs/registry"
)

// manPage is the parsed man page: for each .SH section, the tags of its
// .TP entries (as rendered text) and the text of each entry.
type manPage struct {
	// entries maps section name -> tag -> entry body (rendered text).
	entries map[string]map[string]string
}

// roffEscapes turns the escapes the page uses into the text they render.
var roffEscapes = strings.NewReplacer(
	`\-`, "-", `\&`, "", `\e`, `\`, `\(aq`, "'", `\(dq`, `"`,
	`\(em`, "—", `\(en`, "–", `\(->`, "→", `\ `, " ",
)

var fontEscape = regexp.MustCompile(`\\f[BIRP]`)

// render returns the text one roff line shows: font macros (.B, .BI, ...)
// and font escapes removed, arguments joined as the macro joins them.
func render(line string) string {
	line = fontEscape.ReplaceAllString(line, "")
	if !strings.HasPrefix(line, ".") {
		return roffEscapes.Replace(line)
	}
	macro, rest, _ := strings.Cut(line, " ")
	args := splitArgs(rest)
	sep := " " // .B and .I join their arguments with spaces
	switch macro {
	case ".BI", ".IB", ".BR", ".RB", ".IR", ".RI":
		sep = "" // alternating fonts: no space between arguments
	case ".B", ".I", ".SM", ".SB":
	default:
		return "" // .TP, .PP, .RS ...: no text
	}
	return roffEscapes.Replace(strings.Join(args, sep))
}

// splitArgs splits macro arguments at spaces, honouring double quotes.
func splitArgs(s string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case r == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

func parseManPage(t *testing.T, name string) manPage {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	mp := manPage{entries: map[string]map[string]string{}}
	section := ""
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.HasPrefix(l, `.\"`):
		case strings.HasPrefix(l, ".SH "):
			section = strings.Trim(strings.TrimPrefix(l, ".SH "), `"`)
			if mp.entries[section] == nil {
				mp.entries[section] = map[string]string{}
			}
		case l == ".TP" && i+1 < len(lines):
			i++
			tag := strings.TrimSpace(render(lines[i]))
			var body []string
			for i+1 < len(lines) && !isBreak(lines[i+1]) {
				i++
				body = append(body, render(lines[i]))
			}
			if section != "" {
				mp.entries[section][tag] = strings.Join(body, " ")
			}
		}
	}
	return mp
}

// isBreak reports whether a line ends a .TP entry.
func isBreak(l string) bool {
	for _, m := range []string{".TP", ".SH", ".SS", ".PP", ".RS", ".RE"} {
		if l == m || strings.HasPrefix(l, m+" ") {
			return true
		}
	}
	return false
}

// entry returns the body of the entry of section whose tag is tag, or
// whose tag's first word is tag when firstWord is set.
func (mp manPage) entry(section, tag string, firstWord bool) (string, bool) {
	for t, body := range mp.entries[section] {
		if t == tag {
			return body, true
		}
		if f := strings.Fields(t); firstWord && len(f) > 0 && f[0] == tag {
			return body, true
		}
	}
	return "", false
}

func TestManPageCoversTheCode(t *testing.T) {
	mp := parseManPage(t, "machinefs.8")
	for _, s := range []string{"COMMAND GRAMMAR", "ERRORS", "CONFIGURATION", "EVENTS"} {
		if len(mp.entries[s]) == 0 {
			t.Fatalf("machinefs.8: no entries in section %s (parser or page broken)", s)
		}
	}

	for _, v := range machine.Grammar {
		tag := v.Name
		if v.Arg != "" {
			tag += " " + v.Arg
		}
		if _, ok := mp.entry("COMMAND GRAMMAR", tag, false); !ok {
			t.Errorf("machinefs.8, COMMAND GRAMMAR: no entry for verb %q", tag)
		}
	}
	for _, m := range machine.Modifiers {
		if _, ok := mp.entry("COMMAND GRAMMAR", m[0], false); !ok {
			t.Errorf("machinefs.8, COMMAND GRAMMAR: no entry for modifier %q", m[0])
		}
	}
	for _, e := range machine.Errnos {
		if _, ok := mp.entry("ERRORS", e[0], false); !ok {
			t.Errorf("machinefs.8, ERRORS: no entry for errno %s", e[0])
		}
	}

	// Core keys are not exported; a tree with every driver lists them all.
	specs := registry.Drivers()
	tree := model.NewTree(model.Options{Drivers: specs})
	keys := tree.KeyDocs()
	seen := map[string]bool{}
	for _, k := range keys {
		seen[k.Name] = true
	}
	for _, spec := range specs {
		for _, k := range spec.Keys {
			if !seen[k.Name] {
				t.Errorf("KeyDocs lacks %s key %q", spec.Name, k.Name)
			}
		}
	}
	for _, k := range keys {
		body, ok := mp.entry("CONFIGURATION", k.Name, false)
		if !ok {
			t.Errorf("machinefs.8, CONFIGURATION: no entry for key %q", k.Name)
			continue
		}
		if k.Default != "" && !strings.Contains(body, "Default: "+k.Default+".") {
			t.Errorf("machinefs.8, CONFIGURATION: key %q: want \"Default: %s.\" in its entry, have: %s", k.Name, k.Default, body)
		}
		if k.Secret && !strings.Contains(body, "secret") {
			t.Errorf("machinefs.8, CONFIGURATION: key %q is secret; its entry should say so", k.Name)
		}
		if k.Privileged && !strings.Contains(body, "Privileged") {
			t.Errorf("machinefs.8, CONFIGURATION: key %q is privileged; its entry should say \"Privileged\"", k.Name)
		}
	}

	// Drivers: each must be named in a section heading of CONFIGURATION.
	data, err := os.ReadFile("machinefs.8")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range tree.DriverSpecs() {
		if !strings.Contains(string(data), "\n.SS "+d.Name+" driver keys\n") {
			t.Errorf("machinefs.8: no \".SS %s driver keys\" subsection", d.Name)
		}
	}
	if len(tree.DriverSpecs()) != len(specs) {
		t.Errorf("tree knows %d drivers, want %d", len(tree.DriverSpecs()), len(specs))
	}

	// Mount options: each one mountopts accepts must have an entry in
	// OPTIONS, tagged "NAME" or "NAME=ARG". One field of
	// mountopts.Options per option: a new field needs a line here.
	if n := reflect.TypeOf(mountopts.Options{}).NumField(); n != len(mountOptions) {
		t.Errorf("mountopts.Options has %d fields, mountOptions lists %d options", n, len(mountOptions))
	}
	for _, o := range mountOptions {
		parsed, err := mountopts.Parse(o.sample)
		if err != nil {
			t.Errorf("mountopts rejects %q: %v (update mountOptions)", o.sample, err)
			continue
		}
		if got := parsed.String(); got != o.sample {
			t.Errorf("mountopts: %q renders back as %q (update mountOptions)", o.sample, got)
		}
		if !mp.hasOption(o.name) {
			t.Errorf("machinefs.8, OPTIONS: no entry for mount option %q", o.name)
		}
	}
}

// mountOptions are the -o options the daemon acts on, with a sample that
// mountopts.Parse accepts and renders back unchanged.
var mountOptions = []struct{ name, sample string }{
	{"allow_other", "allow_other"},
	{"ro", "ro"},
	{"debug", "debug"},
	{"demo", "demo"},
	{"background", "background"},
	{"foreground", "foreground"},
	{"config", "config=/etc/machinefs"},
	{"group", "group=operators"},
	{"admingroup", "admingroup=wheel"},
	{"max-readers", "max-readers=64"},
	{"fsname", "fsname=machinefs"},
	{"statedir", "statedir=/run/machinefs"},
	{"status-dir", "status-dir=/run/machinefs-status"},
	{"log", "log=/var/log/machinefs.log"},
	{"node", "node=lab07"},
	{"cluster", "cluster=https://etcd1:2379"},
	{"etcd-ca", "etcd-ca=/etc/machinefs/ca.pem"},
	{"etcd-cert", "etcd-cert=/etc/machinefs/lab07.pem"},
	{"etcd-key", "etcd-key=/etc/machinefs/lab07-key.pem"},
	{"secret-key", "secret-key=/etc/machinefs/site.key"},
	{"member", "member=/var/lib/machinefs/etcd"},
	{"peer-url", "peer-url=https://10.0.0.7:2380"},
	{"client-url", "client-url=https://10.0.0.7:2379"},
	{"initial-cluster", "initial-cluster=lab01=https://10.0.0.1:2380+lab02=https://10.0.0.2:2380"},
	{"initial-state", "initial-state=existing"},
	{"fanout", "fanout=32"},
}

// hasOption reports whether OPTIONS has an entry tagged name or name=ARG.
func (mp manPage) hasOption(name string) bool {
	for tag := range mp.entries["OPTIONS"] {
		if tag == name || strings.HasPrefix(tag, name+"=") {
			return true
		}
	}
	return false
}

// TestRender pins the small roff renderer the check relies on.
func TestRender(t *testing.T) {
	for in, want := range map[string]string{
		`.B wait\-timeout`:           "wait-timeout",
		`.BI label= NAME`:            "label=NAME",
		`.BI "init " N`:              "init N",
		`.BR ipmi.port " (default)"`: "ipmi.port (default)",
		`Default: \fB10s\fR.`:        "Default: 10s.",
		`.TP`:                        "",
	} {
		if got := render(in); got != want {
			t.Errorf("render(%q) = %q, want %q", in, got, want)
		}
	}
}
