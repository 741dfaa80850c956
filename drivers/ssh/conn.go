package ssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/machinefs/machinefs/drivers/internal/nsthread"
	"github.com/machinefs/machinefs/machine"
)

// maxKeyFile bounds what is read of the key and known_hosts files.
const maxKeyFile = 1 << 20

// maxOutput bounds what is kept of a command's output: the rest is read
// and dropped, so the target cannot make the daemon hold more.
const maxOutput = 4096

// Init systems the driver tells apart on the target.
const (
	initSystemd = "systemd"
	initSysV    = "sysvinit"
	initBusybox = "busybox"
	initUnknown = "unknown"
	// PID 1 before the FIFO: a busybox machine may have a /run/initctl
	// FIFO that is not sysvinit's (an ns subhost's, read by its own init).
	detectScript = `if [ -d /run/systemd/system ]; then echo systemd; else e=$(readlink /proc/1/exe 2>/dev/null); case "$e" in */busybox) echo "$e" ;; *) if [ -p /run/initctl ] || [ -p /dev/initctl ]; then echo sysvinit; else echo "${e:-unknown}"; fi ;; esac; fi`
)

// conn is one authenticated SSH connection to the machine, kept between
// probes and commands.
type conn struct {
	client  *ssh.Client
	hostKey string // "ssh-ed25519 SHA256:..." as verified
	init    string // initSystemd, initSysV, initBusybox or initUnknown
	initWhy string // how init was found, or why not
}

func (c *conn) close() { _ = c.client.Close() }

// dialer opens connections from the network namespace the driver was
// created in: sockets belong to the namespace of the thread that opens
// them, whichever goroutine uses them later.
type dialer struct {
	cfg settings
	ns  nsthread.Home
}

func (d dialer) inNS(fn func() error) error { return d.ns.Run(fn) }

// resolve returns the machine's IP address. Names are resolved in the
// process's own namespace (the resolver runs on goroutines of its own).
func (d dialer) resolve(ctx context.Context) (net.IP, error) {
	if ip := net.ParseIP(d.cfg.address); ip != nil {
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.connectTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", d.cfg.address)
	if err != nil || len(ips) == 0 {
		return nil, machine.Errorf(syscall.EHOSTUNREACH, "ssh %s: cannot resolve %s: %v", d.cfg.hostPort(), d.cfg.address, err)
	}
	return ips[0], nil
}

// ownAddress says whether ip is the machine machinefs runs on: loopback,
// or an address of an interface in the driver's network namespace. Power
// verbs there would bypass the local host's allow-self guard.
func (d dialer) ownAddress(ip net.IP) (bool, error) {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true, nil
	}
	own := false
	err := d.inNS(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				own = true
			}
		}
		return nil
	})
	return own, err
}

// tcp connects to the port and nothing more: the probe that says whether
// the machine is down (refused, unreachable, no answer), used while a
// poweroff or reboot is followed.
func (d dialer) tcp(ctx context.Context) error {
	ip, err := d.resolve(ctx)
	if err != nil {
		return err
	}
	c, err := d.dialTCP(ctx, ip)
	if err != nil {
		return err
	}
	return c.Close()
}

func (d dialer) dialTCP(ctx context.Context, ip net.IP) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.connectTimeout)
	defer cancel()
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(d.cfg.port))
	var c net.Conn
	err := d.inNS(func() error {
		// An IP literal and no fallback: the dial runs on this
		// (namespaced) thread, no helper goroutines.
		var err error
		c, err = (&net.Dialer{FallbackDelay: -1}).DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, dialError(d.cfg, ctx, err)
	}
	return c, nil
}

