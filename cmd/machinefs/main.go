// Command machinefs mounts machines as files.
//
//	machinefs [-c CONFIGDIR] [-o OPTS] [--demo] MOUNTPOINT
//	machinefs CONFIGDIR MOUNTPOINT -o OPTS         (as mount.fuse runs it)
//	mount.fuse.machinefs CONFIGDIR MOUNTPOINT -o OPTS   (mount -t fuse.machinefs)
//
// It runs in the foreground unless started as a mount helper or with
// -o background; SIGINT and SIGTERM unmount cleanly, SIGHUP reloads the
// config directory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/drivers/vswitch"
	mfs "github.com/machinefs/machinefs/fs"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/mountopts"
	"github.com/machinefs/machinefs/registry"
	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/view"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// drivers are the drivers this build knows.
var drivers = registry.Drivers()

type config struct {
	opts       mountopts.Options
	mountpoint string
	demoHosts  int
	foreground bool
}

func main() {
	mfs.RunPokerIfChild()
	runMemberIfAsked()
	runAuthIfAsked()
	cfg, err := parseArgs(filepath.Base(os.Args[0]), os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "machinefs:", err)
		os.Exit(2)
	}
	if cfg.opts.Background && os.Getenv(childEnv) == "" {
		os.Exit(background())
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "machinefs:", err)
		notifyParent(err)
		os.Exit(1)
	}
}

