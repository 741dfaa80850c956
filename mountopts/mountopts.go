// Package mountopts parses the -o option string of machinefs, so that the
// same words work on the command line, in `mount -t fuse.machinefs` and in
// an fstab line.
//
// Options are comma separated words or key=value pairs. Generic mount(8)
// options that only concern mount(8) itself (auto, noauto, user, _netdev,
// nofail, x-systemd.*, ...) are accepted and ignored, because mount(8) and
// systemd pass them through to helpers.
package mountopts

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Options are the parsed -o options.
type Options struct {
	// AllowOther lets users other than the mounter reach the mount; the
	// kernel then checks file modes (default_permissions is always on).
	AllowOther bool
	// ReadOnly mounts read-only: no commands, no config changes.
	ReadOnly bool
	// Debug logs every FUSE request.
	Debug bool
	// ConfigDir is the configuration directory (config=DIR).
	ConfigDir string
	// Group names the operators group (group=NAME or a numeric gid) whose
	// members may write control files.
	Group string
	// AdminGroup names the admin group (admingroup=NAME or a numeric
	// gid) whose members may, like root, set privileged config keys.
	// Members need write access too: they must also be operators
	// (group=), and without group= the admin group is the operators group.
	AdminGroup string
	// FsName is the source shown in /proc/mounts (fsname=NAME).
	FsName string
	// Demo mounts the embedded demo tree (demo).
	Demo bool
	// Background detaches from the terminal once mounted (as mount(8)
	// helpers must); set for the mount.machinefs entry point.
	Background bool
	// StateDir keeps runtime state that must survive a daemon restart
	// but not a reboot (statedir=DIR; default /run/machinefs).
	StateDir string
	// FanOut bounds how many group members' commands are on their way
	// to their drivers at once (fanout=N; 0 means the default: the whole
	// group, up to model.MaxAutoFanOut, 64).
	FanOut int
	// MaxReaders caps the events streams open at once on the mount, all
	// events files together (max-readers=N; 0 means the default, 64);
	// an open beyond it fails with EBUSY.
	MaxReaders int
	// Foreground keeps the daemon attached even when it runs as a mount
	// helper (foreground); it wins over Background.
	Foreground bool
	// StatusDir is a directory where the daemon keeps a tmpfs copy of
	// every host's power and state and every group's power
	// (status-dir=DIR, an absolute path to an existing directory): a
	// tmpfs of its own is mounted there while the daemon runs, so status
	// reads cost what tmpfs costs and watchers get native inotify.
	StatusDir string
	// Log says where the daemon logs (log=WHERE): "stderr", "syslog", or
	// an absolute file path, reopened on SIGHUP for logrotate. Empty:
	// stderr, except for a daemon the mount helper detached, whose stderr
	// goes nowhere: syslog if there is one, else STATEDIR/machinefs.log.
	Log string

	// Node is this agent's name in a cluster (node=NAME), also the name
	// of its embedded etcd member and of its etcd user (the CN of its
	// client certificate).
	Node string
	// Cluster are the etcd client endpoints (cluster=URL, repeatable, or
	// several joined with '+'), each http://HOST:PORT or https://HOST:PORT.
	// With member= and no cluster=, Validate sets it to the member's own
	// client URL.
	Cluster []string
	// EtcdCA, EtcdCert and EtcdKey are PEM files for TLS to etcd
	// (etcd-ca=FILE, etcd-cert=FILE, etcd-key=FILE): the CA that signed
	// the servers' certificates (and, for an embedded member, the clients'
	// and peers'), and this node's certificate and key, which come
	// together. An embedded member serves with the same certificate.
	EtcdCA, EtcdCert, EtcdKey string
	// SecretKey is the file holding the site key that seals secret config
	// values in etcd (secret-key=FILE), so that no secret sits there in
	// clear.
	SecretKey string
	// Member runs an embedded etcd member named Node with its data in
	// this directory (member=DIR).
	Member string
	// PeerURL is where the embedded member talks to its peers
	// (peer-url=URL); ClientURL is where it serves clients
	// (client-url=URL).
	PeerURL, ClientURL string
	// InitialCluster lists the members of a new cluster as
	// NAME=PEERURL joined with '+' (initial-cluster=...; ',' already
	// separates options). Validate defaults it to Node=PeerURL, a
	// cluster of one.
	InitialCluster string
	// InitialState is "new" to found a cluster, "existing" to join one
	// that runs (initial-state=new|existing); Validate defaults it to new
	// for a member.
	InitialState string
}

