package view

import (
	"fmt"
	"strings"
	"time"

	"github.com/machinefs/machinefs/model"
)

// Check is the content of a host's check file: a summary line, when the
// report was made, and one line per requirement,
//
//	result: missing 1 of 3
//	checked: 2025-06-01T10:00:00Z (in 3ms)
//	qemu     missing   binary /usr/bin/qemu-system-x86_64 (no such file or directory)
//	qemu     present   device /dev/net/tun rw (crw-rw-rw- root:root)
//	qemu     optional  device /dev/kvm rw (no such file or directory ...)
//
// "optional" is a missing need the driver does without. Reasons come
// from drivers and BMCs: each is escaped onto its line.
func Check(r *model.CheckReport) string {
	var b strings.Builder
	missing, total := r.Missing(), 0
	for _, d := range r.Drivers {
		total += len(d.Requirements)
	}
	switch {
	case r.At.IsZero():
		b.WriteString("result: not checked\n")
	case len(missing) > 0:
		fmt.Fprintf(&b, "result: missing %d of %d: %s\n", len(missing), total, model.Escape(strings.Join(missing, ", ")))
	default:
		fmt.Fprintf(&b, "result: ok (%d checked)\n", total)
	}
	if !r.At.IsZero() {
		fmt.Fprintf(&b, "checked: %s (in %s)\n", r.At.UTC().Format(time.RFC3339), r.Took.Round(time.Millisecond))
	}
	if r.Note != "" {
		b.WriteString("note: " + model.Escape(r.Note) + "\n")
	}
	for _, d := range r.Drivers {
		if len(d.Requirements) == 0 {
			fmt.Fprintf(&b, "%-8s %-9s %s\n", d.Driver, "-", "(the driver reports no requirements)")
		}
		for _, q := range d.Requirements {
			status := "present"
			switch {
			case !q.Present && q.Optional:
				status = "optional"
			case !q.Present:
				status = "missing"
			}
			fmt.Fprintf(&b, "%-8s %-9s %s (%s)\n", d.Driver, status, model.Escape(q.What), model.Escape(q.Reason))
		}
	}
	return b.String()
}

// TreeCheck is the content of the check file at the root: one line per
// host and subhost from the reports already made ("lab1 ok", "lab2
// missing: qemu binary /usr/bin/qemu-system-x86_64"); reading it runs no
// check.
func TreeCheck(list []model.HostCheck) string {
	var b strings.Builder
	for _, hc := range list {
		name := strings.TrimPrefix(hc.Host.Path(), "hosts/")
		r := hc.Report
		switch {
		case r == nil:
			b.WriteString(name + " not checked yet\n")
		case r.At.IsZero() || (len(r.Drivers) == 0 && r.Note != ""):
			b.WriteString(name + " not checked: " + model.Escape(r.Note) + "\n")
		case len(r.Missing()) > 0:
			b.WriteString(name + " missing: " + model.Escape(strings.Join(r.Missing(), ", ")) + "\n")
		default:
			b.WriteString(name + " ok\n")
		}
	}
	return b.String()
}
