package model

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// MaxGroupHosts caps the hosts a group's members file may name, counting
// every line's expansion (a host named by two lines counts twice). It
// bounds the memory and the time of every group operation, whatever a
// writer sends: a range is counted, with overflow checks, before a single
// name is made.
const MaxGroupHosts = 100000

// maxMemberLen bounds one expanded member path (without "hosts/"): three
// levels of 63-character names with their "/subhosts/" fit. With
// MaxGroupHosts it bounds what one members file can cost (25 MB at most).
const maxMemberLen = 255

// hostRange is one members line parsed: literal text and bracketed lists
// of numbers and ranges, pdsh style (node[01-40], rack[1-3,7]/subhosts/vm[1-2]).
type hostRange struct {
	segs   []rangeSeg
	count  int // how many names it expands to, at most MaxGroupHosts
	maxLen int // the longest name, at most maxMemberLen
}

// rangeSeg is literal text, or (spans != nil) a bracketed list.
type rangeSeg struct {
	lit   string
	spans []span
}

// span is N or N-M in a list.
type span struct {
	lo, hi uint64
	width  int // zero padding: node[01-40] keeps two digits
}

var memberRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/\-\[\],]*$`)

// parseMember parses one members line: an optional "hosts/" and a host
// path with hostranges. Nothing is expanded yet; the line's count and its
// names' length are known and bounded.
func parseMember(line string) (hostRange, error) {
	if !memberRE.MatchString(line) {
		return hostRange{}, machine.Errorf(syscall.EINVAL, "member %q: want a host path such as lab01, lab01/subhosts/vm1 or node[01-40]", line)
	}
	r, err := parseHostRange(strings.TrimPrefix(line, "hosts/"))
	if err != nil {
		return hostRange{}, machine.Errorf(syscall.EINVAL, "member %q: %v", line, err)
	}
	return r, nil
}

// expandMember turns one members line into host paths.
func expandMember(line string) ([]string, error) {
	r, err := parseMember(line)
	if err != nil {
		return nil, err
	}
	paths, err := r.expand("hosts/")
	if err != nil {
		return nil, machine.Errorf(syscall.EINVAL, "member %q: %v", line, err)
	}
	return paths, nil
}

// parseHostRange parses s: literal text with [list] parts, where a list is
// N or N-M items separated by commas. Brackets do not nest.
func parseHostRange(s string) (hostRange, error) {
	r := hostRange{count: 1}
	for {
		open := strings.IndexByte(s, '[')
		lit := s
		if open >= 0 {
			lit = s[:open]
		}
		if strings.IndexByte(lit, ']') >= 0 {
			return hostRange{}, fmt.Errorf("unbalanced range")
		}
		if strings.IndexByte(lit, ',') >= 0 {
			return hostRange{}, fmt.Errorf("a list needs brackets, as in node[1,3]")
		}
		if lit != "" {
			r.segs = append(r.segs, rangeSeg{lit: lit})
			r.maxLen += len(lit)
		}
		if r.maxLen > maxMemberLen {
			return hostRange{}, fmt.Errorf("a host path is at most %d characters", maxMemberLen)
		}
		if open < 0 {
			return r, nil
		}
		end := strings.IndexByte(s[open:], ']')
		if end < 0 {
			return hostRange{}, fmt.Errorf("unbalanced range")
		}
		end += open
		body := s[open+1 : end]
		if strings.IndexByte(body, '[') >= 0 {
			return hostRange{}, fmt.Errorf("unbalanced range (brackets do not nest)")
		}
		seg, n, width, err := parseList(body)
		if err != nil {
			return hostRange{}, err
		}
		// Both factors are at most MaxGroupHosts: the product fits.
		if r.count *= n; r.count > MaxGroupHosts {
			return hostRange{}, fmt.Errorf("more than %d hosts (a group names at most %d)", MaxGroupHosts, MaxGroupHosts)
		}
		r.segs = append(r.segs, seg)
		if r.maxLen += width; r.maxLen > maxMemberLen {
			return hostRange{}, fmt.Errorf("a host path is at most %d characters", maxMemberLen)
		}
		s = s[end+1:]
	}
}

// parseList parses the inside of brackets: how many numbers it names (at
// most MaxGroupHosts) and the widest.
func parseList(body string) (rangeSeg, int, int, error) {
	var seg rangeSeg
	count, width := 0, 0
	for part := range strings.SplitSeq(body, ",") {
		loText, hiText, isRange := strings.Cut(part, "-")
		if !isRange {
			hiText = loText
		}
		lo, err1 := parseNumber(loText)
		hi, err2 := parseNumber(hiText)
		if err1 != nil || err2 != nil || hi < lo {
			return rangeSeg{}, 0, 0, fmt.Errorf("range %q: want N or N-M with N <= M", part)
		}
		// hi-lo cannot overflow; +1 can (0-18446744073709551615), so the
		// difference is checked first.
		if hi-lo >= MaxGroupHosts || count+int(hi-lo)+1 > MaxGroupHosts {
			return rangeSeg{}, 0, 0, fmt.Errorf("more than %d hosts (a group names at most %d)", MaxGroupHosts, MaxGroupHosts)
		}
		count += int(hi-lo) + 1
		w := max(len(loText), len(strconv.FormatUint(hi, 10)))
		if w > maxMemberLen {
			return rangeSeg{}, 0, 0, fmt.Errorf("a host path is at most %d characters", maxMemberLen)
		}
		width = max(width, w)
		seg.spans = append(seg.spans, span{lo: lo, hi: hi, width: len(loText)})
	}
	return seg, count, width, nil
}

// parseNumber parses decimal digits only (no sign, no spaces) into a
// uint64: a number that does not fit is an error, never a wrap.
func parseNumber(s string) (uint64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("not a number")
	}
	return strconv.ParseUint(s, 10, 64)
}

// expand makes the names, in order (the first list varies slowest), each
// after prefix. Every name is checked: a path that is not
// NAME(/subhosts/NAME)* with valid names is an error.
func (r hostRange) expand(prefix string) ([]string, error) {
	out := make([]string, 0, r.count)
	buf := make([]byte, 0, len(prefix)+r.maxLen)
	buf = append(buf, prefix...)
	var err error
	var rec func(i int, buf []byte)
	rec = func(i int, buf []byte) {
		if err != nil {
			return
		}
		if i == len(r.segs) {
			if !validMemberPath(buf[len(prefix):]) {
				err = fmt.Errorf("%q is not a host path (NAME or NAME/subhosts/NAME, names of at most 63 letters, digits, '.', '_' or '-')", buf[len(prefix):])
				return
			}
			out = append(out, string(buf))
			return
		}
		seg := r.segs[i]
		if seg.spans == nil {
			rec(i+1, append(buf, seg.lit...))
			return
		}
		for _, sp := range seg.spans {
			// Stop at hi rather than past it: hi may be the largest uint64.
			for v := sp.lo; ; v++ {
				rec(i+1, appendPadded(buf, v, sp.width))
				if v == sp.hi || err != nil {
					break
				}
			}
		}
	}
	rec(0, buf)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// appendPadded appends v in decimal, zero-padded to width.
func appendPadded(buf []byte, v uint64, width int) []byte {
	var digits [20]byte
	d := strconv.AppendUint(digits[:0], v, 10)
	for i := len(d); i < width; i++ {
		buf = append(buf, '0')
	}
	return append(buf, d...)
}

// validMemberPath reports whether p is NAME(/subhosts/NAME)* with every
// NAME a ValidName. It is ValidName by hand: it runs once per expanded
// name, up to MaxGroupHosts times per write.
func validMemberPath(p []byte) bool {
	for i := 0; ; i++ {
		j := 0
		for j < len(p) && p[j] != '/' {
			j++
		}
		part := p[:j]
		if i%2 == 1 {
			if string(part) != "subhosts" {
				return false
			}
		} else if !validNameBytes(part) {
			return false
		}
		if j == len(p) {
			return i%2 == 0
		}
		p = p[j+1:]
	}
}

func validNameBytes(s []byte) bool {
	if len(s) == 0 || len(s) > 63 || !isAlnum(s[0]) {
		return false
	}
	for _, c := range s[1:] {
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return !strings.HasSuffix(string(s), ".conf")
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// memberError is a members line refused by groupHosts.
type memberError struct {
	line string
	err  error
}

// groupHosts expands members lines into host paths, in order and without
// duplicates (a set, not a search of the list: O(n)). A line that is not
// valid, or whose hosts would take the total past MaxGroupHosts, is left
// out and reported. Lines are counted before they are expanded, so no
// more than MaxGroupHosts names are ever made.
func groupHosts(lines []string) (hosts []string, total int, bad []memberError) {
	ranges := make([]hostRange, len(lines))
	ok := make([]bool, len(lines))
	for i, l := range lines {
		r, err := parseMember(l)
		if err == nil && total+r.count > MaxGroupHosts {
			err = machine.Errorf(syscall.EINVAL, "member %q: the members would name %d hosts; a group names at most %d", l, total+r.count, MaxGroupHosts)
		}
		if err != nil {
			bad = append(bad, memberError{line: l, err: err})
			continue
		}
		ranges[i], ok[i] = r, true
		total += r.count
	}
	// Sized once: total is at most MaxGroupHosts.
	seen := make(map[string]struct{}, total)
	hosts = make([]string, 0, total)
	for i, l := range lines {
		if !ok[i] {
			continue
		}
		paths, err := ranges[i].expand("hosts/")
		if err != nil {
			// The line's hosts do not count after all; the total is only
			// reported, the cap was checked with the larger one.
			total -= ranges[i].count
			bad = append(bad, memberError{line: l, err: machine.Errorf(syscall.EINVAL, "member %q: %v", l, err)})
			continue
		}
		for _, p := range paths {
			if _, dup := seen[p]; !dup {
				seen[p] = struct{}{}
				hosts = append(hosts, p)
			}
		}
	}
	return hosts, total, bad
}
