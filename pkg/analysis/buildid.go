package analysis

import (
	"encoding/hex"
	"io"
)

// BuildID returns the hex GNU build-id of an ELF file, or "" when it has
// none or is not ELF: what ties a captured file, a frame and a signature to
// the exact build, whatever the file is called. A file read before (by
// its identity) is not read again.
func BuildID(r io.ReaderAt) string {
	h, _, _, err := readHeader(r)
	if err != nil {
		return ""
	}
	return h.buildID
}

// buildID searches the note segments, then the note sections (Go linkers
// put .note.gnu.build-id outside the PT_NOTE segment).
func (f *elfFile) buildID() string {
	for _, n := range f.notes {
		if id := noteBuildID(io.NewSectionReader(f.r, int64(n.off), int64(n.size)), f.bo, n.align); id != "" {
			return id
		}
	}
	return ""
}

// noteBuildID scans one PT_NOTE segment for NT_GNU_BUILD_ID.
func noteBuildID(r io.Reader, bo interface{ Uint32([]byte) uint32 }, align uint64) string {
	data, err := io.ReadAll(io.LimitReader(r, 1<<16))
	if err != nil {
		return ""
	}
	pad := func(n uint32) int {
		if align == 8 {
			return int((n + 7) &^ 7)
		}
		return int((n + 3) &^ 3)
	}
	for len(data) >= 12 {
		namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		data = data[12:]
		nl, dl := pad(namesz), pad(descsz)
		if nl > len(data) || int(namesz) > len(data) {
			return ""
		}
		name := data[:namesz]
		data = data[nl:]
		if dl > len(data) || int(descsz) > len(data) {
			return ""
		}
		if typ == 3 && string(name) == "GNU\x00" { // NT_GNU_BUILD_ID
			return hex.EncodeToString(data[:descsz])
		}
		data = data[dl:]
	}
	return ""
}
