package fs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/internal/cloexec"
)

// The notifier wakes inotify watchers by writing one byte to a changed file
// through the mount (see the package comment). Those writes come from a
// separate helper process, the poker, never from the daemon itself: a
// daemon killed with SIGKILL while one of its own threads waited on its own
// mount could never finish dying, and its mount would hang every caller
// instead of failing with ENOTCONN. The poker is the daemon's own binary
// started with pokerEnv set; it reads paths from stdin and exits at EOF or
// when the daemon dies.
const pokerEnv = "MACHINEFS_POKER"

// The poker's requests are told from others by their thread id alone, so
// that the daemon need not look in /proc on every open for writing: the
// poker does all its I/O on its main thread, whose id is its pid. Locking
// the thread in an init function is what makes main run on it.
func init() {
	if os.Getenv(pokerEnv) == "1" {
		runtime.LockOSThread()
	}
}

// RunPokerIfChild turns the process into the poker when the daemon started
// it so. Call it first thing in main, and in TestMain of packages that
// mount in-process.
func RunPokerIfChild() {
	if os.Getenv(pokerEnv) != "1" {
		return
	}
	// Signals meant for the daemon's whole cgroup or terminal (systemctl
	// kill -s HUP, Ctrl-C) must not end the poker: it leaves when the
	// daemon closes its stdin or dies.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		// "+PATH" and "-PATH": a directory appeared or went (entries.go);
		// the daemon's directories answer these without changing anything.
		if line := sc.Text(); strings.HasPrefix(line, "+/") {
			syscall.Mkdir(line[1:], 0o755)
			continue
		} else if strings.HasPrefix(line, "-/") {
			syscall.Rmdir(line[1:])
			continue
		}
		// syscall.Open, not os.Open: the Go runtime must not poll the fd.
		fd, err := syscall.Open(sc.Text(), syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		syscall.Write(fd, []byte{'\n'})
		syscall.Close(fd)
	}
	os.Exit(0)
}

type poker struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	pid   int
	exits chan struct{}
}

func startPoker() (*poker, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("poker: %w", err)
	}
	// The poker starts before the mount, so it cannot inherit the FUSE
	// channel (mountChannel keeps it from every later child). A poker
	// blocked on a dead daemon's mount while holding the connection open
	// would keep it alive, and hung, for ever. What it could inherit is
	// what the daemon itself inherited (the mount helper's pipe, a
	// caller's stray descriptors): those are marked close-on-exec here,
	// once for every child to come.
	cloexec.All()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), pokerEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("poker: %w", err)
	}
	// Pdeathsig fires when the thread that forked the child ends, not the
	// process. Go ends a thread whenever a goroutine exits locked to it,
	// as the ns driver's namespace-switching goroutines do; had such a
	// goroutine run on the thread that forked the poker, the poker would
	// be killed with the daemon alive and inotify watchers would hear
	// nothing more. So the poker is forked and waited for on a thread of
	// its own that nothing else runs on and that lives as long as it does.
	p := &poker{cmd: cmd, in: in, exits: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the poker
		defer close(p.exits)
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("poker: %w", err)
	}
	p.pid = cmd.Process.Pid
	return p, nil
}

// poke asks the poker to write to path. It never blocks the notifier for
// long: the pipe buffer holds many paths.
func (p *poker) poke(path string) {
	fmt.Fprintln(p.in, path)
}

// dirOp asks the poker to mkdir ('+') or rmdir ('-') path, an absolute
// path in the mount.
func (p *poker) dirOp(op byte, path string) {
	fmt.Fprintf(p.in, "%c%s\n", op, path)
}

// owns reports whether a request from thread tid is the poker's: FUSE
// requests carry the caller's thread id, and the poker's I/O all comes
// from its main thread (see init).
func (p *poker) owns(tid uint32) bool {
	return int(tid) == p.pid
}

// stop ends the poker once it has done what it was asked.
func (p *poker) stop() {
	p.in.Close()
	select {
	case <-p.exits:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exits
	}
}
