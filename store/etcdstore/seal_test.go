package etcdstore_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machinefs/machinefs/store"
	"github.com/machinefs/machinefs/store/etcdstore"
)

const secretText = "drivers = ipmi\nipmi.password = se#cret\n"

// A secret config is in etcd sealed, opens with the site key only, and
// only under the key it was saved at.
func TestSealing(t *testing.T) {
	cli := startMember(t)
	s := newStore(t, cli, siteKey(0))
	if err := s.SaveHost("hosts/a", []byte(secretText), true); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveHost("hosts/b", []byte("drivers = sim\n"), false); err != nil {
		t.Fatal(err)
	}
	raw := rawKeys(t, cli, "/machinefs/config/hosts/a/")
	if len(raw) != 1 || strings.Contains(raw[0], "se#cret") || !strings.HasPrefix(raw[0], "/machinefs/config/hosts/a/=mfs-sealed-v1:") {
		t.Fatalf("etcd holds %q, want it sealed", raw)
	}
	if got := hostTexts(t, s); got != "hosts/a: "+secretText+"|hosts/b: drivers = sim\n" {
		t.Fatalf("with the site key: %q", got)
	}
	// Another site's key: the secret is an error, the rest reads.
	if got := hostTexts(t, newStore(t, cli, siteKey(1))); got != "hosts/a: error "+etcdstore.ErrSealed.Error()+"|hosts/b: drivers = sim\n" {
		t.Fatalf("with another key: %q", got)
	}
	// No key: the secret is an error, and no secret is saved.
	noKey := newStore(t, cli, nil)
	if got := hostTexts(t, noKey); got != "hosts/a: error "+etcdstore.ErrNoKey.Error()+"|hosts/b: drivers = sim\n" {
		t.Fatalf("without a key: %q", got)
	}
	err := noKey.SaveHost("hosts/c", []byte(secretText), true)
	if !errors.Is(err, etcdstore.ErrNoKey) || !strings.Contains(err.Error(), "etcd store: save hosts/c: ") || !strings.Contains(err.Error(), "-o secret-key=FILE") {
		t.Fatalf("saving a secret without a key: %v", err)
	}
	if got := rawKeys(t, cli, "/machinefs/config/hosts/c/"); len(got) != 0 {
		t.Fatalf("a refused secret is in etcd: %q", got)
	}
	// A sealed value moved under another host's key does not open there.
	if _, err := cli.Put(context.Background(), "/machinefs/config/hosts/b/", strings.TrimPrefix(raw[0], "/machinefs/config/hosts/a/=")); err != nil {
		t.Fatal(err)
	}
	if got := hostTexts(t, s); got != "hosts/a: "+secretText+"|hosts/b: error "+etcdstore.ErrSealed.Error() {
		t.Fatalf("a sealed value moved to hosts/b: %q", got)
	}
}

// hostTexts lists "path: text" or "path: error ERR" (the end of the
// error) of every host, joined by "|".
func hostTexts(t *testing.T, s store.Store) string {
	t.Helper()
	hs, err := s.Hosts()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range hs {
		switch {
		case h.Err != nil && len(h.Text) != 0:
			t.Fatalf("%s: an error and text %q", h.Path, h.Text)
		case h.Err != nil:
			_, last, _ := strings.Cut(h.Err.Error(), "/: ")
			out = append(out, h.Path+": error "+last)
		default:
			out = append(out, h.Path+": "+string(h.Text))
		}
	}
	return strings.Join(out, "|")
}

func TestLoadSecretKey(t *testing.T) {
	dir := t.TempDir()
	raw := siteKey(2)
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	for name, data := range map[string]string{
		"raw":      string(raw),
		"hex":      hex.EncodeToString(raw) + "\n",
		"hex-bare": hex.EncodeToString(raw),
	} {
		key, err := etcdstore.LoadSecretKey(write(name, data, 0o600))
		if err != nil || string(key) != string(raw) {
			t.Errorf("%s: key %q, %v", name, key, err)
		}
	}
	for name, mode := range map[string]os.FileMode{"group": 0o640, "others": 0o604} {
		p := write(name, string(raw), mode)
		_, err := etcdstore.LoadSecretKey(p)
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), fmt.Sprintf("mode %04o", mode)) {
			t.Errorf("%s: %v, want EACCES naming the file", name, err)
		}
	}
	for name, data := range map[string]string{"short": "abc\n", "long": string(raw) + "x", "badhex": strings.Repeat("g", 64)} {
		if _, err := etcdstore.LoadSecretKey(write(name, data, 0o600)); err == nil || !strings.Contains(err.Error(), "want 32 bytes or 64 hex digits") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := etcdstore.LoadSecretKey(filepath.Join(dir, "nosuch")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}
