package vswitch

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/internal/atomicfile"
	"github.com/machinefs/machinefs/machine"
)

// record is what machinefs remembers about a switch it created. The TAPs
// are not listed: the kernel knows them (group and alias).
type record struct {
	Name   string `json:"name"`
	Group  uint32 `json:"group"`
	Uplink string `json:"uplink,omitempty"`
	// External: the bridge is someone else's (ctys -b); machinefs only
	// added ports to it, and never deletes it.
	External bool `json:"external,omitempty"`
	// VDE is the VDE switch machinefs runs on the switch, if any.
	VDE *vdeRecord `json:"vde,omitempty"`
}

func (m *Manager) statePath(name string) string {
	return filepath.Join(m.stateDir, name+".json")
}

// loadState reads every NAME.json in the state directory, creating it if
// needed.
func (m *Manager) loadState() error {
	if m.stateDir == "" {
		return nil
	}
	if err := os.MkdirAll(m.stateDir, 0o700); err != nil {
		return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: state directory: %v", err)
	}
	ents, err := os.ReadDir(m.stateDir)
	if err != nil {
		return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: state directory: %v", err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.stateDir, e.Name()))
		if err != nil {
			return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: state: %v", err)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.Name+".json" != e.Name() || r.Group == 0 {
			return machine.Errorf(syscall.EIO, "vswitch: state file %s is damaged", e.Name())
		}
		m.recs[r.Name] = &r
	}
	return nil
}

// save writes r atomically. There is no fsync (ProcessCrash): a record
// describes devices in the running kernel, which a reboot removes too, and
// the page cache already carries it across a crash of the daemon (the only
// crash the record has to survive). Leaving fsync out keeps a journal
// commit out of every mkdir.
func (m *Manager) save(r *record) error {
	if m.stateDir == "" {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(m.statePath(r.Name), append(b, '\n'), 0o600, atomicfile.ProcessCrash); err != nil {
		return machine.Errorf(errnoOf(err, syscall.EIO), "vswitch: state: %v", err)
	}
	return nil
}

// unsave forgets switch name on disk.
func (m *Manager) unsave(name string) {
	if m.stateDir != "" {
		_ = os.Remove(m.statePath(name))
	}
}
