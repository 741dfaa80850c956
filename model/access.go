package model

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"

	"github.com/machinefs/machinefs/internal/procfs"
	"github.com/machinefs/machinefs/machine"
)

// Two roles write to the tree. The kernel decides who writes at all (file
// modes: root and the operators group). The model decides what an operator
// may not do: operators run machines; only an admin decides what the daemon
// runs as root. An admin is root, the user the daemon runs as, or a member
// of the admin group (-o admingroup=).
//
// A privileged key (KeySpec.Privileged) chooses a program, a root file
// system, a host path, a device or a directory the daemon writes in: an
// operator who could set one could run any program as root, or mount any
// host path into a sandbox. Operators get EACCES for those and nothing
// changes. Writing a privileged key's current value again is no change and
// is allowed, so an operator's tool that writes back a whole config works.

// adminGroupUnset marks a tree without an admin group.
const adminGroupUnset = ^uint32(0)

// isAdmin reports whether who may set privileged keys. The daemon's own
// requests (SIGHUP reload, the demo) carry the zero Caller, which is root.
func (t *Tree) isAdmin(who Caller) bool {
	if who.Uid == 0 || who.Uid == uint32(os.Geteuid()) {
		return true
	}
	if t.adminGid == adminGroupUnset {
		return false
	}
	if who.Gid == t.adminGid {
		return true
	}
	// FUSE carries only the caller's file system gid; supplementary
	// groups are read from the calling thread's status. A thread that is
	// gone by now gets no privilege.
	return slices.Contains(supplementaryGroups(who.Pid), t.adminGid)
}

// supplementaryGroups are the supplementary groups of thread tid, none if
// it is gone.
func supplementaryGroups(tid uint32) []uint32 {
	if tid == 0 {
		return nil
	}
	st, err := procfs.ReadStatus(int(tid))
	if err != nil {
		return nil
	}
	return st.Groups
}

// checkPrivileged refuses, for a caller who is not an admin, every change
// from old to next of a privileged key. old is nil for a new host.
func (t *Tree) checkPrivileged(who Caller, old, next *ConfigFile) error {
	if t.isAdmin(who) {
		return nil
	}
	var denied []string
	for _, k := range t.changedKeys(old, next) {
		if spec, ok := t.keySpec(k); ok && spec.Privileged {
			denied = append(denied, k)
		}
	}
	if len(denied) == 0 {
		return nil
	}
	return machine.Errorf(syscall.EACCES, "%s: privileged (it chooses what runs as root, a host path or a device): only root or the admin group may change it (uid %d is an operator)",
		strings.Join(denied, ", "), who.Uid)
}

// changedKeys lists the keys whose value differs between old and next
// (set, changed or removed), sorted.
func (t *Tree) changedKeys(old, next *ConfigFile) []string {
	if old == nil {
		old = &ConfigFile{}
	}
	seen := map[string]bool{}
	var out []string
	for _, cf := range []*ConfigFile{old, next} {
		for _, k := range cf.Keys() {
			if seen[k] {
				continue
			}
			seen[k] = true
			a, _ := old.Get(k)
			b, _ := next.Get(k)
			if a != b {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

// unbindSecrets clears, in next, every secret whose destination an
// operator changed, unless the same write sets the secret too: a stored
// password must never follow an operator's edit to another address, port,
// interface or authentication type. It returns the secrets cleared and the
// destination keys that caused it. An admin's edit keeps the secret.
func (t *Tree) unbindSecrets(who Caller, old, next *ConfigFile, written map[string]bool) (cleared, because []string) {
	if old == nil || t.isAdmin(who) {
		return nil, nil
	}
	changed := t.changedKeys(old, next)
	for _, k := range next.Keys() {
		spec, ok := t.keySpec(k)
		if !ok || !spec.Secret || written[k] {
			continue
		}
		var moved []string
		for _, d := range spec.Destination {
			if slices.Contains(changed, d) {
				moved = append(moved, d)
			}
		}
		if len(moved) == 0 {
			continue
		}
		next.Delete(k)
		cleared = append(cleared, k)
		because = append(because, moved...)
	}
	slices.Sort(because)
	return cleared, slices.Compact(because)
}

// checkPrintable refuses text with control characters: a config value, a
// comment or a ctl line with ESC, CR, NUL or BEL would reach events.log,
// state and terminals raw. Tab is allowed (it separates words); newline
// separates lines and is checked by the caller's line split.
func checkPrintable(what, text string) error {
	for i, r := range text {
		if r == '\n' || r == '\t' {
			continue
		}
		if r == utf8.RuneError && !strings.HasPrefix(text[i:], "\uFFFD") {
			return machine.Errorf(syscall.EINVAL, "%s: not valid UTF-8 (byte %d)", what, i)
		}
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return machine.Errorf(syscall.EINVAL, "%s: control character %U at byte %d (not allowed in the tree)", what, r, i)
		}
	}
	return nil
}
