// Package ptyhold keeps a guest's console alive across daemon restarts,
// as conmon and dtach do. A pty master held by the daemon would die with
// it: the guest's console would get a hangup and its writes would fail.
// So each guest's console has a holder, a small process of its own (this
// binary again, shown as "machinefs-console HOST"), that owns the pty
// master, outlives the daemon, keeps reading the guest's output while no
// daemon is connected (the last Backlog bytes no daemon has taken are kept
// for the next one; older ones are dropped, so the guest never blocks on
// its console), and serves the console on a unix socket (mode 0600, root
// only) in the guest's state directory. A driver connects after it starts
// the guest and after it adopts one, and attaches the connection to its
// serialline.Line.
//
// The holder ends when every process of the guest has closed the pty's
// slave (the guest is gone), removing its socket; Kill ends it sooner (a
// host removed). It is started through a short-lived middle process, so
// it is no child of the daemon (no zombie to reap) and it holds no
// descriptor but the console's own: the middle process marks everything
// else close-on-exec before it starts the holder.
package ptyhold

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/internal/procfs"
)

const (
	// Backlog is how much output no daemon has taken a holder keeps.
	Backlog = 64 << 10
	// LogLimit bounds the optional on-disk log: past it the log starts
	// again from empty (as logrotate's copytruncate), so a guest cannot
	// fill the disk.
	LogLimit = 1 << 20
	// Name is the holder's argv[0], followed by its label.
	Name = "machinefs-console"

	stageEnv = "MACHINEFS_PTYHOLD"
	sockEnv  = "MACHINEFS_PTYHOLD_SOCK"
	logEnv   = "MACHINEFS_PTYHOLD_LOG"

	// The holder's descriptors: 0-2 are /dev/null.
	masterFd = 3
	listenFd = 4
	logFd    = 5

	maxSocketPath = 107
)

// Pty returns a new pseudo terminal's master and slave, both
// close-on-exec; the slave is opened without becoming anyone's controlling
// terminal. The window is 80x24, so full-screen programs in the guest know
// a size.
func Pty() (master, slave *os.File, err error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	// TIOCGPTPEER opens the slave through the master, not by a path in
	// /dev/pts that someone could have replaced.
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		unix.Close(m)
		return nil, nil, fmt.Errorf("open pty slave: %w", errno)
	}
	_ = unix.IoctlSetWinsize(int(s), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80})
	return os.NewFile(uintptr(m), "ptmx"), os.NewFile(s, "pty slave"), nil
}

// Holder is a running console holder.
type Holder struct {
	Pid   int
	Start uint64 // start time in clock ticks: a recorded pid is this holder only if it matches
}

// Options are what Start needs besides the master.
type Options struct {
	Socket string   // the unix socket's path; an old one there is replaced
	Label  string   // shown in ps after Name (the host's path)
	Log    *os.File // optional: the output is appended to it too, cut at LogLimit
}

// Start starts a holder for master, listening on opt.Socket. The caller
// closes its own master (and, once the guest has it, its slave) after.
func Start(master *os.File, opt Options) (Holder, error) {
	lfd, err := listen(opt.Socket)
	if err != nil {
		return Holder{}, err
	}
	defer unix.Close(lfd)
	pid, err := spawn(master, lfd, opt)
	if err != nil {
		os.Remove(opt.Socket)
		return Holder{}, err
	}
	st, err := procfs.ReadStat(pid)
	if err != nil || !st.Live() {
		os.Remove(opt.Socket)
		return Holder{}, fmt.Errorf("console holder (pid %d) ended at once", pid)
	}
	return Holder{Pid: pid, Start: st.Start}, nil
}

// listen makes the holder's listening socket, bound at path with mode
// 0600: the mode is set on the socket before bind, so the file never
// exists with a wider one.
func listen(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("console socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("console socket %s: %s: %w", path, what, err)
	}
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return fail("chmod", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail("remove the old one", err)
	}
	err = withAddr(path, func(addr string) error { return unix.Bind(fd, &unix.SockaddrUnix{Name: addr}) })
	if err != nil {
		return fail("bind", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fail("chmod", err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		return fail("listen", err)
	}
	return fd, nil
}

// withAddr calls fn with an address for path that fits a socket address:
// path itself, or for a longer one /proc/self/fd/N/NAME through its
// directory opened here.
func withAddr(path string, fn func(addr string) error) error {
	if len(path) <= maxSocketPath {
		return fn(path)
	}
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	addr := "/proc/self/fd/" + strconv.Itoa(dir) + "/" + filepath.Base(path)
	if len(addr) > maxSocketPath {
		return fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return fn(addr)
}

// spawn starts the middle process, which starts the holder, says its pid
// and exits. The middle process is reaped here.
func spawn(master *os.File, lfd int, opt Options) (int, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		pw.Close()
		return 0, err
	}
	defer null.Close()
	files := []uintptr{null.Fd(), pw.Fd(), null.Fd(), master.Fd(), uintptr(lfd)}
	env := []string{stageEnv + "=1", sockEnv + "=" + opt.Socket, "GOMAXPROCS=1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if opt.Log != nil {
		files = append(files, opt.Log.Fd())
		env = append(env, logEnv+"=1")
	}
	mid, err := syscall.ForkExec("/proc/self/exe", []string{Name, opt.Label}, &syscall.ProcAttr{Dir: "/", Env: env, Files: files})
	pw.Close()
	if err != nil {
		return 0, fmt.Errorf("start console holder: %w", err)
	}
	pr.SetReadDeadline(time.Now().Add(10 * time.Second))
	out, rerr := io.ReadAll(io.LimitReader(pr, 64))
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(mid, &ws, 0, nil); err != unix.EINTR {
			break
		}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if rerr != nil || err != nil || pid <= 1 {
		return 0, fmt.Errorf("console holder did not start (%s, said %q, %v)", statusText(ws), out, rerr)
	}
	return pid, nil
}

func statusText(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// Dial connects to the holder serving sock. Only one connection is served
// at a time: a new one replaces the one before (a daemon that died, or the
// driver a reconfiguration replaced).
func Dial(sock string) (*net.UnixConn, error) {
	var c *net.UnixConn
	err := withAddr(sock, func(addr string) error {
		var err error
		c, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("console holder %s: %w", sock, err)
	}
	return c, nil
}

// Kill ends the holder recorded as pid and start, if it still runs, and
// waits (a little) until it has. A pid that now belongs to another process
// is left alone.
func Kill(pid int, start uint64) error {
	if pid <= 1 || start == 0 {
		return nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(fd)
	if st, err := procfs.ReadStat(pid); err != nil || st.Start != start || !st.Live() {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		return fmt.Errorf("kill console holder %d: %w", pid, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 100); n > 0 && err == nil {
			return nil
		}
	}
	return fmt.Errorf("console holder %d still runs after SIGKILL", pid)
}
