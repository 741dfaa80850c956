package model

import (
	"context"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// A machine's switches are its kernel's bridges, so they are changed by
// the agent on that machine. On any other agent, vswitch/ of that host
// reaches them through remoteSwitches: every call goes to the machine's
// agent (Peers.CallSwitch), which runs it on its own switch manager.

// SwitchCall is one call of machine.Switches sent to another agent.
type SwitchCall struct {
	Op   string   // the method: "create", "delete", "add-tap", ...
	Args []string // its string arguments, in order
}

// SwitchReply is what the call returned besides its error.
type SwitchReply struct {
	Text string   // a string result (a TAP name, a status file)
	Bool bool     // a bool result (created, exists)
	List []string // List's result
}

// remoteSwitchTimeout bounds the calls made without a context (List,
// from a directory listing).
const remoteSwitchTimeout = 10 * time.Second

type remoteSwitches struct {
	peers Peers
	node  string
}

func (r remoteSwitches) call(ctx context.Context, op string, args ...string) (SwitchReply, error) {
	return r.peers.CallSwitch(ctx, r.node, SwitchCall{Op: op, Args: args})
}

func (r remoteSwitches) Create(ctx context.Context, name string) (bool, error) {
	rep, err := r.call(ctx, "create", name)
	return rep.Bool, err
}

func (r remoteSwitches) Delete(ctx context.Context, names ...string) error {
	_, err := r.call(ctx, "delete", names...)
	return err
}

func (r remoteSwitches) SetUplink(ctx context.Context, name, iface string) error {
	_, err := r.call(ctx, "set-uplink", name, iface)
	return err
}

func (r remoteSwitches) AddTap(ctx context.Context, name, owner, group string) (string, error) {
	rep, err := r.call(ctx, "add-tap", name, owner, group)
	return rep.Text, err
}

func (r remoteSwitches) AddVDE(ctx context.Context, name, owner, group, mode string) (string, error) {
	rep, err := r.call(ctx, "add-vde", name, owner, group, mode)
	return rep.Text, err
}

func (r remoteSwitches) RemovePort(ctx context.Context, name, port string) error {
	_, err := r.call(ctx, "remove-port", name, port)
	return err
}

func (r remoteSwitches) Check(ctx context.Context, name string) error {
	_, err := r.call(ctx, "check", name)
	return err
}

func (r remoteSwitches) text(ctx context.Context, op string, args ...string) (string, error) {
	rep, err := r.call(ctx, op, args...)
	return rep.Text, err
}

func (r remoteSwitches) InfoText(ctx context.Context, name string) (string, error) {
	return r.text(ctx, "info", name)
}

func (r remoteSwitches) PortsText(ctx context.Context, name string) (string, error) {
	return r.text(ctx, "ports", name)
}

func (r remoteSwitches) AllText(ctx context.Context) (string, error) { return r.text(ctx, "all") }

func (r remoteSwitches) Uplink(ctx context.Context, name string) (string, error) {
	return r.text(ctx, "uplink", name)
}

func (r remoteSwitches) List() []string {
	ctx, cancel := context.WithTimeout(context.Background(), remoteSwitchTimeout)
	defer cancel()
	rep, _ := r.call(ctx, "list")
	return rep.List
}

func (r remoteSwitches) Exists(ctx context.Context, name string) bool {
	rep, err := r.call(ctx, "exists", name)
	return err == nil && rep.Bool
}

// WatchChanges is the owner's: its link changes come as its events.
func (r remoteSwitches) WatchChanges(ctx context.Context, _ func(machine.SwitchChange)) error {
	<-ctx.Done()
	return ctx.Err()
}

// RunSwitchCall runs on the machine's agent a switch call another agent
// sent.
func (t *Tree) RunSwitchCall(ctx context.Context, c SwitchCall) (SwitchReply, error) {
	sw := t.switches
	if sw == nil {
		return SwitchReply{}, machine.Errorf(syscall.ENOTSUP, "vswitch: no switch manager on agent %s", t.peers.Node())
	}
	arg := func(i int) string {
		if i < len(c.Args) {
			return c.Args[i]
		}
		return ""
	}
	var rep SwitchReply
	var err error
	switch c.Op {
	case "create":
		rep.Bool, err = sw.Create(ctx, arg(0))
	case "delete":
		err = sw.Delete(ctx, c.Args...)
	case "set-uplink":
		err = sw.SetUplink(ctx, arg(0), arg(1))
	case "add-tap":
		rep.Text, err = sw.AddTap(ctx, arg(0), arg(1), arg(2))
	case "add-vde":
		rep.Text, err = sw.AddVDE(ctx, arg(0), arg(1), arg(2), arg(3))
	case "remove-port":
		err = sw.RemovePort(ctx, arg(0), arg(1))
	case "check":
		err = sw.Check(ctx, arg(0))
	case "info":
		rep.Text, err = sw.InfoText(ctx, arg(0))
	case "ports":
		rep.Text, err = sw.PortsText(ctx, arg(0))
	case "all":
		rep.Text, err = sw.AllText(ctx)
	case "uplink":
		rep.Text, err = sw.Uplink(ctx, arg(0))
	case "list":
		rep.List = sw.List()
	case "exists":
		rep.Bool = sw.Exists(ctx, arg(0))
	default:
		err = machine.Errorf(syscall.EINVAL, "vswitch: unknown call %q", c.Op)
	}
	return rep, err
}
