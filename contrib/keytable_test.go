package contrib

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/registry"
	"github.com/machinefs/machinefs/store"
)

// update rewrites README's key table from the key specs:
// go test ./contrib -run KeyTable -update
var update = flag.Bool("update", false, "rewrite README's key table from the key specs")

const (
	tableBegin = "<!-- keys: made from the key specs by `go test ./contrib -run KeyTable -update`; edit the specs, not this table -->\n"
	tableEnd   = "<!-- end of keys -->\n"
)

// keyTable is README's table of config keys: the core keys, then every
// registered driver's, each with its default, the values it takes (the
// kind's own words) and what it means.
func keyTable(t *testing.T) string {
	tree := model.NewTree(model.Options{Store: store.NewDir(t.TempDir()), Drivers: registry.Drivers()})
	defer tree.Close()
	var b strings.Builder
	b.WriteString("| key | default | values | meaning |\n|---|---|---|---|\n")
	seen := map[string]bool{}
	for _, k := range tree.KeyDocs() {
		if seen[k.Name] {
			continue // a shared key (mac) is declared by several drivers
		}
		seen[k.Name] = true
		def := k.Default
		if def == "" {
			def = "-"
		}
		doc := k.Doc
		if k.Secret {
			doc += "; secret: reads back as `<set>`"
		}
		if k.Privileged {
			doc += "; privileged: root or the admin group"
		}
		b.WriteString("| `" + k.Name + "` | " + cell(def) + " | " + cell(k.Type()) + " | " + cell(doc) + " |\n")
	}
	return b.String()
}

// cell keeps a table cell on its line and its pipes out of the table.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// README's key table is the specs': a key added to a driver shows there
// with one `-update` run, and a table edited by hand fails here.
func TestKeyTable(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no key table between %q and %q", tableBegin, tableEnd)
	}
	want := keyTable(t)
	got := readme[i+len(tableBegin) : j]
	if got == want {
		return
	}
	if !*update {
		t.Fatalf("README's key table is not the specs' (run go test ./contrib -run KeyTable -update):\n%s", want)
	}
	readme = readme[:i+len(tableBegin)] + want + readme[j:]
	if err := os.WriteFile("../README.md", []byte(readme), 0o644); err != nil {
		t.Fatal(err)
	}
}
