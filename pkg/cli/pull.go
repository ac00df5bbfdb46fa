package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// pullFlags are what pull and debug share about the download.
type pullFlags struct {
	workers int
}

func (p *pullFlags) add(cmd *cobra.Command) {
	cmd.Flags().IntVar(&p.workers, "parallel", store.DefaultPullWorkers, "ranged reads of the core at once, from an S3 store")
}

// pull materializes a bundle into dir, with a progress bar on stderr when
// both stdout and stderr are terminals. From an S3 store the core comes in
// parallel ranges and a pull interrupted earlier into dir continues.
func pull(cmd *cobra.Command, st store.Store, id, dir string, f pullFlags) (*bundle.Metadata, error) {
	o := store.PullOptions{Workers: f.workers}
	var bar *pullBar
	if isTerminal(cmd.OutOrStdout()) && isTerminal(cmd.ErrOrStderr()) {
		bar = &pullBar{w: cmd.ErrOrStderr(), what: id}
		o.Progress = bar
	}
	m, err := store.PullWith(cmd.Context(), st, id, dir, o)
	bar.end(err)
	return m, err
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// pullBar draws a pull's progress with github.com/schollz/progressbar:
// bytes, rate and time left, redrawn at most ten times a second.
type pullBar struct {
	w    io.Writer
	what string
	bar  *progressbar.ProgressBar
}

// Start implements store.Progress.
func (b *pullBar) Start(total, done int64) {
	desc := "pull " + b.what
	if done > 0 {
		desc += fmt.Sprintf(" (continued, %s kept)", bundle.HumanBytes(done))
	}
	b.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(b.w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionFullWidth(),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionUseIECUnits(true))
	b.bar.Set64(done)
}

// Add implements store.Progress.
func (b *pullBar) Add(n int64) { b.bar.Add64(n) }

// end completes the bar of a whole pull and ends its line either way, so
// that what follows starts on a line of its own.
func (b *pullBar) end(err error) {
	if b == nil || b.bar == nil {
		return
	}
	if err == nil {
		b.bar.Finish()
	}
	fmt.Fprintln(b.w)
}
