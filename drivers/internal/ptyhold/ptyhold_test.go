package ptyhold

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/internal/procfs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guest is a holder with the test as its guest: the test holds the slave.
type guest struct {
	t     *testing.T
	slave *os.File
	sock  string
	h     Holder
}

func startGuest(t *testing.T, log *os.File) *guest {
	t.Helper()
	master, slave, err := Pty()
	if err != nil {
		t.Fatal(err)
	}
	// Raw: what the test writes is what the holder reads, no echo.
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Lflag &^= unix.ECHO | unix.ICANON | unix.ISIG
	tio.Oflag &^= unix.OPOST
	tio.Iflag &^= unix.ICRNL
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	g := &guest{t: t, slave: slave, sock: filepath.Join(t.TempDir(), "console.sock")}
	g.h, err = Start(master, Options{Socket: g.sock, Label: "test", Log: log})
	master.Close()
	if err != nil {
		slave.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close(); Kill(g.h.Pid, g.h.Start) })
	return g
}

func (g *guest) dial() *net.UnixConn {
	g.t.Helper()
	c, err := Dial(g.sock)
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

func readFull(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	if c, ok := r.(*net.UnixConn); ok {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatalf("reading %d bytes: %v (got %q)", n, err, buf)
	}
	return string(buf)
}

func alive(h Holder) bool {
	st, err := procfs.ReadStat(h.Pid)
	return err == nil && st.Live() && st.Start == h.Start
}

func waitGone(t *testing.T, h Holder, sock string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(h) {
		if time.Now().After(deadline) {
			t.Fatalf("holder %d still runs", h.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("the holder left its socket")
	}
}

// Output written while no daemon is connected is kept (the last Backlog
// bytes) and replayed to the next; input goes to the guest; the guest
// never blocks on its console.
func TestHolderBacklogAndInput(t *testing.T) {
	g := startGuest(t, nil)
	g.slave.Write([]byte("boot line\n"))
	c := g.dial()
	if got := readFull(t, c, 10); got != "boot line\n" {
		t.Fatalf("backlog: %q", got)
	}
	c.Write([]byte("ls\n"))
	if got := readFull(t, g.slave, 3); got != "ls\n" {
		t.Fatalf("input: %q", got)
	}
	c.Close()
	// 200 KiB with nobody connected: the writes do not block, and the
	// next daemon gets the last 64 KiB of it, in order.
	var all bytes.Buffer
	for i := 0; all.Len() < 200<<10; i++ {
		all.WriteString(strconv.Itoa(i) + " ")
	}
	done := make(chan error, 1)
	go func() { _, err := g.slave.Write(all.Bytes()); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the guest blocked on its console with no daemon connected")
	}
	g.slave.Write([]byte("END"))
	// At the connection, what the holder has not read yet (in the
	// kernel's pty buffer, up to 64 KiB) comes as live output after the
	// backlog: the daemon gets at most twice Backlog of the 200 KiB.
	c2 := g.dial()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.HasSuffix(got, []byte("END")) {
		n, err := c2.Read(buf)
		if err != nil {
			t.Fatalf("replay: %v after %d bytes", err, len(got))
		}
		got = append(got, buf[:n]...)
	}
	whole := all.String() + "END"
	if len(got) < Backlog || len(got) > 2*Backlog || !strings.HasSuffix(whole, string(got)) {
		t.Fatalf("replay: %d bytes, want the last %d to %d of what the guest wrote", len(got), Backlog, 2*Backlog)
	}
}

// A new connection replaces the one before; the holder keeps nothing but
// its console's descriptors; it ends, removing its socket, when the guest
// closes the slave.
func TestHolderReplaceAndEnd(t *testing.T) {
	leak, err := os.Open("/dev/null") // a descriptor the daemon leaked
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	unix.FcntlInt(leak.Fd(), unix.F_SETFD, 0)
	logf, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	g := startGuest(t, logf)
	if st, _ := procfs.ReadStat(g.h.Pid); st.Ppid == os.Getpid() {
		t.Fatal("the holder is the daemon's child")
	}
	fds, _ := os.ReadDir("/proc/" + strconv.Itoa(g.h.Pid) + "/fd")
	for _, e := range fds {
		n, _ := strconv.Atoi(e.Name())
		target, _ := os.Readlink("/proc/" + strconv.Itoa(g.h.Pid) + "/fd/" + e.Name())
		// Above the console's own, only the Go runtime's (its poller, the
		// cgroup file it reads the CPU quota from).
		if n > logFd && !strings.HasPrefix(target, "anon_inode:") && !strings.HasPrefix(target, "/sys/fs/cgroup/") {
			t.Fatalf("the holder holds fd %d (%s)", n, target)
		}
	}
	if st, err := os.Stat(g.sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", st, err)
	}
	c1 := g.dial()
	c2 := g.dial()
	c1.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c1.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("first connection after a second one: %d %v, want EOF", n, err)
	}
	g.slave.Write([]byte("bye\n"))
	g.slave.Close()
	if got := readFull(t, c2, 4); got != "bye\n" {
		t.Fatalf("last words: %q", got)
	}
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the guest: %v, want EOF", err)
	}
	waitGone(t, g.h, g.sock)
	if b, _ := os.ReadFile(logf.Name()); string(b) != "bye\n" {
		t.Fatalf("log: %q", b)
	}
}

func TestHolderKill(t *testing.T) {
	g := startGuest(t, nil)
	if err := Kill(g.h.Pid, g.h.Start); err != nil {
		t.Fatal(err)
	}
	if alive(g.h) {
		t.Fatal("alive after Kill")
	}
	if err := Kill(g.h.Pid, g.h.Start); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
}

func TestRing(t *testing.T) {
	var r ring
	r.write([]byte("abc"))
	r.consume(2)
	big := bytes.Repeat([]byte("x"), Backlog-1)
	r.write(big)
	r.write([]byte("yz"))
	var got []byte
	for r.n > 0 {
		p := r.peek()
		got = append(got, p...)
		r.consume(len(p))
	}
	if want := append(bytes.Repeat([]byte("x"), Backlog-2), 'y', 'z'); !bytes.Equal(got, want) {
		t.Fatalf("ring: %d bytes, last %q", len(got), got[len(got)-3:])
	}
}
