package model

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"
	"unicode"

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
	first, rest := line, ""
	if i := strings.IndexFunc(line, unicode.IsSpace); i >= 0 {
		first, rest = line[:i], strings.TrimLeftFunc(line[i:], unicode.IsSpace)
	}
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
	h.mu.Lock()
	h.console = reply
	h.mu.Unlock()
	if !query {
		status, _, _ := strings.Cut(reply, " ")
		h.emit(machine.EventConsole, fmt.Sprintf("%q %s %s", line, who, strings.TrimSpace(status)))
	}
	return reply
}

// LastConsoleReply is the reply to the last console command, for a reader
// that opened console without writing to it.
func (h *Host) LastConsoleReply() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.console
}

// consoleTarget finds the driver that offers command name, and what the
// call needs: the command (Query, Bounded), its arguments and the bound.
func (h *Host) consoleTarget(name, rest string) (target machine.Consoler, cc machine.ConsoleCommand, args []string, timeout time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.drivers {
		c, ok := d.(machine.Consoler)
		if !ok {
			continue
		}
		for _, cmd := range c.ConsoleCommands() {
			if cmd.Name == name {
				args = strings.Fields(rest)
				if cmd.Raw && rest != "" {
					args = []string{rest}
				}
				return c, cmd, args, h.cfg.Duration("timeout", defaultTimeout)
			}
		}
	}
	return nil, machine.ConsoleCommand{}, nil, 0
}

// consoleRun runs a driver's console command and says whether it was a
// query (see ConsoleCommand.Query).
func (h *Host) consoleRun(ctx context.Context, name, rest string) (reply string, query bool) {
	if h.tree.readOnly {
		return "ERR read-only mount", false
	}
	target, cc, args, timeout := h.consoleTarget(name, rest)
	if target == nil {
		return fmt.Sprintf("ERR unknown command %q (try help)", name), false
	}
	query = cc.Query != nil && cc.Query(args)
	call := callDriver
	if cc.Bounded {
		call = callBounded
	}
	var text string
	err := call(ctx, timeout, func(ctx context.Context) error {
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
	target, cc, args, timeout := h.consoleTarget(name, rest)
	qs, isQS := target.(machine.QueryStarter)
	if !isQS || !cc.Bounded || cc.Query == nil || !cc.Query(args) {
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

func (h *Host) consoleHelp() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	b.WriteString("commands:\n")
	fmt.Fprintf(&b, "  %-20s %s\n", "help", "this list")
	for _, d := range h.drivers {
		c, ok := d.(machine.Consoler)
		if !ok {
			continue
		}
		for _, cc := range c.ConsoleCommands() {
			usage := cc.Usage
			if usage == "" {
				usage = cc.Name
			}
			fmt.Fprintf(&b, "  %-20s %s (%s)\n", usage, cc.Help, d.Kind())
		}
	}
	return b.String()
}

// OpenSerial opens the host's serial console stream, from the first driver
// that has one.
func (h *Host) OpenSerial(ctx context.Context) (io.ReadWriteCloser, error) {
	h.mu.Lock()
	var s machine.Serialer
	for _, d := range h.drivers {
		if ss, ok := d.(machine.Serialer); ok {
			s = ss
			break
		}
	}
	timeout := h.cfg.Duration("timeout", defaultTimeout)
	h.mu.Unlock()
	if s == nil {
		return nil, machine.Errorf(syscall.ENOTSUP, "serial: no driver with a serial console (drivers: %s)", h.driverKinds())
	}
	var rwc io.ReadWriteCloser
	err := callDriver(ctx, timeout, func(ctx context.Context) error {
		c, err := s.Serial(ctx)
		if err == nil && ctx.Err() != nil {
			// Too late: the caller has gone; do not leak the stream.
			c.Close()
			return ctx.Err()
		}
		rwc = c
		return err
	})
	if err != nil {
		err = fmt.Errorf("serial: %w", err)
		h.emit(machine.EventError, err.Error())
		return nil, err
	}
	h.emit(machine.EventSerial, "opened")
	return rwc, nil
}

func (h *Host) driverKinds() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.drivers) == 0 {
		return "none"
	}
	return h.driverKindsLocked()
}
