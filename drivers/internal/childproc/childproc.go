// Package childproc is what a guest driver needs of a process it may have
// started itself or adopted from an earlier machinefs: its exit status if
// it is a child, and how it ended in words.
package childproc

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reap collects the exit status of pid if it is a child of this process.
// An adopted guest is not: its status went to whoever inherited it.
func Reap(pid int) (syscall.WaitStatus, bool) {
	var ws syscall.WaitStatus
	for {
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG|syscall.WALL, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || got != pid {
			return 0, false
		}
		return ws, true
	}
}

// HowEnded says in words how a process ended.
func HowEnded(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		s := fmt.Sprintf("killed by signal %d (%s)", ws.Signal(), unix.SignalName(ws.Signal()))
		if ws.CoreDump() {
			s += ", core dumped"
		}
		return s
	}
	return fmt.Sprintf("ended (wait status %#x)", uint32(ws))
}
