package wol

import (
	"strings"
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
)

func TestCheckRawFrame(t *testing.T) {
	reqs := checktest.Run(t, Spec, checktest.Config{KeyMAC: "02:00:5e:10:20:30", KeyProbe: "tcp:127.0.0.1:1"})
	if r := checktest.Find(t, reqs, "capability CAP_NET_RAW"); !r.Present {
		t.Errorf("the test runs as root: %+v", r)
	}
	if r := checktest.Find(t, reqs, "probe tcp:127.0.0.1:1"); !r.Present || !strings.Contains(r.Reason, "127.0.0.1") {
		t.Errorf("probe: %+v", r)
	}
}
