package ns

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/machinefs/machinefs/drivers/internal/ptyhold"
	"github.com/machinefs/machinefs/machine"
)

// The init's console is a pty whose master a holder process owns
// (drivers/internal/ptyhold), so the console outlives the daemon as the
// subhost does. The driver connects to the holder after it starts the init
// and after it adopts one, and hands the model one serialline.Line across
// the subhost's lives.

var _ machine.SerialHolder = (*Subhost)(nil)

// consolePath is where the holder of the subhost's console listens.
func consolePath(stateDir, name string) string {
	return filepath.Join(stateDir, name, "console.sock")
}

// HasSerial implements machine.Serialer: every subhost has a console.
func (d *Subhost) HasSerial() bool { return true }

// HoldsSerial implements machine.SerialHolder.
func (d *Subhost) HoldsSerial() {}

// Serial implements machine.Serialer: the init's console, across its
// restarts and the daemon's.
func (d *Subhost) Serial(context.Context) (io.ReadWriteCloser, error) { return d.line, nil }

// startConsoleLocked makes the console of the init about to start: a pty
// whose master a new holder owns. It returns the slave, which the caller
// closes once the init has it.
func (d *Subhost) startConsoleLocked() (*os.File, error) {
	master, slave, err := ptyhold.Pty()
	if err != nil {
		return nil, err
	}
	defer master.Close()
	sock := consolePath(d.s.stateDir, d.s.name)
	h, err := ptyhold.Start(master, ptyhold.Options{Socket: sock, Label: d.s.path})
	if err != nil {
		slave.Close()
		return nil, err
	}
	d.rec.Console, d.rec.Holder, d.rec.HolderStart = sock, h.Pid, h.Start
	return slave, nil
}

// attachConsoleLocked connects to the running init's console holder and
// makes it the Line's console.
func (d *Subhost) attachConsoleLocked() {
	if d.rec == nil || d.rec.Console == "" {
		return
	}
	c, err := ptyhold.Dial(d.rec.Console)
	if err != nil {
		d.log.Warn("subhost console: the serial file stays silent", "err", err)
		return
	}
	d.line.Attach(c)
}

// forgetConsoleLocked clears the record's console holder: the init it
// served ended, and the holder ends by itself once it has passed on the
// init's last output.
func (d *Subhost) forgetConsoleLocked() {
	d.rec.Console, d.rec.Holder, d.rec.HolderStart = "", 0, 0
}
