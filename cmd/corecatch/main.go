// Command corecatch is one binary for every role: the node agent, the
// core_pattern pipe helper the kernel runs, and the SRE's commands.
package main

import (
	"os"

	"github.com/corecatch/corecatch/pkg/cli"
)

func main() { os.Exit(cli.Main(os.Args, os.Stdout, os.Stderr)) }
