package model

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/store"
)

// ConfigFile is one host's configuration as the user wrote it: "key = value"
// lines, # comments and blank lines. Setting a key rewrites its line in place
// and keeps every comment, so a file edited by hand and through the tree
// stays the user's file.
type ConfigFile struct {
	lines []configLine
}

type configLine struct {
	raw     string // the line as it is written in the file
	key     string // "" for comments and blank lines
	value   string
	comment string // inline comment, with its leading whitespace and '#'
}

// inlineComment is a '#' preceded by whitespace; a '#' inside a value
// (a password, say) without a space before it stays part of the value.
var inlineComment = regexp.MustCompile(`\s+#.*$`)

// ParseConfig parses the text of a config file. Lines that are neither
// comments nor "key = value" are an EINVAL error naming the line.
func ParseConfig(text string) (*ConfigFile, error) {
	cf := &ConfigFile{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		l, err := parseConfigLine(sc.Text())
		if err != nil {
			return nil, machine.Errorf(syscall.EINVAL, "line %d: %v", n, err)
		}
		cf.lines = append(cf.lines, l)
	}
	return cf, sc.Err()
}

func parseConfigLine(raw string) (configLine, error) {
	trimmed := strings.TrimSpace(raw)
	if trimmed == "" || strings.HasPrefix(trimmed, "#") {
		return configLine{raw: raw}, nil
	}
	comment := inlineComment.FindString(raw)
	body := strings.TrimSuffix(raw, comment)
	// Errors never quote the line: it may hold a password.
	key, value, ok := strings.Cut(body, "=")
	if !ok {
		return configLine{}, fmt.Errorf("not \"key = value\"")
	}
	key = strings.TrimSpace(key)
	if !keyRE.MatchString(key) {
		return configLine{}, fmt.Errorf("not a valid key (lower-case letters, digits, '.', '_', '-')")
	}
	return configLine{raw: raw, key: key, value: strings.TrimSpace(value), comment: comment}, nil
}

var keyRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// Get returns the value of key.
func (cf *ConfigFile) Get(key string) (string, bool) {
	for i := len(cf.lines) - 1; i >= 0; i-- {
		if cf.lines[i].key == key {
			return cf.lines[i].value, true
		}
	}
	return "", false
}

// Duration reads a core duration key (timeout, stack-timeout,
// wait-timeout) through its spec: the one duration parser, and the spec's
// default when the key is unset or malformed (values are checked when they
// are written, so malformed means a hand-edited file, reported at load).
func (cf *ConfigFile) Duration(key string) time.Duration {
	return machine.ReadConfig(cf, coreKeys).Duration(key)
}

// Bool reads a core yes/no key (local, allow-self) as Duration does.
func (cf *ConfigFile) Bool(key string) bool {
	return machine.ReadConfig(cf, coreKeys).Bool(key)
}

// Keys lists the keys set, in file order.
func (cf *ConfigFile) Keys() []string {
	var keys []string
	for _, l := range cf.lines {
		if l.key != "" {
			keys = append(keys, l.key)
		}
	}
	return keys
}

// Set sets key to value, rewriting the key's line in place (keeping its
// inline comment) or appending a new line.
func (cf *ConfigFile) Set(key, value string) { cf.setLine(configLine{key: key, value: value}) }

// setLine applies an edit line: its inline comment, if any, replaces the
// old line's.
func (cf *ConfigFile) setLine(e configLine) {
	for i := range cf.lines {
		l := &cf.lines[i]
		if l.key == e.key {
			if e.comment != "" {
				l.comment = e.comment
			}
			l.value = e.value
			l.raw = e.key + " = " + e.value + l.comment
			return
		}
	}
	cf.lines = append(cf.lines, configLine{raw: e.key + " = " + e.value + e.comment, key: e.key, value: e.value, comment: e.comment})
}

// Delete removes every line that sets key.
func (cf *ConfigFile) Delete(key string) {
	kept := cf.lines[:0]
	for _, l := range cf.lines {
		if l.key != key {
			kept = append(kept, l)
		}
	}
	cf.lines = kept
}

// Clone returns an independent copy.
func (cf *ConfigFile) Clone() *ConfigFile {
	return &ConfigFile{lines: append([]configLine(nil), cf.lines...)}
}

// Render returns the file text. mask, if not nil, says which keys are
// secret: their values are shown as "<set>".
func (cf *ConfigFile) Render(mask func(key string) bool) string {
	var b strings.Builder
	for _, l := range cf.lines {
		if l.key != "" && mask != nil && mask(l.key) {
			b.WriteString(l.key + " = <set>" + l.comment + "\n")
			continue
		}
		b.WriteString(l.raw + "\n")
	}
	return b.String()
}

// ValidName reports whether name can name a host, subhost, switch or group
// (the store decides: every name must be storable).
func ValidName(name string) bool { return store.ValidName(name) }
