package ns

import (
	"strings"
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
)

func TestCheckRootWithoutInit(t *testing.T) {
	dir := t.TempDir()
	reqs := checktest.Run(t, Spec, checktest.Config{"ns.root": dir})
	if r := checktest.Find(t, reqs, "init"); r.Present || !strings.Contains(r.Reason, "neither /init nor /sbin/init") {
		t.Errorf("init: %+v", r)
	}
	if r := checktest.Find(t, reqs, "capability CAP_SYS_ADMIN"); !r.Present {
		t.Errorf("the test runs as root: %+v", r)
	}
}
