package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// The tools operators point at the tree: every one works, or fails with a
// clear errno and changes nothing.

// needTools fails the test when a tool it drives is missing (make deps
// installs them).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, c := range tools {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s missing (make deps installs it)", c)
		}
	}
}

// checkExact fails unless got is a whole snapshot: no NUL byte, and it
// ends with a newline.
func checkExact(t *testing.T, what string, got []byte) {
	t.Helper()
	if i := bytes.IndexByte(got, 0); i >= 0 {
		t.Fatalf("%s: NUL byte at %d of %d:\n%q", what, i, len(got), got)
	}
	if len(got) == 0 || got[len(got)-1] != '\n' {
		t.Fatalf("%s: not a whole file (%d bytes, no final newline):\n%q", what, len(got), got)
	}
}

// Reads are exact: files from a few bytes to over 1 MiB, read by dd with
// blocks of 1 byte up, head -c10 and read(2) of every size, cold and
// cached, give the file's content; while a loop changes it, no read gets
// NUL bytes, EIO or a reply of the wrong size.
func TestToolsReadsExact(t *testing.T) {
	// CPU-bound: it runs with the cluster tests, which mostly wait.
	t.Parallel()
	d := start(t)
	d.addHost("r1", "drivers = sim\nlabel = 0")
	// A config over 1 MiB (its comments are kept) and a group whose state
	// is many pages, loaded from the config directory.
	var big strings.Builder
	big.WriteString("drivers = sim\nlabel = big\n")
	for i := 0; big.Len() < 1<<20+64<<10; i++ {
		fmt.Fprintf(&big, "# line %06d %s\n", i, strings.Repeat("x", 90))
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(d.config, "hosts"), 0o755))
	must(os.WriteFile(filepath.Join(d.config, "hosts", "big.conf"), []byte(big.String()), 0o644))
	for i := 1; i <= 700; i++ {
		must(os.WriteFile(filepath.Join(d.config, "hosts", fmt.Sprintf("m%04d.conf", i)), []byte("label = member\n"), 0o644))
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "the reload of 701 hosts", func() bool {
		_, e1 := os.Stat(filepath.Join(d.mnt, "hosts/big"))
		_, e2 := os.Stat(filepath.Join(d.mnt, "hosts/m0700"))
		return e1 == nil && e2 == nil
	})
	d.ok("mkdir groups/many && echo 'm[0001-0700]' > groups/many/members")

	files := []string{"version", "hosts/r1/power", "hosts/r1/state", "hosts/r1/config", "groups/many/state", "hosts/big/config"}
	for _, f := range files {
		want := d.read(f)
		if f == "hosts/big/config" && len(want) <= 1<<20 {
			t.Fatalf("big config is %d bytes, want over 1 MiB", len(want))
		}
		if f == "groups/many/state" && len(want) < 8<<10 {
			t.Fatalf("group state is %d bytes, want many pages", len(want))
		}
		// Small blocks on small files: dd bs=1 of 1 MiB is a million
		// requests.
		// Odd sizes cross every page boundary at a new offset; one byte
		// at a time adds nothing to that past the first pages, and on a
		// file of many pages costs tens of thousands of requests.
		blocks := []int{4096, 65536, 131072 + 1}
		sizes := []int{4095, 4097, 70000, 300000}
		if len(want) < 64<<10 {
			blocks = append([]int{100}, blocks...)
			sizes = append([]int{7}, sizes...)
		}
		if len(want) < 8<<10 {
			blocks = append([]int{1, 3, 16}, blocks...)
			sizes = append([]int{1}, sizes...)
		}
		for pass := 0; pass < 2; pass++ { // cold, then cached
			for _, bs := range blocks {
				got := d.ok(fmt.Sprintf("dd if=%s bs=%d status=none", f, bs))
				if got != want {
					t.Fatalf("dd bs=%d of %s (pass %d): %d bytes, want %d", bs, f, pass, len(got), len(want))
				}
			}
			if got := d.ok("head -c10 " + f); got != want[:min(10, len(want))] {
				t.Fatalf("head -c10 %s = %q, want %q", f, got, want[:min(10, len(want))])
			}
			// read(2) of every size from 1 up, at every offset a reader
			// in pieces reaches.
			fh, err := os.Open(filepath.Join(d.mnt, f))
			must(err)
			for _, n := range sizes {
				var got []byte
				buf := make([]byte, n)
				for off := int64(0); ; {
					k, err := fh.ReadAt(buf, off)
					got = append(got, buf[:k]...)
					off += int64(k)
					if err != nil || k == 0 {
						break
					}
				}
				if string(got) != want {
					t.Fatalf("pread of %d bytes at a time of %s: %d bytes, want %d", n, f, len(got), len(want))
				}
			}
			fh.Close()
		}
	}

	// Under change: a writer sets label = N as fast as it can while
	// readers read config and state whole and in pieces.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt() // before the unmount, even when the test fails
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Lengths change at every power of ten: sizes move both ways.
			n := []int{9, 10, 99, 100, 7, 12345}[i%6] + i
			if err := os.WriteFile(filepath.Join(d.mnt, "hosts/r1/config"), []byte(fmt.Sprintf("label = %d\n", n)), 0o644); err != nil {
				t.Errorf("writing label: %v", err)
				return
			}
			writes.Add(1)
		}
	}()
	out := t.TempDir()
	script := fmt.Sprintf(`set -e
for i in $(seq 80); do
  dd if=hosts/r1/config bs=1 status=none > %[1]s/a.$i
  dd if=hosts/r1/config bs=16 status=none > %[1]s/b.$i
  dd if=hosts/r1/state bs=16 status=none > %[1]s/c.$i
  head -c10 hosts/r1/config > %[1]s/d.$i
  cat hosts/r1/state > %[1]s/e.$i
done`, out)
	r := d.sh(script)
	// read(2) in Go: many more opens, sizes 1 byte up. (Each open races
	// the writer's changes and the notifier's pokes: 1000 take about
	// 10 s here under -race.)
	for i := 0; i < 1000; i++ {
		f := []string{"hosts/r1/config", "hosts/r1/state", "hosts/r1/power"}[i%3]
		fh, err := os.Open(filepath.Join(d.mnt, f))
		if err != nil {
			t.Fatal(err)
		}
		n := []int{1, 5, 16, 64, 4096}[i%5]
		var got []byte
		buf := make([]byte, n)
		for {
			k, err := fh.Read(buf)
			got = append(got, buf[:k]...)
			if err != nil || k == 0 {
				break
			}
		}
		fh.Close()
		checkExact(t, fmt.Sprintf("read(%d) of %s, try %d", n, f, i), got)
	}
	halt()
	if r.code != 0 {
		t.Fatalf("readers failed (an EIO?): %+v", r)
	}
	if writes.Load() < 10 {
		t.Fatalf("only %d label writes ran during the reads", writes.Load())
	}
	ents, err := os.ReadDir(out)
	must(err)
	for _, e := range ents {
		got, err := os.ReadFile(filepath.Join(out, e.Name()))
		must(err)
		if strings.HasPrefix(e.Name(), "d.") {
			if len(got) != 10 || bytes.IndexByte(got, 0) >= 0 {
				t.Fatalf("head -c10 of config, %s: %q", e.Name(), got)
			}
			continue
		}
		checkExact(t, e.Name(), got)
		if strings.HasPrefix(e.Name(), "a.") || strings.HasPrefix(e.Name(), "b.") {
			if !strings.Contains(string(got), "\nlabel = ") || !strings.HasPrefix(string(got), "drivers = sim\n") {
				t.Fatalf("config read %s is not a config:\n%q", e.Name(), got)
			}
		}
	}
}

