package ptyhold

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/internal/cloexec"
	"golang.org/x/sys/unix"
)

// The middle process and the holder are this binary again, told apart by
// stageEnv before main runs (as the ns stage is).
func init() {
	switch os.Getenv(stageEnv) {
	case "1":
		os.Exit(middle())
	case "2":
		os.Exit(serve())
	}
}

// middle marks every descriptor it did not mean to pass close-on-exec (a
// descriptor the daemon leaked, its /dev/fuse above all, must not live on
// in a holder), starts the holder in a session of its own, writes its pid
// to stdout and exits: the holder's parent is then init, not the daemon.
func middle() int {
	if err := cloexec.All(); err != nil {
		return 1
	}
	files := []uintptr{0, 0, 0, masterFd, listenFd}
	if os.Getenv(logEnv) == "1" {
		files = append(files, logFd)
	}
	env := []string{stageEnv + "=2", sockEnv + "=" + os.Getenv(sockEnv), logEnv + "=" + os.Getenv(logEnv), "GOMAXPROCS=1"}
	pid, err := syscall.ForkExec("/proc/self/exe", os.Args, &syscall.ProcAttr{Dir: "/", Env: env, Files: files, Sys: &syscall.SysProcAttr{Setsid: true}})
	if err != nil {
		return 1
	}
	fmt.Printf("%d\n", pid)
	return 0
}

// holder is the state of the holder process. Every buffer is bounded:
// output no daemon took is a ring of Backlog bytes, input is taken from
// the daemon only once the guest has read what came before.
type holder struct {
	client   int // the connected daemon, -1 if none
	out      ring
	in       []byte
	inBuf    [4096]byte
	log      bool
	logSize  int64
	sock     string
	sockIno  uint64
	sockDev  uint64
	readBuf  [4096]byte
	uid      int
	finished bool
}

func serve() int {
	// Signals meant for the daemon's terminal or cgroup (Ctrl-C,
	// systemctl kill -s HUP) must not end the console. SIGTERM does,
	// cleanly; the driver uses SIGKILL.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	h := &holder{client: -1, sock: os.Getenv(sockEnv), uid: os.Getuid()}
	var st unix.Stat_t
	if unix.Stat(h.sock, &st) == nil {
		h.sockIno, h.sockDev = st.Ino, st.Dev
	}
	if os.Getenv(logEnv) == "1" {
		h.log = true
		if unix.Fstat(logFd, &st) == nil {
			h.logSize = st.Size
		}
	}
	_ = unix.SetNonblock(masterFd, true)
	_ = unix.SetNonblock(listenFd, true)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	for !h.finished && len(term) == 0 {
		h.round()
	}
	h.flush()
	h.removeSocket()
	return 0
}

// round waits for one event and handles it.
func (h *holder) round() {
	fds := []unix.PollFd{{Fd: masterFd, Events: unix.POLLIN}, {Fd: listenFd, Events: unix.POLLIN}}
	if len(h.in) > 0 {
		fds[0].Events |= unix.POLLOUT
	}
	if h.client >= 0 {
		ev := int16(0)
		if len(h.in) == 0 {
			ev |= unix.POLLIN
		}
		if h.out.n > 0 {
			ev |= unix.POLLOUT
		}
		fds = append(fds, unix.PollFd{Fd: int32(h.client), Events: ev})
	}
	// A second's timeout lets a SIGTERM (noticed between rounds) end it.
	if _, err := unix.Poll(fds, 1000); err != nil {
		return
	}
	if fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
		h.readGuest()
	}
	if fds[0].Revents&unix.POLLOUT != 0 {
		h.writeGuest()
	}
	if fds[1].Revents&unix.POLLIN != 0 {
		h.accept()
	}
	if len(fds) > 2 && int(fds[2].Fd) == h.client {
		h.serveClient(fds[2].Revents)
	}
}

// readGuest takes the guest's output. A read error (EIO once every slave
// is closed) means the guest is gone.
func (h *holder) readGuest() {
	n, err := unix.Read(masterFd, h.readBuf[:])
	if n > 0 {
		p := h.readBuf[:n]
		h.out.write(p)
		h.writeLog(p)
		return
	}
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	h.finished = true
}

