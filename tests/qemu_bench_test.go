package tests

// Benchmarks of QEMU guests through the tree against what scripts do
// today, each as a ratio measured in the same run (make bench):
//
//	BenchmarkQEMUConsole  tree-x-faster-*: info status through the
//	                      console file vs socat to a QMP socket, a process
//	                      per command (target: 5x)
//	BenchmarkQEMUBoot     x-hand-*: on through the tree until the guest's
//	                      ready line shows in serial, vs the same QEMU
//	                      command line started by hand until the same line
//	                      shows on its serial console (target: within 1.1)

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machinefs/machinefs/tests/harness/guestimage"
)

const qemuBenchVM = "hosts/lab01/subhosts/mfqb1"

// qemuBench mounts machinefs (built without -race) with a sim host and a
// QEMU subhost mfqb1, off.
func qemuBench(b *testing.B) (d *benchDaemon, dir string) {
	b.Helper()
	img := guestimage.Skip(b)
	if _, err := exec.LookPath("socat"); err != nil {
		b.Skip("no socat (apt-get install socat)")
	}
	dir = qemuDir(b)
	etc := b.TempDir()
	os.MkdirAll(filepath.Join(etc, "hosts/lab01/subhosts"), 0o755)
	os.WriteFile(filepath.Join(etc, "hosts/lab01.conf"), []byte("drivers = sim\nsim.initial = on\n"), 0o644)
	os.WriteFile(filepath.Join(etc, qemuBenchVM+".conf"), []byte(qemuConfig(img, dir, "", "")+"\n"), 0o644)
	d, _ = startBench(b, qemuBenchVM+"/power", "-c", etc)
	return d, dir
}

// serialWatch reads a stream file (the tree's serial, or QEMU's stdout)
// for as long as it is open and counts the ready lines in it.
type serialWatch struct {
	mu      sync.Mutex
	readies int
	changed chan struct{}
	done    chan struct{}
}

func watchSerial(r io.Reader) *serialWatch {
	w := &serialWatch{changed: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.Contains(sc.Text(), guestimage.ReadyLine) {
				w.mu.Lock()
				w.readies++
				w.mu.Unlock()
				select {
				case w.changed <- struct{}{}:
				default:
				}
			}
		}
	}()
	return w
}

func (w *serialWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.readies
}

// wait waits until n ready lines were read.
func (w *serialWatch) wait(b *testing.B, n int) {
	b.Helper()
	deadline := time.After(2 * time.Minute)
	for w.count() < n {
		select {
		case <-w.changed:
		case <-w.done:
			if w.count() >= n {
				return
			}
			b.Fatalf("serial stream ended before ready line %d", n)
		case <-deadline:
			b.Fatalf("no ready line %d within 2 minutes", n)
		}
	}
}

// handGuest is QEMU started by hand, as a script would: the tree guest's
// own command line, with its own QMP socket and pid file, not stopped at
// start (-S), the serial console on stdout.
type handGuest struct {
	cmd    *exec.Cmd
	serial *serialWatch
	qmp    string
}

// handArgs turns the command line machinefs ran into the one a user would
// run by hand: the same machine, kernel and devices.
func handArgs(tree []string, dir string) []string {
	var out []string
	for i := 0; i < len(tree); i++ {
		a := tree[i]
		next := ""
		if i+1 < len(tree) {
			next = tree[i+1]
		}
		switch {
		case a == "-S":
			continue
		case a == "-qmp":
			out = append(out, a, "unix:"+filepath.Join(dir, "qmp.sock")+",server=on,wait=off")
			i++
		case a == "-pidfile":
			out = append(out, a, filepath.Join(dir, "qemu.pid"))
			i++
		case a == "-chardev" && strings.Contains(next, "id=ser0"):
			i++
		case a == "-serial":
			out = append(out, a, "stdio")
			i++
		default:
			out = append(out, a)
		}
	}
	return out
}