// The tree's own files cannot be deleted or replaced by accident: unlink
// is EPERM and changes nothing; tools that remove their target first fail
// at that step; rm -rf of a host removes it as rmdir would, and nothing
// while it is busy.
func TestToolsCannotDeleteTree(t *testing.T) {
	t.Parallel()
	d := start(t, "--demo")
	config := d.read("hosts/lab03/config")
	for _, cmd := range []string{"rm hosts/lab03/power", "rm -f hosts/lab03/config", "rm hosts/lab03/state", "rm README", "rm -f events.log", "rmdir hosts/lab01/subhosts"} {
		d.fails(cmd, "Operation not permitted")
	}
	if ls := d.ok("ls hosts/lab03"); !strings.Contains(ls, "power\n") || !strings.Contains(ls, "state\n") || !strings.Contains(ls, "config\n") {
		t.Fatalf("files gone after a refused rm:\n%s", ls)
	}
	if p := d.read("hosts/lab03/power"); p != "off\n" {
		t.Fatalf("power after a refused rm = %q", p)
	}
	src := filepath.Join(t.TempDir(), "new.conf")
	if err := os.WriteFile(src, []byte("drivers = sim\nlabel = replaced\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Tools that unlink the target first stop there.
	d.fails("install -m 644 "+src+" hosts/lab03/config", "Operation not permitted")
	d.fails("cp --remove-destination "+src+" hosts/lab03/config", "Operation not permitted")
	d.fails("mv "+src+" hosts/lab03/config", "Operation not permitted")
	d.fails("mv hosts/lab03/config hosts/lab03/config.old", "Operation not permitted")
	if got := d.read("hosts/lab03/config"); got != config {
		t.Fatalf("config changed by refused tools:\n%s\nwas\n%s", got, config)
	}

	// A busy host: lab02 runs. Nothing goes.
	d.fails("rm -rf hosts/lab02", "Device or resource busy")
	if ls := d.ok("ls hosts/lab02"); !strings.Contains(ls, "power\n") || !strings.Contains(ls, "config\n") {
		t.Fatalf("rm -rf of a busy host removed files:\n%s", ls)
	}
	// A running host with idle subhosts: not even the subhosts go.
	d.ok("echo 'on wait' > hosts/lab01/power")
	d.fails("rm -rf hosts/lab01", "Device or resource busy")
	if subs := d.ok("ls hosts/lab01/subhosts"); subs != "vm1\nvm2\n" {
		t.Fatalf("rm -rf of a busy host removed subhosts: %q", subs)
	}
	if p := d.read("hosts/lab01/power"); p != "on\n" {
		t.Fatalf("lab01 power = %q", p)
	}
	// Off, it goes as rmdir would take it, with its subhosts.
	d.ok("echo 'off wait' > hosts/lab01/power")
	d.ok("rm -rf hosts/lab01")
	if hosts := d.ok("ls hosts"); strings.Contains(hosts, "lab01") {
		t.Fatalf("rm -rf left lab01: %q", hosts)
	}
	if log := d.read("events.log"); !strings.Contains(log, "hosts/lab01 removed") {
		t.Fatalf("no removed event:\n%s", log)
	}
	d.ok("mkdir groups/g && echo lab03 > groups/g/members")
	d.ok("rm -rf groups/g")
	if groups := d.ok("ls groups"); groups != "" {
		t.Fatalf("rm -rf left groups: %q", groups)
	}
	// find -delete is a recursive removal too.
	d.ok("find hosts/lab03 -delete")
	if hosts := d.ok("ls hosts"); strings.Contains(hosts, "lab03") {
		t.Fatalf("find -delete left lab03: %q", hosts)
	}
}

// Editing the way tools edit: a temporary file beside the target, fsync,
// rename over the target.
func TestToolsEditInPlace(t *testing.T) {
	t.Parallel()
	needTools(t, "sed", "perl", "vim", "python3")
	d := start(t)
	d.addHost("e1", "drivers = sim\nlabel = one\nsim.on-delay = 100ms")
	conf := func() string { t.Helper(); return d.read("hosts/e1/config") }

	d.ok(`sed -i 's/^label = .*/label = by sed/' hosts/e1/config`)
	if c := conf(); !strings.Contains(c, "label = by sed\n") || !strings.Contains(c, "sim.on-delay = 100ms\n") {
		t.Fatalf("after sed -i:\n%s", c)
	}
	d.ok(`perl -pi -e 's/by sed/by perl/' hosts/e1/config`)
	if c := conf(); !strings.Contains(c, "label = by perl\n") {
		t.Fatalf("after perl -pi:\n%s", c)
	}
	// vim writes a backup first (its rename of config is refused, so it
	// copies it), fsyncs, and deletes the backup.
	d.ok(`vim -u NONE -i NONE -N -E -s -c 'set nobackup writebackup backupcopy=no fsync backupskip= backupdir=.' -c '%s/^label = .*/label = by vim/' -c wq hosts/e1/config`)
	if c := conf(); !strings.Contains(c, "label = by vim\n") {
		t.Fatalf("after vim:\n%s", c)
	}
	// The same with vim's default backupcopy (auto: it probes the directory
	// with a file named 4913).
	d.ok(`vim -u NONE -i NONE -N -E -s -c 'set writebackup fsync backupskip=' -c '%s/^label = .*/label = by vim2/' -c wq hosts/e1/config`)
	if c := conf(); !strings.Contains(c, "label = by vim2\n") {
		t.Fatalf("after vim (auto):\n%s", c)
	}

	// A rename over config replaces it whole: a key not in the new file
	// goes, unlike a plain write, which merges.
	d.ok(`printf 'drivers = sim\nlabel = replaced\n' > hosts/e1/new.tmp && mv hosts/e1/new.tmp hosts/e1/config`)
	if c := conf(); c != "drivers = sim\nlabel = replaced\n" {
		t.Fatalf("after mv over config:\n%s", c)
	}
	d.ok(`echo 'sim.on-delay = 50ms' > hosts/e1/config`)
	if c := conf(); c != "drivers = sim\nlabel = replaced\nsim.on-delay = 50ms\n" {
		t.Fatalf("a plain write must merge:\n%s", c)
	}
	before := conf()
	for _, bad := range []string{`drivers = sim\nnot a line\n`, `drivers = sim\nno.such.key = 1\n`} {
		d.ok(fmt.Sprintf(`printf '%s' > hosts/e1/bad.tmp`, bad))
		r := d.sh(`python3 -c 'import os; os.rename("hosts/e1/bad.tmp", "hosts/e1/config")'`)
		if r.code == 0 || !strings.Contains(r.err, "Invalid argument") {
			t.Fatalf("rename of a bad config: %+v", r)
		}
		if c := conf(); c != before {
			t.Fatalf("a refused rename changed config:\n%s", c)
		}
		d.ok("rm hosts/e1/bad.tmp")
	}
	if ls := d.ok("ls hosts/e1"); strings.Contains(ls, ".tmp") || strings.Contains(ls, "~") || strings.Contains(ls, "4913") || strings.Contains(ls, "sed") {
		t.Fatalf("temporary files left:\n%s", ls)
	}
	if log := d.read("hosts/e1/events.log"); !strings.Contains(log, "config replaced") || !strings.Contains(log, "refused replace") {
		t.Fatalf("events.log lacks the replacements:\n%s", log)
	}

	// A temporary file is never a host, a key or a command.
	d.ok(`echo 'label = sneaky' > hosts/e1/label && echo on > hosts/e1/power.new`)
	if hosts := d.ok("ls hosts"); hosts != "e1\n" {
		t.Fatalf("hosts = %q", hosts)
	}
	if c := conf(); c != before {
		t.Fatalf("a temporary file changed config:\n%s", c)
	}
	if p := d.read("hosts/e1/power"); p != "off\n" {
		t.Fatalf("a temporary file ran a command: power %q", p)
	}
	d.ok("rm hosts/e1/label")
	// Renamed over power, its content runs as one write.
	d.ok("mv hosts/e1/power.new hosts/e1/power")
	eventually(t, "power on after mv over power", func() bool { return d.read("hosts/e1/power") == "on\n" })
	// Over a file that takes no writes, or away from the tree: EPERM.
	d.ok("echo x > hosts/e1/x.tmp")
	d.fails("mv hosts/e1/x.tmp hosts/e1/state", "Operation not permitted")
	d.fails("mv hosts/e1/x.tmp hosts/e1/events.log", "Operation not permitted")
	d.fails("mv hosts/e1/state hosts/e1/y", "Operation not permitted")
	// Tools set mode, owner and times on their temporary file.
	d.ok("chmod 640 hosts/e1/x.tmp && chown 12:34 hosts/e1/x.tmp && touch -d @1000000000 hosts/e1/x.tmp")
	if st := d.ok("stat -c '%a %u %g %Y %s' hosts/e1/x.tmp"); st != "640 12 34 1000000000 2\n" {
		t.Fatalf("stat of a temporary file = %q", st)
	}
	d.ok("rm hosts/e1/x.tmp")
	if _, err := os.Stat(filepath.Join(d.mnt, "hosts/e1/x.tmp")); err == nil {
		t.Fatal("unlinked temporary file still there")
	}
	// Bounded: 16 per directory, 1 MiB each.
	d.ok("for i in $(seq 16); do : > hosts/e1/t$i; done")
	d.fails(": > hosts/e1/t17", "No space left on device")
	d.ok("rm hosts/e1/t*")
	d.fails("head -c 1100000 /dev/zero > hosts/e1/big.tmp", "File too large")
	d.ok("rm hosts/e1/big.tmp")

	// Subhosts and groups alike.
	d.ok("mkdir hosts/e1/subhosts/s1 && echo 'label = sub' > hosts/e1/subhosts/s1/config")
	d.ok(`sed -i 's/= sub/= sub by sed/' hosts/e1/subhosts/s1/config`)
	if c := d.read("hosts/e1/subhosts/s1/config"); c != "label = sub by sed\n" {
		t.Fatalf("subhost config after sed -i: %q", c)
	}
	d.ok("mkdir groups/g && echo e1 > groups/g/members")
	d.ok(`printf 'e1/subhosts/s1\n' > groups/g/m.tmp && mv groups/g/m.tmp groups/g/members`)
	if m := d.read("groups/g/members"); m != "e1/subhosts/s1\n" {
		t.Fatalf("members after mv (replaces) = %q", m)
	}
	d.ok(`sed -i 's/s1/s1\ne1/' groups/g/members`)
	if m := d.read("groups/g/members"); m != "e1/subhosts/s1\ne1\n" {
		t.Fatalf("members after sed -i = %q", m)
	}

	// fsync and fdatasync succeed on every writable file, and a config
	// write is on disk when they return.
	d.ok(`python3 - <<'EOF'
import os
for name, data in (("hosts/e1/config", b"label = synced\n"), ("hosts/e1/power", b"on\n"), ("groups/g/members", b"e1\n"), ("ctl", b"")):
    fd = os.open(name, os.O_WRONLY | os.O_APPEND)
    if data:
        os.write(fd, data)
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
EOF`)
	onDisk, err := os.ReadFile(filepath.Join(d.config, "hosts", "e1.conf"))
	if err != nil || !strings.Contains(string(onDisk), "label = synced\n") {
		t.Fatalf("config on disk after fsync: %q %v", onDisk, err)
	}
}

// A secret reads back as <set>; a tool that writes the file back with it
// keeps the stored value.
func TestToolsSecretKept(t *testing.T) {
	t.Parallel()
	d := start(t)
	d.addHost("s1", "drivers = sim\nlabel = one\nipmi.password = hunter2")
	if c := d.read("hosts/s1/config"); !strings.Contains(c, "ipmi.password = <set>\n") {
		t.Fatalf("config shows the secret:\n%s", c)
	}
	d.ok(`sed -i 's/^label = .*/label = two/' hosts/s1/config`)
	onDisk, err := os.ReadFile(filepath.Join(d.config, "hosts", "s1.conf"))
	if err != nil || !strings.Contains(string(onDisk), "ipmi.password = hunter2\n") || !strings.Contains(string(onDisk), "label = two\n") {
		t.Fatalf("on disk after sed -i: %q %v", onDisk, err)
	}
	// <set> stands for a stored value only.
	d.ok(`printf 'drivers = sim\nwol.password = <set>\n' > hosts/s1/c.tmp`)
	r := d.sh(`python3 -c 'import os; os.rename("hosts/s1/c.tmp", "hosts/s1/config")'`)
	if r.code == 0 || !strings.Contains(r.err, "Invalid argument") {
		t.Fatalf("<set> for a secret never stored: %+v", r)
	}
}

// An operator edits with sed -i like anyone (the directories are
// writable by the operators group), and a rename gets the checks a write
// gets: a privileged key is EACCES and nothing changes.
func TestToolsOperatorEdits(t *testing.T) {
	t.Parallel()
	needTools(t, "python3")
	d, r := startRoles(t)
	if res := d.asUser(r.operator, `sed -i 's/^label = .*/label = by operator/' hosts/lab03/config`); res.code != 0 {
		t.Fatalf("operator's sed -i: %+v", res)
	}
	before := d.read("hosts/lab03/config")
	if !strings.Contains(before, "label = by operator\n") {
		t.Fatalf("config after the operator's sed -i:\n%s", before)
	}
	res := d.asUser(r.operator, `cp hosts/lab03/config /tmp/mf-op-$$ 2>/dev/null; { cat hosts/lab03/config; echo 'ns.root = /'; } > hosts/lab03/p.tmp && python3 -c 'import os; os.rename("hosts/lab03/p.tmp", "hosts/lab03/config")'`)
	if res.code == 0 || !strings.Contains(res.err, "Permission denied") {
		t.Fatalf("operator's rename with a privileged key: %+v", res)
	}
	if after := d.read("hosts/lab03/config"); after != before {
		t.Fatalf("a refused rename changed config:\n%s", after)
	}
	d.asUser(r.operator, "rm -f hosts/lab03/p.tmp /tmp/mf-op-*")
}

// ansible-core with its defaults (no unsafe_writes): lineinfile, copy,
// template and slurp against a real mount.
func TestToolsAnsible(t *testing.T) {
	// Python is CPU-bound: it runs with the cluster tests, which mostly wait.
	t.Parallel()
	needTools(t, "ansible")
	d := start(t)
	d.addHost("a1", "drivers = sim\nlabel = one\nsim.on-delay = 100ms")
	home := t.TempDir()
	env := fmt.Sprintf("HOME=%[1]s ANSIBLE_LOCAL_TEMP=%[1]s/tmp ANSIBLE_REMOTE_TEMP=%[1]s/rtmp ANSIBLE_NOCOLOR=1 ANSIBLE_HOST_KEY_CHECKING=0 ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0", home)
	cfg := filepath.Join(d.mnt, "hosts/a1/config")
	ansible := func(module, args string, extra ...string) result {
		t.Helper()
		return d.sh(fmt.Sprintf("env %s ansible localhost -c local -m %s -a %q %s", env, module, args, strings.Join(extra, " ")))
	}
	ok := func(module, args string, extra ...string) {
		t.Helper()
		if r := ansible(module, args, extra...); r.code != 0 {
			t.Fatalf("ansible -m %s -a %q: %+v", module, args, r)
		}
	}
	ok("lineinfile", fmt.Sprintf("path=%s regexp='^label' line='label = by lineinfile'", cfg))
	if c := d.read("hosts/a1/config"); c != "drivers = sim\nlabel = by lineinfile\nsim.on-delay = 100ms\n" {
		t.Fatalf("after lineinfile:\n%s", c)
	}
	src := filepath.Join(home, "src.conf")
	if err := os.WriteFile(src, []byte("drivers = sim\nlabel = by copy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok("copy", fmt.Sprintf("src=%s dest=%s mode=0664", src, cfg))
	if c := d.read("hosts/a1/config"); c != "drivers = sim\nlabel = by copy\n" {
		t.Fatalf("after copy (replaces the whole config):\n%s", c)
	}
	tmpl := filepath.Join(home, "t.j2")
	if err := os.WriteFile(tmpl, []byte("drivers = sim\nlabel = {{ lbl }}\nsim.on-delay = 200ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok("template", fmt.Sprintf("src=%s dest=%s", tmpl, cfg), "-e", "lbl=templated")
	if c := d.read("hosts/a1/config"); c != "drivers = sim\nlabel = templated\nsim.on-delay = 200ms\n" {
		t.Fatalf("after template:\n%s", c)
	}
	r := ansible("slurp", "src="+cfg)
	// base64 of the config.
	if r.code != 0 || !strings.Contains(r.out, "ZHJpdmVycyA9IHNpbQpsYWJlbCA9IHRlbXBsYXRlZApzaW0ub24tZGVsYXkgPSAyMDBtcwo=") {
		t.Fatalf("slurp: %+v", r)
	}
	// A bad config fails the task and changes nothing.
	if err := os.WriteFile(src, []byte("drivers = sim\nthis is not a config line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := ansible("copy", fmt.Sprintf("src=%s dest=%s", src, cfg)); r.code == 0 {
		t.Fatalf("copy of a bad config succeeded: %+v", r)
	}
	if c := d.read("hosts/a1/config"); c != "drivers = sim\nlabel = templated\nsim.on-delay = 200ms\n" {
		t.Fatalf("a failed copy changed config:\n%s", c)
	}
	// Power through copy's content: one write.
	ok("copy", fmt.Sprintf("content='on\n' dest=%s", filepath.Join(d.mnt, "hosts/a1/power")))
	eventually(t, "power on after ansible copy", func() bool { return d.read("hosts/a1/power") == "on\n" })
	if ls := d.ok("ls -A hosts/a1"); strings.Contains(ls, "ansible") || strings.Contains(ls, "tmp") {
		t.Fatalf("temporary files left:\n%s", ls)
	}
}
