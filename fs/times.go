package fs

import (
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Times tell the truth: the mtime and ctime of power, state, config and
// members are the time of their last change, so find -newer, ls -lt, make
// and rsync see changes. The notifier learns every change from the model's
// events and stamps the files the event changes (the same bits that make
// it invalidate them); the logs carry their own time (model.LogGen).

// stamps are the change times of a directory's live files.
type stamps struct{ power, state, config time.Time }

// stampLocked records that the files bits names of path changed at t.
// n.mu is held.
func (n *notifier) stampLocked(path string, bits change, t time.Time) {
	if bits&(chPower|chState|chConfig) == 0 {
		return
	}
	if n.times == nil {
		n.times = map[string]*stamps{}
	}
	s := n.times[path]
	if s == nil {
		s = &stamps{}
		n.times[path] = s
	}
	later := func(old *time.Time) {
		if t.After(*old) {
			*old = t
		}
	}
	if bits&chPower != 0 {
		later(&s.power)
	}
	if bits&chState != 0 {
		later(&s.state)
	}
	if bits&chConfig != 0 {
		later(&s.config)
	}
}

// forgetLocked drops the stamps of a removed host or group and what was
// below it. n.mu is held.
func (n *notifier) forgetLocked(path string) {
	for p := range n.times {
		if p == path || strings.HasPrefix(p, path+"/") {
			delete(n.times, p)
		}
	}
}

// changed returns when one of path's live files last changed (which picks
// the file), or the mount's start when it has not since.
func (n *notifier) changed(path string, which func(*stamps) time.Time) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := n.fsys.started
	if s := n.times[path]; s != nil && which(s).After(t) {
		t = which(s)
	}
	return t
}

func powerTime(s *stamps) time.Time  { return s.power }
func stateTime(s *stamps) time.Time  { return s.state }
func configTime(s *stamps) time.Time { return s.config }

// mtimeOf is the changed function (fileAttrs) of one live file of path.
func (f *FS) mtimeOf(path string, which func(*stamps) time.Time) func() time.Time {
	return func() time.Time { return f.notify.changed(path, which) }
}

// setChanged sets a file's mtime and ctime (a change of content is a
// change of the inode too).
func setChanged(a *fuse.Attr, t time.Time) {
	a.SetTimes(nil, &t, &t)
}

// stampGroups stamps the power and state of every group with a member
// whose power changed. It runs in the notifier's worker: the groups' lock
// must not be taken inside the event bus.
func (n *notifier) stampGroups() {
	n.mu.Lock()
	powered := n.powered
	n.powered = nil
	n.mu.Unlock()
	if len(powered) == 0 {
		return
	}
	for _, g := range n.fsys.tree.Groups() {
		var last time.Time
		for _, h := range g.Hosts() {
			if t, ok := powered[h]; ok && t.After(last) {
				last = t
			}
		}
		if !last.IsZero() {
			n.mu.Lock()
			n.stampLocked(g.Path(), chPower|chState, last)
			n.mu.Unlock()
		}
	}
}
