package model

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/store"
)

func TestExpandRange(t *testing.T) {
	for _, c := range []struct {
		line string
		want []string
	}{
		{"lab01", []string{"hosts/lab01"}},
		{"hosts/lab01/subhosts/vm1", []string{"hosts/lab01/subhosts/vm1"}},
		{"node[01-03]", []string{"hosts/node01", "hosts/node02", "hosts/node03"}},
		{"node[8-10]", []string{"hosts/node8", "hosts/node9", "hosts/node10"}},
		{"n[001-2]", []string{"hosts/n001", "hosts/n002"}},
		{"rack[1-2,7]", []string{"hosts/rack1", "hosts/rack2", "hosts/rack7"}},
		{"r[1-2]/subhosts/vm[1-2]", []string{"hosts/r1/subhosts/vm1", "hosts/r1/subhosts/vm2", "hosts/r2/subhosts/vm1", "hosts/r2/subhosts/vm2"}},
		{"n[1][2]x", []string{"hosts/n12x"}},
		// The largest numbers are names like any other: no wrap, no loop.
		{"n[9223372036854775807]", []string{"hosts/n9223372036854775807"}},
		{"n[9223372036854775806-9223372036854775808]", []string{"hosts/n9223372036854775806", "hosts/n9223372036854775807", "hosts/n9223372036854775808"}},
		{"n[18446744073709551614-18446744073709551615]", []string{"hosts/n18446744073709551614", "hosts/n18446744073709551615"}},
	} {
		got, err := expandMember(c.line)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, %v; want %q", c.line, got, err, c.want)
		}
	}
}

func TestExpandRangeRefuses(t *testing.T) {
	pad := strings.Repeat("0", 10000)
	for _, c := range []struct{ line, why string }{
		// Overflows: a number past uint64, a count past any int.
		{"n[18446744073709551616]", "want N or N-M"},
		{"n[0-18446744073709551615]", "at most 100000"},
		{"n[0-9223372036854775807]", "at most 100000"},
		{"n[1-100001]", "at most 100000"},
		// Counts multiply across lists and add up within one.
		{"n[1-1000]x[1-1000]", "at most 100000"},
		{"n[1-50000,1-50001]", "at most 100000"},
		{"n[1-10][1-10][1-10][1-10][1-10][1-10]", "at most 100000"},
		// A 10,000-digit zero padding is refused before any name is made.
		{"n[" + pad + "1-2]", "at most 255 characters"},
		{"n[1-" + pad + "2]", ""}, // hi's padding does not count: n1, n2
		{strings.Repeat("a", 60) + "[1-10000]", "not a host path"},
		{"n[5-1]", "want N or N-M"},
		{"n[-1]", "want N or N-M"},
		{"n[+1]", "want a host path"},
		{"n[1-]", "want N or N-M"},
		{"n[]", "want N or N-M"},
		{"n[1,,2]", "want N or N-M"},
		{"n[1", "unbalanced"},
		{"n1]", "unbalanced"},
		{"n[[1]]", "unbalanced"},
		{"n[1],x", "brackets"},
		{"n[1-2].conf", "not a host path"},
		{"a/b", "not a host path"},
		{"a/subhosts/", "not a host path"},
		{"a//b", "not a host path"},
		{"-a", "want a host path"},
		{"a b", "want a host path"},
	} {
		got, err := expandMember(c.line)
		if c.why == "" {
			if err != nil {
				t.Errorf("%.40s: %v", c.line, err)
			}
			continue
		}
		if err == nil || machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%.40s: %d names, err %v; want EINVAL with %q", c.line, len(got), err, c.why)
		}
	}
}

// FuzzExpandRange: whatever a writer sends, expansion never panics, never
// makes more than MaxGroupHosts names, and every name it makes is a host
// path (checked with ValidName, not the expander's own check).
func FuzzExpandRange(f *testing.F) {
	for _, s := range []string{"node[01-40]", "rack[1-3,7]/subhosts/vm[1-2]", "n[9223372036854775807]",
		"n[0-18446744073709551615]", "n[1-100000]", "n[1-10][1-10000]", "n[0001-2].conf", "hosts/a", "a[1]]", "x[1-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		names, err := expandMember(line)
		if err != nil {
			if names != nil || machine.ErrnoOf(err) != syscall.EINVAL {
				t.Fatalf("%q: names %d with error %v (errno %v)", line, len(names), err, machine.ErrnoOf(err))
			}
			return
		}
		if len(names) == 0 || len(names) > MaxGroupHosts {
			t.Fatalf("%q: %d names", line, len(names))
		}
		r, _ := parseMember(line)
		if r.count != len(names) {
			t.Fatalf("%q: counted %d, made %d", line, r.count, len(names))
		}
		for _, n := range names {
			p, ok := strings.CutPrefix(n, "hosts/")
			parts := strings.Split(p, "/")
			if !ok || len(parts)%2 == 0 {
				t.Fatalf("%q: %q is not a host path", line, n)
			}
			for i, part := range parts {
				if i%2 == 1 && part != "subhosts" || i%2 == 0 && !ValidName(part) {
					t.Fatalf("%q: %q is not a host path", line, n)
				}
			}
		}
	})
}