// nodeRE is the rule for node names: store.ValidName's, so that a node can
// name a host too (mountopts stays free of the model's packages).
var nodeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// etcdURL checks an etcd client or peer URL and returns it as
// scheme://host:port, the one form etcd and String use.
func etcdURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%q: want http://HOST:PORT or https://HOST:PORT", s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("%q: want only scheme, host and port", s)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "", fmt.Errorf("%q: want HOST:PORT after the scheme", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	return u.Scheme + "://" + u.Host, nil
}

// parseInitialCluster checks NAME=URL+NAME=URL... and returns the members'
// peer URLs by name, in the canonical form etcdURL returns.
func parseInitialCluster(s string) (map[string]string, []string, error) {
	peers := map[string]string{}
	var names []string
	for _, m := range strings.Split(s, "+") {
		name, u, ok := strings.Cut(m, "=")
		if !ok || !nodeRE.MatchString(name) {
			return nil, nil, fmt.Errorf("%q: want NAME=URL", m)
		}
		cu, err := etcdURL(u)
		if err != nil {
			return nil, nil, err
		}
		if _, dup := peers[name]; dup {
			return nil, nil, fmt.Errorf("member %s is named twice", name)
		}
		peers[name] = cu
		names = append(names, name+"="+cu)
	}
	return peers, names, nil
}

// ignored are options mount(8), fstab and systemd pass that mean nothing to
// a FUSE daemon, or that the daemon applies anyway.
var ignored = map[string]bool{
	"rw": true, "defaults": true, "auto": true, "noauto": true,
	"user": true, "nouser": true, "users": true, "owner": true,
	"_netdev": true, "nofail": true, "suid": true, "nosuid": true,
	"dev": true, "nodev": true, "exec": true, "noexec": true,
	"atime": true, "noatime": true, "relatime": true,
	"default_permissions": true, // always on
}

// Parse parses one -o string into a fresh Options.
func Parse(s string) (Options, error) {
	var o Options
	err := o.Set(s)
	return o, err
}

