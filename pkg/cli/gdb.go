package cli

// gdbGuard returns the gdb options that keep a bundle from running code on
// the SRE's machine. Everything in a bundle's sysroot is a file the crashed
// container mapped: a `<exe>-gdb.py` beside its executable, or a
// .debug_gdb_scripts section in it, is a script gdb would auto-load and run
// with the SRE's rights (as soon as a gdbinit widened auto-load's
// safe-path), and debuginfod would fetch more of the container's choosing
// by build-id. So gdb starts with -nx (no gdbinit files), auto-load off
// and debuginfod off. gdbinit (--gdbinit) reads the user's init files
// again; the -iex settings still run after them (gdb executes -iex after
// the home gdbinit), so a gdbinit cannot turn auto-load back on. trust
// (--trust-bundle) drops the auto-load and debuginfod settings, for
// bundles of the SRE's own programs.
func gdbGuard(gdbinit, trust bool) []string {
	var args []string
	if !gdbinit {
		args = append(args, "-nx")
	}
	if !trust {
		args = append(args, "-iex", "set auto-load off", "-iex", "set debuginfod enabled off")
	}
	return args
}
