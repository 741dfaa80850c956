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
	"fmt"
	"path/filepath"
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
	// to their drivers at once (fanout=N; 0 means the default, 32).
	FanOut int
	// MaxReaders caps the events streams open at once on the mount, all
	// events files together (max-readers=N; 0 means the default, 64);
	// an open beyond it fails with EBUSY.
	MaxReaders int
	// Foreground keeps the daemon attached even when it runs as a mount
	// helper (foreground); it wins over Background.
	Foreground bool
	// Log says where the daemon logs (log=WHERE): "stderr", "syslog", or
	// an absolute file path, reopened on SIGHUP for logrotate. Empty:
	// stderr, except for a daemon the mount helper detached, whose stderr
	// goes nowhere: syslog if there is one, else STATEDIR/machinefs.log.
	Log string
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
	add(o.Log != "", "log="+o.Log)
	return strings.Join(w, ",")
}
