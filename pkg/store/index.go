package store

// The S3 store's index: what lets `corecatch ls` and `corecatch bugs`
// answer for a bucket that a thousand nodes share, with a handful of
// requests instead of one GET per bundle. docs/s3.md describes it for
// operators; in short:
//
//   - Every write of a bundle's metadata.json (Upload, Commit, Update,
//     Delete's tombstone) is followed by one small immutable entry,
//     <prefix>/.index/e/<hour>/<entry>, where hour is the writer's clock
//     (UTC, YYYYMMDDHH) and the key itself encodes the bundle's Summary, so
//     that a LIST of an hour answers without a GET. The entry is written
//     last: a writer that dies before it leaves a bundle without an entry,
//     which readers find through the fallback below (and the uploader,
//     which keeps the bundle in its outbox until Upload returned, writes
//     it on its next attempt).
//   - Once an hour has ended and settled (indexSettle), any agent may fold
//     its entries into one segment, <prefix>/.index/s/<hour>.zst, created
//     with If-None-Match: * so that of many agents compacting at once one
//     wins and the others change nothing. Entries are never rewritten; a
//     newer version of a bundle's entry (an Update, a tombstone) lands in
//     a later hour, and readers keep the newest version of each bundle.
//   - A reader lists the segments and the entry hours (two LISTs by
//     prefix), GETs the segments, LISTs the entries of the hours without
//     one, and then looks for bundles of the newest fallbackWindow that
//     have no entry (a LIST of their ids by time prefix, and a GET of each
//     such bundle's metadata.json): a lagging or missing entry costs
//     requests, never a bundle. `ls --scan` reads every bundle instead.
//
// Hours are write times, not crash times: a bundle a node uploads days
// after its crash (after an outage) is indexed in the hour it arrived, so
// a settled hour never gains entries and --since still prunes (a write is
// never older than its crash).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
)

const (
	indexDir   = ".index/"
	entryDir   = indexDir + "e/"
	segmentDir = indexDir + "s/"
	segmentExt = ".zst"
	hourLayout = "2006010215"
	// indexSettle is how long after an hour ends its entries are folded
	// into a segment: writers whose clocks run behind, or whose write
	// stalled, still land in it before.
	indexSettle = time.Hour
	// fallbackWindow is how far back readers look for bundles without an
	// entry: the writes in flight, and the writers that died between the
	// metadata and the entry.
	fallbackWindow = 2 * time.Hour
	// maxSegmentBytes bounds what a reader takes of one segment, packed
	// or unpacked (about 200,000 crashes in one hour).
	maxSegmentBytes = 64 << 20
	// indexWorkers bounds the index requests of one reader in flight.
	indexWorkers = 16
	// entryFields is how many fields an entry encodes.
	entryFields = 18
)

// entry is one version of a bundle's summary in the index.
type entry struct {
	Summary
	// Version is the writer's clock in ns when it wrote the entry: a
	// reader keeps the newest version of each bundle.
	Version int64
	// Deleted marks a tombstone: the bundle was deleted.
	Deleted bool
	// more is set on an entry decoded from a key whose fields did not
	// fit: its body holds them.
	more bool
}

// escapeField percent-encodes every byte but [A-Za-z0-9._-], so that a
// field holds no '~' (the separator), no '/' and nothing a service could
// mangle in a key.
func escapeField(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
}

// unescapeField reverses escapeField.
func unescapeField(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		b = append(b, byte(v))
		i += 2
	}
	return string(b), nil
}

// encode renders an entry as one line of '~'-separated, escaped fields:
// the name of its object under an hour, and a line of a segment.
func (e *entry) encode() string {
	flags := ""
	if e.Deleted {
		flags += "d"
	}
	if e.Truncated {
		flags += "t"
	}
	if e.more {
		flags += "+"
	}
	ms := ""
	if !e.Time.IsZero() {
		ms = strconv.FormatInt(e.Time.UnixMilli(), 36)
	}
	fields := []string{e.ID, strconv.FormatInt(e.Version, 36), flags}
	if !e.more && !e.Deleted {
		fields = append(fields, ms, strconv.Itoa(e.Signal), e.SignalName, e.Signature, strconv.FormatInt(e.StoredBytes, 36),
			e.TruncateReason, e.DedupOf, e.Node, e.Namespace, e.Pod, e.Container, e.WorkloadKind, e.Workload, e.Exe, e.Title)
	}
	var b strings.Builder
	for i, f := range fields {
		if i > 0 {
			b.WriteByte('~')
		}
		escapeField(&b, f)
	}
	return b.String()
}

