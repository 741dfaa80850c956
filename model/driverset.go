package model

import (
	"slices"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// driverSet is a host's drivers, found by capability: a verb goes to the
// first driver that lists it, a state question to the driver that would
// run the command if it can answer. It is replaced whole when a config
// change rebuilds the drivers; gen tells the reports of a replaced set's
// drivers, which are dropped, from the current ones.
type driverSet struct {
	list []machine.Driver
	err  error  // why some drivers could not be built: the host is "not ready"
	gen  uint64 // generation: bumped at every rebuild and at close
}

// power returns the first driver that supports verb, nil if none does.
func (s *driverSet) power(verb string) machine.PowerController {
	for _, d := range s.list {
		if pc, ok := d.(machine.PowerController); ok && slices.Contains(pc.Verbs(), verb) {
			return pc
		}
	}
	return nil
}

// statusReader returns the driver to ask for the machine's state before a
// command is answered from the cache: pc, the driver that would run the
// command, if it can tell, else the first driver that can.
func (s *driverSet) statusReader(pc machine.PowerController) machine.StatusReader {
	if sr, ok := pc.(machine.StatusReader); ok {
		return sr
	}
	for _, d := range s.list {
		if sr, ok := d.(machine.StatusReader); ok {
			return sr
		}
	}
	return nil
}

// unsupported says why no driver runs verb.
func (s *driverSet) unsupported(verb string) error {
	if s.err != nil {
		return machine.Errorf(machine.ErrnoOf(s.err), "%s: drivers not ready: %v", verb, s.err)
	}
	if len(s.list) == 0 {
		return machine.Errorf(syscall.ENOTSUP, "%s: no driver configured (set drivers in config)", verb)
	}
	return machine.Errorf(syscall.ENOTSUP, "%s: not supported by drivers %s", verb, s.kinds())
}

// kinds names the drivers, "ipmi, wol".
func (s *driverSet) kinds() string {
	var kinds []string
	for _, d := range s.list {
		kinds = append(kinds, d.Kind())
	}
	return strings.Join(kinds, ", ")
}

// primary names the host's first source of state: the first driver that
// can tell the machine's state (a StatusReader), else the first driver.
func (s *driverSet) primary() string {
	for _, d := range s.list {
		if _, ok := d.(machine.StatusReader); ok {
			return d.Kind()
		}
	}
	if len(s.list) > 0 {
		return s.list[0].Kind()
	}
	return ""
}