// dialError gives a failed TCP connect its errno and words.
func dialError(cfg settings, ctx context.Context, err error) error {
	hp := cfg.hostPort()
	var me *machine.Error
	switch {
	case errors.As(err, &me):
		return err // entering the namespace failed
	case errors.Is(err, syscall.ECONNREFUSED):
		return &downError{"connection refused", machine.Errorf(syscall.EHOSTUNREACH, "ssh %s: connection refused (the address answers, sshd does not: stopped, or the machine is going down)", hp)}
	case errors.Is(err, syscall.EHOSTUNREACH):
		return &downError{"no route to host", machine.Errorf(syscall.EHOSTUNREACH, "ssh %s: no route to host (nothing answers at that address: off or disconnected)", hp)}
	case errors.Is(err, syscall.ENETUNREACH):
		return &downError{"network unreachable", machine.Errorf(syscall.EHOSTUNREACH, "ssh %s: network unreachable from machinefs", hp)}
	case ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
		return &downError{"no answer", machine.Errorf(syscall.ETIMEDOUT, "ssh %s: no answer to the TCP connect within %s (off, filtered or unreachable)", hp, cfg.connectTimeout)}
	}
	return &downError{"connect failed", machine.Errorf(syscall.EHOSTUNREACH, "ssh %s: connect: %v", hp, err)}
}

// downError marks a connection that failed before anything answered at
// the SSH level: the evidence a poweroff is waited for. short names the
// cause in a reason.
type downError struct {
	short string
	err   error
}

func (e *downError) Error() string { return e.err.Error() }
func (e *downError) Unwrap() error { return e.err }

// isDown reports whether err says the machine's SSH port does not answer.
func isDown(err error) bool {
	var d *downError
	return errors.As(err, &d)
}

// refusedOrUnreachable says whether a down probe is evidence of off (the
// port refuses, or nothing answers at the address) rather than of a
// network that drops packets (a timeout).
func refusedOrUnreachable(err error) bool {
	return isDown(err) && machine.ErrnoOf(err) == syscall.EHOSTUNREACH
}

// dial opens and authenticates a connection, then asks the target which
// init it runs. Everything is bounded by cfg.connectTimeout (the command
// by cfg.commandTimeout) and by ctx.
func (d dialer) dial(ctx context.Context) (*conn, error) {
	hp := d.cfg.hostPort()
	signer, err := readKey(d.cfg.key)
	if err != nil {
		return nil, err
	}
	check, algos, err := hostKeyCheck(d.cfg.knownHosts, hp)
	if err != nil {
		return nil, err
	}
	ip, err := d.resolve(ctx)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, d.cfg.connectTimeout)
	defer cancel()
	nc, err := d.dialTCP(hctx, ip)
	if err != nil {
		return nil, err
	}
	// The handshake reads from the target: bounded by a deadline on the
	// connection, and by ctx, which closes it.
	deadline, _ := hctx.Deadline()
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(hctx, func() { _ = nc.Close() })
	var keyErr error
	offered := ""
	cc := &ssh.ClientConfig{
		User: d.cfg.user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			offered = key.Type() + " " + ssh.FingerprintSHA256(key)
			keyErr = check(hostname, remote, key)
			return keyErr
		},
		HostKeyAlgorithms: algos,
		BannerCallback:    func(string) error { return nil }, // not shown anywhere
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, hp, cc)
	stopped := stop()
	if err != nil {
		_ = nc.Close()
		switch {
		case keyErr != nil:
			return nil, keyErr
		case errors.Is(ctx.Err(), context.Canceled):
			return nil, ctx.Err()
		case !stopped || hctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
			return nil, machine.Errorf(syscall.ETIMEDOUT, "ssh %s: connected, but no SSH handshake within %s (something else listens on the port, or sshd hangs)", hp, d.cfg.connectTimeout)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, machine.Errorf(syscall.EACCES, "ssh %s: host key ok (%s), but %s's key %s was refused: add its public key to the user's authorized_keys", hp, offered, d.cfg.user, d.cfg.key)
		}
		return nil, machine.Errorf(syscall.EHOSTUNREACH, "ssh %s: handshake failed: %s", hp, quote(err.Error()))
	}
	if !stopped {
		_ = sc.Close()
		return nil, machine.Errorf(syscall.ETIMEDOUT, "ssh %s: handshake did not finish within %s", hp, d.cfg.connectTimeout)
	}
	_ = nc.SetDeadline(time.Time{})
	c := &conn{client: ssh.NewClient(sc, chans, reqs), hostKey: offered}
	if c.init, c.initWhy, err = d.detectInit(ctx, c); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// detectInit runs the fixed detection script: systemd when
