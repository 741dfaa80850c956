package model

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/machinefs/machinefs/cmdtab"
	"github.com/machinefs/machinefs/machine"
)

// Console runs one management console line (mconsole style) and returns the
// reply: "OK text" or "ERR reason", ending in a newline. Replies may span
// several lines; the first starts with OK or ERR.
func (h *Host) Console(ctx context.Context, line string, who Caller) string {
	return h.StartConsole(ctx, line, who)()
}

// StartConsole starts a console line and returns what returns its reply
// (as Console's), which the caller must call once. A query that the driver
// can start (QueryStarter) is sent now and its reply read by that call;
// any other line runs now.
func (h *Host) StartConsole(ctx context.Context, line string, who Caller) func() string {
	line = strings.TrimSpace(line)
	if line == "" {
		return func() string { return "" }
	}
	if !h.runsHere() {
		// The drivers run on the owner: so does the console.
		reply := h.forwardConsole(ctx, line, who)
		return func() string { return reply }
	}
	first, rest := cmdtab.Split(line)
	name := strings.ToLower(first)
	if name == "help" {
		reply := h.consoleReply("OK "+h.consoleHelp(), true, line, who)
		return func() string { return reply }
	}
	if collect, ok := h.startQuery(ctx, name, rest); ok {
		return func() string { return h.consoleReply(collect(), true, line, who) }
	}
	reply, query := h.consoleRun(ctx, name, rest)
	reply = h.consoleReply(reply, query, line, who)
	return func() string { return reply }
}

// consoleReply records reply as the last one and, unless the line was a
// query, as an event; it returns reply ending in a newline.
func (h *Host) consoleReply(reply string, query bool, line string, who Caller) string {
	if !strings.HasSuffix(reply, "\n") {
		reply += "\n"
	}
	h.consoleMu.Lock()
	h.console = reply
	h.consoleMu.Unlock()
	if !query {
		status, _, _ := strings.Cut(reply, " ")
		h.emit(machine.EventConsole, fmt.Sprintf("%q %s %s", line, who, strings.TrimSpace(status)))
	}
	return reply
}

// LastConsoleReply is the reply to the last console command, for a reader
// that opened console without writing to it.
func (h *Host) LastConsoleReply() string {
	h.consoleMu.Lock()
	defer h.consoleMu.Unlock()
	return h.console
}

// consoleTarget finds the driver that offers command name (the first that
// lists it), and what the call needs: the command (Query, Bounded), its
// arguments parsed against the command's table entry, and the bound. A
// line whose arguments do not fit gets err, with the usage.
func (h *Host) consoleTarget(name, rest string) (target machine.Consoler, cc machine.ConsoleCommand, args []string, timeout time.Duration, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.drivers.list {
		c, ok := d.(machine.Consoler)
		if !ok {
			continue
		}
		for _, cmd := range c.ConsoleCommands() {
			if cmd.Name == name {
				l, err := cmd.Parse(rest)
				if err != nil {
					return nil, cmd, nil, 0, err
				}
				return c, cmd, l.Args, h.cfg.Duration("timeout"), nil
			}
		}
	}
	return nil, machine.ConsoleCommand{}, nil, 0, nil
}

// consoleRun runs a driver's console command and says whether it was a
// query (see ConsoleCommand.Query).
func (h *Host) consoleRun(ctx context.Context, name, rest string) (reply string, query bool) {
	if h.tree.readOnly {
		return "ERR read-only mount", false
	}
	target, cc, args, timeout, err := h.consoleTarget(name, rest)
	if err != nil {
		return consoleText("", err), false
	}
	if target == nil {
		return fmt.Sprintf("ERR unknown command %q (try help)", name), false
	}
	query = cc.Query != nil && cc.Query(args)
	call := callDriver
	if cc.Bounded {
		call = callBounded
	}
	var text string
	err = call(ctx, timeout, func(ctx context.Context) error {
		var err error
		text, err = target.Console(ctx, name, args)
		return err
	})
	return consoleText(text, err), query
}

// startQuery starts a Bounded query of a QueryStarter; ok is false for
// any other line, which then runs as usual.
func (h *Host) startQuery(ctx context.Context, name, rest string) (collect func() string, ok bool) {
	if h.tree.readOnly {
		return nil, false
	}
	target, cc, args, timeout, err := h.consoleTarget(name, rest)
	qs, isQS := target.(machine.QueryStarter)
	if err != nil || !isQS || !cc.Bounded || cc.Query == nil || !cc.Query(args) {
		return nil, false
	}
	deadline := time.Now().Add(timeout)
	read, err := qs.StartQuery(deadlineContext{Context: context.WithoutCancel(ctx), deadline: deadline}, name, args)
	if err != nil {
		reply := consoleText("", timedOut(!time.Now().Before(deadline), timeout, err))
		return func() string { return reply }, true
	}
	return func() string {
		text, err := read()
		return consoleText(text, timedOut(!time.Now().Before(deadline), timeout, err))
	}, true
}

// consoleText is the reply to a driver's console call.
func consoleText(text string, err error) string {
	if err != nil {
		return "ERR " + err.Error()
	}
	return "OK " + text
}

// consoleHelp is the reply to help: the drivers' command tables, each
// command with the driver that offers it.
func (h *Host) consoleHelp() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmds := []cmdtab.Cmd{{Name: "help", Help: "this list"}}
	for _, d := range h.drivers.list {
		c, ok := d.(machine.Consoler)
		if !ok {
			continue
		}
		for _, cc := range c.ConsoleCommands() {
			cc.Help += " (" + d.Kind() + ")"
			cmds = append(cmds, cc.Cmd)
		}
	}
	return "commands:\n" + cmdtab.HelpText(cmds, "  ")
}

func (h *Host) driverKinds() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.drivers.list) == 0 {
		return "none"
	}
	return h.drivers.kinds()
}