// Set adds the options in s to o. It makes *Options a flag.Value, so -o may
// be given several times.
func (o *Options) Set(s string) error {
	for _, word := range strings.Split(s, ",") {
		word = strings.TrimSpace(word)
		if word == "" {
			continue
		}
		key, val, hasVal := strings.Cut(word, "=")
		switch {
		case ignored[key] && !hasVal:
		case strings.HasPrefix(key, "x-") || key == "comment":
			// x-systemd.automount, x-gvfs-show, comment=...: for others.
		case key == "allow_other" && !hasVal:
			o.AllowOther = true
		case key == "ro" && !hasVal:
			o.ReadOnly = true
		case key == "debug" && !hasVal:
			o.Debug = true
		case key == "demo" && !hasVal:
			o.Demo = true
		case key == "background" && !hasVal:
			o.Background, o.Foreground = true, false
		case key == "foreground" && !hasVal:
			o.Background, o.Foreground = false, true
		case key == "config" && hasVal && val != "":
			o.ConfigDir = val
		case key == "group" && hasVal && val != "":
			o.Group = val
		case key == "admingroup" && hasVal && val != "":
			o.AdminGroup = val
		case key == "fsname" && hasVal && val != "":
			o.FsName = val
		case key == "statedir" && hasVal && val != "":
			o.StateDir = val
		case key == "status-dir" && hasVal:
			if !filepath.IsAbs(val) {
				return fmt.Errorf("mount option %q: status-dir wants an absolute directory path", word)
			}
			o.StatusDir = filepath.Clean(val)
		case key == "log" && hasVal:
			if val != "syslog" && val != "stderr" && !filepath.IsAbs(val) {
				return fmt.Errorf("mount option %q: log wants syslog, stderr or an absolute file path", word)
			}
			o.Log = filepath.Clean(val)
		case key == "fanout" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 4096 {
				return fmt.Errorf("mount option %q: fanout wants a number from 1 to 4096", word)
			}
			o.FanOut = n
		case key == "max-readers" && hasVal:
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 65536 {
				return fmt.Errorf("mount option %q: max-readers wants a number from 1 to 65536", word)
			}
			o.MaxReaders = n
		case key == "node" && hasVal:
			if !nodeRE.MatchString(val) {
				return fmt.Errorf("mount option %q: node wants a host name: letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit", word)
			}
			o.Node = val
		case key == "cluster" && hasVal:
			for _, u := range strings.Split(val, "+") {
				cu, err := etcdURL(u)
				if err != nil {
					return fmt.Errorf("mount option %q: cluster: %w", word, err)
				}
				o.Cluster = append(o.Cluster, cu)
			}
		case key == "etcd-ca" && hasVal && val != "":
			o.EtcdCA = val
		case key == "etcd-cert" && hasVal && val != "":
			o.EtcdCert = val
		case key == "etcd-key" && hasVal && val != "":
			o.EtcdKey = val
		case key == "secret-key" && hasVal && val != "":
			o.SecretKey = val
		case key == "member" && hasVal && val != "":
			o.Member = val
		case (key == "peer-url" || key == "client-url") && hasVal:
			cu, err := etcdURL(val)
			if err != nil {
				return fmt.Errorf("mount option %q: %w", word, err)
			}
			if key == "peer-url" {
				o.PeerURL = cu
			} else {
				o.ClientURL = cu
			}
		case key == "initial-cluster" && hasVal:
			_, names, err := parseInitialCluster(val)
			if err != nil {
				return fmt.Errorf("mount option %q: %w", word, err)
			}
			o.InitialCluster = strings.Join(names, "+")
		case key == "initial-state" && hasVal:
			if val != "new" && val != "existing" {
				return fmt.Errorf("mount option %q: initial-state wants new or existing", word)
			}
			o.InitialState = val
		default:
			return fmt.Errorf("mount option %q: unknown or malformed (see machinefs(8))", word)
		}
	}
	return nil
}

// String renders o back as an -o string.
func (o *Options) String() string {
	if o == nil {
		return ""
	}
	var w []string
	add := func(on bool, s string) {
		if on {
			w = append(w, s)
		}
	}
	add(o.AllowOther, "allow_other")
	add(o.ReadOnly, "ro")
	add(o.Debug, "debug")
	add(o.Demo, "demo")
	add(o.Background, "background")
	add(o.Foreground, "foreground")
	add(o.ConfigDir != "", "config="+o.ConfigDir)
	add(o.Group != "", "group="+o.Group)
	add(o.AdminGroup != "", "admingroup="+o.AdminGroup)
	add(o.FsName != "", "fsname="+o.FsName)
	add(o.StateDir != "", "statedir="+o.StateDir)
	add(o.FanOut != 0, "fanout="+strconv.Itoa(o.FanOut))
	add(o.MaxReaders != 0, "max-readers="+strconv.Itoa(o.MaxReaders))
	add(o.StatusDir != "", "status-dir="+o.StatusDir)
	add(o.Log != "", "log="+o.Log)
	add(o.Node != "", "node="+o.Node)
	for _, c := range o.Cluster {
		w = append(w, "cluster="+c)
	}
	add(o.EtcdCA != "", "etcd-ca="+o.EtcdCA)
	add(o.EtcdCert != "", "etcd-cert="+o.EtcdCert)
	add(o.EtcdKey != "", "etcd-key="+o.EtcdKey)
	add(o.SecretKey != "", "secret-key="+o.SecretKey)
	add(o.Member != "", "member="+o.Member)
	add(o.PeerURL != "", "peer-url="+o.PeerURL)
	add(o.ClientURL != "", "client-url="+o.ClientURL)
	add(o.InitialCluster != "", "initial-cluster="+o.InitialCluster)
	add(o.InitialState != "", "initial-state="+o.InitialState)
	return strings.Join(w, ",")
}

