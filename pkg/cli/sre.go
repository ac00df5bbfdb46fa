package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

func newPull(g *globals) *cobra.Command {
	var out string
	var pf pullFlags
	cmd := &cobra.Command{
		Use:   "pull ID --out DIR",
		Short: "Write a bundle out: DIR/core, DIR/metadata.json, DIR/sysroot/",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			if out == "" {
				out = args[0]
			}
			m, err := pull(cmd, st, args[0], out, pf)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pulled %s into %s\n", m.ID, out)
			if exe := m.ExePath(); exe != "" {
				fmt.Fprintln(w, shellQuote("gdb", "-iex", "set sysroot "+filepath.Join(out, bundle.SysrootDir),
					filepath.Join(out, exe), filepath.Join(out, "core")))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "directory to write into (default: ./ID); an interrupted pull into it continues")
	pf.add(cmd)
	return cmd
}

func newDebug(g *globals) *cobra.Command {
	var cache string
	var pf pullFlags
	var gdbinit, trust bool
	cmd := &cobra.Command{
		Use:   "debug ID [-- GDB-ARGS...]",
		Short: "Open a bundle in gdb with its executable, libraries and core",
		Long: `debug pulls the bundle into a cache directory (once) and runs gdb with
'set sysroot' pointing at the bundle's libraries, the executable and the core.
Arguments after -- go to gdb, e.g. corecatch debug ID -- -batch -ex bt

Every file of a bundle comes from the crashed container, so gdb runs with
-nx (no gdbinit files), 'set auto-load off' (no <exe>-gdb.py beside a file,
no .debug_gdb_scripts section is run) and 'set debuginfod enabled off'.
--gdbinit reads your gdbinit files again (auto-load stays off: it is set
after them); --trust-bundle lets gdb auto-load the bundle's scripts and use
debuginfod, for bundles of programs you trust.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			id := args[0]
			if err := bundle.ValidID(id); err != nil {
				return err
			}
			if cache == "" {
				base, err := os.UserCacheDir()
				if err != nil {
					return fmt.Errorf("no cache directory (%w): pass --cache", err)
				}
				cache = filepath.Join(base, "corecatch")
			}
			dir := filepath.Join(cache, id)
			m, err := cachedPull(cmd, st, id, dir, pf)
			if err != nil {
				return err
			}
			gdb, err := exec.LookPath("gdb")
			if err != nil {
				return fmt.Errorf("gdb is not installed (apt-get install gdb); the bundle is in %s", dir)
			}
			gargs := append(gdbGuard(gdbinit, trust), "-q", "-iex", "set sysroot "+filepath.Join(dir, bundle.SysrootDir))
			gargs = append(gargs, args[1:]...)
			if exe := m.ExePath(); exe != "" {
				gargs = append(gargs, filepath.Join(dir, exe))
			}
			if m.Core.StoredBytes > 0 {
				gargs = append(gargs, filepath.Join(dir, "core"))
			}
			c := exec.CommandContext(cmd.Context(), gdb, gargs...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return exitError(ee.ExitCode())
				}
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cache, "cache", "", "cache directory (default: $XDG_CACHE_HOME/corecatch)")
	cmd.Flags().BoolVar(&gdbinit, "gdbinit", false, "read your gdbinit files (gdb runs with -nx otherwise); auto-load and debuginfod stay off")
	cmd.Flags().BoolVar(&trust, "trust-bundle", false, "let gdb auto-load scripts the bundle carries (<file>-gdb.py, .debug_gdb_scripts) and use debuginfod: only for bundles of programs you trust")
	pf.add(cmd)
	return cmd
}

// cachedPull reuses a complete earlier pull, which it marks with a
// .complete file once everything is written, and continues an interrupted
// one.
func cachedPull(cmd *cobra.Command, st store.Store, id, dir string, pf pullFlags) (*bundle.Metadata, error) {
	done := filepath.Join(dir, ".complete")
	if _, err := os.Stat(done); err == nil {
		data, err := os.ReadFile(filepath.Join(dir, bundle.MetadataFile))
		if err == nil {
			return bundle.Decode(data)
		}
	}
	m, err := pull(cmd, st, id, dir, pf)
	if err != nil {
		return nil, err
	}
	return m, os.WriteFile(done, nil, 0o644)
}
