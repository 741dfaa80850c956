package model

import (
	"fmt"
	"strings"
	"time"

	"github.com/machinefs/machinefs/machine"
)

// Core config keys every host understands, whatever its drivers.
var coreKeys = []machine.KeySpec{
	{Name: "drivers", Doc: "drivers that reach this machine, in order of preference, space or comma separated (e.g. \"ipmi wol\"); a verb goes to the first driver that supports it"},
	{Name: "driver", Doc: "same as drivers, for hosts with one driver; used when drivers is not set"},
	{Name: "label", Doc: "free text shown as label: in state"},
	{Name: "timeout", Default: "10s", Doc: "bound on every driver call (a driver that does not answer fails with ETIMEDOUT after it)", Check: checkDuration},
	{Name: "stack-timeout", Default: "1m", Doc: "bound on stopping this machine as a step of a stack poweroff or reboot; after it the machine is forced", Check: checkDuration},
	{Name: "local", Default: "no", Doc: "yes on the machine machinefs itself runs on: \"poweroff self\" and \"reboot self\" are then refused (EPERM) unless allow-self = yes", Check: checkBool, Privileged: true},
	{Name: "allow-self", Default: "no", Doc: "yes lets \"poweroff self\" and \"reboot self\" act on the local host", Check: checkBool, Privileged: true},
	{Name: "wait-timeout", Default: "2m", Doc: "how long a command may take to reach its target state; the default for the wait modifier", Check: checkDuration},
}

func checkDuration(v string) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	if d <= 0 || d > 24*time.Hour {
		return fmt.Errorf("%q: want a duration between 1ms and 24h", v)
	}
	return nil
}

func checkBool(v string) error {
	switch strings.ToLower(v) {
	case "yes", "no", "true", "false", "on", "off", "1", "0":
		return nil
	}
	return fmt.Errorf("%q: want yes or no", v)
}

// driverNames splits a drivers value.
func driverNames(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}
