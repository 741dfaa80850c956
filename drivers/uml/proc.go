package uml

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// record is what the driver writes next to the guest so that a later
// machinefs can adopt it.
type record struct {
	// Path is the host the guest belongs to. Hosts of the same name
	// under different parents share a umid, and with it this record,
	// when they share uml.dir; the path tells whose it is. (Empty in
	// records of earlier versions: taken as this host's.)
	Path   string
	Pid    int
	Start  uint64
	Umid   string
	Notify string
	Tap    string
	Paused bool
	// The console's holder (ptyhold): its pid and start time. Its
	// socket is consolePath.
	Holder      int
	HolderStart uint64
}

func (r record) marshal() []byte {
	paused := 0
	if r.Paused {
		paused = 1
	}
	return fmt.Appendf(nil, "path=%s\npid=%d\nstart=%d\numid=%s\nnotify=%s\ntap=%s\npaused=%d\nholder=%d\nholderstart=%d\n", r.Path, r.Pid, r.Start, r.Umid, r.Notify, r.Tap, paused, r.Holder, r.HolderStart)
}

func readRecord(path string) (record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return record{}, err
	}
	var r record
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		switch k {
		case "path":
			r.Path = v
		case "pid":
			r.Pid, err = strconv.Atoi(v)
		case "start":
			r.Start, err = strconv.ParseUint(v, 10, 64)
		case "umid":
			r.Umid = v
		case "notify":
			r.Notify = v
		case "tap":
			r.Tap = v
		case "paused":
			r.Paused = v == "1"
		case "holder":
			r.Holder, err = strconv.Atoi(v)
		case "holderstart":
			r.HolderStart, err = strconv.ParseUint(v, 10, 64)
		}
		if err != nil {
			return record{}, fmt.Errorf("%s: %s: %v", path, k, err)
		}
	}
	if r.Pid <= 1 {
		return record{}, fmt.Errorf("%s: no pid", path)
	}
	return r, nil
}

// removeUmidDir removes the umid directory UML leaves behind after a crash
// or SIGKILL, if its pid file names pid (or it has none).
func removeUmidDir(dir string, pid int) {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err == nil {
		if p, _ := strconv.Atoi(strings.TrimSpace(string(b))); p != pid {
			return
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return
	}
	os.RemoveAll(dir)
}
