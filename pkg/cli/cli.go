// Package cli wires corecatch's subcommands to the packages that do the work,
// so that cmd/corecatch stays a one-line main. Each command reads the same
// config file, overridden by the global flags.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
)

// Version is set at build time (-ldflags "-X .../pkg/cli.Version=...").
var Version = "dev"

// globals are the flags every command takes.
type globals struct {
	config string
	store  string
	spool  string
	socket string
	cri    string
	node   string
	s3     config.S3
	// kube is set when the binary runs as a kubectl plugin; s3Keys are the
	// store's keys it read from the cluster.
	kube   *kubeFlags
	s3Keys store.S3Options
}

// fromCluster reads the chart's config and the store's keys from the
// cluster kube names.
func (g *globals) fromCluster(ctx context.Context) (*config.Config, error) {
	cs, err := g.kube.clientset()
	if err != nil {
		return nil, err
	}
	cl, err := readClusterStore(ctx, cs, g.kube.namespace)
	if err != nil {
		return nil, err
	}
	g.s3Keys = cl.keys
	return cl.config, nil
}

// load reads the config file, or as a kubectl plugin without --config
// the chart's config in the cluster, and applies the global flags over it.
func (g *globals) load(cmd *cobra.Command) (*config.Config, error) {
	explicit := cmd.Flags().Changed("config")
	var c *config.Config
	var err error
	if g.kube != nil && !explicit {
		c, err = g.fromCluster(cmd.Context())
	} else {
		c, err = config.Load(g.config, explicit)
	}
	if err != nil {
		return nil, err
	}
	if g.store != "" {
		c.Store = g.store
	}
	if g.spool != "" {
		c.Spool = g.spool
	}
	if g.socket != "" {
		c.Socket = g.socket
	}
	if g.cri != "" {
		c.Identity.CRIEndpoint = g.cri
	}
	if g.node != "" {
		c.Node = g.node
	}
	if g.s3.Endpoint != "" {
		c.S3.Endpoint = g.s3.Endpoint
	}
	if g.s3.Region != "" {
		c.S3.Region = g.s3.Region
	}
	if cmd.Flags().Changed("s3-path-style") {
		c.S3.PathStyle = g.s3.PathStyle
	}
	return c, c.Validate()
}

// openStore loads the config and opens its store.
func (g *globals) openStore(cmd *cobra.Command) (*config.Config, store.Store, error) {
	c, err := g.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	o := store.S3OptionsFrom(c)
	o.AccessKeyID, o.SecretAccessKey, o.SessionToken = g.s3Keys.AccessKeyID, g.s3Keys.SecretAccessKey, g.s3Keys.SessionToken
	s, err := store.Open(c.Store, store.Options{S3: o})
	return c, s, err
}

// Main runs the command line argv (argv[0] the program's name) and returns
// the process's exit code. Named kubectl-corecatch, the binary is a kubectl
// plugin: without --config, its store and credentials come from the chart's
// ConfigMap and Secret in the cluster.
func Main(argv []string, stdout, stderr io.Writer) int {
	root, args := newRoot(), argv[1:]
	if filepath.Base(argv[0]) == PluginName {
		k, rest, err := splitKubeFlags(args)
		if err != nil {
			fmt.Fprintf(stderr, "kubectl corecatch: %v\n", err)
			return 1
		}
		root, args = newPluginRoot(&k), rest
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(context.Background()); err != nil {
		// Errors name bundles, files and pods: their bytes are escaped.
		fmt.Fprintf(stderr, "corecatch: %s\n", printableLines(err.Error()))
		var ee exitError
		if errors.As(err, &ee) {
			return int(ee)
		}
		return 1
	}
	return 0
}

// exitError carries a child's exit code (gdb's) through cobra.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func newRoot() *cobra.Command { return newRootWith(&globals{}) }

// newPluginRoot is the command line of `kubectl corecatch`.
func newPluginRoot(k *kubeFlags) *cobra.Command {
	root := newRootWith(&globals{kube: k})
	root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl corecatch"}
	root.Long += `

As a kubectl plugin (this binary installed as kubectl-corecatch), the store's
URL and credentials come from the chart's ConfigMap and Secret, read with
your kubeconfig, unless --config names a file. Before the subcommand:
  --kubeconfig FILE   (default $KUBECONFIG, ~/.kube/config)
  --context NAME      (default the current context)
  -n, --namespace NS  the chart's namespace (default corecatch)
e.g. kubectl corecatch -n corecatch ls; add --s3-endpoint where the
cluster's endpoint is not reachable from here.`
	return root
}

func newRootWith(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "corecatch",
		Short: "Catch every core dump on a node as a self-contained, debuggable bundle",
		Long: `corecatch collects core dumps through kernel.core_pattern into compressed
bundles (core, executable, libraries, metadata) and opens them in gdb.

  sudo corecatch install        make every core dump land in the store
  corecatch ls                  list bundles, newest first
  corecatch bugs                crashes grouped by bug
  corecatch debug ID            open one in gdb`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.config, "config", "c", config.DefaultPath, "config file")
	pf.StringVar(&g.store, "store", "", "bundle store URL (file:///path or s3://bucket/prefix); overrides the config file")
	pf.StringVar(&g.s3.Endpoint, "s3-endpoint", "", "S3 service of an s3:// store (https://host, http://host:port); overrides s3.endpoint")
	pf.StringVar(&g.s3.Region, "s3-region", "", "region of an s3:// store's bucket; overrides s3.region")
	pf.BoolVar(&g.s3.PathStyle, "s3-path-style", false, "address the bucket in the path, not the host name (MinIO, versitygw, Ceph; not OBS); overrides s3.path_style")
	pf.StringVar(&g.spool, "spool", "", "node-local state directory; overrides the config file")
	pf.StringVar(&g.socket, "socket", "", "agent socket path; overrides the config file")
	pf.StringVar(&g.cri, "cri-endpoint", "", "container runtime's CRI socket (unix:///path); overrides identity.cri_endpoint")
	pf.StringVar(&g.node, "node", "", "this node's name in metadata (a pod's host name is not the node's: a DaemonSet passes spec.nodeName); overrides node")
	root.AddCommand(
		newCollect(g), newInstall(g), newUninstall(g), newAgent(g),
		newLs(g), newBugs(g), newShow(g), newPull(g), newDebug(g), newDebuginfod(g), newUpload(g),
		newTrace(g), newConfigCmd(g), newFeishuBridge(g), newVersion(),
	)
	return root
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "corecatch %s\n", Version)
			return nil
		},
	}
}

func newConfigCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Work with the config file"}
	c.AddCommand(&cobra.Command{
		Use:   "example",
		Short: "Print a fully commented example config with every default",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := io.WriteString(cmd.OutOrStdout(), config.Example)
			return err
		},
	}, &cobra.Command{
		Use:   "show",
		Short: "Print the effective config (file plus flags)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load(cmd)
			if err != nil {
				return err
			}
			data, err := c.Marshal()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	})
	return c
}

// mustRoot refuses clearly when a command needs root.
func mustRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root: run it with sudo", what)
	}
	return nil
}
