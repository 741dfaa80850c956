package model

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxDetail bounds one event's detail and one state value, in bytes after
// escaping: a guest's notify text or a BMC's error must not make one event
// line as big as the log.
const maxDetail = 4096

// Escape makes text from anywhere (guests, BMCs, drivers, operators) safe
// for one line of events.log or state: a newline becomes a space (errors
// joined over lines stay readable), a tab stays, other control characters
// (ESC, CR, NUL, BEL, the C1 range, U+2028/U+2029) and invalid UTF-8 become
// \xHH or \u{HHHH}, so one event is always one line and no escape sequence
// reaches a terminal. A backslash stays as it is: details quote command
// lines with %q, whose escapes must not double, and a literal "\x1b" is
// only text. Text over maxDetail bytes is cut, and the cut is said.
func Escape(s string) string {
	if safe(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if b.Len() >= maxDetail {
			fmt.Fprintf(&b, "...(%d bytes cut)", len(s)-i)
			break
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteByte(' ')
		case r == '\t':
			b.WriteByte('\t')
		case r < 0x80 && unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			fmt.Fprintf(&b, `\u{%04x}`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// safe reports whether s needs no escaping: the common case costs one pass
// and no allocation.
func safe(s string) bool {
	if len(s) > maxDetail {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 0x20 && c != '\t') || c == 0x7f || c >= 0x80 {
			if c >= 0x80 {
				return safeUnicode(s[i:])
			}
			return false
		}
	}
	return true
}

func safeUnicode(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || (unicode.IsControl(r) && r != '\t') || r == '\u2028' || r == '\u2029' {
			return false
		}
	}
	return true
}
