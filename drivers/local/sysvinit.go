package local

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/machinefs/machinefs/machine"
)

// sysvinit listens on a FIFO (/run/initctl) for struct init_request
// (sysvinit's initreq.h): 384 bytes in the machine's byte order, an int
// magic, cmd, runlevel and sleeptime, then 368 bytes of data. telinit
// and shutdown write the same.
const (
	initMagic      = 0x03091969
	initCmdRunlvl  = 1
	initCmdSetenv  = 6
	initRequestLen = 384
	initDataOffset = 16
	initDataLen    = initRequestLen - initDataOffset
)

// initRequest encodes one request. runlevel is the level's character
// ('0'-'6'), data the NUL-terminated payload of INIT_CMD_SETENV.
func initRequest(cmd int, runlevel byte, data string) []byte {
	b := make([]byte, initRequestLen)
	binary.NativeEndian.PutUint32(b[0:], initMagic)
	binary.NativeEndian.PutUint32(b[4:], uint32(cmd))
	binary.NativeEndian.PutUint32(b[8:], uint32(runlevel))
	// sleeptime 0: init's own delay between SIGTERM and SIGKILL.
	copy(b[initDataOffset:initDataOffset+initDataLen-1], data)
	return b
}

// sysvRequests are the requests that carry out cmd: poweroff is run level
// 0 with INIT_HALT=POWEROFF set first (as shutdown -P does, so the halt
// script powers off rather than halts), reboot is 6, init N is N.
func sysvRequests(cmd machine.Command) ([][]byte, string, error) {
	switch {
	case cmd.Verb == "poweroff":
		return [][]byte{initRequest(initCmdSetenv, 0, "INIT_HALT=POWEROFF"), initRequest(initCmdRunlvl, '0', "")}, "INIT_HALT=POWEROFF, run level 0", nil
	case cmd.Verb == "reboot":
		return [][]byte{initRequest(initCmdRunlvl, '6', "")}, "run level 6", nil
	case cmd.Verb == "init" && cmd.InitLevel >= 0 && cmd.InitLevel <= 6:
		return [][]byte{initRequest(initCmdRunlvl, byte('0'+cmd.InitLevel), "")}, fmt.Sprintf("run level %d", cmd.InitLevel), nil
	}
	return nil, "", machine.Errorf(syscall.ENOTSUP, "local: %s: not a verb sysvinit carries out", cmd.Verb)
}

// writeInitctl writes the requests to the FIFO. It never blocks: a FIFO
// nobody reads (init not listening) is ENXIO, reported as such.
func writeInitctl(path string, reqs [][]byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ENXIO) {
		return machine.Errorf(syscall.EIO, "local: %s: init does not read its control FIFO", path)
	}
	if err != nil {
		code := syscall.EIO
		if errors.Is(err, os.ErrPermission) {
			code = syscall.EPERM
		}
		return machine.Errorf(code, "local: open %s: %v", path, err)
	}
	defer f.Close()
	for _, r := range reqs {
		// One write of PIPE_BUF (4096) bytes or less is atomic: init
		// reads whole requests.
		if _, err := f.Write(r); err != nil {
			return machine.Errorf(syscall.EIO, "local: write %s: %v", path, err)
		}
	}
	return nil
}