func startHand(b *testing.B, argv []string) *handGuest {
	b.Helper()
	dir, err := os.MkdirTemp("", "mfqh")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	h := &handGuest{qmp: filepath.Join(dir, "qmp.sock")}
	h.cmd = exec.Command(argv[0], handArgs(argv[1:], dir)...)
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	h.serial = watchSerial(out)
	b.Cleanup(h.stop)
	return h
}

func (h *handGuest) stop() {
	if h.cmd.ProcessState == nil {
		h.cmd.Process.Kill()
		<-h.serial.done
		h.cmd.Wait()
	}
}

// treeArgv is the command line of the tree guest's QEMU, from /proc: the
// pid is in the pid file in the guest's directory (qemu-dir in state).
func treeArgv(b *testing.B, d *benchDaemon) []string {
	b.Helper()
	state, err := os.ReadFile(filepath.Join(d.mnt, qemuBenchVM, "state"))
	if err != nil {
		b.Fatal(err)
	}
	pid, err := os.ReadFile(filepath.Join(stateField(string(state), "qemu-dir"), "qemu.pid"))
	if err != nil {
		b.Fatalf("QEMU's pid file: %v\nstate:\n%s", err, state)
	}
	cl, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/cmdline")
	if err != nil {
		b.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(cl), "\x00"), "\x00")
}

// openSerial reads the tree guest's serial file for the whole benchmark
// with cat, killed at the end: closing a FUSE file waits for a read in
// progress on it, and a stream's read waits for the next output.
func openSerial(b *testing.B, d *benchDaemon) *serialWatch {
	b.Helper()
	c := exec.Command("cat", filepath.Join(d.mnt, qemuBenchVM, "serial"))
	out, err := c.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(); err != nil {
		b.Fatalf("cat serial: %v", err)
	}
	w := watchSerial(out)
	b.Cleanup(func() { c.Process.Kill(); <-w.done; c.Wait() })
	return w
}

func writePower(b *testing.B, d *benchDaemon, line string) {
	b.Helper()
	if err := os.WriteFile(filepath.Join(d.mnt, qemuBenchVM, "power"), []byte(line+"\n"), 0); err != nil {
		state, _ := os.ReadFile(filepath.Join(d.mnt, qemuBenchVM, "state"))
		b.Fatalf("%s > power: %v\nstate:\n%s", line, err, state)
	}
}

