package bundle

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path"
	"strings"
	"time"
)

// NewID returns a fresh bundle id for a crash of the process named comm at t.
// The id is safe as a single path component whatever bytes comm holds.
func NewID(t time.Time, comm []byte) string {
	var r [3]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // never on Linux ≥ 3.17
	}
	return fmt.Sprintf("%s-%s-%s", t.UTC().Format("20060102-150405"), SafeName(comm), hex.EncodeToString(r[:]))
}

// SafeName renders an attacker-chosen process name as a short file name
// component: letters, digits, '_', '.' and '-' only, never starting with a
// dot, never empty, at most 15 bytes (the kernel's comm length).
func SafeName(name []byte) string {
	var b strings.Builder
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
			b.WriteByte(c)
		case c == '.' && b.Len() > 0:
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
		if b.Len() == 15 {
			break
		}
	}
	if b.Len() == 0 {
		return "unknown"
	}
	return b.String()
}

// ValidID reports whether id has the shape NewID produces. Commands check ids
// before they touch a store, so that "../" never reaches a path.
func ValidID(id string) error {
	if !validID(id) {
		return fmt.Errorf("%q is not a bundle id (expected YYYYMMDD-HHMMSS-name-xxxxxx; run `corecatch ls` to see ids)", id)
	}
	return nil
}

// validID reports whether id is what every bundle id looks like
// (YYYYMMDD-HHMMSS-name-xxxxxx): UTC date and time, a safe rendering of the
// process name (1 to 15 of [A-Za-z0-9_.-]), and 24 random bits in hex so
// that ids stay unique across the thousands of nodes that share one
// bucket. It is written out rather than a regexp: listings of a shared
// bucket check every one of 100,000 ids.
func validID(id string) bool {
	n := len(id)
	if n < 8+1+6+1+1+1+6 || n > 8+1+6+1+15+1+6 || id[8] != '-' || id[15] != '-' || id[n-7] != '-' {
		return false
	}
	for i, c := range []byte(id[:15]) {
		if i != 8 && (c < '0' || c > '9') {
			return false
		}
	}
	for _, c := range []byte(id[n-6:]) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	for _, c := range []byte(id[16 : n-7]) {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// Dir returns the bundle's directory relative to a store's root:
// <yyyy>/<mm>/<dd>/<id>. Listing a day or a month is then a directory read.
func Dir(id string) (string, error) {
	if err := ValidID(id); err != nil {
		return "", err
	}
	return path.Join(id[0:4], id[4:6], id[6:8], id), nil
}

// SysrootName returns the bundle-relative name under which a file the
// crasher knew as abs is stored. abs is attacker-chosen: cleaning it as an
// absolute path removes every "..", so the result always stays inside
// sysroot/. It fails for names that cannot be a file (empty, "/").
func SysrootName(abs string) (string, error) {
	clean := path.Clean("/" + abs)
	if clean == "/" || strings.ContainsRune(clean, 0) {
		return "", fmt.Errorf("path %q names no file", abs)
	}
	return SysrootDir + clean, nil
}

// IDTime returns the UTC time an id was made for, to the second.
func IDTime(id string) (time.Time, error) {
	if err := ValidID(id); err != nil {
		return time.Time{}, err
	}
	return time.Parse("20060102-150405", id[:15])
}

// StoredName returns the bundle-relative name under which a captured file
// the crasher knew as abs is kept: its SysrootName with bytes that are not
// UTF-8 replaced, so that metadata.json can name it exactly. Materialize
// puts it back at the exact path.
func StoredName(abs string) (string, error) {
	return SysrootName(strings.ToValidUTF8(abs, "_"))
}