// decodeEntry parses a line encode wrote. Whoever can write to the bucket
// can write entries: a line is checked, never trusted to be well formed.
func decodeEntry(line string) (entry, error) {
	var f [entryFields]string
	n := 0
	for rest := line; n < entryFields; n++ {
		i := strings.IndexByte(rest, '~')
		if i < 0 {
			f[n] = rest
			n++
			break
		}
		f[n], rest = rest[:i], rest[i+1:]
	}
	if n < 3 {
		return entry{}, fmt.Errorf("index entry %q: too few fields", line)
	}
	for i := range n {
		v, err := unescapeField(f[i])
		if err != nil {
			return entry{}, fmt.Errorf("index entry: %w", err)
		}
		f[i] = v
	}
	var e entry
	var err error
	e.ID = f[0]
	if err := bundle.ValidID(e.ID); err != nil {
		return entry{}, fmt.Errorf("index entry: %w", err)
	}
	if e.Version, err = strconv.ParseInt(f[1], 36, 64); err != nil {
		return entry{}, fmt.Errorf("index entry of %s: version %q", e.ID, f[1])
	}
	e.Deleted, e.Truncated, e.more = strings.Contains(f[2], "d"), strings.Contains(f[2], "t"), strings.Contains(f[2], "+")
	if e.more || e.Deleted {
		return e, nil
	}
	if f[3] != "" {
		ms, err := strconv.ParseInt(f[3], 36, 64)
		if err != nil {
			return entry{}, fmt.Errorf("index entry of %s: time %q", e.ID, f[3])
		}
		e.Time = time.UnixMilli(ms).UTC()
	}
	e.Signal, _ = strconv.Atoi(f[4])
	e.StoredBytes, _ = strconv.ParseInt(f[7], 36, 64)
	e.SignalName, e.Signature, e.TruncateReason, e.DedupOf = f[5], f[6], f[8], f[9]
	e.Node, e.Namespace, e.Pod, e.Container, e.WorkloadKind, e.Workload, e.Exe, e.Title = f[10], f[11], f[12], f[13], f[14], f[15], f[16], f[17]
	return e, nil
}

// hourOf is the index hour of a time.
func hourOf(t time.Time) string { return t.UTC().Format(hourLayout) }

// entryKey is where an entry written in hour lives; an entry whose
// fields make the key longer than maxKeyBytes keeps only its id, version
// and flags in the key, and the rest in its body.
func (s *S3) entryKey(hour string, e entry) string {
	key := s.root() + entryDir + hour + "/" + e.encode()
	if len(key) <= maxKeyBytes {
		return key
	}
	short := entry{Summary: Summary{ID: e.ID}, Version: e.Version, Deleted: e.Deleted, more: true}
	return s.root() + entryDir + hour + "/" + short.encode()
}

func (s *S3) segmentKey(hour string) string { return s.root() + segmentDir + hour + segmentExt }

// Index records a bundle's metadata in the index as written at at.
// Upload, Commit and Update call it with the current time after writing
// metadata.json; tools that index bundles written before the index
// existed pass the bundle's own time.
func (s *S3) Index(ctx context.Context, m *bundle.Metadata, at time.Time) error {
	return s.putEntry(ctx, entry{Summary: SummaryOf(m), Version: at.UnixNano()}, at)
}

// putEntry writes one entry in the hour of at. When that hour has ended
// and already has a segment (the write came too late to be folded in), it
// is written again in the current hour, which no segment holds yet.
func (s *S3) putEntry(ctx context.Context, e entry, at time.Time) error {
	for {
		hour := hourOf(at)
		body := e.encode()
		key := s.entryKey(hour, e)
		if _, err := s.client.PutObject(ctx, s.bucket, key, strings.NewReader(body), int64(len(body)),
			minio.PutObjectOptions{ContentType: "text/plain", DisableMultipart: true}); err != nil {
			return s.wrap("index bundle "+e.ID, err)
		}
		now := time.Now()
		if hour == hourOf(now) {
			return nil
		}
		if _, err := s.client.StatObject(ctx, s.bucket, s.segmentKey(hour), minio.StatObjectOptions{}); err != nil {
			if notFound(err) {
				return nil
			}
			return s.wrap("index bundle "+e.ID, err)
		}
		at = now
	}
}

// indexHours lists the hours of one part of the index that hold
// something: the entry hours (as prefixes) or the segments.
func (s *S3) indexHours(ctx context.Context, dir string) ([]string, error) {
	var hours []string
	base := s.root() + dir
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: base}) {
		if o.Err != nil {
			return nil, s.wrap("list the index", o.Err)
		}
		h := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(o.Key, base), "/"), segmentExt)
		if _, err := time.Parse(hourLayout, h); err == nil {
			hours = append(hours, h)
		}
	}
	return hours, nil
}