// /run/systemd/system exists (as systemd's own sd_booted), busybox when
// PID 1 is busybox, else sysvinit when its control FIFO exists. A command that
// fails (a restricted shell) is not fatal: the commands then take their
// plain forms. A connection that stops answering is.
func (d dialer) detectInit(ctx context.Context, c *conn) (string, string, error) {
	out, err := run(ctx, c, "init detection", detectScript, d.cfg.commandTimeout)
	switch {
	case errors.Is(err, errGone), machine.ErrnoOf(err) == syscall.ETIMEDOUT, errors.Is(err, context.Canceled):
		return "", "", fmt.Errorf("ssh %s: %w", d.cfg.hostPort(), err)
	case err != nil:
		return initUnknown, "detection failed: " + err.Error(), nil
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	switch {
	case line == initSystemd:
		return initSystemd, "/run/systemd/system exists", nil
	case line == initSysV:
		return initSysV, "/run/initctl is a FIFO", nil
	case strings.HasSuffix(line, "/busybox"):
		return initBusybox, "PID 1 is " + quote(line), nil
	}
	return initUnknown, "PID 1 is " + quote(line), nil
}

// bounded runs fn, which talks over c, for at most timeout (and ctx). A
// target that stops answering cannot hold the caller: the connection is
// closed, which ends fn, and the result is ETIMEDOUT.
func bounded(ctx context.Context, c *conn, timeout time.Duration, what string, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		c.close()
		<-done // closing the connection ends every call on it
		if errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		return machine.Errorf(syscall.ETIMEDOUT, "%s: no answer within %s", what, timeout)
	}
}

// keepalive asks the server for a reply on the kept connection: any
// answer (OpenSSH refuses the unknown request) proves it is there.
func keepalive(ctx context.Context, c *conn, timeout time.Duration) error {
	return bounded(ctx, c, timeout, "ssh keepalive", func() error {
		_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
		return err
	})
}

// errGone marks a command whose connection closed before its exit status
// arrived: for poweroff and reboot, the machine going down under it.
var errGone = errors.New("connection closed before the command's exit status")

// run runs one fixed command line and returns its output (stdout and
// stderr, at most maxOutput bytes kept). A non-zero exit is EIO with the
// output, escaped. label names the command in errors.
func run(ctx context.Context, c *conn, label, line string, timeout time.Duration) (string, error) {
	var out limited
	err := bounded(ctx, c, timeout, label, func() error {
		s, err := c.client.NewSession()
		if err != nil {
			return fmt.Errorf("%w: %v", errGone, err)
		}
		defer s.Close()
		s.Stdout, s.Stderr = &out, &out
		return s.Run(line)
	})
	var exit *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return out.String(), nil
	case errors.As(err, &exit):
		return out.String(), machine.Errorf(syscall.EIO, "%s exited with status %d: %s", label, exit.ExitStatus(), quote(out.String()))
	case errors.As(err, &missing), errors.Is(err, io.EOF), errors.Is(err, errGone):
		return out.String(), fmt.Errorf("%s: %w", label, errGone)
	}
	return out.String(), err
}

// limited keeps the first maxOutput bytes written to it and drops the
// rest, never blocking the channel that writes.
type limited struct {
	mu        sync.Mutex
	b         []byte
	truncated bool
}

func (l *limited) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := maxOutput - len(l.b); room < len(p) {
		l.b = append(l.b, p[:max(room, 0)]...)
		l.truncated = true
	} else {
		l.b = append(l.b, p...)
	}
	return len(p), nil
}

func (l *limited) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := string(l.b)
	if l.truncated {
		s += "...(truncated)"
	}
	return s
}

