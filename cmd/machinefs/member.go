package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/cluster/member"
	"github.com/machinefs/machinefs/mountopts"
)

// memberUsage is the synopsis of `machinefs member`.
const memberUsage = "usage: machinefs member -o node=NAME,member=DIR,peer-url=URL,client-url=URL[,initial-cluster=NAME=URL+...][,initial-state=new|existing][,etcd-ca=FILE,etcd-cert=FILE,etcd-key=FILE][,log=WHERE][,debug]\n"

// runMemberIfAsked runs `machinefs member ...` and exits when the command
// line asks for it, and otherwise returns at once. `machinefs member` runs
// only an embedded etcd member, no mount, until SIGINT or SIGTERM: for
// sites that keep their etcd members apart from their mounts, and for
// tests that kill members.
func runMemberIfAsked() {
	if len(os.Args) < 2 || os.Args[1] != "member" {
		return
	}
	err := runMember(os.Args[2:])
	var usage usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "machinefs member:", err)
		fmt.Fprint(os.Stderr, memberUsage)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "machinefs member:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// usageError is a command line machinefs member cannot run with (exit
// status 2, as for the mount).
type usageError struct{ error }

func runMember(args []string) error {
	var o mountopts.Options
	fl := flag.NewFlagSet("machinefs member", flag.ContinueOnError)
	fl.Var(&o, "o", "options (comma separated; see machinefs(8))")
	var out strings.Builder
	fl.SetOutput(&out)
	fl.Usage = func() { fmt.Fprint(fl.Output(), memberUsage); fl.PrintDefaults() }
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(out.String())
			return err
		}
		return usageError{err}
	}
	if fl.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q: a member mounts nothing", fl.Arg(0))}
	}
	if err := o.Validate(); err != nil {
		return usageError{err}
	}
	if o.Member == "" {
		return usageError{errors.New("-o member=DIR is missing: where the member keeps its data")}
	}

	level := slog.LevelInfo
	if o.Debug {
		level = slog.LevelDebug
	}
	stateDir := o.StateDir
	if stateDir == "" {
		stateDir = "/run/machinefs"
	}
	logOut, reopenLog, err := openLog(o.Log, false, stateDir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level})).With("member", o.Node)

	// The signals end the wait for quorum too: a member whose peers are
	// not up yet waits for them without a bound, as they need it as much.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	log.Info("starting etcd member", "dir", o.Member, "peer-url", o.PeerURL, "client-url", o.ClientURL,
		"initial-cluster", o.InitialCluster, "initial-state", o.InitialState)
	m, err := member.Start(ctx, member.Config{
		Name: o.Node, Dir: o.Member, PeerURL: o.PeerURL, ClientURL: o.ClientURL,
		InitialCluster: o.InitialCluster, InitialState: o.InitialState,
		TLS:          member.TLS{CA: o.EtcdCA, Cert: o.EtcdCert, Key: o.EtcdKey},
		ReadyTimeout: -1, Log: log,
	})
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before joining the cluster")
			return nil
		}
		return err
	}
	log.Info("etcd member ready", "endpoints", m.Endpoints())
	sdNotify("READY=1")
	for {
		select {
		case <-hup:
			if err := reopenLog(); err != nil {
				log.Error("reopen log", "err", err)
			}
		case <-ctx.Done():
			log.Info("stopping etcd member")
			sdNotify("STOPPING=1")
			m.Close()
			return nil
		case err := <-m.Err():
			m.Close()
			return fmt.Errorf("etcd member %s: %w", o.Node, err)
		case <-m.Done():
			m.Close()
			return fmt.Errorf("etcd member %s stopped on its own (removed from the cluster?)", o.Node)
		}
	}
}
