// Package etcdstore keeps machinefs's store (host configs and group
// members, see package store) in an etcd v3 cluster, so that every agent
// of a site reads and writes one tree and sees the others' changes
// (store.Watcher).
//
// Keys, under a prefix (default "/machinefs/"):
//
//	PREFIX config/hosts/lab1/                 host config text
//	PREFIX config/hosts/lab1/subhosts/vm/     a subhost's config text
//	PREFIX groups/rack                        member lines joined by "\n"
//
// A host's key ends in "/" so that the host and its subhosts are one key
// range: removing hosts/lab1 deletes the prefix "config/hosts/lab1/" in
// one etcd revision, which takes hosts/lab1/subhosts/vm but never
// hosts/lab10. A config that holds a secret is sealed with the site key
// (AES-256-GCM, see LoadSecretKey) before it leaves the process: etcd, its
// snapshots and its backups never hold it in clear.
package etcdstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/machinefs/machinefs/store"
)

// Options configure a Store.
type Options struct {
	// Prefix is the key prefix of everything the store writes, so that
	// one etcd cluster can hold several sites (or serve others). Default
	// "/machinefs/"; a "/" is added if it does not end in one.
	Prefix string
	// SecretKey is the site key (32 bytes, AES-256-GCM) that seals the
	// configs holding secrets. Nil: saving a secret fails, and sealed
	// configs are returned with Err set.
	SecretKey []byte
	// Timeout bounds every etcd call (default 5s): a cluster that does
	// not answer is an error, never a hang.
	Timeout time.Duration
	// Log receives warnings about keys the store does not understand.
	// Default slog.Default().
	Log *slog.Logger
}

// Store is a store.Store and store.Watcher over an etcd cluster.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	aead    cipher.AEAD // nil: no site key
	timeout time.Duration
	log     *slog.Logger

	mu sync.Mutex
	// Revisions of the last Hosts and Groups reads (0: none yet): Watch
	// starts after them.
	hostsRev, groupsRev int64
}

var (
	_ store.Store   = (*Store)(nil)
	_ store.Watcher = (*Store)(nil)
)

// DefaultPrefix is the key prefix of a Store whose Options name none.
const DefaultPrefix = "/machinefs/"

// DefaultTimeout bounds each etcd call of a Store whose Options name no
// Timeout.
const DefaultTimeout = 5 * time.Second

// New returns the store kept in etcd through cli. The client stays the
// caller's: closing it is the caller's job, after the store's last call.
func New(cli *clientv3.Client, opts Options) (*Store, error) {
	if cli == nil {
		return nil, errors.New("etcd store: no etcd client")
	}
	s := &Store{cli: cli, prefix: opts.Prefix, timeout: opts.Timeout, log: opts.Log}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if !strings.HasSuffix(s.prefix, "/") {
		s.prefix += "/"
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if opts.SecretKey != nil {
		if len(opts.SecretKey) != keySize {
			return nil, fmt.Errorf("etcd store: the secret key is %d bytes, want %d (AES-256)", len(opts.SecretKey), keySize)
		}
		block, err := aes.NewCipher(opts.SecretKey)
		if err != nil {
			return nil, fmt.Errorf("etcd store: secret key: %w", err)
		}
		if s.aead, err = cipher.NewGCM(block); err != nil {
			return nil, fmt.Errorf("etcd store: secret key: %w", err)
		}
	}
	return s, nil
}

func (s *Store) configPrefix() string { return s.prefix + "config/" }
func (s *Store) groupsPrefix() string { return s.prefix + "groups/" }

// hostKey is the key of the host at a tree path: its trailing "/" makes
// it the prefix of its subhosts' keys and of no other host's.
func (s *Store) hostKey(path string) string { return s.configPrefix() + path + "/" }

func (s *Store) groupKey(name string) string { return s.groupsPrefix() + name }

// hostPath returns the tree path of a host key, false for a key under
// config/ that names no host (written by something else).
func (s *Store) hostPath(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, s.configPrefix())
	if !ok {
		return "", false
	}
	path, ok := strings.CutSuffix(rest, "/")
	return path, ok && validPath(path)
}

// groupName returns the group a key under groups/ holds.
func (s *Store) groupName(key string) (string, bool) {
	name, ok := strings.CutPrefix(key, s.groupsPrefix())
	return name, ok && store.ValidName(name)
}

// validPath reports whether path can be a host's tree path: names joined
// by "/", none empty, "." or "..", so that every path has one key and
// keys of different hosts never nest except as host and subhost.
func validPath(path string) bool {
	for c := range strings.SplitSeq(path, "/") {
		if !store.ValidName(c) {
			return false
		}
	}
	return true
}

