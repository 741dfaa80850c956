package ns

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	diskimg "github.com/machinefs/machinefs/tests/harness/disk"
)

func TestFindPartition(t *testing.T) {
	for _, label := range []string{"dos", "gpt"} {
		img := diskimg.Partitioned(t, label, 40<<20, "start=2048, size=16384", "start=20480, size=32768")
		for n, want := range map[int]extent{1: {1 << 20, 8 << 20}, 2: {10 << 20, 16 << 20}} {
			got, err := findPartition(img, n)
			if err != nil || got != want {
				t.Errorf("%s partition %d: %+v %v, want %+v", label, n, got, err, want)
			}
		}
		if _, err := findPartition(img, 3); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("%s partition 3: %v, want ENOENT", label, err)
		}
	}
	// No table: the whole image is partition 1 and there is no other.
	plain := filepath.Join(t.TempDir(), "plain.raw")
	if err := os.WriteFile(plain, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := findPartition(plain, 1); err != nil || got != (extent{0, 4096}) {
		t.Errorf("plain image partition 1: %+v %v", got, err)
	}
	if _, err := findPartition(plain, 2); !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "no partition table") {
		t.Errorf("plain image partition 2: %v", err)
	}
}
