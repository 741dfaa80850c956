package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/machinefs/machinefs/cluster/member"
	"github.com/machinefs/machinefs/mountopts"
)

// machinefs auth turns etcd's auth on for a cluster's agents: each agent
// (user = its certificate's CN = its node name) may then write only its
// own keys and the shared ones (cluster/member.EnableAuth). Run it once
// with a root certificate (CN root), and again to add agents.
const authUsage = `usage: machinefs auth -o cluster=URL,etcd-ca=FILE,etcd-cert=ROOT.pem,etcd-key=ROOT-key.pem NODE...
`

func runAuthIfAsked() {
	if len(os.Args) < 2 || os.Args[1] != "auth" {
		return
	}
	err := runAuth(os.Args[2:])
	var usage usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "machinefs auth:", err)
		fmt.Fprint(os.Stderr, authUsage)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "machinefs auth:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runAuth(args []string) error {
	var o mountopts.Options
	fl := flag.NewFlagSet("machinefs auth", flag.ContinueOnError)
	fl.Var(&o, "o", "cluster=URL and etcd-ca/cert/key= (a root certificate)")
	if err := fl.Parse(args); err != nil {
		return usageError{err}
	}
	switch {
	case len(o.Cluster) == 0:
		return usageError{errors.New("cluster=URL is required")}
	case fl.NArg() == 0:
		return usageError{errors.New("name the agents (their node names)")}
	}
	cli, err := etcdClient(o)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := member.EnableAuth(ctx, cli, "", fl.Args()); err != nil {
		return fmt.Errorf("enabling etcd auth on %v: %w", o.Cluster, err)
	}
	fmt.Printf("etcd auth on for %v: agents %v may write only their own keys\n", o.Cluster, fl.Args())
	return nil
}
