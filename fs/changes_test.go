package fs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// declaredKinds reads machine/events.go and returns every constant of type
// EventKind it declares, so a kind added there cannot be missed here.
func declaredKinds(t *testing.T) map[machine.EventKind]string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join("..", "machine", "events.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[machine.EventKind]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "EventKind" {
				continue
			}
			for i, name := range vs.Names {
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s: not a string literal", name.Name)
				}
				word, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				kinds[machine.EventKind(word)] = name.Name
			}
		}
	}
	if len(kinds) < 10 {
		t.Fatalf("found only %d kinds in machine/events.go: %v", len(kinds), kinds)
	}
	return kinds
}

// Every kind machine declares says which files it changes: a new kind
// must be declared in eventChanges, or the notifier would let it change
// only the logs without anyone deciding so.
func TestEveryKindDeclared(t *testing.T) {
	kinds := declaredKinds(t)
	for kind, name := range kinds {
		if _, ok := eventChanges[kind]; !ok {
			t.Errorf("machine.%s (%q) is not in eventChanges (fs/changes.go): declare which files it changes", name, kind)
		}
	}
	for kind := range eventChanges {
		if _, ok := kinds[kind]; !ok {
			t.Errorf("eventChanges declares %q, which machine/events.go does not", kind)
		}
	}
}

// What the notifier marks for an event, by path.
func marks(e model.Event) map[string]change {
	n := newNotifier(&FS{})
	e.Time = time.Now()
	n.onEvent(e)
	return n.dirty
}

func TestEventChanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   model.Event
		path string
		want change
	}{
		// An undeclared kind grows the logs only; it once marked state.
		{"undeclared host", model.Event{Path: "hosts/a", Kind: "no-such-kind"}, "hosts/a", chLog},
		{"undeclared group", model.Event{Path: "groups/g", Kind: "no-such-kind"}, "groups/g", chLog},
		{"console", model.Event{Path: "hosts/a", Kind: machine.EventConsole}, "hosts/a", chLog},
		{"serial", model.Event{Path: "hosts/a", Kind: machine.EventSerial}, "hosts/a", chLog},
		{"vswitch", model.Event{Path: "hosts/a", Kind: machine.EventVSwitch, Item: "br0"}, "hosts/a", chLog},
		{"power", model.Event{Path: "hosts/a", Kind: machine.EventPower}, "hosts/a", chLog | chState | chPower},
		{"command", model.Event{Path: "hosts/a", Kind: machine.EventCommand}, "hosts/a", chLog | chState | chPowerSize},
		{"config", model.Event{Path: "hosts/a", Kind: machine.EventConfig}, "hosts/a", chLog | chState | chPower | chConfig},
		{"members", model.Event{Path: "groups/g", Kind: machine.EventMembers, Detail: "2 lines, 2 hosts root"}, "groups/g", chLog | chState | chPower | chConfig},
		{"members refused", model.Event{Path: "groups/g", Kind: machine.EventMembers, Detail: "root refused: bad", Refused: true}, "groups/g", chLog | chState | chPower},
		{"subhost added: parent", model.Event{Path: "hosts/a/subhosts/b", Kind: machine.EventAdded}, "hosts/a", chLog | chState},
		{"subhost notify: parent", model.Event{Path: "hosts/a/subhosts/b", Kind: machine.EventNotify}, "hosts/a", chLog},
		{"tree", model.Event{Kind: machine.EventReload}, "", chLog},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := marks(tc.ev)[tc.path]; got != tc.want {
				t.Errorf("%s %s marks %s with %#x, want %#x", tc.ev.Path, tc.ev.Kind, tc.path, got, tc.want)
			}
		})
	}
}

// A host's power changes its groups; a switch event asks for its switch's
// files; neither of the others does.
func TestEventEffects(t *testing.T) {
	n := newNotifier(&FS{})
	n.onEvent(model.Event{Path: "hosts/a", Kind: machine.EventVSwitch, Item: "br0", Time: time.Now()})
	if !n.switches["hosts/a/vswitch/br0"] || n.groupsDirty {
		t.Errorf("vswitch: switches %v, groups dirty %v", n.switches, n.groupsDirty)
	}
	n = newNotifier(&FS{})
	n.onEvent(model.Event{Path: "hosts/a", Kind: machine.EventPower, Time: time.Now()})
	if !n.groupsDirty || n.powered["hosts/a"].IsZero() || len(n.switches) != 0 {
		t.Errorf("power: groups dirty %v, powered %v, switches %v", n.groupsDirty, n.powered, n.switches)
	}
	n = newNotifier(&FS{})
	n.onEvent(model.Event{Path: "hosts/a", Kind: machine.EventRemoved, Time: time.Now()})
	if !n.entries["hosts/a"] || len(n.entryOps) != 1 || n.entryOps[0].added {
		t.Errorf("removed: entries %v, ops %v", n.entries, n.entryOps)
	}
}