// hourEntries reads the entries written in one hour: a LIST, and a GET
// only of those whose fields did not fit in their key.
func (s *S3) hourEntries(ctx context.Context, hour string) ([]entry, []error, error) {
	var out []entry
	var bad []error
	base := s.root() + entryDir + hour + "/"
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: base, Recursive: true}) {
		if o.Err != nil {
			return nil, nil, s.wrap("list the index", o.Err)
		}
		e, err := decodeEntry(strings.TrimPrefix(o.Key, base))
		if err == nil && e.more {
			e, err = s.entryBody(ctx, o.Key)
		}
		if err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", o.Key, err))
			continue
		}
		out = append(out, e)
	}
	return out, bad, nil
}

// entryBody reads an entry's fields from its body.
func (s *S3) entryBody(ctx context.Context, key string) (entry, error) {
	r, _, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return entry{}, s.wrap("read "+key, err)
	}
	defer r.Close()
	line, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return entry{}, s.wrap("read "+key, err)
	}
	return decodeEntry(string(line))
}

// readSegment reads one hour's segment.
func (s *S3) readSegment(ctx context.Context, hour string) ([]entry, []error, error) {
	key := s.segmentKey(hour)
	r, _, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, nil, s.wrap("read "+key, err)
	}
	defer r.Close()
	packed, err := io.ReadAll(io.LimitReader(r, maxSegmentBytes+1))
	if err != nil {
		return nil, nil, s.wrap("read "+key, err)
	}
	if len(packed) > maxSegmentBytes {
		return nil, nil, fmt.Errorf("index segment %s is larger than %s", key, bundle.HumanBytes(maxSegmentBytes))
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxSegmentBytes))
	if err != nil {
		return nil, nil, err
	}
	defer dec.Close()
	data, err := dec.DecodeAll(packed, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("index segment %s: %w", key, err)
	}
	var out []entry
	var bad []error
	for line := range strings.SplitSeq(string(data), "\n") {
		if line == "" {
			continue
		}
		e, err := decodeEntry(line)
		if err == nil && e.more {
			err = errors.New("an entry without its fields")
		}
		if err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", key, err))
			continue
		}
		out = append(out, e)
	}
	return out, bad, nil
}

// newest keeps the newest version of each bundle's entry.
func newest(into map[string]*entry, list []entry) {
	for i := range list {
		e := &list[i]
		if old, ok := into[e.ID]; !ok || e.Version > old.Version {
			into[e.ID] = e
		}
	}
}

// CompactIndex folds the entries of every hour that ended at least
// indexSettle before now, and has no segment yet, into its segment. Any
// number of agents may run it at once: the segment is created with
// If-None-Match, so the first one made stays and the others' are refused.
// It returns how many segments this call wrote.
func (s *S3) CompactIndex(ctx context.Context, now time.Time) (int, error) {
	segs, err := s.indexHours(ctx, segmentDir)
	if err != nil {
		return 0, err
	}
	hours, err := s.indexHours(ctx, entryDir)
	if err != nil {
		return 0, err
	}
	var todo []string
	for _, h := range hours {
		t, _ := time.Parse(hourLayout, h)
		if !slices.Contains(segs, h) && !now.Before(t.Add(time.Hour+indexSettle)) {
			todo = append(todo, h)
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	defer enc.Close()
	var mu sync.Mutex
	var errs []error
	written := 0
	parallel(len(todo), indexWorkers, func(i int) {
		h := todo[i]
		won, err := s.compactHour(ctx, h, enc)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		} else if won {
			written++
		}
	})
	return written, errors.Join(errs...)
}

// compactHour writes one hour's segment, unless another agent did first
// (won false).
func (s *S3) compactHour(ctx context.Context, hour string, enc *zstd.Encoder) (won bool, err error) {
	list, _, err := s.hourEntries(ctx, hour)
	if err != nil {
		return false, err
	}
	latest := map[string]*entry{}
	newest(latest, list)
	lines := make([]string, 0, len(latest))
	for _, e := range latest {
		lines = append(lines, e.encode())
	}
	slices.Sort(lines)
	data := enc.EncodeAll([]byte(strings.Join(lines, "\n")+"\n"), nil)
	opts := minio.PutObjectOptions{ContentType: "application/zstd", DisableMultipart: true}
	opts.SetMatchETagExcept("*")
	key := s.segmentKey(hour)
	if _, err := s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)), opts); err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
			return false, nil
		}
		return false, s.wrap("write index segment "+key, err)
	}
	return true, nil
}