// parseArgs accepts flags before and after the positional arguments, as
// mount(8) helpers are called with "-o opts" last.
func parseArgs(prog string, args []string) (config, error) {
	var cfg config
	fl := flag.NewFlagSet("machinefs", flag.ContinueOnError)
	fl.Var(&cfg.opts, "o", "mount options (comma separated; see machinefs(8))")
	configDir := fl.String("c", "", "config directory (default /etc/machinefs)")
	demo := fl.Bool("demo", false, "mount the embedded demo: simulated machines, nothing to configure")
	fl.IntVar(&cfg.demoHosts, "demo-hosts", 0, "with --demo: this many simulated hosts (for benchmarks)")
	showVersion := fl.Bool("version", false, "print the version and exit")
	fl.BoolVar(&cfg.foreground, "f", false, "stay in the foreground (mount helper)")
	// mount(8) passes these to helpers; they mean nothing here.
	fl.Bool("n", false, "do not update /etc/mtab (ignored)")
	fl.Bool("s", false, "sloppy options (ignored)")
	fl.Bool("v", false, "verbose (ignored)")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: machinefs [-c CONFIGDIR] [-o OPTS] [--demo] [CONFIGDIR] MOUNTPOINT\n")
		fl.PrintDefaults()
	}
	// Usage goes to stdout when asked for (--help) and to stderr with an
	// error, as GNU tools do.
	var usage strings.Builder
	fl.SetOutput(&usage)
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Print(usage.String())
			} else {
				fmt.Fprint(os.Stderr, usage.String())
			}
			return cfg, err
		}
		if fl.NArg() == 0 {
			break
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
	if *showVersion {
		fmt.Println("machinefs", version)
		return cfg, flag.ErrHelp
	}
	switch len(pos) {
	case 1:
		cfg.mountpoint = pos[0]
	case 2:
		// mount.fuse convention: the "device" is the config directory.
		if pos[0] != "machinefs" && pos[0] != "none" {
			cfg.opts.ConfigDir = pos[0]
		}
		cfg.mountpoint = pos[1]
	default:
		fl.Usage()
		fmt.Fprint(os.Stderr, usage.String())
		return cfg, fmt.Errorf("want [CONFIGDIR] MOUNTPOINT, got %d arguments", len(pos))
	}
	if *configDir != "" {
		cfg.opts.ConfigDir = *configDir
	}
	if *demo {
		cfg.opts.Demo = true
	}
	if strings.HasPrefix(prog, "mount.") && !cfg.foreground && !cfg.opts.Foreground {
		cfg.opts.Background = true
	}
	if cfg.opts.ConfigDir == "" && !cfg.opts.Demo {
		cfg.opts.ConfigDir = "/etc/machinefs"
	}
	if err := cfg.opts.Validate(); err != nil {
		return cfg, err
	}
	if err := checkStatusDir(cfg); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func run(cfg config) error {
	level := slog.LevelInfo
	if cfg.opts.Debug {
		level = slog.LevelDebug
	}
	stateDir := cfg.opts.StateDir
	if stateDir == "" {
		stateDir = "/run/machinefs"
	}
	logOut, reopenLog, err := openLog(cfg.opts.Log, os.Getenv(childEnv) != "", stateDir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))

	// Signals are caught before the mount appears: a SIGHUP sent as soon
	// as the tree is visible must reload, not kill the daemon.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)

	operators := cfg.opts.Group
	if operators == "" {
		// Admins write through the same file modes as operators.
		operators = cfg.opts.AdminGroup
	}
	owner, group, err := owners(operators)
	if err != nil {
		return err
	}
	var adminGid uint32
	if cfg.opts.AdminGroup != "" {
		if _, adminGid, err = owners(cfg.opts.AdminGroup); err != nil {
			return fmt.Errorf("admingroup: %w", err)
		}
	}
	mountpoint, err := filepath.Abs(cfg.mountpoint)
	if err != nil {
		return err
	}
	if err := clearStaleMount(mountpoint, log); err != nil {
		return err
	}
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}

	// A nil interface, not a nil *store.Dir: the tree then keeps
	// everything in memory.
	var st store.Store
	var join *clusterJoin
	if cfg.opts.Node != "" {
		if join, err = connectCluster(context.Background(), cfg.opts, log); err != nil {
			return err
		}
		defer join.close()
		st = join.store
	} else if cfg.opts.ConfigDir != "" {
		if err := os.MkdirAll(filepath.Join(cfg.opts.ConfigDir, "hosts"), 0o755); err != nil {
			return fmt.Errorf("config directory: %w", err)
		}
		st = store.NewDir(cfg.opts.ConfigDir)
	}
	topts := model.Options{Store: st, Drivers: drivers, Log: log, FanOut: cfg.opts.FanOut,
		AdminGid: adminGid, HasAdminGroup: cfg.opts.AdminGroup != ""}
	// Virtual switches live in the daemon's network namespace; without
	// netlink (an unusual sandbox) the tree works without them.
	switches, err := vswitch.New(context.Background(), vswitch.Options{StateDir: filepath.Join(stateDir, "vswitch")})
	if err != nil {
		log.Warn("virtual switches unavailable", "err", err)
	} else {
		defer switches.Close()
		topts.Switches = switches
	}
	tree := model.NewTree(topts)
	ctx := context.Background()
	if join != nil {
		if err := join.newAgent(tree, cfg.opts.Node, log); err != nil {
			return err
		}
	}
	if err := tree.Load(ctx); err != nil {
		return err
	}
	if join != nil {
		if err := join.startAgent(ctx, tree, cfg.opts.Node, log); err != nil {
			return err
		}
	}
	if cfg.opts.Demo {
		if err := loadDemo(ctx, tree, cfg.demoHosts); err != nil {
			return err
		}
	}

	tree.SetReadOnly(cfg.opts.ReadOnly)
	var status *statusCopy
	if cfg.opts.StatusDir != "" {
		if status, err = startStatusDir(tree, cfg.opts.StatusDir, cfg.opts.AllowOther, log); err != nil {
			tree.Close()
			return err
		}
		// Runs after the returns below closed the tree: its last events
		// are in the copy until the tmpfs goes.
		defer status.stop()
	}
	fsys, err := mfs.Mount(tree, mountpoint, mfs.Options{
		Owner:      owner,
		Group:      group,
		AllowOther: cfg.opts.AllowOther,
		ReadOnly:   cfg.opts.ReadOnly,
		Debug:      cfg.opts.Debug,
		FsName:     fsName(cfg.opts),
		Version:    "machinefs " + version,
		README:     view.README(tree),
		Log:        log,
		MaxReaders: cfg.opts.MaxReaders,
		AfterWrite: status.sync(),
	})
	if err != nil {
		tree.Close()
		return err
	}
	log.Info("mounted", "mountpoint", mountpoint, "config", cfg.opts.ConfigDir, "demo", cfg.opts.Demo)
	// The netlink subscription ends with the daemon: closing its socket
	// wakes the receive (netlink's socket is in Go's poller), and the
	// daemon waits for it before it exits.
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	defer func() {
		stopWatch()
		select {
		case <-watchDone:
		case <-time.After(5 * time.Second):
			log.Warn("virtual switch watch did not stop")
		}
	}()
	go func() {
		defer close(watchDone)
		if err := tree.WatchSwitches(watchCtx); err != nil {
			log.Warn("virtual switch changes are not watched", "err", err)
		}
	}()
	notifyParent(nil)
	sdNotify("READY=1")

	unmounted := make(chan struct{})
	go func() { fsys.Wait(); close(unmounted) }()
	for {
		select {
		case <-unmounted:
			log.Info("unmounted from outside")
			tree.Close()
			return nil
		case s := <-sigs:
			if s == syscall.SIGHUP {
				sdNotify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
				if err := reopenLog(); err != nil {
					log.Error("reopen log", "err", err)
				}
				if err := tree.Reload(ctx); err != nil {
					log.Error("reload", "err", err)
				}
				sdNotify("READY=1")
				continue
			}
			log.Info("stopping", "signal", s.String())
			sdNotify("STOPPING=1")
			err := fsys.Unmount()
			tree.Close()
			return err
		}
	}
}

func fsName(o mountopts.Options) string {
	if o.FsName != "" {
		return o.FsName
	}
	if o.ConfigDir != "" {
		return o.ConfigDir
	}
	return "machinefs"
}

// owners returns who owns the tree's files: root (or the mounting user)
// and the operators group.
func owners(groupName string) (uid, gid uint32, err error) {
	uid, gid = uint32(os.Getuid()), uint32(os.Getgid())
	if groupName == "" {
		return uid, gid, nil
	}
	if n, err := strconv.ParseUint(groupName, 10, 32); err == nil {
		return uid, uint32(n), nil
	}
	g, err := user.LookupGroup(groupName)
	if err != nil {
		return 0, 0, fmt.Errorf("group=%s: %w", groupName, err)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("group=%s: gid %q: %w", groupName, g.Gid, err)
	}
	return uid, uint32(n), nil
}
