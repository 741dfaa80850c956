package vswitch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machinefs/machinefs/machine"
)

// Bounds of one conversation with a vde_switch management socket: the
// socket belongs to the switch's owner, whose process answers, so neither
// the size nor the time of the answer is trusted.
const (
	mgmtTimeout  = 3 * time.Second
	mgmtMaxBytes = 256 << 10
)

// vdePort is one port of a VDE switch as port/allprint shows it.
type vdePort struct {
	N         int
	Active    bool
	User      string // the connected client's user (SO_PEERCRED), NONE
	Endpoints []vdeEndpoint
}

// vdeEndpoint is one connection on a port: the TAP (module tuntap) or a
// client such as vde_plug or QEMU (module "unix prog").
type vdeEndpoint struct {
	ID     int
	Module string
	Descr  string // the client's own description: untrusted text
}

// mgmtQuery sends one command to the management socket at path and returns
// its data lines. The socket must be a socket owned by uid: it sits in a
// directory its owner can write, so the path is opened without following
// a symlink and connected through /proc/self/fd, and root never talks to a
// socket someone put there in its place.
func mgmtQuery(ctx context.Context, path string, uid uint32, cmd string) ([]string, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vde management socket %s: %v", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, machine.Errorf(syscall.EIO, "vde management socket %s: %v", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Uid != uid {
		return nil, machine.Errorf(syscall.EIO, "vde management socket %s: not a socket of uid %d (mode %o, uid %d)", path, uid, st.Mode, st.Uid)
	}
	ctx, cancel := context.WithTimeout(ctx, mgmtTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vde management socket %s: %v", path, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return nil, machine.Errorf(syscall.EIO, "vde management socket %s: %v", path, err)
	}
	lines, err := readMgmt(io.LimitReader(conn, mgmtMaxBytes))
	if err != nil {
		return nil, machine.Errorf(errnoOf(err, syscall.EIO), "vde management socket %s: %s: %v", path, cmd, err)
	}
	return lines, nil
}

// statusLine is a vde_switch answer's status: "1000 Success", "0000 DATA
// END WITH '.'", after the "vde$ " prompt when it starts the line.
var statusLine = regexp.MustCompile(`^(?:vde\$ )*(\d{4}) (.*)$`)

// readMgmt reads one answer: the banner, then either a status line, or
// "0000 DATA END WITH '.'", data lines, "." and a status line. 1000 is
// success; any other status is the error.
func readMgmt(r io.Reader) ([]string, error) {
	br := bufio.NewReader(r)
	var data []string
	inData := false
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errors.New("answer ended early (or longer than the bound)")
			}
			return nil, err
		}
		l = strings.TrimRight(l, "\r\n")
		if inData {
			if l == "." {
				inData = false
			} else {
				data = append(data, l)
			}
			continue
		}
		m := statusLine.FindStringSubmatch(l)
		switch {
		case m == nil:
			continue // banner
		case m[1] == "0000":
			inData = true
		case m[1] == "1000":
			return data, nil
		default:
			return nil, fmt.Errorf("vde_switch says %s %q", m[1], m[2])
		}
	}
}

var (
	portLine     = regexp.MustCompile(`^Port (\d+) .*\b(ACTIVE|INACTIVE)\b`)
	userLine     = regexp.MustCompile(`^\s*Current User: (\S+)`)
	endpointLine = regexp.MustCompile(`^\s*-- endpoint ID (\d+) module (.*?)\s*: (.*)$`)
)

// parsePorts reads port/allprint's data lines.
func parsePorts(lines []string) []vdePort {
	var ports []vdePort
	for _, l := range lines {
		if m := portLine.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			ports = append(ports, vdePort{N: n, Active: m[2] == "ACTIVE"})
			continue
		}
		if len(ports) == 0 {
			continue
		}
		p := &ports[len(ports)-1]
		if m := userLine.FindStringSubmatch(l); m != nil {
			p.User = m[1]
		} else if m := endpointLine.FindStringSubmatch(l); m != nil {
			id, _ := strconv.Atoi(m[1])
			p.Endpoints = append(p.Endpoints, vdeEndpoint{ID: id, Module: m[2], Descr: m[3]})
		}
	}
	return ports
}
