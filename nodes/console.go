package nodes

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"unicode"
)

// Console runs one management console line (mconsole style) and returns the
// reply: "OK text" or "ERR reason", ending in a newline. Replies may span
// several lines; the first starts with OK or ERR.
func (h *Host) Console(ctx context.Context, line string, who Caller) string {
	line = strings.TrimSpace(line)
	if line == "" {
		return ""
	}
	first, rest := line, ""
	if i := strings.IndexFunc(line, unicode.IsSpace); i >= 0 {
		first, rest = line[:i], strings.TrimLeftFunc(line[i:], unicode.IsSpace)
	}
	name := strings.ToLower(first)
	var reply string
	query := true
	if name == "help" {
		reply = "OK " + h.consoleHelp()
	} else {
		reply, query = h.consoleRun(ctx, name, rest)
	}
	if !strings.HasSuffix(reply, "\n") {
		reply += "\n"
	}
	status, _, _ := strings.Cut(reply, " ")
	h.mu.Lock()
	h.console = reply
	h.mu.Unlock()
	if query {
		return reply // it changed nothing: not an event
	}
	h.emit("console", fmt.Sprintf("%q %s %s", strings.TrimSpace(line), who, strings.TrimSpace(status)))
	return reply
}

// LastConsoleReply is the reply to the last console command, for a reader
// that opened console without writing to it.
func (h *Host) LastConsoleReply() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.console
}

// consoleRun runs a driver's console command and says whether it was a
// query (see ConsoleCommand.Query).
func (h *Host) consoleRun(ctx context.Context, name, rest string) (reply string, query bool) {
	if h.tree.readOnly {
		return "ERR read-only mount", false
	}
	h.mu.Lock()
	var target Consoler
	var args []string
	call := callDriver
	for _, d := range h.drivers {
		if c, ok := d.(Consoler); ok {
			for _, cc := range c.ConsoleCommands() {
				if cc.Name == name {
					target = c
					args = strings.Fields(rest)
					if cc.Raw && rest != "" {
						args = []string{rest}
					}
					query = cc.Query != nil && cc.Query(args)
					if cc.Bounded {
						call = callBounded
					}
				}
			}
		}
		if target != nil {
			break
		}
	}
	timeout := h.cfg.Duration("timeout", defaultTimeout)
	h.mu.Unlock()
	if target == nil {
		return fmt.Sprintf("ERR unknown command %q (try help)", name), false
	}
	var text string
	err := call(ctx, timeout, func(ctx context.Context) error {
		var err error
		text, err = target.Console(ctx, name, args)
		return err
	})
	if err != nil {
		return "ERR " + err.Error(), query
	}
	return "OK " + text, query
}

func (h *Host) consoleHelp() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	b.WriteString("commands:\n")
	fmt.Fprintf(&b, "  %-20s %s\n", "help", "this list")
	for _, d := range h.drivers {
		c, ok := d.(Consoler)
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
	var s Serialer
	for _, d := range h.drivers {
		if ss, ok := d.(Serialer); ok {
			s = ss
			break
		}
	}
	timeout := h.cfg.Duration("timeout", defaultTimeout)
	h.mu.Unlock()
	if s == nil {
		return nil, Errorf(syscall.ENOTSUP, "serial: no driver with a serial console (drivers: %s)", h.driverKinds())
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
		h.emit("error", err.Error())
		return nil, err
	}
	h.emit("serial", "opened")
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

// consolePowerVerbs are the mconsole commands that are power verbs under
// another name.
var consolePowerVerbs = map[string]string{
	"halt":   "off",
	"reboot": "reboot",
	"cad":    "poweroff",
	"stop":   "pause",
	"go":     "resume",
}

// ConsolePowerVerb maps an mconsole command that is a power verb under
// another name (halt, reboot, cad, stop, go) to that verb, for drivers that
// answer these commands through their own Power.
func ConsolePowerVerb(name string) (verb string, ok bool) {
	verb, ok = consolePowerVerbs[name]
	return verb, ok
}
