package ns

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/machinefs/machinefs/internal/cloexec"
	"golang.org/x/sys/unix"
)

// The first moments of a subhost run this binary again (/proc/self/exe)
// as PID 1 of the new namespaces, before main: it pivots into the
// subhost's root, detaches every other mount (the daemon's FUSE mount
// included, which a subhost must not keep alive) and execs the subhost's
// init, which then is PID 1.
const (
	stageEnv = "MACHINEFS_NS_STAGE"
	rootEnv  = "MACHINEFS_NS_ROOT"
	initEnv  = "MACHINEFS_NS_INIT"
)

func init() {
	if os.Getenv(stageEnv) != "1" || os.Getpid() != 1 {
		return
	}
	err := stage(os.Getenv(rootEnv), os.Getenv(initEnv))
	fmt.Fprintf(os.Stderr, "machinefs ns stage: %v\n", err)
	os.Exit(127)
}

func stage(root, init string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	if err := unix.Chdir(root); err != nil {
		return err
	}
	// pivot_root(".", "."): the old root ends up stacked on the new one
	// and is detached at once.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's mounts: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "MACHINEFS_NS_") {
			env = append(env, e)
		}
	}
	// The init gets stdin, stdout and stderr and nothing else, whatever
	// the daemon may have leaked into this process: a descriptor of the
	// daemon's (above all its /dev/fuse) would let the subhost answer the
	// host tree's requests and keep a dead daemon's mount hanging. The
	// runtime's own descriptors must stay open until the exec, so they
	// are marked close-on-exec rather than closed.
	if err := cloexec.All(); err != nil {
		return err
	}
	return syscall.Exec(init, []string{init}, env)
}
