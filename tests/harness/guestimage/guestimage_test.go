package guestimage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestVersionLess(t *testing.T) {
	for _, c := range [][2]string{
		{"6.1.0-9-amd64", "6.1.0-56-amd64"},
		{"5.10.0-30-amd64", "6.1.0-1-amd64"},
		{"6.1.0-56-amd64", "6.12.0-1-amd64"},
	} {
		if !versionLess(c[0], c[1]) || versionLess(c[1], c[0]) {
			t.Errorf("versionLess(%s, %s) wrong", c[0], c[1])
		}
	}
}

func TestModuleOrder(t *testing.T) {
	_, v, err := Kernel()
	if err != nil {
		t.Skip(err)
	}
	order, err := moduleOrder(filepath.Join("/lib/modules", v), []string{"virtio_net"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range order {
		pos[moduleName(f)] = i
	}
	// virtio_net needs net_failover (which needs failover) and virtio
	// (which needs virtio_ring): each must come first.
	for _, d := range [][2]string{{"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio_ring", "virtio"}, {"virtio", "virtio_net"}} {
		a, oka := pos[d[0]]
		b, okb := pos[d[1]]
		if !oka || !okb || a > b {
			t.Errorf("load order %v: %s must come before %s", order, d[0], d[1])
		}
	}
}

// guest is one qemu-system-x86_64 with its serial console on stdio.
type guest struct {
	t       *testing.T
	cmd     *exec.Cmd
	in      io.WriteCloser
	mu      sync.Mutex
	out     bytes.Buffer // everything the console printed
	changed chan struct{}
	exited  chan struct{}
	waitErr error  // QEMU's exit, once exited is closed
	monitor string // HMP monitor socket
}

// boot starts QEMU the way a user would by hand: TCG, the image's kernel,
// initrd and command line (plus cmdline), the serial console on stdio.
func boot(t *testing.T, img Image, cmdline string, extra ...string) *guest {
	t.Helper()
	g := &guest{t: t, changed: make(chan struct{}, 1), exited: make(chan struct{})}
	g.monitor = filepath.Join(t.TempDir(), "hmp.sock")
	args := []string{"-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-monitor", "unix:" + g.monitor + ",server=on,wait=off"}
	args = append(args, "-kernel", img.Kernel, "-initrd", img.Initrd, "-append", strings.TrimSpace(img.Append+" "+cmdline))
	args = append(args, extra...)
	g.cmd = exec.Command("qemu-system-x86_64", args...)
	var err error
	if g.in, err = g.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stderr = g
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		io.Copy(g, stdout)
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-g.exited:
		default:
			g.cmd.Process.Kill()
			<-g.exited
		}
		if t.Failed() {
			t.Logf("console:\n%s", g.output())
		}
	})
	return g
}

func (g *guest) Write(p []byte) (int, error) {
	g.mu.Lock()
	g.out.Write(p)
	g.mu.Unlock()
	select {
	case g.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (g *guest) output() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.out.String()
}

// waitFor waits until the console has printed want after offset from,
// returning the offset after it; QEMU exiting first is fatal.
func (g *guest) waitFor(from int, want string) int {
	g.t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		out := g.output()
		if i := strings.Index(out[from:], want); i >= 0 {
			return from + i + len(want)
		}
		select {
		case <-g.changed:
		case <-g.exited:
			if out := g.output(); strings.Contains(out[from:], want) {
				return from + strings.Index(out[from:], want) + len(want)
			}
			g.t.Fatalf("QEMU exited before the console printed %q", want)
		case <-deadline:
			g.t.Fatalf("the console did not print %q within 2 minutes", want)
		}
	}
}

func (g *guest) typeLine(line string) {
	g.t.Helper()
	if _, err := io.WriteString(g.in, line+"\n"); err != nil {
		g.t.Fatal(err)
	}
}

func (g *guest) waitExit() error {
	g.t.Helper()
	select {
	case <-g.exited:
		return g.waitErr
	case <-time.After(time.Minute):
		g.t.Fatal("QEMU did not exit within a minute")
		return nil
	}
}

// hmp sends one human monitor command.
func (g *guest) hmp(cmd string) {
	g.t.Helper()
	c, err := net.Dial("unix", g.monitor)
	if err != nil {
		g.t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString(')'); err != nil { // the "(qemu)" prompt
		g.t.Fatal(err)
	}
	fmt.Fprintf(c, "%s\n", cmd)
	if _, err := r.ReadString(')'); err != nil && !errors.Is(err, io.EOF) {
		g.t.Fatal(err)
	}
}

// TestBoot boots the image, runs a command through the serial console and
// powers off from inside: QEMU exits.
func TestBoot(t *testing.T) {
	img := Skip(t)
	t.Logf("image %s: kernel %s, modules %v", img.Dir, img.Version, img.Modules)
	if fi, err := os.Stat(img.Initrd); err == nil {
		t.Logf("initrd %d KiB", fi.Size()/1024)
	}
	began := time.Now()
	g := boot(t, img, "mfs.ip=10.0.2.15/24", "-device", "virtio-net-pci,netdev=n0", "-netdev", "user,id=n0,restrict=on")
	off := g.waitFor(0, ReadyLine)
	t.Logf("boot to %q: %v (TCG)", ReadyLine, time.Since(began).Round(time.Millisecond))
	if strings.Contains(g.output(), "failed") {
		t.Errorf("the guest reported a failure:\n%s", g.output())
	}
	off = g.waitFor(off, Prompt)
	// The guest prints 42, not the command's own echo "6*7".
	g.typeLine("echo $((6*7)); ip -o addr show eth0")
	off = g.waitFor(off, "42")
	g.waitFor(off, "10.0.2.15/24")
	g.typeLine("poweroff -f")
	if err := g.waitExit(); err != nil {
		t.Errorf("QEMU after poweroff -f: %v", err)
	}
}

// TestPowerButton: QEMU's system_powerdown (ACPI) powers the guest off.
func TestPowerButton(t *testing.T) {
	img := Skip(t)
	g := boot(t, img, "")
	off := g.waitFor(0, ReadyLine)
	g.hmp("system_powerdown")
	g.waitFor(off, "machinefs-guest: power button")
	if err := g.waitExit(); err != nil {
		t.Errorf("QEMU after system_powerdown: %v", err)
	}
}

// TestPanic: sysrq c panics the guest, and QEMU sees it through pvpanic
// (exit-failure: QEMU exits 1 on GUEST_PANICKED; without pvpanic the
// guest would hang and QEMU would not exit).
func TestPanic(t *testing.T) {
	img := Skip(t)
	g := boot(t, img, "", "-device", "pvpanic", "-action", "panic=exit-failure")
	off := g.waitFor(0, ReadyLine)
	g.waitFor(off, Prompt)
	g.typeLine("echo c > /proc/sysrq-trigger")
	g.waitFor(off, "Kernel panic")
	err := g.waitExit()
	if err == nil {
		t.Fatalf("QEMU exited 0 after the guest panicked, want 1 (pvpanic, panic=exit-failure)")
	}
}