// quote escapes text from the target for logs, events and state: one
// line, control characters and invalid UTF-8 escaped, at most 200 bytes.
func quote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strconv.Quote(s)
}

// readKey reads the private key. A key others can read is refused, as
// OpenSSH refuses it: whoever reads it can power the machine off.
func readKey(path string) (ssh.Signer, error) {
	data, err := readSmall(path, "ssh.key")
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	var pme *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &pme):
		return nil, machine.Errorf(syscall.EINVAL, "ssh.key %s is encrypted: the daemon cannot type a passphrase; use an unencrypted key readable by root only", path)
	case err != nil:
		return nil, machine.Errorf(syscall.EINVAL, "ssh.key %s: not a private key: %v", path, err)
	}
	return signer, nil
}

func readSmall(path, key string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, machine.Errorf(syscall.EACCES, "%s %s: %v", key, path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, machine.Errorf(syscall.EACCES, "%s %s: %v", key, path, err)
	}
	if key == "ssh.key" && fi.Mode().Perm()&0o077 != 0 {
		return nil, machine.Errorf(syscall.EACCES, "ssh.key %s: mode %04o lets others read it: chmod 600", path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, machine.Errorf(syscall.EACCES, "%s %s: %v", key, path, err)
	}
	if len(data) > maxKeyFile {
		return nil, machine.Errorf(syscall.EINVAL, "%s %s: larger than %d bytes", key, path, maxKeyFile)
	}
	return data, nil
}

// probeKey is a key no known_hosts lists: checking it returns the keys
// that are listed for a host.
var probeKey = sync.OnceValue(func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
})

// hostKeyCheck reads known_hosts and returns the check for the server's
// key, whose errors are EACCES with the reason, and the key algorithms to
// ask the server for: those of the keys known for hostPort, so a server
// with several host keys shows the one known_hosts lists.
func hostKeyCheck(path, hostPort string) (ssh.HostKeyCallback, []string, error) {
	if _, err := readSmall(path, "ssh.known-hosts"); err != nil {
		return nil, nil, err
	}
	cb, err := knownhosts.New(path)
	if err != nil {
		return nil, nil, machine.Errorf(syscall.EINVAL, "ssh.known-hosts %s: %v", path, err)
	}
	var known []knownhosts.KnownKey
	var ke *knownhosts.KeyError
	if err := cb(hostPort, &net.TCPAddr{}, probeKey()); errors.As(err, &ke) {
		known = ke.Want
	}
	var algos []string
	for _, k := range known {
		algos = append(algos, algorithmsFor(k.Key.Type())...)
	}
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		if err == nil {
			return nil
		}
		offered := key.Type() + " " + ssh.FingerprintSHA256(key)
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case errors.As(err, &ke) && len(ke.Want) == 0:
			return machine.Errorf(syscall.EACCES, "ssh %s: unknown host: its key is not in known_hosts %s (the server offers %s); machinefs never trusts a key on first use: check the fingerprint on the machine and add the key", hostPort, path, offered)
		case errors.As(err, &ke):
			var want []string
			for _, w := range ke.Want {
				want = append(want, fmt.Sprintf("%s %s (%s:%d)", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Filename, w.Line))
			}
			return machine.Errorf(syscall.EACCES, "ssh %s: host key CHANGED: the server offers %s, known_hosts has %s; another machine at this address, or a reinstalled one: check it before updating known_hosts", hostPort, offered, strings.Join(want, ", "))
		case errors.As(err, &re):
			return machine.Errorf(syscall.EACCES, "ssh %s: host key %s is revoked (%s:%d)", hostPort, offered, re.Revoked.Filename, re.Revoked.Line)
		}
		return machine.Errorf(syscall.EACCES, "ssh %s: host key %s rejected: %v", hostPort, offered, err)
	}
	return check, algos, nil
}

// algorithmsFor lists the signature algorithms a host key type is
// verified with (RSA keys sign with SHA-2 today).
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}
