package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The README at the root of the mount names every file and directory of
// the tree, and names nothing the tree does not have.
func TestTreeREADMEMatchesTree(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	readme := d.read("README")
	// The tree part of README: lines "NAME  text" at the margin or, for a
	// host's files, indented by two ("  power  read: ..."); a description
	// goes on in lines indented further.
	top := map[string]bool{}
	host := map[string]bool{}
	// The listing is the first paragraph after the title.
	paras := strings.SplitN(readme, "\n\n", 3)
	if len(paras) < 3 {
		t.Fatalf("README has no tree listing:\n%s", readme)
	}
	for _, l := range strings.Split(paras[1], "\n") {
		indent := len(l) - len(strings.TrimLeft(l, " "))
		if indent != 0 && indent != 2 {
			continue // a description's continuation
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		names := []string{f[0]}
		if strings.HasSuffix(f[0], ",") && len(f) > 1 { // "events, events.log"
			names = []string{strings.TrimSuffix(f[0], ","), f[1]}
		}
		for _, n := range names {
			n, _, _ = strings.Cut(n, "/") // hosts/NAME/ is hosts
			if indent == 2 {
				host[n] = true
			} else {
				top[n] = true
			}
		}
	}
	ls := func(dir string) map[string]bool {
		ents, err := os.ReadDir(filepath.Join(d.mnt, dir))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, e := range ents {
			out[e.Name()] = true
		}
		return out
	}
	compare := func(where string, documented, real map[string]bool) {
		t.Helper()
		for n := range real {
			if !documented[n] {
				t.Errorf("%s: %q is in the tree but not in README", where, n)
			}
		}
		for n := range documented {
			if !real[n] {
				t.Errorf("%s: README names %q, which the tree does not have", where, n)
			}
		}
	}
	// The streams are reached by name only (a walk must not block on
	// them), so README names them and the listing does not.
	rootReal := ls(".")
	rootReal["events"] = true
	compare("/", top, rootReal)
	// lab01 is a local-less demo host: every file a host can have, but
	// vswitch/ (local hosts only), serial (drivers with a serial
	// console) and serial.log (serial-log = yes), which README marks as
	// such.
	real := ls("hosts/lab01")
	for _, n := range []string{"vswitch", "serial", "serial.log", "events", "subhosts"} {
		if !host[n] {
			t.Errorf("README does not document %s", n)
		}
		real[n] = true
	}
	compare("hosts/lab01", host, real)
	if !strings.Contains(readme, "vswitch/") || strings.Contains(readme, "not yet available") {
		t.Errorf("README's vswitch line is not true:\n%s", readme)
	}
}

// --help is asked-for output: stdout, exit 0.
func TestHelpOnStdout(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(binary, "--help")
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(out.String(), "usage: machinefs") || errb.Len() != 0 {
		t.Fatalf("--help: stdout %q stderr %q", out.String(), errb.String())
	}
}

// make install works into an empty DESTDIR (packagers' staging root).
func TestMakeInstallDestdir(t *testing.T) {
	t.Parallel()
	dest := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest).CombinedOutput()
	if err != nil {
		t.Fatalf("make install DESTDIR=%s: %v\n%s", dest, err, out)
	}
	for _, f := range []string{"usr/local/bin/machinefs", "sbin/mount.fuse.machinefs", "etc/systemd/system/machinefs.service", "usr/local/share/man/man8/machinefs.8"} {
		if _, err := os.Lstat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install: %v", err)
		}
	}
}
