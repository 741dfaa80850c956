// Package docs holds the design notes. Its test keeps the shape they
// describe true: which package may import which, and how long a function
// of the model or the filesystem may grow.
package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/machinefs/machinefs/"

// rooms says which packages of machinefs each layer may import (besides
// the standard library and third-party modules). Data flows one way:
// fs -> model -> machine, drivers -> machine, store below the model.
var rooms = map[string][]string{
	"machine":  {"cmdtab"},
	"cmdtab":   {},
	"store":    {"internal/"},
	"cluster":  {"model", "machine", "store", "internal/"},
	"cluster/": {"machine", "internal/"},
	"model":    {"machine", "store", "internal/", "cmdtab"},
	"drivers/": {"machine", "drivers/", "internal/", "cmdtab"},
	"fs":       {"model", "machine", "view", "internal/", "cmdtab"},
	// The status directory is a second view of the tree, as fs is.
	"statusdir": {"model", "machine", "view", "internal/"},
	"view":      {"model", "machine", "cmdtab"},
	"registry":  {"machine", "drivers/"},
}

// maxLines bounds a function of these packages: a longer one does more
// than one thing (issue 15).
var maxLines = map[string]int{"model": 80, "fs": 80, "machine": 80, "store": 80, "view": 80, "statusdir": 80}

func TestPackagesImportOnlyTheirRooms(t *testing.T) {
	for _, f := range goFiles(t) {
		pkg := filepath.ToSlash(filepath.Dir(f))
		allowed, ok := roomOf(pkg)
		// Tests may reach further: a model test builds real drivers, a
		// driver test starts its peer from tests/harness.
		if !ok || strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", f), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			dep, ok := strings.CutPrefix(path, module)
			if !ok || dep == pkg || strings.HasPrefix(dep, pkg+"/") {
				continue
			}
			if !admitted(dep, allowed) {
				t.Errorf("%s imports %s: package %s may import only %v", f, dep, pkg, allowed)
			}
		}
	}
}

func TestFunctionsStaySmall(t *testing.T) {
	for _, f := range goFiles(t) {
		pkg := filepath.ToSlash(filepath.Dir(f))
		limit, ok := maxLines[pkg]
		if !ok || strings.HasSuffix(f, "_test.go") {
			continue
		}
		fset := token.NewFileSet()
		af, err := parser.ParseFile(fset, filepath.Join("..", f), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			if n > limit {
				t.Errorf("%s: %s is %d lines (at most %d in %s)", fset.Position(fd.Pos()), fd.Name.Name, n, limit, pkg)
			}
		}
	}
}

// roomOf returns the imports allowed to the package at dir (relative to
// the module root), and whether a rule covers it.
func roomOf(dir string) ([]string, bool) {
	if r, ok := rooms[dir]; ok {
		return r, true
	}
	for prefix, r := range rooms {
		if strings.HasSuffix(prefix, "/") && strings.HasPrefix(dir, prefix) {
			return r, true
		}
	}
	return nil, false
}

func admitted(dep string, allowed []string) bool {
	for _, a := range allowed {
		if dep == a || (strings.HasSuffix(a, "/") && strings.HasPrefix(dep, a)) || strings.HasPrefix(dep, a+"/") {
			return true
		}
	}
	return false
}

// goFiles lists the module's Go files, relative to its root.
func goFiles(t *testing.T) []string {
	t.Helper()
	root := ".."
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
