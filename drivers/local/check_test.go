package local

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

func TestCheckAnotherMachine(t *testing.T) {
	reqs := runCheck(t, checkConfig{KeyHostname: "not-this-machine-chk"})
	if r := requirement(t, reqs, "this machine not-this-machine-chk"); r.Present {
		t.Errorf("this machine: %+v", r)
	}
	requirement(t, reqs, "init system")
	if r := requirement(t, reqs, "capability CAP_SYS_BOOT"); !r.Present {
		t.Errorf("the test runs as root: %+v", r)
	}
}