// Validate checks the options that depend on each other, which Set cannot
// (-o may come in several pieces), and fills the defaults that depend on
// others: for a member, Cluster (its own client URL), InitialCluster (a
// cluster of one) and InitialState (new). Call it once all -o options are
// in.
func (o *Options) Validate() error {
	if err := o.checkStatusDir(); err != nil {
		return err
	}
	clustered := len(o.Cluster) > 0 || o.Member != ""
	switch {
	case clustered && o.Node == "":
		return errors.New("cluster= and member= need node=NAME, this machine's name in the cluster")
	case o.Node != "" && !clustered:
		return errors.New("node= needs cluster=URL (an etcd cluster) or member=DIR (an embedded etcd member)")
	case !clustered && (o.EtcdCA != "" || o.EtcdCert != "" || o.EtcdKey != "" || o.SecretKey != ""):
		return errors.New("etcd-ca=, etcd-cert=, etcd-key= and secret-key= need cluster= or member=")
	case (o.EtcdCert == "") != (o.EtcdKey == ""):
		return errors.New("etcd-cert= and etcd-key= come together: a client certificate and its key")
	case o.Member == "" && (o.PeerURL != "" || o.ClientURL != "" || o.InitialCluster != "" || o.InitialState != ""):
		return errors.New("peer-url=, client-url=, initial-cluster= and initial-state= need member=DIR")
	}
	tls := o.EtcdCert != ""
	for _, c := range o.Cluster {
		if tls && strings.HasPrefix(c, "http://") {
			return fmt.Errorf("cluster=%s is plain http, but etcd-cert= asks for TLS: use https://", c)
		}
	}
	if o.Member == "" {
		return nil
	}
	if o.PeerURL == "" || o.ClientURL == "" {
		return errors.New("member= needs peer-url=URL (for the other members) and client-url=URL (for agents)")
	}
	for _, u := range []string{o.PeerURL, o.ClientURL} {
		if https := strings.HasPrefix(u, "https://"); https != tls {
			if https {
				return fmt.Errorf("%s is https, which needs etcd-cert= and etcd-key= for the member to serve with", u)
			}
			return fmt.Errorf("%s is plain http, but etcd-cert= asks for TLS: use https://", u)
		}
	}
	if o.InitialCluster == "" {
		o.InitialCluster = o.Node + "=" + o.PeerURL
	}
	peers, _, err := parseInitialCluster(o.InitialCluster)
	if err != nil {
		return fmt.Errorf("initial-cluster: %w", err)
	}
	switch own, ok := peers[o.Node]; {
	case !ok:
		return fmt.Errorf("initial-cluster does not name this member (node=%s)", o.Node)
	case own != o.PeerURL:
		return fmt.Errorf("initial-cluster gives %s the peer URL %s, but peer-url= is %s", o.Node, own, o.PeerURL)
	}
	if o.InitialState == "" {
		o.InitialState = "new"
	}
	if len(o.Cluster) == 0 {
		o.Cluster = []string{o.ClientURL}
	}
	return nil
}

// checkStatusDir checks that status-dir names an existing directory: the
// daemon mounts its tmpfs there and does not create the mount point, so a
// typo fails at once instead of leaving a stray directory.
func (o *Options) checkStatusDir() error {
	if o.StatusDir == "" {
		return nil
	}
	fi, err := os.Stat(o.StatusDir)
	switch {
	case err != nil:
		return fmt.Errorf("status-dir=%s: %w", o.StatusDir, err)
	case !fi.IsDir():
		return fmt.Errorf("status-dir=%s: not a directory", o.StatusDir)
	}
	return nil
}
