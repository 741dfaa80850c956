package ipmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/machinefs/machinefs/machine"
)

// authWords are fragments of go-ipmi errors that mean the BMC refused the
// user name, the password or the privilege level.
var authWords = []string{
	"RAKP authentication failed",
	"authentication code mismatch",
	"Unauthorized name",
	"Unauthorized role",
	"Invalid user name",
	"Invalid integrity check value",
	"Insufficient privilege",
}

// classify turns an error from go-ipmi into a *machine.Error with an errno
// and a readable reason naming the BMC and the step that failed. ctx is the
// context the failed call ran under: go-ipmi does not report its expiry as
// context.DeadlineExceeded, so it is asked directly.
func (d *Driver) classify(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	var ne *machine.Error
	if errors.As(err, &ne) {
		return err
	}
	where := fmt.Sprintf("ipmi %s: %s", d.cfg.hostPort(), what)
	if r, ok := d.classifyRefusal(where, err); ok {
		return r
	}
	detail := d.redact(oneLine(err.Error()))
	tries := fmt.Sprintf("%d tries of %v", d.cfg.retries+1, d.cfg.timeout)
	switch {
	case ctx.Err() == context.Canceled || (ctx.Err() == nil && errors.Is(err, context.Canceled)):
		return machine.Errorf(syscall.EINTR, "%s: canceled", where)
	case containsAny(detail, authWords):
		return machine.Errorf(syscall.EACCES, "%s: BMC rejected the credentials of user %q: %s", where, d.cfg.user, detail)
	case d.cfg.iface == "lan" && strings.Contains(detail, "ActivateSession failed") && isTimeout(err, detail):
		// IPMI 1.5 BMCs stay silent when the password is wrong.
		return machine.Errorf(syscall.EACCES, "%s: BMC did not answer Activate Session (%s): wrong password?", where, tries)
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return machine.Errorf(syscall.ETIMEDOUT, "%s: no answer from the BMC in time: %s", where, detail)
	}
	if re, ok := types.IsResponseError(err); ok {
		if re.CompletionCode() == 0xd4 {
			return machine.Errorf(syscall.EACCES, "%s: BMC answered: insufficient privilege: %s", where, detail)
		}
		return machine.Errorf(syscall.EIO, "%s: BMC answered: %s", where, detail)
	}
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return machine.Errorf(syscall.EHOSTUNREACH, "%s: nothing listens on UDP %s (port unreachable): %s", where, d.cfg.hostPort(), detail)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return machine.Errorf(syscall.EHOSTUNREACH, "%s: no route to the BMC: %s", where, detail)
	case errors.As(err, &dnsErr) || strings.Contains(detail, "resolve addr failed"):
		return machine.Errorf(syscall.EHOSTUNREACH, "%s: cannot resolve %q: %s", where, d.cfg.address, detail)
	case isTimeout(err, detail):
		return machine.Errorf(syscall.ETIMEDOUT, "%s: no answer from the BMC (%s): %s", where, tries, detail)
	}
	return machine.Errorf(syscall.EIO, "%s: %s", where, detail)
}

func isTimeout(err error, detail string) bool {
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return true
	}
	return strings.Contains(detail, "no datagram matched") || strings.Contains(detail, "timed out") ||
		strings.Contains(detail, "i/o timeout")
}

func containsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// oneLine folds go-ipmi's multi-line error texts into one line.
func oneLine(s string) string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
	}
	return strings.Join(f, " ")
}

// redact removes the password from s, should a library ever quote it.
// Very short passwords are not searched for: they would mangle the text and
// are found in any error message by chance.
func (d *Driver) redact(s string) string {
	if len(d.cfg.password) >= 4 {
		s = strings.ReplaceAll(s, d.cfg.password, "<password>")
	}
	return s
}

// reachableAfter says whether an error proves the BMC answered.
func reachableAfter(err error) bool {
	if err == nil {
		return true
	}
	switch machine.ErrnoOf(err) {
	case syscall.EIO:
		_, ok := types.IsResponseError(err)
		return ok || strings.Contains(err.Error(), "BMC answered")
	}
	return false
}