func (h *holder) writeLog(p []byte) {
	if !h.log {
		return
	}
	if h.logSize+int64(len(p)) > LogLimit {
		if unix.Ftruncate(logFd, 0) == nil {
			h.logSize = 0
		}
	}
	if n, err := unix.Write(logFd, p); err == nil {
		h.logSize += int64(n)
	}
}

func (h *holder) writeGuest() {
	n, err := unix.Write(masterFd, h.in)
	if n > 0 {
		h.in = h.in[:copy(h.in, h.in[n:])]
		return
	}
	if err != unix.EAGAIN && err != unix.EINTR {
		h.in = h.in[:0]
	}
}

// accept takes a daemon's connection, replacing the one before. Only the
// holder's own user (root) is served, whatever the socket's mode.
func (h *holder) accept() {
	fd, _, err := unix.Accept4(listenFd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		return
	}
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil || int(cred.Uid) != h.uid {
		unix.Close(fd)
		return
	}
	h.dropClient()
	h.client = fd
}

func (h *holder) dropClient() {
	if h.client >= 0 {
		unix.Close(h.client)
		h.client = -1
	}
}

func (h *holder) serveClient(rev int16) {
	if rev&unix.POLLOUT != 0 {
		if n, err := unix.Write(h.client, h.out.peek()); n > 0 {
			h.out.consume(n)
		} else if err != unix.EAGAIN && err != unix.EINTR {
			h.dropClient()
			return
		}
	}
	if rev&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) == 0 {
		return
	}
	if len(h.in) > 0 {
		if rev&(unix.POLLHUP|unix.POLLERR) != 0 {
			h.dropClient()
		}
		return
	}
	n, err := unix.Read(h.client, h.inBuf[:])
	switch {
	case n > 0:
		h.in = h.inBuf[:n]
	case err == unix.EAGAIN || err == unix.EINTR:
	default:
		h.dropClient()
	}
}

// flush gives a connected daemon the guest's last output, for at most two
// seconds.
func (h *holder) flush() {
	deadline := time.Now().Add(2 * time.Second)
	for h.client >= 0 && h.out.n > 0 && time.Now().Before(deadline) {
		fds := []unix.PollFd{{Fd: int32(h.client), Events: unix.POLLOUT}}
		if n, _ := unix.Poll(fds, 100); n == 0 {
			continue
		}
		n, err := unix.Write(h.client, h.out.peek())
		if n > 0 {
			h.out.consume(n)
		} else if err != unix.EAGAIN && err != unix.EINTR {
			break
		}
	}
	h.dropClient()
}

// removeSocket removes the socket if it is still the one this holder
// listens on: a holder for the guest's next life may have bound a new one
// at the same path.
func (h *holder) removeSocket() {
	var st unix.Stat_t
	if h.sockIno != 0 && unix.Stat(h.sock, &st) == nil && st.Ino == h.sockIno && st.Dev == h.sockDev {
		_ = unix.Unlink(h.sock)
	}
}

// ring is a byte queue of at most Backlog bytes that drops its oldest
// bytes to take new ones.
type ring struct {
	buf      [Backlog]byte
	start, n int
}

func (r *ring) write(p []byte) {
	if len(p) >= len(r.buf) {
		p = p[len(p)-len(r.buf):]
		r.start, r.n = 0, 0
	}
	if over := r.n + len(p) - len(r.buf); over > 0 {
		r.consume(over)
	}
	for len(p) > 0 {
		at := (r.start + r.n) % len(r.buf)
		c := copy(r.buf[at:], p)
		r.n += c
		p = p[c:]
	}
}

// peek returns the oldest bytes, as many as lie in one piece.
func (r *ring) peek() []byte {
	return r.buf[r.start:min(r.start+r.n, len(r.buf))]
}

func (r *ring) consume(k int) {
	r.start = (r.start + k) % len(r.buf)
	r.n -= k
}
