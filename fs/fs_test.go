package fs_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/machinefs/machinefs/drivers/sim"
	mfs "github.com/machinefs/machinefs/fs"
	"github.com/machinefs/machinefs/machine"
	"github.com/machinefs/machinefs/model"
	"github.com/machinefs/machinefs/view"
)

func TestMain(m *testing.M) {
	// This test binary is also the notifier's poker when the mount starts
	// it with the poker environment.
	mfs.RunPokerIfChild()
	goleak.VerifyTestMain(m)
}

// An in-process mount: commands, fresh reads, notification and a clean
// unmount that leaves no goroutine behind.
func TestMountInProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root here (make test runs as root)")
	}
	tree := model.NewTree(model.Options{Drivers: []machine.DriverSpec{sim.Spec}})
	cf := &model.ConfigFile{}
	cf.Set("drivers", "sim")
	cf.Set("sim.on-delay", "100ms")
	if _, err := tree.Add(context.Background(), nil, "a", cf, model.Caller{}); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	fsys, err := mfs.Mount(tree, mnt, mfs.Options{Version: "machinefs test", README: view.README(tree)})
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	defer func() {
		if !unmounted {
			fsys.Unmount()
		}
		tree.Close()
	}()
	sh := func(script string) (string, error) {
		cmd := exec.Command("bash", "-c", script)
		cmd.Dir = mnt
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := sh("cat hosts/a/power"); err != nil || out != "off\n" {
		t.Fatalf("power: %q %v", out, err)
	}
	watch := exec.Command("inotifywait", "-q", "-e", "close_write", filepath.Join(mnt, "hosts/a/power"))
	wout := &strings.Builder{}
	watch.Stdout = wout
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if out, err := sh("echo 'on wait' > hosts/a/power && cat hosts/a/power"); err != nil || out != "on\n" {
		t.Fatalf("on wait: %q %v", out, err)
	}
	done := make(chan error, 1)
	go func() { done <- watch.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		watch.Process.Kill()
		<-done
		t.Fatal("inotifywait saw no CLOSE_WRITE on power")
	}
	if !strings.Contains(wout.String(), "CLOSE_WRITE") {
		t.Fatalf("inotifywait: %q", wout.String())
	}
	if out, err := sh("echo bogus > hosts/a/power"); err == nil || !strings.Contains(out, "Invalid argument") {
		t.Fatalf("bogus: %q %v", out, err)
	}
	if err := fsys.Unmount(); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	fsys.Wait()
}
