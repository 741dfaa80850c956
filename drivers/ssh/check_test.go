package ssh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/drivers/internal/hostcheck/checktest"
)

func TestCheckKeyReadableByOthers(t *testing.T) {
	dir := t.TempDir()
	key, known := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(key, []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(known, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	reqs := checktest.Run(t, Spec, checktest.Config{KeyAddress: "127.0.0.1", KeyKey: key, KeyKnownHosts: known})
	if r := checktest.Find(t, reqs, "ssh key "+key); r.Present || !strings.Contains(r.Reason, "chmod 600") {
		t.Errorf("key: %+v", r)
	}
	if r := checktest.Find(t, reqs, "known_hosts entry for 127.0.0.1:22"); r.Present {
		t.Errorf("known_hosts: %+v", r)
	}
	if r := checktest.Find(t, reqs, "ssh connection"); r.Present {
		t.Errorf("connection tried without a key: %+v", r)
	}
}
