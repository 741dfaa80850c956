package sim

import (
	"context"

	"github.com/machinefs/machinefs/machine"
)

// Set here rather than in the Spec literal, as the other drivers do.
func init() { Spec.Check = check }

// check: a simulated machine needs nothing of the host; the report says
// so rather than leave the driver out.
func check(context.Context, machine.CheckEnv) []machine.Requirement {
	return []machine.Requirement{machine.Have("nothing", "a simulation needs no tool or permission")}
}
