// Package store is what machinefs keeps across restarts: the config of
// every host and subhost and the members of every group. The model reads
// and writes it through the Store interface only, so another store (etcd,
// for a tree over many machines) is one more implementation of it, not a
// change to the model. Dir, the config directory, is the one there is.
//
// A store deals in paths and text, not in model types: a host's config is
// the text of its config file (the model parses and renders it), a group
// is its member lines. It does not import the model.
package store

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
)

// Store persists host configs and group members. Its methods may be
// called from many goroutines at once; of two saves of one host or group,
// one wins whole.
type Store interface {
	// Clean repairs what a crash left half done (a removal, a write)
	// and is called once at start, before anything else reads or writes
	// the store. Problems are logged: what is left is hidden from Hosts
	// and Groups either way.
	Clean(log *slog.Logger)

	// Hosts returns every stored host, each host before its subhosts.
	// A host whose config cannot be read is returned with Err set.
	Hosts() ([]Host, error)
	// SaveHost creates or replaces the config of the host at path (a
	// tree path, "hosts/lab01" or "hosts/lab01/subhosts/vm1"), all or
	// nothing, durably. secret: the text holds a secret and must be
	// readable by the daemon's user only.
	SaveHost(path string, text []byte, secret bool) error
	// RemoveHost removes the host at path and every subhost under it as
	// one step: after a crash either all of them are there or none.
	// Removing a host that is not stored is not an error.
	RemoveHost(path string) error

	// Groups returns every stored group.
	Groups() ([]Group, error)
	// SaveGroup creates or replaces a group's member lines, all or
	// nothing, durably.
	SaveGroup(name string, members []string) error
	// RemoveGroup removes a group; one that is not stored is not an
	// error.
	RemoveGroup(name string) error
}

// Watcher is a store that other processes change too (etcd, shared by
// every agent of a cluster). Watch calls fn for every change to hosts or
// groups made by anyone (this process included) after the last Hosts or
// Groups read, in the order the store applied them, until ctx ends; fn runs
// on one goroutine and must not block long. Watch returns ctx's error, or
// the error that ended the watch (the caller then reloads and watches
// again). The directory store is changed by this process only and is not a
// Watcher.
type Watcher interface {
	Watch(ctx context.Context, fn func(Change)) error
}

// Change is one change to a Watcher store: a host's config or a group's
// members saved, or removed.
type Change struct {
	Host    string   // tree path of the host, "" for a group change
	Group   string   // name of the group, "" for a host change
	Text    []byte   // the host's new config (not Removed)
	Members []string // the group's new member lines (not Removed)
	Removed bool     // removed: a host's removal also removes its subhosts
	Err     error    // the saved config could not be read (sealed with another key)
}

// Host is one stored host.
type Host struct {
	Path string // tree path, e.g. "hosts/lab01/subhosts/vm1"
	Text []byte // its config file
	Err  error  // the config could not be read; Text is empty
}

// Group is one stored group.
type Group struct {
	Name    string
	Members []string // member lines as written, without blanks and comments
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether name can name a host, subhost, switch or
// group. The store decides, since every name must be storable: a name
// ending in ".conf" would be read back as a host file in the directory
// store.
func ValidName(name string) bool {
	return nameRE.MatchString(name) && !strings.HasSuffix(name, ".conf")
}
