package uml

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/machinefs/machinefs/drivers/internal/ptyhold"
	"github.com/machinefs/machinefs/machine"
)

// The guest's console (con0, and linux's own stdout and stderr) is a pty
// whose master a holder process owns (drivers/internal/ptyhold), so the
// console outlives the daemon as the guest does. The holder also writes
// the console log (at most ptyhold.LogLimit), which a backup reads for the
// guest's sync report whether or not a daemon is connected. The driver
// connects to the holder after it starts the guest and after it adopts
// one, and hands the model one serialline.Line across the guest's lives.

var _ machine.SerialHolder = (*Machine)(nil)

func (m *Machine) consolePath() string { return filepath.Join(m.side, "console.sock") }

// HasSerial implements machine.Serialer: every guest has a console.
func (m *Machine) HasSerial() bool { return true }

// HoldsSerial implements machine.SerialHolder.
func (m *Machine) HoldsSerial() {}

// Serial implements machine.Serialer: the guest's console, across its
// restarts and the daemon's.
func (m *Machine) Serial(context.Context) (io.ReadWriteCloser, error) { return m.line, nil }

// startConsole makes the console of the guest about to start: a pty whose
// master a new holder owns, with a fresh console log. It returns the
// slave, which the caller closes once linux has it.
func (m *Machine) startConsole() (*os.File, ptyhold.Holder, error) {
	logf, err := os.OpenFile(m.ConsoleLog(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, ptyhold.Holder{}, fmt.Errorf("console log: %w", err)
	}
	defer logf.Close()
	master, slave, err := ptyhold.Pty()
	if err != nil {
		return nil, ptyhold.Holder{}, err
	}
	defer master.Close()
	h, err := ptyhold.Start(master, ptyhold.Options{Socket: m.consolePath(), Label: m.path, Log: logf})
	if err != nil {
		slave.Close()
		return nil, ptyhold.Holder{}, err
	}
	return slave, h, nil
}

// attachConsole connects to the guest's console holder and makes it the
// Line's console.
func (m *Machine) attachConsole() {
	c, err := ptyhold.Dial(m.consolePath())
	if err != nil {
		m.log.Warn("uml: guest console: the serial file stays silent", "err", err)
		return
	}
	m.line.Attach(c)
}
