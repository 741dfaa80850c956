package ipmi

import (
	"context"
	"github.com/machinefs/machinefs/tests/harness/ipmisim"
	"strconv"
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

func TestCheckNobodyListens(t *testing.T) {
	port := ipmisim.FreeUDPPort(t)
	reqs := runCheck(t, checkConfig{"ipmi.address": "127.0.0.1", "ipmi.port": strconv.Itoa(port), "ipmi.timeout": "200ms", "ipmi.retries": "0"})
	if r := requirement(t, reqs, "BMC reachable"); r.Present {
		t.Errorf("reachable: %+v", r)
	}
	if r := requirement(t, reqs, "BMC authentication"); r.Present {
		t.Errorf("authentication: %+v", r)
	}
}
