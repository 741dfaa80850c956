// Package cmdtab parses the lines written to machinefs's command files (ctl,
// vswitch/ctl, vswitch/NAME/ctl, console) against a table of commands, in
// the manner of Plan 9's parsecmd and lookupcmd: the table says each
// command's name, how many arguments it takes, which KEY=VALUE options it
// accepts and its usage, so every file splits, checks and refuses a line the
// same way, and its help is made from the same table.
//
// Fields are separated by white space, with no quoting: none of these files
// has ever taken a quoted field, and host names, switch names and config
// values contain no spaces (config values with spaces go through the config
// file). A Raw command takes the rest of its line as written instead, as one
// argument.
//
// The package imports nothing of machinefs, so the driver contract
// (machine.ConsoleCommand) can embed Cmd. Its errors carry EINVAL, which
// machine.ErrnoOf finds.
package cmdtab

import (
	"fmt"
	"iter"
	"strings"
	"syscall"
	"unicode"
)

// Many is a Cmd's Max for a command with no upper bound on its arguments.
const Many = -1

// AnyKey in a Cmd's Opts accepts options with any key; the caller checks
// the keys (ctl's add takes every config key).
const AnyKey = "*"

// Cmd is one entry of a command table.
type Cmd struct {
	// Name is the command's word, or words for a subcommand ("add tap"):
	// a line runs the first entry whose words begin it.
	Name string
	// Args are the arguments as the usage shows them: "NAME [KEY=VALUE ...]".
	Args string
	// Min and Max bound the number of positional arguments (Max Many: no
	// bound). A Raw command has at most one: the rest of the line.
	Min, Max int
	// Opts are the keys of the KEY=VALUE options the command accepts after
	// its positional arguments ({AnyKey}: any key). Nil: none.
	Opts []string
	// Raw passes the rest of the line as written (runs of spaces kept) as
	// one argument, for a command whose argument is text (console log) or
	// whose driver parses its own lines (UML's mconsole). Empty rest: no
	// argument.
	Raw bool
	// Help is one line saying what the command does.
	Help string
}

// Usage is the command with its arguments: "add NAME [KEY=VALUE ...]".
func (c *Cmd) Usage() string {
	if c.Args == "" {
		return c.Name
	}
	return c.Name + " " + c.Args
}

// Opt is one KEY=VALUE option of a line.
type Opt struct{ Key, Value string }

// Line is a line parsed against its command.
type Line struct {
	Cmd  *Cmd
	Args []string // positional arguments (a Raw command: the rest of the line, or none)
	Opts []Opt    // options in the order written
}

// Opt returns the value of the last option key in the line.
func (l *Line) Opt(key string) (string, bool) {
	for i := len(l.Opts) - 1; i >= 0; i-- {
		if l.Opts[i].Key == key {
			return l.Opts[i].Value, true
		}
	}
	return "", false
}

// Table is the command table of one file.
type Table struct {
	// File names the file in messages: "ctl", "vswitch ctl".
	File string
	// Fold matches command words without regard to case (ctl takes ADD).
	Fold bool
	Cmds []Cmd
}

// Error is a line that does not parse: EINVAL, with a reason saying why
// and, for a known command, its usage.
type Error struct{ Reason string }

func (e *Error) Error() string { return e.Reason }

// Unwrap gives the errno (machine.ErrnoOf finds it).
func (e *Error) Unwrap() error { return syscall.EINVAL }

func errorf(format string, args ...any) error {
	return &Error{Reason: fmt.Sprintf(format, args...)}
}

// Fields splits a line at white space.
func Fields(line string) []string { return strings.Fields(line) }

// Split cuts the first word off a line: the word, and the rest as written
// with the white space before it (and around the line) removed.
func Split(line string) (first, rest string) {
	line = strings.TrimSpace(line)
	i := strings.IndexFunc(line, unicode.IsSpace)
	if i < 0 {
		return line, ""
	}
	return line[:i], strings.TrimLeftFunc(line[i:], unicode.IsSpace)
}

// Lines yields the lines of a write, trimmed, skipping blank ones.
func Lines(text string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for l := range strings.SplitSeq(text, "\n") {
			if l = strings.TrimSpace(l); l != "" && !yield(l) {
				return
			}
		}
	}
}

// IsComment reports whether a trimmed line is a comment (#), in files that
// take them (members).
func IsComment(line string) bool { return strings.HasPrefix(line, "#") }