// BenchmarkQEMUConsole compares `info status` through the tree with socat
// to a QMP socket, a process per command as scripts do it today
// (qmp_capabilities, then human-monitor-command). QEMU serves one QMP
// client at a time and machinefs holds its guest's, so socat talks to a
// second guest started by hand from the same command line. "tree" opens
// the console, writes, reads the reply and closes, every time; "socat" is
// `printf ... | socat - UNIX-CONNECT:qmp.sock`, which after its input ends
// waits up to half a second (-t 0.5) for more of the reply; "socat-t"
// waits 50 ms only (-t 0.05), a script tuned for speed. The sides are
// interleaved and medians reported next to means, as in
// BenchmarkUMLVersion.
func BenchmarkQEMUConsole(b *testing.B) {
	d, _ := qemuBench(b)
	serial := openSerial(b, d)
	writePower(b, d, "on wait timeout=60s")
	defer writePower(b, d, "off wait timeout=20s")
	serial.wait(b, 1)
	hand := startHand(b, treeArgv(b, d))
	hand.serial.wait(b, 1)

	consolePath := filepath.Join(d.mnt, qemuBenchVM, "console")
	buf := make([]byte, 512)
	tree := func() {
		fd, err := syscall.Open(consolePath, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := syscall.Write(fd, []byte("info status\n")); err != nil {
			b.Fatal(err)
		}
		n, err := syscall.Read(fd, buf)
		syscall.Close(fd)
		if err != nil || !strings.Contains(string(buf[:n]), "running") {
			b.Fatalf("tree reply %q %v", buf[:n], err)
		}
	}
	const qmpIn = `{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}` + "\n"
	socat := func(args ...string) func() {
		return func() {
			c := exec.Command("socat", append(args, "-", "UNIX-CONNECT:"+hand.qmp)...)
			c.Stdin = strings.NewReader(qmpIn)
			out, err := c.Output()
			if err != nil || !strings.Contains(string(out), "running") {
				b.Fatalf("socat: %q %v", out, err)
			}
		}
	}
	tool, fastTool := socat(), socat("-t", "0.05")
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	for range 50 {
		tree()
	}
	tool()
	fastTool()
	var trees, tools, fastTools []time.Duration
	b.ResetTimer()
	i := 0
	for b.Loop() {
		trees = append(trees, timed(tree))
		if i++; i%10 == 0 || len(tools) == 0 {
			b.StopTimer()
			tools = append(tools, timed(tool))
			fastTools = append(fastTools, timed(fastTool))
			b.StartTimer()
		}
	}
	b.StopTimer()
	treeMean, treeMedian := meanMedian(trees)
	toolMean, toolMedian := meanMedian(tools)
	fastMean, fastMedian := meanMedian(fastTools)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(treeMean), "tree-mean-us")
	b.ReportMetric(us(treeMedian), "tree-median-us")
	b.ReportMetric(us(toolMean), "socat-mean-us")
	b.ReportMetric(us(toolMedian), "socat-median-us")
	b.ReportMetric(us(fastMean), "socat-t-mean-us")
	b.ReportMetric(us(fastMedian), "socat-t-median-us")
	b.ReportMetric(float64(toolMean)/float64(treeMean), "tree-x-faster-mean")
	b.ReportMetric(float64(toolMedian)/float64(treeMedian), "tree-x-faster-median")
	b.ReportMetric(float64(fastMean)/float64(treeMean), "tree-x-faster-socat-t-mean")
	b.ReportMetric(float64(fastMedian)/float64(treeMedian), "tree-x-faster-socat-t-median")
}

// BenchmarkQEMUBoot compares a boot through the tree (echo on > power,
// until the guest's ready line shows in the serial file) with the same
// QEMU command line started by hand (until the same line shows on its
// serial console, stdout). Each iteration boots one of each, in turns
// first, the tree guest then off (quit), the hand one killed.
func BenchmarkQEMUBoot(b *testing.B) {
	d, _ := qemuBench(b)
	serial := openSerial(b, d)
	// A first boot, to learn the command line machinefs runs.
	writePower(b, d, "on wait timeout=60s")
	serial.wait(b, 1)
	argv := treeArgv(b, d)
	writePower(b, d, "off wait timeout=20s")

	treeBoot := func() time.Duration {
		n := serial.count()
		start := time.Now()
		writePower(b, d, "on")
		serial.wait(b, n+1)
		took := time.Since(start)
		writePower(b, d, "off wait timeout=20s")
		return took
	}
	handBoot := func() time.Duration {
		start := time.Now()
		h := startHand(b, argv)
		h.serial.wait(b, 1)
		took := time.Since(start)
		h.stop()
		return took
	}
	var trees, hands []time.Duration
	i := 0
	b.ResetTimer()
	for b.Loop() {
		if i++; i%2 == 1 {
			trees = append(trees, treeBoot())
			hands = append(hands, handBoot())
		} else {
			hands = append(hands, handBoot())
			trees = append(trees, treeBoot())
		}
	}
	b.StopTimer()
	treeMean, treeMedian := meanMedian(trees)
	handMean, handMedian := meanMedian(hands)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(treeMean), "tree-boot-mean-ms")
	b.ReportMetric(ms(treeMedian), "tree-boot-median-ms")
	b.ReportMetric(ms(handMean), "hand-boot-mean-ms")
	b.ReportMetric(ms(handMedian), "hand-boot-median-ms")
	b.ReportMetric(float64(treeMean)/float64(handMean), "x-hand-mean")
	b.ReportMetric(float64(treeMedian)/float64(handMedian), "x-hand-median")
}
