package model

import (
	"fmt"

	"github.com/machinefs/machinefs/internal/procfs"
)

// Caller is who made a request: the uid and gid, and the id of the calling
// thread as FUSE reports it (a thread id, not the process's pid).
type Caller struct {
	Uid, Gid, Pid uint32
	// Node is the agent whose mount the request was made on, when it
	// came from another agent of a cluster ("" on a single machine).
	Node string
}

func (c Caller) String() string {
	s := fmt.Sprintf("uid=%d gid=%d pid=%d", c.Uid, c.Gid, c.Pid)
	if c.Node != "" {
		s += " node=" + c.Node
	}
	return s
}

// sameProcess reports whether two callers are threads of one process.
// FUSE requests carry the calling thread's id, and a program may retry a
// write from another thread (Go moves goroutines between threads).
func sameProcess(a, b Caller) bool {
	if a == b {
		return true
	}
	if a.Uid != b.Uid || a.Gid != b.Gid || a.Node != b.Node {
		return false
	}
	if a.Node != "" {
		// Another machine's thread: /proc here knows nothing of it.
		return false
	}
	ta, tb := tgid(a.Pid), tgid(b.Pid)
	return ta > 0 && ta == tb
}

// tgid is the process of thread tid, 0 if unknown.
func tgid(tid uint32) int {
	st, err := procfs.ReadStatus(int(tid))
	if err != nil {
		return 0
	}
	return st.Tgid
}
