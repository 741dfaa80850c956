// Package checktest runs a driver's check report (DriverSpec.Check) in the
// driver's unit tests, with a config given as a map.
package checktest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Config is a host's config as the check reads it.
type Config map[string]string

// Get implements the config the check reads.
func (c Config) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// Run runs spec's check for a host configured with cfg, bounded as the
// model bounds it.
func Run(t testing.TB, spec machine.DriverSpec, cfg Config) []machine.Requirement {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return spec.Check(ctx, machine.CheckEnv{Path: "hosts/chk", Config: cfg})
}

// Find is the requirement whose What starts with what; the test fails if
// there is none.
func Find(t testing.TB, reqs []machine.Requirement, what string) machine.Requirement {
	t.Helper()
	for _, r := range reqs {
		if strings.HasPrefix(r.What, what) {
			return r
		}
	}
	t.Fatalf("no requirement %q in %+v", what, reqs)
	return machine.Requirement{}
}