// Summaries answers a listing from the index: the segments and entries
// of the hours that may hold a match (any, or those since f.Since), then
// the bundles of the newest fallbackWindow that have no entry, read
// themselves. Newest first.
func (s *S3) Summaries(ctx context.Context, f Filter) ([]Summary, error) {
	now := time.Now()
	from := ""
	if !f.Since.IsZero() {
		from = hourOf(f.Since)
	}
	segs, err := s.indexHours(ctx, segmentDir)
	if err != nil {
		return nil, err
	}
	hours, err := s.indexHours(ctx, entryDir)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 && len(hours) == 0 {
		// No index at all: bundles written before it existed, if any,
		// are found only by reading them.
		return scanSummaries(ctx, s, f)
	}
	var mu sync.Mutex
	latest := map[string]*entry{}
	var bad []error
	var fatal []error
	add := func(list []entry, warn []error, err error) {
		mu.Lock()
		defer mu.Unlock()
		newest(latest, list)
		bad = append(bad, warn...)
		if err != nil {
			fatal = append(fatal, err)
		}
	}
	// Segments first; an hour whose segment cannot be read is read from
	// its entries instead.
	var segHours []string
	for _, h := range segs {
		if h >= from {
			segHours = append(segHours, h)
		}
	}
	done := map[string]bool{}
	parallel(len(segHours), indexWorkers, func(i int) {
		h := segHours[i]
		list, warn, err := s.readSegment(ctx, h)
		if err != nil {
			warn, err = append(warn, err), nil
		}
		add(list, warn, nil)
		if list != nil {
			mu.Lock()
			done[h] = true
			mu.Unlock()
		}
	})
	var entryHours []string
	for _, h := range hours {
		if h >= from && !done[h] {
			entryHours = append(entryHours, h)
		}
	}
	parallel(len(entryHours), indexWorkers, func(i int) { add(s.hourEntries(ctx, entryHours[i])) })
	if len(fatal) > 0 {
		return nil, errors.Join(fatal...)
	}
	fallback, err := s.unindexed(ctx, f, now, latest)
	if err != nil {
		return nil, err
	}
	list, err := collect(ctx, fallback, listWorkers, s.Get)
	var skipped Skipped
	if errors.As(err, &skipped) {
		bad = append(bad, skipped...)
	} else if err != nil {
		return nil, err
	}
	match := make([]*Summary, 0, len(latest)+len(list))
	for _, e := range latest {
		if !e.Deleted && f.Match(&e.Summary) {
			match = append(match, &e.Summary)
		}
	}
	for _, m := range list {
		if sum := SummaryOf(m); f.Match(&sum) {
			match = append(match, &sum)
		}
	}
	// Ids begin with the crash time: newest first, as List sorts.
	slices.SortFunc(match, func(a, b *Summary) int { return strings.Compare(b.ID, a.ID) })
	out := make([]Summary, len(match))
	for i, m := range match {
		out[i] = *m
	}
	if len(bad) > 0 {
		return out, Skipped(bad)
	}
	return out, nil
}

// unindexed returns the bundles of the newest fallbackWindow (within f's
// times) that the index does not know: listed by the time prefix of
// their ids, one LIST per hour.
func (s *S3) unindexed(ctx context.Context, f Filter, now time.Time, known map[string]*entry) ([]string, error) {
	start := now.Add(-fallbackWindow)
	if f.Since.After(start) {
		start = f.Since
	}
	end := now.Add(time.Minute)
	if !f.Until.IsZero() && f.Until.Before(end) {
		end = f.Until
	}
	var prefixes []string
	for t := start.UTC().Truncate(time.Hour); t.Before(end); t = t.Add(time.Hour) {
		prefixes = append(prefixes, s.root()+t.Format("20060102-15"))
	}
	var mu sync.Mutex
	var ids []string
	var errs []error
	parallel(len(prefixes), indexWorkers, func(i int) {
		p := prefixes[i]
		for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: p}) {
			mu.Lock()
			if o.Err != nil {
				errs = append(errs, s.wrap("list bundles", o.Err))
				mu.Unlock()
				return
			}
			id := strings.TrimSuffix(strings.TrimPrefix(o.Key, s.root()), "/")
			if _, ok := known[id]; !ok && bundle.ValidID(id) == nil {
				ids = append(ids, id)
			}
			mu.Unlock()
		}
	})
	return ids, errors.Join(errs...)
}

// removeIndex deletes the segments and entries of the hours before
// cutoff's.
func (s *S3) removeIndex(ctx context.Context, cutoff time.Time) error {
	last := hourOf(cutoff)
	var errs []error
	for _, dir := range []string{segmentDir, entryDir} {
		hours, err := s.indexHours(ctx, dir)
		if err != nil {
			return err
		}
		for _, h := range hours {
			if h >= last {
				continue
			}
			prefix := s.segmentKey(h)
			if dir == entryDir {
				prefix = s.root() + entryDir + h + "/"
			}
			objs := s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true})
			for e := range s.client.RemoveObjects(ctx, s.bucket, objs, minio.RemoveObjectsOptions{}) {
				if !notFound(e.Err) {
					errs = append(errs, s.wrap("delete "+e.ObjectName, e.Err))
				}
			}
		}
	}
	return errors.Join(errs...)
}
