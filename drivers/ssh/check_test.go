package ssh

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/machinefs/machinefs/machine"
)

type checkConfig map[string]string

func (c checkConfig) Get(k string) (string, bool) { v, ok := c[k]; return v, ok }

// requirement finds the requirement whose What starts with what.
func requirement(t *testing.T, reqs []machine.Requirement, what string) machine.Requirement {
	t.Helper()
	for _, r := range reqs {
		if strings.HasPrefix(r.What, what) {
			return r
		}
	}
	t.Fatalf("no requirement %q in %+v", what, reqs)
	return machine.Requirement{}
}

func runCheck(t *testing.T, cfg checkConfig) []machine.Requirement {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Spec.Check(ctx, machine.CheckEnv{Path: "hosts/chk", Config: cfg})
}

func TestCheckKeyReadableByOthers(t *testing.T) {
	dir := t.TempDir()
	key, known := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(key, []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(known, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	reqs := runCheck(t, checkConfig{KeyAddress: "127.0.0.1", KeyKey: key, KeyKnownHosts: known})
	if r := requirement(t, reqs, "ssh key "+key); r.Present || !strings.Contains(r.Reason, "chmod 600") {
		t.Errorf("key: %+v", r)
	}
	if r := requirement(t, reqs, "known_hosts entry for 127.0.0.1:22"); r.Present {
		t.Errorf("known_hosts: %+v", r)
	}
	if r := requirement(t, reqs, "ssh connection"); r.Present {
		t.Errorf("connection tried without a key: %+v", r)
	}
}
