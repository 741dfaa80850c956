package qemu

import (
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
)

func TestCheckMissingBinary(t *testing.T) {
	reqs := checktest.Run(t, Spec, checktest.Config{"qemu.binary": "/nonexistent/qemu-system-x86_64", "qemu.kernel": "/nonexistent/vmlinuz", "qemu.accel": "kvm"})
	if r := checktest.Find(t, reqs, "binary /nonexistent/qemu-system-x86_64"); r.Present || r.Reason != "no such file or directory" {
		t.Errorf("binary: %+v", r)
	}
	if r := checktest.Find(t, reqs, "kernel /nonexistent/vmlinuz"); r.Present {
		t.Errorf("kernel: %+v", r)
	}
	// accel kvm needs /dev/kvm; auto does without it.
	if r := checktest.Find(t, reqs, "device /dev/kvm"); r.Optional {
		t.Errorf("/dev/kvm with accel kvm is optional: %+v", r)
	}
	reqs = checktest.Run(t, Spec, checktest.Config{"qemu.binary": "/bin/true", "qemu.kernel": "/bin/true"})
	if r := checktest.Find(t, reqs, "device /dev/kvm"); !r.Optional {
		t.Errorf("/dev/kvm with accel auto is required: %+v", r)
	}
	if r := checktest.Find(t, reqs, "binary /bin/true"); !r.Present {
		t.Errorf("binary: %+v", r)
	}
}
