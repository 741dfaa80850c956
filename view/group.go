package view

import (
	"fmt"
	"strings"

	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
)

// Members is the content of a group's members file: the lines as written.
func Members(g *model.Group) string {
	m := g.Members()
	if len(m) == 0 {
		return ""
	}
	return strings.Join(m, "\n") + "\n"
}

// GroupPower is a group's power: the members' common state, "mixed" when
// they differ, "unknown" for an empty group.
func GroupPower(g *model.Group) string {
	return groupPower(g.State().Power) + "\n"
}

func groupPower(powers []machine.Power) string {
	common := machine.PowerUnknown
	for i, p := range powers {
		if p == "" {
			p = machine.PowerUnknown
		}
		if i == 0 {
			common = p
		} else if p != common {
			return "mixed"
		}
	}
	return string(common)
}

// GroupState lists a group's last command and every member's power and
// last outcome.
func GroupState(g *model.Group) string {
	st := g.State()
	var b strings.Builder
	fmt.Fprintf(&b, "members: %d\n", len(st.Hosts))
	fmt.Fprintf(&b, "power: %s\n", groupPower(st.Power))
	fmt.Fprintf(&b, "fan-out: %d\n", st.FanOut)
	fmt.Fprintf(&b, "last-command: %s\n", st.LastCommand)
	for i, p := range st.Hosts {
		pw := "missing"
		if st.Power[i] != "" {
			pw = string(st.Power[i])
		}
		line := p + ": " + pw
		if o, ok := st.Results[p]; ok {
			line += " (last: " + o + ")"
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}
