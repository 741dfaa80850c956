package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// BenchmarkConsoleRequests counts the FUSE requests a shell's
// `echo version > hosts/lab01/console` costs (issue 19: 5 or fewer), read
// from the daemon's own request log (-o debug). Each write is framed by
// two lookups of names that do not exist, and the requests between them
// are counted. The path is looked up before the first, so the count is a
// warm one: what a script that writes to a console again and again pays.
//
//	bash-requests   requests of `bash -c 'echo version > console'`
//	dash-requests   the same with dash
//	ns/op           one write of each, with its shell's start and the
//	                wait for the RELEASE
func BenchmarkConsoleRequests(b *testing.B) {
	d, _ := startBench(b, "hosts/lab01/power", "-o", "debug", "--demo")
	console := filepath.Join(d.mnt, "hosts/lab01/console")
	rx := regexp.MustCompile(`rx \d+: ([A-Z_]+) `)
	mark := 0
	count := func(shell string) []string {
		mark++
		before := fmt.Sprintf("mark-%d-a", mark)
		after := fmt.Sprintf("mark-%d-b", mark)
		os.Stat(filepath.Join(d.mnt, before))
		if out, err := exec.Command(shell, "-c", "echo version > "+console).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", shell, err, out)
		}
		// RELEASE is sent after close returns: let it come first.
		deadline := time.Now().Add(5 * time.Second)
		for {
			data, _ := os.ReadFile(d.logPath)
			text := string(data)
			if i := strings.Index(text, `"`+before+`"`); i >= 0 && strings.Contains(text[i:], "RELEASE") {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("no RELEASE after %s in the request log", before)
			}
			time.Sleep(time.Millisecond)
		}
		os.Stat(filepath.Join(d.mnt, after))
		data, err := os.ReadFile(d.logPath)
		if err != nil {
			b.Fatal(err)
		}
		text := string(data)
		i, j := strings.Index(text, `"`+before+`"`), strings.Index(text, `"`+after+`"`)
		if i < 0 || j < i {
			b.Fatalf("request log has no frame %s..%s", before, after)
		}
		j = strings.LastIndexByte(text[:j], '\n') // the second lookup's line is not counted
		var ops []string
		for _, line := range strings.Split(text[i:j], "\n")[1:] {
			if m := rx.FindStringSubmatch(line); m != nil {
				ops = append(ops, m[1])
			}
		}
		return ops
	}
	count("bash") // the first write looks up the path, asks the xattr once
	var bashN, dashN int
	var bashOps []string
	b.ResetTimer()
	for range b.N {
		bashOps = count("bash")
		bashN += len(bashOps)
		dashN += len(count("dash"))
	}
	b.StopTimer()
	b.Logf("bash: %s", strings.Join(bashOps, " "))
	if got := d.readRel("hosts/lab01/console"); !strings.HasPrefix(got, "OK ") {
		b.Fatalf("console shows %q after the writes, want the reply to version", got)
	}
	b.ReportMetric(float64(bashN)/float64(b.N), "bash-requests")
	b.ReportMetric(float64(dashN)/float64(b.N), "dash-requests")
}
