package local

import (
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
)

func TestCheckAnotherMachine(t *testing.T) {
	reqs := checktest.Run(t, Spec, checktest.Config{KeyHostname: "not-this-machine-chk"})
	if r := checktest.Find(t, reqs, "this machine not-this-machine-chk"); r.Present {
		t.Errorf("this machine: %+v", r)
	}
	checktest.Find(t, reqs, "init system")
	if r := checktest.Find(t, reqs, "capability CAP_SYS_BOOT"); !r.Present {
		t.Errorf("the test runs as root: %+v", r)
	}
}
