package ns

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// proc is a running subhost init watched through its pidfd.
type proc struct {
	pid    int
	start  uint64
	pidfd  int
	child  bool // our child: its exit status can be read
	reaped *unix.WaitStatus
	cancel [2]int
	done   chan struct{} // closed when the watcher returns
}

// startInit runs the subhost's init as PID 1 of new mount, pid and ipc
// namespaces, in the subhost's network namespace and a new uts namespace
// carrying its host name, inside its cgroup. The child is this binary,
// which pivots into the live root and execs the init (stage.go). console
// (a pty's slave) is the init's stdin, stdout, stderr and controlling
// terminal, as a console is.
func startInit(s settings, rec *record, console *os.File) (*proc, error) {
	var err error
	cgfd := -1
	if rec.Cgroup != "" {
		if cgfd, err = unix.Open(rec.Cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		defer unix.Close(cgfd)
	}
	type res struct {
		pid, pidfd int
		err        error
	}
	c := make(chan res, 1)
	go func() {
		// This thread's namespaces are changed for the child to inherit
		// them; it is never given back to the scheduler (the goroutine
		// ends locked, so the runtime discards the thread).
		runtime.LockOSThread()
		h, err := vnetns.GetFromName(rec.Netns)
		if err != nil {
			c <- res{err: fmt.Errorf("netns %s: %w", rec.Netns, err)}
			return
		}
		defer h.Close()
		if err := vnetns.Set(h); err != nil {
			c <- res{err: fmt.Errorf("enter netns %s: %w", rec.Netns, err)}
			return
		}
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			c <- res{err: fmt.Errorf("uts namespace: %w", err)}
			return
		}
		if err := unix.Sethostname([]byte(s.hostname)); err != nil {
			c <- res{err: fmt.Errorf("hostname: %w", err)}
			return
		}
		pidfd := -1
		attr := &syscall.ProcAttr{
			Dir: "/",
			Env: []string{"PATH=/sbin:/bin:/usr/sbin:/usr/bin", "HOME=/", "TERM=linux", "container=machinefs",
				stageEnv + "=1", rootEnv + "=" + rec.Live, initEnv + "=" + rec.Init},
			Files: []uintptr{console.Fd(), console.Fd(), console.Fd()},
			Sys: &syscall.SysProcAttr{
				Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC,
				Setsid:     true,
				Setctty:    true,
				Ctty:       0,
				PidFD:      &pidfd,
			},
		}
		if cgfd >= 0 {
			attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, cgfd
		}
		pid, err := syscall.ForkExec("/proc/self/exe", []string{"machinefs-ns-stage"}, attr)
		c <- res{pid, pidfd, err}
	}()
	r := <-c
	if r.err != nil {
		return nil, fmt.Errorf("start %s: %w", rec.Init, r.err)
	}
	p := &proc{pid: r.pid, pidfd: r.pidfd, child: true, start: procStart(r.pid)}
	if p.pidfd < 0 {
		if p.pidfd, err = unix.PidfdOpen(p.pid, 0); err != nil {
			_ = unix.Kill(p.pid, unix.SIGKILL)
			return nil, fmt.Errorf("pidfd: %w", err)
		}
	}
	if err := p.init(); err != nil {
		return nil, err
	}
	return p, nil
}

// adopt takes over a recorded init if it is still the same process.
func adopt(pid int, start uint64) *proc {
	if pid <= 0 || start == 0 || procStart(pid) != start {
		return nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil
	}
	if procStart(pid) != start { // the pid was reused before the pidfd
		unix.Close(fd)
		return nil
	}
	p := &proc{pid: pid, start: start, pidfd: fd}
	// A subhost started by this very process (before a reconfiguration)
	// is still our child: its status can be read.
	var ws unix.WaitStatus
	if wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil {
		p.child = true
		if wpid == pid {
			p.reaped = &ws
		}
	}
	if err := p.init(); err != nil {
		return nil
	}
	return p
}

func (p *proc) init() error {
	if err := unix.Pipe2(p.cancel[:], unix.O_CLOEXEC); err != nil {
		unix.Close(p.pidfd)
		return err
	}
	p.done = make(chan struct{})
	return nil
}

// wait blocks until the process ends (true) or stopWatching is called
// (false).
func (p *proc) wait() bool {
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}, {Fd: int32(p.cancel[0]), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if fds[1].Revents != 0 {
			return false
		}
		if fds[0].Revents != 0 {
			return true
		}
		if err != nil {
			return false
		}
	}
}

// status reaps the ended process and says how it ended; ws is its wait
// status when known (our child).
func (p *proc) status() (why string, ws *unix.WaitStatus) {
	if !p.child {
		return "ended (status unknown: started by an earlier machinefs)", nil
	}
	var st unix.WaitStatus
	if p.reaped != nil {
		st = *p.reaped
	} else if _, err := unix.Wait4(p.pid, &st, 0, nil); err != nil {
		return "ended (status unknown: " + err.Error() + ")", nil
	}
	return statusText(st), &st
}

func (p *proc) stopWatching() { _, _ = unix.Write(p.cancel[1], []byte{1}) }

func (p *proc) closeFds() {
	unix.Close(p.pidfd)
	unix.Close(p.cancel[0])
	unix.Close(p.cancel[1])
}

func (p *proc) kill() { _ = unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0) }
