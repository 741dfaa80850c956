package local

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/godbus/dbus/v5"

	"github.com/machinefs/machinefs/machine"
)

// On systemd the driver asks logind over the system bus, as `systemctl
// poweroff`, `reboot` and `suspend` do, so inhibitors and polkit apply;
// run levels 1-5 are systemd's runlevelN.target units, isolated as
// `telinit N` does.
const (
	logindName    = "org.freedesktop.login1"
	logindPath    = dbus.ObjectPath("/org/freedesktop/login1")
	logindManager = "org.freedesktop.login1.Manager"
	systemdName   = "org.freedesktop.systemd1"
	systemdPath   = dbus.ObjectPath("/org/freedesktop/systemd1")
	systemdMgr    = "org.freedesktop.systemd1.Manager"
)

// systemdCall is what carries out cmd on systemd: the bus call and its
// words for state and events.
type systemdCall struct {
	dest   string
	path   dbus.ObjectPath
	method string // interface.Method
	args   []any
	words  string
}

func systemdCallFor(cmd machine.Command) (systemdCall, error) {
	logind := func(m string) systemdCall {
		// interactive=false: no polkit prompt; a refusal is EACCES.
		return systemdCall{logindName, logindPath, logindManager + "." + m, []any{false}, "logind " + m + "(false)"}
	}
	switch {
	case cmd.Verb == "poweroff", cmd.Verb == "init" && cmd.InitLevel == 0:
		return logind("PowerOff"), nil
	case cmd.Verb == "reboot", cmd.Verb == "init" && cmd.InitLevel == 6:
		return logind("Reboot"), nil
	case cmd.Verb == "suspend", cmd.Verb == "pause":
		return logind("Suspend"), nil
	case cmd.Verb == "init" && cmd.InitLevel >= 1 && cmd.InitLevel <= 5:
		unit := fmt.Sprintf("runlevel%d.target", cmd.InitLevel)
		return systemdCall{systemdName, systemdPath, systemdMgr + ".StartUnit", []any{unit, "isolate"}, "systemd StartUnit(" + unit + ", isolate)"}, nil
	}
	return systemdCall{}, machine.Errorf(syscall.ENOTSUP, "local: %s: not a verb systemd carries out here", cmd.Verb)
}

// systemBus connects to the system bus, bounded by ctx.
func systemBus(ctx context.Context) (*dbus.Conn, error) {
	c, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return nil, machine.Errorf(syscall.EIO, "local: cannot reach the system bus (D-Bus) to ask systemd: %v", err)
	}
	return c, nil
}

// call makes the bus call on c, bounded by ctx.
func (sc systemdCall) call(ctx context.Context, c *dbus.Conn) error {
	err := c.Object(sc.dest, sc.path).CallWithContext(ctx, sc.method, 0, sc.args...).Err
	if err == nil {
		return nil
	}
	return busError(sc.words, ctx, err)
}

// busError gives a refused bus call its errno: a polkit or inhibitor
// refusal is EACCES, a busy logind EBUSY, a sleep state the machine lacks
// ENOTSUP.
func busError(what string, ctx context.Context, err error) error {
	var de dbus.Error
	if errors.As(err, &de) {
		msg := strings.TrimSpace(fmt.Sprint(de.Body...))
		code := syscall.EIO
		switch {
		case strings.HasSuffix(de.Name, ".AccessDenied"), strings.HasSuffix(de.Name, ".InteractiveAuthorizationRequired"), strings.HasSuffix(de.Name, ".BlockedByInhibitor"):
			code = syscall.EACCES
		case strings.HasSuffix(de.Name, ".OperationInProgress"):
			code = syscall.EBUSY
		case strings.HasSuffix(de.Name, ".SleepVerbNotSupported"), strings.HasSuffix(de.Name, ".NotSupported"), strings.HasSuffix(de.Name, ".NoSuchUnit"):
			code = syscall.ENOTSUP
		}
		return machine.Errorf(code, "local: %s refused: %s: %s", what, de.Name, msg)
	}
	if ctx.Err() != nil {
		return machine.Errorf(syscall.ETIMEDOUT, "local: %s: no answer from the system bus: %v", what, err)
	}
	return machine.Errorf(syscall.EIO, "local: %s: %v", what, err)
}

// watchSleep subscribes c to logind's PrepareForSleep signal, sent with
// true before the machine sleeps and with false after it woke. It returns
// the channel the signals arrive on; closing c closes it.
func watchSleep(ctx context.Context, c *dbus.Conn) (<-chan *dbus.Signal, error) {
	err := c.AddMatchSignalContext(ctx, dbus.WithMatchObjectPath(logindPath), dbus.WithMatchInterface(logindManager), dbus.WithMatchMember("PrepareForSleep"))
	if err != nil {
		return nil, busError("subscribe to logind PrepareForSleep", ctx, err)
	}
	ch := make(chan *dbus.Signal, 4)
	c.Signal(ch)
	return ch, nil
}

// woke says whether s is PrepareForSleep(false): the machine resumed.
func woke(s *dbus.Signal) bool {
	if s == nil || s.Name != logindManager+".PrepareForSleep" || len(s.Body) != 1 {
		return false
	}
	start, ok := s.Body[0].(bool)
	return ok && !start
}
