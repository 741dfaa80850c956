package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/machinefs/machinefs/cluster"
	"github.com/machinefs/machinefs/cluster/member"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/mountopts"
	"github.com/machinefs/machinefs/store/etcdstore"
)

// clusterJoin is what a daemon started with -o node= holds: its embedded
// member (if any), its etcd client, the store over it and its agent.
type clusterJoin struct {
	member *member.Member
	cli    *clientv3.Client
	store  *etcdstore.Store
	agent  *cluster.Agent
}

// etcdAnswerTimeout bounds the first contact with etcd at mount: a
// cluster URL that does not answer is an error at mount, not a hang.
const etcdAnswerTimeout = 10 * time.Second

// connectCluster starts the embedded member if asked, connects to etcd
// and checks that it answers, and opens the store. The agent is made
// once the tree exists (startAgent).
func connectCluster(ctx context.Context, o mountopts.Options, log *slog.Logger) (*clusterJoin, error) {
	j := &clusterJoin{}
	// The key file first: a bad one is refused at once, not after the
	// wait for etcd.
	var key []byte
	if o.SecretKey != "" {
		var err error
		if key, err = etcdstore.LoadSecretKey(o.SecretKey); err != nil {
			return nil, err
		}
	}
	if o.Member != "" {
		m, err := member.Start(ctx, member.Config{
			Name: o.Node, Dir: o.Member, PeerURL: o.PeerURL, ClientURL: o.ClientURL,
			InitialCluster: o.InitialCluster, InitialState: o.InitialState,
			TLS: member.TLS{CA: o.EtcdCA, Cert: o.EtcdCert, Key: o.EtcdKey},
			Log: log.With("part", "etcd-member"),
		})
		if err != nil {
			return nil, fmt.Errorf("embedded etcd member: %w", err)
		}
		j.member = m
	}
	cli, err := etcdClient(o)
	if err != nil {
		j.close()
		return nil, err
	}
	j.cli = cli
	cctx, cancel := context.WithTimeout(ctx, etcdAnswerTimeout)
	defer cancel()
	// The first contact calls etcd's gRPC service directly: the client's
	// Get turns a deadline into a bare "context deadline exceeded",
	// hiding why nothing answered (a refused connection, a certificate
	// that does not match), which gRPC's error names.
	kv := etcdserverpb.NewKVClient(cli.ActiveConnection())
	if _, err := kv.Range(cctx, &etcdserverpb.RangeRequest{Key: []byte("/machinefs/agents/" + o.Node)}, grpc.WaitForReady(true)); err != nil {
		j.close()
		msg := status.Convert(err).Message()
		// With TLS 1.3 a member that refuses the client certificate
		// closes the connection after the client's side of the
		// handshake is done: the client sees only a closed connection.
		if o.EtcdCert != "" && !strings.Contains(msg, "tls:") && closedByPeer(msg) {
			msg += fmt.Sprintf(" (the member closed the connection after the TLS handshake: it may refuse the client certificate %s; its log says why)", o.EtcdCert)
		}
		return nil, fmt.Errorf("etcd cluster %v does not answer within %s: %s", o.Cluster, etcdAnswerTimeout, msg)
	}
	if j.store, err = etcdstore.New(cli, etcdstore.Options{SecretKey: key, Log: log}); err != nil {
		j.close()
		return nil, err
	}
	return j, nil
}

// closedByPeer says whether a connection error is the peer closing a
// connection it had accepted.
func closedByPeer(msg string) bool {
	for _, s := range []string{"broken pipe", "connection reset by peer", "EOF", "connection closed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// etcdClient makes the client of the cluster's endpoints, over TLS with
// a client certificate when etcd-ca/cert/key are given.
func etcdClient(o mountopts.Options) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: o.Cluster, DialTimeout: 5 * time.Second, Logger: member.ZapLogger(slog.New(slog.DiscardHandler))}
	if o.EtcdCA != "" || o.EtcdCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.EtcdCA != "" {
			pem, err := os.ReadFile(o.EtcdCA)
			if err != nil {
				return nil, fmt.Errorf("etcd-ca: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd-ca: %s holds no PEM certificate", o.EtcdCA)
			}
		}
		if o.EtcdCert != "" {
			c, err := tls.LoadX509KeyPair(o.EtcdCert, o.EtcdKey)
			if err != nil {
				return nil, fmt.Errorf("etcd-cert/etcd-key: %w", err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", o.Cluster, err)
	}
	return cli, nil
}

// startAgent joins the cluster with tree (loaded from the store), and
// makes this machine's host if the config has none yet: hosts/NODE with
// node = NODE, so its subhosts and switches run here.
func (j *clusterJoin) startAgent(ctx context.Context, tree *model.Tree, node string, log *slog.Logger) error {
	if tree.Host("hosts/"+node) == nil {
		cf, _ := model.ParseConfig("node = " + node + "\nlabel = the machine agent " + node + " runs on\n")
		// Another agent may make it at the same moment: EEXIST is fine.
		if _, err := tree.Add(ctx, nil, node, cf, model.Caller{}); err != nil && !errors.Is(err, syscall.EEXIST) {
			log.Warn("making this machine's host", "host", "hosts/"+node, "err", err)
		}
	}
	return j.agent.Start(ctx)
}

// newAgent makes the agent for tree; the tree needs it before Load.
func (j *clusterJoin) newAgent(tree *model.Tree, node string, log *slog.Logger) error {
	a, err := cluster.New(j.cli, tree, j.store, cluster.Options{Node: node, Log: log})
	if err != nil {
		return err
	}
	j.agent = a
	tree.SetPeers(a)
	return nil
}

func (j *clusterJoin) close() {
	if j == nil {
		return
	}
	if j.agent != nil {
		j.agent.Close()
	}
	if j.cli != nil {
		j.cli.Close()
	}
	if j.member != nil {
		j.member.Close()
	}
}
