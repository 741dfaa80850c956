package qemu

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
)

type checkConfig map[string]string

func (c checkConfig) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// requirement finds the requirement whose What starts with what.
func requirement(t *testing.T, reqs []machine.Requirement, what string) machine.Requirement {
	t.Helper()
	for _, r := range reqs {
		if strings.HasPrefix(r.What, what) {
			return r
		}
	}
	t.Fatalf("no requirement %q in %+v", what, reqs)
	return machine.Requirement{}
}

func runCheck(t *testing.T, cfg checkConfig) []machine.Requirement {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Spec.Check(ctx, machine.CheckEnv{Path: "hosts/chk", Config: cfg})
}

func TestCheckMissingBinary(t *testing.T) {
	reqs := runCheck(t, checkConfig{"qemu.binary": "/nonexistent/qemu-system-x86_64", "qemu.kernel": "/nonexistent/vmlinuz", "qemu.accel": "kvm"})
	if r := requirement(t, reqs, "binary /nonexistent/qemu-system-x86_64"); r.Present || r.Reason != "no such file or directory" {
		t.Errorf("binary: %+v", r)
	}
	if r := requirement(t, reqs, "kernel /nonexistent/vmlinuz"); r.Present {
		t.Errorf("kernel: %+v", r)
	}
	// accel kvm needs /dev/kvm; auto does without it.
	if r := requirement(t, reqs, "device /dev/kvm"); r.Optional {
		t.Errorf("/dev/kvm with accel kvm is optional: %+v", r)
	}
	reqs = runCheck(t, checkConfig{"qemu.binary": "/bin/true", "qemu.kernel": "/bin/true"})
	if r := requirement(t, reqs, "device /dev/kvm"); !r.Optional {
		t.Errorf("/dev/kvm with accel auto is required: %+v", r)
	}
	if r := requirement(t, reqs, "binary /bin/true"); !r.Present {
		t.Errorf("binary: %+v", r)
	}
}
