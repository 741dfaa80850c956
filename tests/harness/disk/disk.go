// Package disk builds the disk images tests boot from: ext4 images of a
// directory tree (mkfs.ext4 -d) and partitioned disks (sfdisk), so that
// the ns and uml tests make them one way. A test without the tools is
// skipped with the Debian package to install.
package disk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Ext4 makes an ext4 image of size (mkfs.ext4's form, e.g. "24M") holding
// the tree at root, and returns its path.
func Ext4(t testing.TB, root, size string) string {
	t.Helper()
	need(t, "mkfs.ext4", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d %s: %v\n%s", root, err, out)
	}
	return img
}

// Partitioned makes a disk image of size bytes with a partition table:
// label "dos" (MBR) or "gpt", parts as sfdisk lines in 512-byte sectors
// ("start=2048, size=16384"). It returns the image's path.
func Partitioned(t testing.TB, label string, size int64, parts ...string) string {
	t.Helper()
	need(t, "sfdisk", "fdisk")
	img := filepath.Join(t.TempDir(), label+".raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--quiet", img)
	cmd.Stdin = strings.NewReader("label: " + label + "\n" + strings.Join(parts, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk %s: %v\n%s", img, err, out)
	}
	return img
}

// Put writes the file src into image at byte offset off: a file system
// into its partition.
func Put(t testing.TB, image, src string, off int64) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func need(t testing.TB, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("needs %s (apt-get install %s)", tool, pkg)
	}
}
