package uml

import (
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
)

func TestCheckMissingKernel(t *testing.T) {
	dir := t.TempDir()
	reqs := checktest.Run(t, Spec, checktest.Config{"uml.kernel": "/nonexistent/linux", "uml.root": "hostfs:" + dir})
	if r := checktest.Find(t, reqs, "binary /nonexistent/linux"); r.Present {
		t.Errorf("kernel: %+v", r)
	}
	if r := checktest.Find(t, reqs, "root hostfs "+dir); !r.Present {
		t.Errorf("root: %+v", r)
	}
}