func newGroupTree(t testing.TB) *Tree {
	tree := NewTree(Options{Store: store.NewDir(t.TempDir())})
	t.Cleanup(tree.Close)
	return tree
}

// The cap holds across the lines of the file and across appends, not only
// within one range.
func TestGroupMembersCap(t *testing.T) {
	tree := newGroupTree(t)
	g, err := tree.AddGroup("big", Caller{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A member must name a host: one of each range exists.
	for _, name := range []string{"n1", "m1"} {
		if _, err := tree.Add(ctx, nil, name, &ConfigFile{}, Caller{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.SetMembers(ctx, "n[1-60000]\n", true, Caller{}); err != nil {
		t.Fatal(err)
	}
	err = g.SetMembers(ctx, "m[1-60000]\n", false, Caller{})
	if machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), "a group names at most 100000") {
		t.Fatalf(">> past the cap: %v", err)
	}
	err = g.SetMembers(ctx, "n[1-60000]\nm[1-60000]\n", true, Caller{})
	if machine.ErrnoOf(err) != syscall.EINVAL || !strings.Contains(err.Error(), "a group names at most 100000") {
		t.Fatalf("> past the cap in two lines: %v", err)
	}
	if m := strings.Join(g.Members(), "\n"); m != "n[1-60000]" || len(g.Hosts()) != 60000 {
		t.Fatalf("a refused write changed the group: %q, %d hosts", m, len(g.Hosts()))
	}
	if !strings.Contains(string(g.Log().Bytes()), "a group names at most 100000") {
		t.Fatalf("the refusal's reason is not in events.log:\n%s", g.Log().Bytes())
	}
	// Up to the cap exactly. Every line counts, duplicates too (n[1-2]):
	// the cap bounds the work of expanding the file, not only its result.
	if err := g.SetMembers(ctx, "m[1-39998]\nn[1-2]\n", false, Caller{}); err != nil {
		t.Fatal(err)
	}
	if h := g.Hosts(); len(h) != 99998 || h[0] != "hosts/n1" || h[60000] != "hosts/m1" {
		t.Fatalf("%d hosts, first %q", len(h), h[:2])
	}
}

// A members file edited by hand past the cap (or with a bad line) loads:
// the lines that fit name hosts, the others are reported.
func TestGroupLoadHandEdited(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "groups"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "groups/g.members"), []byte("a[1-3]\nn[0-9223372036854775807]\nb[1-99997]\nc1\nx[5-1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := NewTree(Options{Store: store.NewDir(dir)})
	t.Cleanup(tree.Close)
	if err := tree.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	g := tree.Group("g")
	if g == nil || len(g.Hosts()) != 100000 || g.Hosts()[99999] != "hosts/b99997" {
		t.Fatalf("group %v", g)
	}
	log := string(g.Log().Bytes())
	for _, want := range []string{`n[0-9223372036854775807]`, `"c1": the members would name 100001 hosts`, `x[5-1]`} {
		if !strings.Contains(log, want) {
			t.Errorf("events.log lacks %q:\n%s", want, log)
		}
	}
}

// BenchmarkGroupHosts100k: expanding and deduplicating 100,000 members
// (what a write to members costs), then reading them (what power and state
// cost on every cat).
func BenchmarkGroupHosts100k(b *testing.B) {
	tree := newGroupTree(b)
	g, err := tree.AddGroup("big", Caller{})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("SetMembers", func(b *testing.B) {
		for b.Loop() {
			if err := g.SetMembers(context.Background(), "n[1-50000]\nn[25001-75000]\n", true, Caller{}); err != nil {
				b.Fatal(err)
			}
		}
		if n := len(g.Hosts()); n != 75000 {
			b.Fatalf("%d hosts", n)
		}
	})
	if err := g.SetMembers(context.Background(), "n[1-100000]\n", true, Caller{}); err != nil {
		b.Fatal(err)
	}
	b.Run("Hosts", func(b *testing.B) {
		for b.Loop() {
			if n := len(g.Hosts()); n != MaxGroupHosts {
				b.Fatalf("%d hosts", n)
			}
		}
	})
	b.Run("State", func(b *testing.B) {
		for b.Loop() {
			_ = g.State()
		}
	})
}

func ExampleMaxGroupHosts() {
	_, err := expandMember("n[1-100001]")
	fmt.Println(err)
	// Output: member "n[1-100001]": more than 100000 hosts (a group names at most 100000)
}

// BenchmarkGroupHostsExpand: parsing, counting, expanding and
// deduplicating two overlapping lines of 50,000 (no disk).
func BenchmarkGroupHostsExpand(b *testing.B) {
	for b.Loop() {
		hosts, total, bad := groupHosts([]string{"n[1-50000]", "n[25001-75000]"})
		if len(hosts) != 75000 || total != 100000 || bad != nil {
			b.Fatal(len(hosts), total, bad)
		}
	}
}
