package local

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/machinefs/machinefs/machine"
)

// TestLocalHelperInNamespace runs inside the test machine only (see
// namespace_test.go): it refuses to build a driver anywhere but in a
// child PID namespace whose PID 1 is busybox init and whose host name
// the test made.
func TestLocalHelperInNamespace(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("runs inside the test machine only")
	}
	mustBeContained(t)
	// busybox init's shutdown sends SIGTERM to every process, then
	// SIGKILL a second later: the record is written in between.
	signal.Ignore(syscall.SIGTERM)
	rec := &fileRecorder{path: filepath.Join(dir, "out")}
	data, err := os.ReadFile(filepath.Join(dir, "steps"))
	if err != nil {
		t.Fatal(err)
	}
	var last *driver
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, "\t", 3)
		if len(f) != 3 {
			t.Fatalf("bad step %q", l)
		}
		host, wol, line := f[0], f[1], f[2]
		if line == "describe" {
			if last != nil {
				for _, kv := range last.Describe() {
					rec.line("state " + kv[0] + ": " + kv[1])
				}
			}
			continue
		}
		cfg := testConfig{KeyHostname: host}
		if wol != "" {
			cfg[KeyWoLInterface] = wol
		}
		d, err := New(t.Context(), machine.DriverEnv{Path: "hosts/self", Config: cfg, Report: rec})
		if err != nil {
			rec.line("result new: " + err.Error())
			continue
		}
		last = d.(*driver)
		cmd, err := machine.ParseCommand(line)
		if err == nil {
			err = last.Power(t.Context(), cmd)
		}
		if err != nil {
			rec.line(fmt.Sprintf("result %s: %s %v", line, errnoName(err), err))
		} else {
			rec.line(fmt.Sprintf("result %s: ok", line))
		}
	}
	rec.line("done")
	select {} // the machine's end ends this process
}

// mustBeContained stops the helper unless it runs where the test put it:
// PID 1 of its PID namespace is busybox, that namespace is a child one,
// and the host name is the test's.
func mustBeContained(t *testing.T) {
	self, _ := os.Readlink("/proc/self/ns/pid")
	one, _ := os.Readlink("/proc/1/ns/pid")
	comm, _ := os.ReadFile("/proc/1/comm")
	host, _ := os.Hostname()
	outer := os.Getenv(outerPIDNSEnv) // the test's own, read outside
	if self == "" || outer == "" || self == outer || self != one || strings.TrimSpace(string(comm)) != "busybox" || !strings.HasPrefix(host, "mfl") {
		t.Fatalf("SAFETY: not inside the test machine (pid ns %q, the test's %q, PID 1's %q, comm %q, host %q): refusing", self, outer, one, comm, host)
	}
}

func errnoName(err error) string {
	switch machine.ErrnoOf(err) {
	case syscall.EPERM:
		return "EPERM"
	case syscall.ENOTSUP:
		return "ENOTSUP"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.EIO:
		return "EIO"
	}
	return machine.ErrnoOf(err).Error()
}

// fileRecorder appends every report and event to a file at once: the
// process may be killed the next moment.
type fileRecorder struct {
	mu   sync.Mutex
	path string
}

func (r *fileRecorder) line(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return
	}
	_, _ = f.WriteString(s + "\n")
	_ = f.Close()
}

func (r *fileRecorder) Report(st machine.Status) {
	reach := "unreachable"
	if st.Reachable {
		reach = "reachable"
	}
	r.line(fmt.Sprintf("report %s %s: %s", st.Power, reach, st.Reason))
}

func (r *fileRecorder) Event(kind machine.EventKind, detail string) {
	r.line(fmt.Sprintf("event %s %s", kind, detail))
}

type testConfig map[string]string

func (c testConfig) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }
