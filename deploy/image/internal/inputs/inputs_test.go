package inputs

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestVerify(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	data := []byte("pinned content")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s256 := sha256.Sum256(data)
	s512 := sha512.Sum512(data)
	good256 := hex.EncodeToString(s256[:])
	good512 := "sha512-" + base64.StdEncoding.EncodeToString(s512[:])

	if err := VerifySHA256(p, good256); err != nil {
		t.Errorf("VerifySHA256 good: %v", err)
	}
	if err := VerifyIntegrity(p, good512); err != nil {
		t.Errorf("VerifyIntegrity good: %v", err)
	}
	if err := VerifySHA256(p, hex.EncodeToString(make([]byte, 32))); !errors.Is(err, ErrMismatch) {
		t.Errorf("VerifySHA256 bad = %v, want ErrMismatch", err)
	}
	if err := VerifyIntegrity(p, "sha512-"+base64.StdEncoding.EncodeToString(make([]byte, 64))); !errors.Is(err, ErrMismatch) {
		t.Errorf("VerifyIntegrity bad = %v, want ErrMismatch", err)
	}
	if err := VerifyIntegrity(p, "sha1-abc"); err == nil {
		t.Error("VerifyIntegrity accepted sha1")
	}
}

func TestCachedRemovesTamperedFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.deb")
	if err := os.WriteFile(p, []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	verify := func(p string) error { return VerifySHA256(p, hex.EncodeToString(make([]byte, 32))) }
	if cached(p, verify, log) {
		t.Fatal("tampered cache file was accepted")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("tampered cache file still there: %v", err)
	}
}