// call runs one etcd call bounded by the store's timeout and wraps its
// error with what was being done.
func (s *Store) call(what string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.wrap(what, f(ctx))
}

func (s *Store) wrap(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("etcd store: %s: no answer from etcd within %v: %w", what, s.timeout, err)
	default:
		return fmt.Errorf("etcd store: %s: %w", what, err)
	}
}

// Clean does nothing: every etcd write is atomic, so a crash leaves
// nothing half done.
func (s *Store) Clean(*slog.Logger) {}

// Hosts reads every host with one Get, so the list is one revision of
// the cluster, and returns them in tree order (each host before its
// subhosts). A sealed config that does not open with the store's key is
// returned with Err set and no text.
func (s *Store) Hosts() ([]store.Host, error) {
	var resp *clientv3.GetResponse
	err := s.call("read hosts", func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, s.configPrefix(), clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []store.Host
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		path, ok := s.hostPath(key)
		if !ok {
			s.log.Warn("etcd store: ignoring a key that names no host", "key", key)
			continue
		}
		text, err := s.open(key, kv.Value)
		out = append(out, store.Host{Path: path, Text: text, Err: err})
	}
	slices.SortFunc(out, func(a, b store.Host) int { return comparePaths(a.Path, b.Path) })
	s.mu.Lock()
	s.hostsRev = resp.Header.Revision
	s.mu.Unlock()
	return out, nil
}

// comparePaths orders tree paths name by name, so that a host comes
// right before its subhosts ("a", "a/subhosts/vm", "a-b"), as the
// directory store lists them.
func comparePaths(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// SaveHost puts a host's config with one Put. A secret config is sealed
// with the site key first; without one, it is refused.
func (s *Store) SaveHost(path string, text []byte, secret bool) error {
	what := "save " + path
	if !validPath(path) {
		return fmt.Errorf("etcd store: %s: not a host path", what)
	}
	key := s.hostKey(path)
	value := string(text)
	if secret {
		sealed, err := s.seal(key, text)
		if err != nil {
			return fmt.Errorf("etcd store: %s: %w", what, err)
		}
		value = sealed
	}
	return s.call(what, func(ctx context.Context) error {
		_, err := s.cli.Put(ctx, key, value)
		return err
	})
}

// RemoveHost deletes the host's key and its subhosts' keys with one
// ranged delete: one etcd revision, so all of them go or none.
func (s *Store) RemoveHost(path string) error {
	what := "remove " + path
	if !validPath(path) {
		return fmt.Errorf("etcd store: %s: not a host path", what)
	}
	return s.call(what, func(ctx context.Context) error {
		_, err := s.cli.Delete(ctx, s.hostKey(path), clientv3.WithPrefix())
		return err
	})
}

// Groups reads every group with one Get.
func (s *Store) Groups() ([]store.Group, error) {
	var resp *clientv3.GetResponse
	err := s.call("read groups", func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, s.groupsPrefix(), clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []store.Group
	for _, kv := range resp.Kvs {
		name, ok := s.groupName(string(kv.Key))
		if !ok {
			s.log.Warn("etcd store: ignoring a key that names no group", "key", string(kv.Key))
			continue
		}
		out = append(out, store.Group{Name: name, Members: members(kv.Value)})
	}
	s.mu.Lock()
	s.groupsRev = resp.Header.Revision
	s.mu.Unlock()
	return out, nil
}

// members splits a group's value into its member lines. Blank lines and
// # comments (a value put by hand with etcdctl) are dropped, as the
// directory store drops them.
func members(value []byte) []string {
	var out []string
	for l := range strings.SplitSeq(string(value), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// SaveGroup puts a group's member lines with one Put.
func (s *Store) SaveGroup(name string, members []string) error {
	what := "save group " + name
	if !store.ValidName(name) {
		return fmt.Errorf("etcd store: %s: not a group name", what)
	}
	return s.call(what, func(ctx context.Context) error {
		_, err := s.cli.Put(ctx, s.groupKey(name), strings.Join(members, "\n"))
		return err
	})
}

// RemoveGroup deletes a group's key.
func (s *Store) RemoveGroup(name string) error {
	what := "remove group " + name
	if !store.ValidName(name) {
		return fmt.Errorf("etcd store: %s: not a group name", what)
	}
	return s.call(what, func(ctx context.Context) error {
		_, err := s.cli.Delete(ctx, s.groupKey(name))
		return err
	})
}
