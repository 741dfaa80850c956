// Package member runs an embedded etcd member, so that a small site's
// machines form the etcd cluster machinefs needs among themselves, with no
// separate servers, and sets up etcd auth so that each agent may write only
// the keys it owns.
package member

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// DefaultReadyTimeout bounds how long Start waits for the member to join
// its cluster when Config.ReadyTimeout is zero.
const DefaultReadyTimeout = 60 * time.Second

// TLS names PEM files. The same certificate serves clients and peers and
// authenticates the member to its peers, so it needs both the server and
// the client extended key usage and the member's addresses as SANs.
type TLS struct {
	// CA is the CA that signed the clients' and peers' certificates;
	// given, clients and peers must present a certificate it signed
	// (client-cert-auth), and with etcd auth on, the certificate's CN
	// names the etcd user.
	CA string
	// Cert and Key are the member's certificate and key.
	Cert, Key string
}

func (t TLS) empty() bool { return t.CA == "" && t.Cert == "" && t.Key == "" }

// Config says which member to run.
type Config struct {
	// Name is the member's name in the cluster, the node name.
	Name string
	// Dir holds the member's data (created 0700 if missing).
	Dir string
	// PeerURL is where the member listens for and is reached by its
	// peers; ClientURL is where it serves clients. Both are
	// scheme://IP:PORT (etcd binds to an IP, or localhost).
	PeerURL, ClientURL string
	// InitialCluster lists the members of a new cluster as NAME=PEERURL,
	// joined with ',' (etcd's form) or '+' (the mount option's form).
	// Empty: a cluster of this member alone.
	InitialCluster string
	// InitialState is "new" (the default) to found a cluster with the
	// members in InitialCluster, "existing" to join a running one. Once
	// Dir holds data, the member restarts from it and both are ignored.
	InitialState string
	// TLS, when not empty, serves clients and peers over TLS (the URLs
	// must then be https).
	TLS TLS
	// ReadyTimeout bounds the wait for the member to join its cluster
	// (0: DefaultReadyTimeout; negative: no bound but ctx, for a member
	// process whose peers may boot much later and need it for quorum).
	ReadyTimeout time.Duration
	// Log receives the member's warnings and errors, and at debug level
	// what etcd logs as info. Nil: the member logs nothing.
	Log *slog.Logger
}

// Member is a running embedded etcd member.
type Member struct {
	etcd      *embed.Etcd
	endpoints []string
	quiet     *atomic.Bool // set by Close: see zapLogger
}

// Start starts the member and waits until it has joined its cluster and
// serves clients, at most cfg.ReadyTimeout and while ctx lasts (ctx bounds
// only the wait, not the member's life). A member that does not become
// ready (a bad URL, a port in use, peers that do not answer, so no quorum)
// is stopped and reported.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	quiet := new(atomic.Bool)
	ec, err := embedConfig(cfg, quiet)
	if err != nil {
		return nil, fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	}
	wait := cfg.ReadyTimeout
	if wait == 0 {
		wait = DefaultReadyTimeout
	}
	var timeout <-chan time.Time
	if wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		timeout = timer.C
	}
	fail := func(err error) (*Member, error) {
		// etcd's Close waits for the client servers, which start only
		// once the member is ready or stopping: stop it first, or Close
		// hangs.
		quiet.Store(true)
		e.Server.HardStop()
		e.Close()
		return nil, fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fail(err)
	case <-e.Server.StopNotify():
		return fail(errors.New("stopped before it was ready (see its log)"))
	case <-timeout:
		return fail(fmt.Errorf("not ready after %s: it has no quorum; are the members of %q running, and do their peer URLs answer?",
			wait, ec.InitialCluster))
	case <-ctx.Done():
		return fail(fmt.Errorf("waiting to join the cluster: %w", ctx.Err()))
	}
	m := &Member{etcd: e, quiet: quiet}
	for _, u := range ec.AdvertiseClientUrls {
		m.endpoints = append(m.endpoints, u.String())
	}
	return m, nil
}

// embedConfig translates cfg into etcd's configuration.
func embedConfig(cfg Config, quiet *atomic.Bool) (*embed.Config, error) {
	if cfg.Name == "" || cfg.Dir == "" {
		return nil, errors.New("needs a name and a data directory")
	}
	peer, err := bindURL("peer URL", cfg.PeerURL)
	if err != nil {
		return nil, err
	}
	client, err := bindURL("client URL", cfg.ClientURL)
	if err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Name, ec.Dir = cfg.Name, cfg.Dir
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	ec.InitialCluster = strings.ReplaceAll(cfg.InitialCluster, "+", ",")
	if ec.InitialCluster == "" {
		ec.InitialCluster = cfg.Name + "=" + peer.String()
	}
	// The token keeps a member of one site's cluster from joining
	// another's by a mistyped URL.
	ec.InitialClusterToken = "machinefs"
	switch cfg.InitialState {
	case "", "new":
		ec.ClusterState = embed.ClusterStateFlagNew
	case "existing":
		ec.ClusterState = embed.ClusterStateFlagExisting
	default:
		return nil, fmt.Errorf("initial state %q: want new or existing", cfg.InitialState)
	}
	if !cfg.TLS.empty() {
		if cfg.TLS.Cert == "" || cfg.TLS.Key == "" {
			return nil, errors.New("TLS needs a certificate and its key")
		}
		info := transport.TLSInfo{CertFile: cfg.TLS.Cert, KeyFile: cfg.TLS.Key,
			TrustedCAFile: cfg.TLS.CA, ClientCertAuth: cfg.TLS.CA != ""}
		ec.ClientTLSInfo, ec.PeerTLSInfo = info, info
	}
	for _, u := range []url.URL{peer, client} {
		if tls := u.Scheme == "https"; tls == cfg.TLS.empty() {
			if tls {
				return nil, fmt.Errorf("%s is https but no certificate is given", u.String())
			}
			return nil, fmt.Errorf("%s is http but a certificate is given: use https", u.String())
		}
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapLogger(cfg.Log, quiet))
	return ec, nil
}

// bindURL parses a peer or client URL; etcd binds to its host, which must
// therefore be an IP or localhost (etcd says so too, less clearly).
func bindURL(what, s string) (url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" {
		return url.URL{}, fmt.Errorf("%s %q: want http(s)://IP:PORT", what, s)
	}
	return url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// Endpoints are the member's client URLs.
func (m *Member) Endpoints() []string { return m.endpoints }

// Err reports an error that stopped the member after Start (its listeners
// failed); a member that runs sends nothing.
func (m *Member) Err() <-chan error { return m.etcd.Err() }

// Done is closed when the member has stopped, by Close or on its own (for
// instance when it was removed from the cluster).
func (m *Member) Done() <-chan struct{} { return m.etcd.Server.StopNotify() }

// Close stops the member; its data stays in Dir for a restart.
func (m *Member) Close() {
	m.quiet.Store(true)
	m.etcd.Close()
}
