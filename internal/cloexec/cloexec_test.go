package cloexec

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// A descriptor opened without the flag is not inherited by a child after
// All: the child's /proc/self/fd has no entry for it.
func TestAllKeepsDescriptorsFromChildren(t *testing.T) {
	fd, err := syscall.Open("/dev/null", syscall.O_RDONLY, 0) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	has := func() bool {
		return exec.Command("test", "-e", "/proc/self/fd/"+strconv.Itoa(fd)).Run() == nil
	}
	if !has() {
		t.Fatalf("fd %d without close-on-exec was not inherited: the test proves nothing", fd)
	}
	if err := All(); err != nil {
		t.Fatal(err)
	}
	if has() {
		t.Fatalf("fd %d reached a child after All", fd)
	}
	if _, err := os.Stat("/proc/self/fd/" + strconv.Itoa(fd)); err != nil {
		t.Fatalf("All closed fd %d instead of marking it: %v", fd, err)
	}
}
