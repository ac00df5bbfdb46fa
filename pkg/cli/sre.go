package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

func newLs(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List bundles, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			list, listErr := st.List(cmd.Context())
			if list == nil {
				list = []*bundle.Metadata{}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(list); err != nil {
					return err
				}
				return listErr
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tNODE\tNAMESPACE\tPOD\tCONTAINER\tEXE\tSIGNAL\tSIZE\tID")
			for _, m := range list {
				size := bundle.HumanBytes(m.Core.StoredBytes)
				if m.Core.Truncated {
					size += " (truncated: " + m.Core.TruncateReason + ")"
				}
				ns, pod, ctr := "-", "-", "-"
				if m.Pod != nil {
					ns, pod = orDash(m.Pod.Namespace), orDash(m.Pod.Name)
				}
				if m.Container != nil {
					ctr = orDash(m.Container.Name)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Time.Local().Format("2006-01-02 15:04:05"),
					m.Node, ns, pod, ctr, displayExe(m), m.SignalName, size, m.ID)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return listErr
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of metadata objects")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// displayExe renders a bundle's executable on one line, whatever bytes its
// name holds.
func displayExe(m *bundle.Metadata) string {
	exe := m.Exe
	if exe == "" {
		exe = m.Comm
	}
	return strings.Trim(strconv.Quote(exe), `"`)
}

func newShow(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Print one bundle's metadata",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			m, err := st.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				data, err := bundle.Encode(m)
				if err != nil {
					return err
				}
				_, err = out.Write(data)
				return err
			}
			printShow(out, m)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print metadata.json")
	return cmd
}

func printShow(w io.Writer, m *bundle.Metadata) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("id", m.ID)
	row("time", m.Time.Format("2006-01-02T15:04:05Z07:00"))
	row("node", m.Node)
	row("exe", displayExe(m))
	row("comm", strings.Trim(strconv.Quote(m.Comm), `"`))
	row("cmdline", strings.Trim(strconv.Quote(strings.Join(m.Cmdline, " ")), `"`))
	row("pid", fmt.Sprintf("%d (in its namespace: %d), thread %d", m.PID, m.NSPID, m.TID))
	row("uid/gid", fmt.Sprintf("%d/%d", m.UID, m.GID))
	row("signal", fmt.Sprintf("%s (%d)", m.SignalName, m.Signal))
	row("cgroup", m.Cgroup)
	if m.Pod != nil {
		row("pod", fmt.Sprintf("%s/%s (uid %s)", m.Pod.Namespace, m.Pod.Name, m.Pod.UID))
	}
	if m.Container != nil {
		row("container", fmt.Sprintf("%s %s (%s, %s)", m.Container.Name, m.Container.Image, m.Container.Runtime, m.Container.ID))
	}
	if m.Workload != nil {
		row("workload", m.Workload.Kind+"/"+m.Workload.Name)
	}
	if m.IdentitySource != "" {
		row("identity", strings.TrimSpace(m.IdentitySource+" "+m.IdentityReason))
	}
	if e := m.EBPF; e != nil {
		ev := fmt.Sprintf("si_code %d, fault address %s", e.SiCode, e.FaultAddr)
		if e.SiCode <= 0 {
			ev = fmt.Sprintf("si_code %d, sent by pid %d", e.SiCode, e.SenderPID)
		}
		row("ebpf", fmt.Sprintf("%s; helper started %.1f ms after the signal", ev, e.LatencyMS))
	}
	if f := m.Freeze; f != nil {
		if f.Frozen {
			row("freeze", fmt.Sprintf("froze %s %.1f ms after the signal, for %.0f ms", f.Cgroup, f.LatencyMS, f.DurationMS))
		} else {
			row("freeze", "not frozen: "+f.Reason)
		}
	}
	c := m.Core
	core := fmt.Sprintf("%s raw, %s stored (%s)", bundle.HumanBytes(c.RawBytes), bundle.HumanBytes(c.StoredBytes), c.Compression)
	if c.Truncated {
		core += fmt.Sprintf(", TRUNCATED (%s): kept %d of %d bytes", c.TruncateReason, c.KeptBytes, max(c.ExpectedBytes, c.RawBytes))
	}
	row("core", core)
	fmt.Fprintf(tw, "files:\t%d\n", len(m.Files))
	tw.Flush()
	for _, f := range m.Files {
		note := f.BuildID
		if f.Skipped != "" {
			note = "not captured: " + f.Skipped
		}
		fmt.Fprintf(w, "  %-6s %s %s %s\n", f.Role, strings.Trim(strconv.Quote(f.Path), `"`), bundle.HumanBytes(f.Size), note)
	}
	for _, warning := range m.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	fmt.Fprintf(w, "\ndebug it: corecatch debug %s\n", m.ID)
}

// pull materializes a bundle into dir.
func pull(cmd *cobra.Command, st store.Store, id, dir string) (*bundle.Metadata, error) {
	return store.Pull(cmd.Context(), st, id, dir)
}

func newPull(g *globals) *cobra.Command {
	var out string
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
			m, err := pull(cmd, st, args[0], out)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pulled %s into %s\n", m.ID, out)
			if exe := m.ExePath(); exe != "" {
				fmt.Fprintf(w, "gdb -iex 'set sysroot %s' %s %s\n",
					filepath.Join(out, bundle.SysrootDir), filepath.Join(out, exe), filepath.Join(out, "core"))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "directory to write into (default: ./ID)")
	return cmd
}

func newDebug(g *globals) *cobra.Command {
	var cache string
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
			m, err := cachedPull(cmd, st, id, dir)
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
	return cmd
}

// cachedPull reuses a complete earlier pull, which it marks with a
// .complete file once everything is written.
func cachedPull(cmd *cobra.Command, st store.Store, id, dir string) (*bundle.Metadata, error) {
	done := filepath.Join(dir, ".complete")
	if _, err := os.Stat(done); err == nil {
		data, err := os.ReadFile(filepath.Join(dir, bundle.MetadataFile))
		if err == nil {
			return bundle.Decode(data)
		}
	}
	os.RemoveAll(dir)
	m, err := pull(cmd, st, id, dir)
	if err != nil {
		return nil, err
	}
	return m, os.WriteFile(done, nil, 0o644)
}