// Parse parses one line: nil for a blank line; an Error for an unknown
// command, a wrong number of arguments or a bad option, with the file's
// name and the usage.
func (t *Table) Parse(line string) (*Line, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, nil
	}
	for i := range t.Cmds {
		if rest, ok := t.match(t.Cmds[i].Name, line); ok {
			l, err := t.Cmds[i].Parse(rest)
			if err != nil {
				return nil, errorf("%s: %v", t.File, err)
			}
			return l, nil
		}
	}
	first, _ := Split(line)
	// A subcommand's first word with the wrong second one: its usage.
	var usages []string
	for i := range t.Cmds {
		if w, _ := Split(t.Cmds[i].Name); t.equal(w, first) {
			usages = append(usages, t.Cmds[i].Usage())
		}
	}
	if usages != nil {
		return nil, errorf("%s: usage: %s", t.File, strings.Join(usages, " | "))
	}
	return nil, errorf("%s: unknown command %q (%s)", t.File, first, strings.Join(t.Names(), ", "))
}

// Lookup finds the command named name (one word), or gives an Error.
func (t *Table) Lookup(name string) (*Cmd, error) {
	for i := range t.Cmds {
		if t.equal(t.Cmds[i].Name, name) {
			return &t.Cmds[i], nil
		}
	}
	return nil, errorf("%s: unknown command %q (%s)", t.File, name, strings.Join(t.Names(), ", "))
}

// match reports whether line starts with the words of name, and returns
// the rest of the line after them.
func (t *Table) match(name, line string) (rest string, ok bool) {
	rest = line
	for w := range strings.FieldsSeq(name) {
		var first string
		first, rest = Split(rest)
		if !t.equal(first, w) {
			return "", false
		}
	}
	return rest, true
}

func (t *Table) equal(a, b string) bool {
	if t.Fold {
		return strings.EqualFold(a, b)
	}
	return a == b
}

// Names lists the table's first words, each once, in order.
func (t *Table) Names() []string {
	var names []string
	seen := map[string]bool{}
	for i := range t.Cmds {
		if w, _ := Split(t.Cmds[i].Name); !seen[w] {
			seen[w] = true
			names = append(names, w)
		}
	}
	return names
}

// Usage is one usage line per command, as reading a ctl file shows it.
func (t *Table) Usage() string {
	var b strings.Builder
	for i := range t.Cmds {
		b.WriteString(t.Cmds[i].Usage())
		b.WriteByte('\n')
	}
	return b.String()
}

// Help is one line per command: the usage, then what it does, aligned.
func (t *Table) Help() string {
	return HelpText(t.Cmds, "")
}

// HelpText renders commands as help lines ("  USAGE  help"), the usages
// padded to one column; indent goes before each line.
func HelpText(cmds []Cmd, indent string) string {
	width := 0
	for i := range cmds {
		width = max(width, len(cmds[i].Usage()))
	}
	var b strings.Builder
	for i := range cmds {
		if cmds[i].Help == "" {
			fmt.Fprintf(&b, "%s%s\n", indent, cmds[i].Usage())
			continue
		}
		fmt.Fprintf(&b, "%s%-*s  %s\n", indent, width, cmds[i].Usage(), cmds[i].Help)
	}
	return b.String()
}

// Parse parses the rest of a line after the command's name: its
// positional arguments and options. The Error names the usage.
func (c *Cmd) Parse(rest string) (*Line, error) {
	l := &Line{Cmd: c}
	if c.Raw {
		if rest = strings.TrimSpace(rest); rest != "" {
			l.Args = []string{rest}
		}
		return l, c.count(len(l.Args))
	}
	f := Fields(rest)
	n := 0 // positional arguments: at least Min, then up to Max unless a field is an option
	for n < len(f) && (n < c.Min || ((c.Max == Many || n < c.Max) && !(c.Opts != nil && strings.Contains(f[n], "=")))) {
		n++
	}
	if err := c.count(n); err != nil {
		return nil, err
	}
	l.Args = f[:n]
	for _, kv := range f[n:] {
		k, v, ok := strings.Cut(kv, "=")
		if c.Opts == nil {
			return nil, errorf("usage: %s", c.Usage())
		}
		if !ok || k == "" || v == "" {
			return nil, errorf("%q is not KEY=VALUE (usage: %s)", kv, c.Usage())
		}
		if !c.takes(k) {
			return nil, errorf("%s: unknown option %q (%s)", c.Name, k, strings.Join(c.Opts, ", "))
		}
		l.Opts = append(l.Opts, Opt{Key: k, Value: v})
	}
	return l, nil
}

// count checks the number of positional arguments.
func (c *Cmd) count(n int) error {
	if n < c.Min || (c.Max != Many && n > c.Max) {
		return errorf("usage: %s", c.Usage())
	}
	return nil
}

func (c *Cmd) takes(key string) bool {
	for _, k := range c.Opts {
		if k == key || k == AnyKey {
			return true
		}
	}
	return false
}
