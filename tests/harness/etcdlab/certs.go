package etcdlab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// CA is an ad-hoc certificate authority for a test: it issues the
// certificates of etcd members, agents and the administrator, as a site's
// own CA would.
type CA struct {
	// Dir holds the PEM files.
	Dir string
	// File is the CA certificate (PEM), what etcd-ca= names.
	File string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Cert is an issued certificate and its key, as PEM files.
type Cert struct{ File, Key string }

var serial atomic.Int64

// NewCA creates a CA whose files live in dir.
func NewCA(t testing.TB, dir string) *CA {
	t.Helper()
	tmpl := template("machinefs test CA")
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, key := sign(t, tmpl, nil)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{Dir: dir, File: filepath.Join(dir, "ca.pem"), cert: cert, key: key}
	writePEM(t, ca.File, "CERTIFICATE", der)
	return ca
}

// Issue issues a certificate with common name cn (the etcd user name when
// etcd auth is on: the node name, or "root"), usable both as a server and
// as a client certificate, for hosts: IP addresses and DNS names its
// servers answer on. Files: Dir/cn.pem and Dir/cn-key.pem.
func (ca *CA) Issue(t testing.TB, cn string, hosts ...string) Cert {
	t.Helper()
	tmpl := template(cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	// etcd peers authenticate each other with the same certificate they
	// serve with: both usages.
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, key := sign(t, tmpl, ca)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := Cert{File: filepath.Join(ca.Dir, cn+".pem"), Key: filepath.Join(ca.Dir, cn+"-key.pem")}
	writePEM(t, c.File, "CERTIFICATE", der)
	writePEM(t, c.Key, "EC PRIVATE KEY", kder)
	return c
}

// ClientTLS returns a TLS configuration for an etcd client that presents
// a certificate for cn, which Issue makes.
func (ca *CA) ClientTLS(t testing.TB, cn string) *tls.Config {
	t.Helper()
	c := ca.Issue(t, cn)
	cfg, err := transport.TLSInfo{CertFile: c.File, KeyFile: c.Key, TrustedCAFile: ca.File}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// template is a certificate for cn valid for the day a test takes.
func template(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

// sign makes a key and signs tmpl with ca, or with that key itself when ca
// is nil (the CA's own certificate).
func sign(t testing.TB, tmpl *x509.Certificate, ca *CA) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	parent, parentKey := tmpl, key
	if ca != nil {
		parent, parentKey = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
