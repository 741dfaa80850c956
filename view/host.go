package view

import (
	"strings"

	"github.com/machinefs/machinefs/model"
)

// State is the content of a host's state file: "key: value" lines.
// Values come from drivers, guests and BMCs: each is escaped onto one line.
func State(h *model.Host) string {
	st := h.State()
	var b strings.Builder
	line := func(k, v string) { b.WriteString(k + ": " + model.Escape(v) + "\n") }
	line("power", string(st.Power))
	line("since", st.Since)
	line("reason", st.Reason)
	drivers := strings.Join(st.Drivers, " ")
	if drivers == "" {
		drivers = "none"
	}
	line("drivers", drivers)
	reachable := yesNo(st.Reachable)
	if st.OwnerGone != "" {
		reachable += " (" + st.OwnerGone + ")"
	}
	line("reachable", reachable)
	line("last-command", st.LastCommand)
	line("last-error", st.LastError)
	line("label", st.Label)
	line("subhosts", strings.Join(st.Subhosts, " "))
	if st.Owner != "" {
		// In a cluster only: the agent that runs the machine.
		line("owner", st.Owner)
	}
	if st.Stale != "" {
		line("stale", "yes ("+st.Stale+": the last known state)")
	}
	for _, kv := range st.Details {
		line(kv[0], kv[1])
	}
	return b.String()
}

// Power is the content of a host's power file: one word.
func Power(h *model.Host) string { return string(h.Power()) + "\n" }

// Config is the content of a host's config file: the file as written,
// secrets shown as "<set>".
func Config(t *model.Tree, h *model.Host) string {
	return h.Config().Render(t.IsSecret)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
