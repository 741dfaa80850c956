package ipmi

import (
	"strconv"
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
	"github.com/machinefs/machinefs/tests/harness/ipmisim"
)

func TestCheckNobodyListens(t *testing.T) {
	port := ipmisim.FreeUDPPort(t)
	reqs := checktest.Run(t, Spec, checktest.Config{"ipmi.address": "127.0.0.1", "ipmi.port": strconv.Itoa(port), "ipmi.timeout": "200ms", "ipmi.retries": "0"})
	if r := checktest.Find(t, reqs, "BMC reachable"); r.Present {
		t.Errorf("reachable: %+v", r)
	}
	if r := checktest.Find(t, reqs, "BMC authentication"); r.Present {
		t.Errorf("authentication: %+v", r)
	}
}
