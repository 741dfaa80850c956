package etcdstore

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// keySize is the size of the site key: AES-256.
const keySize = 32

// sealedPrefix starts a sealed value. A host config is "key = value"
// lines, so no plain config starts with it.
const sealedPrefix = "mfs-sealed-v1:"

var (
	// ErrNoKey is why a secret config is not saved or read: the store
	// has no site key. Every agent of a site needs the same key file.
	ErrNoKey = errors.New("a config holding secrets is sealed with the site key, and this machinefs has none (-o secret-key=FILE)")
	// ErrSealed is why a sealed config is not read: it does not open
	// with the store's key.
	ErrSealed = errors.New("the sealed config does not open with this site key (another site's key, or moved from another key)")
)

// LoadSecretKey reads the site key from a file: 32 raw bytes, or 64 hex
// digits and an optional newline (head -c 32 /dev/urandom, or openssl
// rand -hex 32). A file that the group or others may read is refused
// with EACCES: the key opens every secret of the site.
func LoadSecretKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secret key: %w", err)
	}
	defer f.Close()
	// The mode of the file that was opened, not of whatever the name
	// points at a moment later.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secret key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secret key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secret key %s: mode %04o lets group or others read it (chmod 600 %s): %w",
			path, perm, path, syscall.EACCES)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4*keySize))
	if err != nil {
		return nil, fmt.Errorf("secret key %s: %w", path, err)
	}
	if len(data) == keySize {
		return data, nil
	}
	text := strings.TrimSuffix(string(data), "\n")
	if key, err := hex.DecodeString(text); err == nil && len(key) == keySize {
		return key, nil
	}
	return nil, fmt.Errorf("secret key %s: want 32 bytes or 64 hex digits, the file has %d bytes", path, len(data))
}

// seal encrypts a secret config for key: a random nonce and the AES-GCM
// ciphertext, the key as additional data, so a sealed value copied under
// another key does not open.
func (s *Store) seal(key string, text []byte) (string, error) {
	if s.aead == nil {
		return "", ErrNoKey
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(text)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("sealing: %w", err)
	}
	sealed := s.aead.Seal(nonce, nonce, text, []byte(key))
	return sealedPrefix + base64.StdEncoding.EncodeToString(sealed), nil
}

// open returns the config text of the value at key: the value itself, or
// the opened secret if it is sealed. A sealed value that does not open is
// an error, never its bytes.
func (s *Store) open(key string, value []byte) ([]byte, error) {
	b64, ok := bytes.CutPrefix(value, []byte(sealedPrefix))
	if !ok {
		return value, nil
	}
	if s.aead == nil {
		return nil, fmt.Errorf("etcd store: %s: %w", key, ErrNoKey)
	}
	sealed, err := base64.StdEncoding.DecodeString(string(b64))
	if err != nil || len(sealed) < s.aead.NonceSize() {
		return nil, fmt.Errorf("etcd store: %s: not well formed: %w", key, ErrSealed)
	}
	nonce, ct := sealed[:s.aead.NonceSize()], sealed[s.aead.NonceSize():]
	text, err := s.aead.Open(nil, nonce, ct, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("etcd store: %s: %w", key, ErrSealed)
	}
	return text, nil
}
