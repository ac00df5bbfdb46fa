// Package spool owns the node-local state directory (config `spool`): every
// file the kernel-run helper, the agent, install and uninstall leave there
// for each other is named here and nowhere else, so that the layout is one
// contract, kept byte-compatible across versions: an upgraded agent reads
// what an older helper or agent left.
//
// The layout, under the spool's root:
//
//	collect.yaml          install's snapshot of the effective config, which the
//	                      kernel-run helper reads (the pattern has no room for flags)
//	sysctl-saved.json     the sysctls install replaced (pkg/sysctl's Saved)
//	reports/<id>.json     a bundle's metadata a helper published while the agent's
//	                      socket did not answer; the agent takes it at its next start
//	missing/<pid>.gob     a crash the agent saw and whose bundle it still waits for
//	outbox/               bundles waiting for upload to S3 (a store.File)
//	dedup/<hash>          one bug's dedup window (flock-ed, pkg/collector)
//	dedup/cluster         the agent's word that dedup may span the cluster
//	rate                  the node's whole cores of the last minute (flock-ed)
//	slots/<n>             collection slots (flock-ed while a core is collected)
//	identity/<id>.json    containers' identities from the CRI (identity.Cache)
//	notify/feishu-<name>/ a Feishu bot's queue of notifications
//	notify/alertmanager/  Alertmanager's queue
//	frozen/               the cgroups the agent froze, to thaw after a crash of it
//	analysis/             gdb's work copies of bundles (removed at the agent's start)
//
// The spool is root's alone: every directory is created 0700 and every file
// 0600, by the code here or by the package that fills the area (store.File,
// the freezer, notify's queues, identity.Cache, analysis's sandbox), each
// on first use, because a node may wipe the spool at any time.
package spool

import "path/filepath"

// Spool is the state directory at one path. Opening it touches nothing on
// disk: an SRE's command that never writes there must not create it.
type Spool struct{ root string }

// Open returns the spool at root, the config's absolute `spool` path.
func Open(root string) Spool { return Spool{root: root} }

// String is the spool's own directory, for messages.
func (s Spool) String() string { return s.root }

const (
	// dirMode and fileMode keep the spool root's: it holds crash metadata,
	// freeze state and the helper's config.
	dirMode  = 0o700
	fileMode = 0o600
)

// HelperConfig is install's snapshot of the config, the file the installed
// core_pattern names for the helper ("-c").
func (s Spool) HelperConfig() string { return filepath.Join(s.root, "collect.yaml") }

// SysctlState is where install saves the sysctls it replaced, for
// uninstall or a stopping agent to write back.
func (s Spool) SysctlState() string { return filepath.Join(s.root, "sysctl-saved.json") }

// Outbox is the local store bundles wait in for upload to an S3 store.
func (s Spool) Outbox() string { return filepath.Join(s.root, "outbox") }

// Identity is the directory of the identity cache, shared by the helpers
// of a crash storm and the agent.
func (s Spool) Identity() string { return filepath.Join(s.root, "identity") }

// FeishuQueue is the notification queue of the Feishu bot name.
func (s Spool) FeishuQueue(name string) string {
	return filepath.Join(s.root, "notify", "feishu-"+name)
}

// AlertmanagerQueue is the notification queue of Alertmanager.
func (s Spool) AlertmanagerQueue() string { return filepath.Join(s.root, "notify", "alertmanager") }

// Frozen is the freezer's record of the cgroups it froze, so that an agent
// restarted after a kill thaws what its predecessor left frozen.
func (s Spool) Frozen() string { return filepath.Join(s.root, "frozen") }

// Analysis is the agent's work directory for gdb; what is in it at start
// was left by a killed agent and may be removed.
func (s Spool) Analysis() string { return filepath.Join(s.root, "analysis") }

// the storm areas (spool_linux.go)
func (s Spool) dedupDir() string { return filepath.Join(s.root, "dedup") }
func (s Spool) rateFile() string { return filepath.Join(s.root, "rate") }
func (s Spool) slotDir() string  { return filepath.Join(s.root, "slots") }
