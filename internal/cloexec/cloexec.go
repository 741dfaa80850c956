// Package cloexec marks every descriptor of the process above stderr
// close-on-exec, so that no child gets one it was not given on purpose.
// Go opens its own descriptors so, but not what the process inherited (a
// caller's strays) or what a library opened without the flag (go-fuse's
// direct mount opens /dev/fuse so): a guest or subhost holding the FUSE
// channel could answer the tree's requests and would keep a dead
// daemon's mount hanging. Descriptors given to a child on purpose are
// dup'ed into it (exec.Cmd's ExtraFiles, ForkExec's Files), which the
// flag does not affect.
package cloexec

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// All marks every descriptor above stderr close-on-exec. It holds
// syscall.ForkLock's write side, as a fork does: no opener that follows
// syscall's convention is between its open and its close-on-exec
// meanwhile.
func All() error {
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	return AllLocked()
}

// AllLocked is All for a caller that holds syscall.ForkLock itself, read
// or write side: the daemon holds the read side across go-fuse's mount,
// which opens /dev/fuse without the flag, so no fork slips in between.
func AllLocked() error {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	// Before Linux 5.11: each descriptor up to the limit.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("close-on-exec: %w", err)
	}
	for fd := 3; uint64(fd) < lim.Cur; fd++ {
		_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	}
	return nil
}
