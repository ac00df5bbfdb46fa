package notify

import (
	"fmt"
	"maps"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// texts holds a card's words in one language.
type texts struct {
	crash, crashes, digest                                  string
	time, node, namespace, pod, container, workload, exe    string
	signal, fault, core, count, frames, missing, debug, get string
	firing, resolved, started, ended, runbook, source, am   string
	more, unknown, stored                                   string
	where, dedupName, dedup                                 string
}

var lang = map[string]texts{
	"en": {
		crash: "%s in %s", crashes: "%d crashes: %s in %s", digest: "%d crashes of %d programs on %s",
		time: "Time", node: "Node", namespace: "Namespace", pod: "Pod", container: "Container", workload: "Workload", exe: "Executable",
		signal: "Signal", fault: "Fault address", core: "Core", count: "Crashes", frames: "Top frames", missing: "No whole core",
		debug: "Debug", get: "Download bundle",
		firing: "FIRING", resolved: "RESOLVED", started: "Started", ended: "Resolved", runbook: "Runbook", source: "Source", am: "Alertmanager",
		more: "…and %d more", unknown: "unknown", stored: "%s raw, %s stored",
		where: "Where", dedupName: "Same bug", dedup: "crash %d of this bug in its window; its core is kept once",
	},
	"zh": {
		crash: "%s · %s 崩溃", crashes: "%[3]s 崩溃 %[1]d 次 · %[2]s", digest: "%[3]s 上 %[2]d 个程序崩溃 %[1]d 次",
		time: "时间", node: "节点", namespace: "命名空间", pod: "Pod", container: "容器", workload: "工作负载", exe: "可执行文件",
		signal: "信号", fault: "故障地址", core: "Core 大小", count: "崩溃次数", frames: "栈顶", missing: "Core 不完整",
		debug: "调试", get: "下载 bundle",
		firing: "告警", resolved: "已恢复", started: "开始", ended: "恢复", runbook: "处理手册", source: "来源", am: "Alertmanager",
		more: "……另有 %d 条", unknown: "未知", stored: "原始 %s，压缩后 %s",
		where: "位置", dedupName: "同一缺陷", dedup: "窗口内该缺陷第 %d 次崩溃；core 只保留一份",
	},
}

// meanings explains the signals an SRE meets, in both languages.
var meanings = map[string][2]string{
	"SIGSEGV": {"invalid memory access", "非法内存访问"},
	"SIGBUS":  {"bad memory access (unaligned, or a truncated mapped file)", "总线错误（未对齐访问或映射文件被截断）"},
	"SIGABRT": {"aborted (assert, abort(), an uncaught C++ exception)", "主动中止（assert、abort()、未捕获的 C++ 异常）"},
	"SIGFPE":  {"arithmetic error (division by zero)", "算术错误（除以零）"},
	"SIGILL":  {"illegal instruction", "非法指令"},
	"SIGTRAP": {"trap (breakpoint, __builtin_trap)", "陷阱（断点、__builtin_trap）"},
	"SIGQUIT": {"quit requested (a Go program's goroutine dump)", "退出请求（Go 程序会打印 goroutine）"},
	"SIGSYS":  {"bad system call (seccomp)", "非法系统调用（seccomp）"},
	"SIGXCPU": {"CPU time limit exceeded", "超出 CPU 时间限制"},
	"SIGXFSZ": {"file size limit exceeded", "超出文件大小限制"},
}

// signalText is "SIGSEGV: invalid memory access".
func signalText(sig, l string) string {
	m, ok := meanings[sig]
	if !ok {
		return sig
	}
	if l == "zh" {
		return sig + ": " + m[1]
	}
	return sig + ": " + m[0]
}

// severity templates: Feishu's header colours.
func template(severity string) string {
	switch severity {
	case "critical":
		return "red"
	case "info":
		return "blue"
	case "resolved":
		return "green"
	}
	return "orange"
}

// crashSeverity: a run of crashes is a crash loop.
func crashSeverity(c *Crash) string {
	if c.Count >= 10 {
		return "critical"
	}
	return "warning"
}

func plain(s string) map[string]any { return map[string]any{"tag": "plain_text", "content": s} }
func md(s string) map[string]any    { return map[string]any{"tag": "lark_md", "content": s} }

// field is a short two-column entry of a div.
func field(name, value string) map[string]any {
	return map[string]any{"is_short": true, "text": md("**" + name + "**\n" + clip(value, 200))}
}

// clip bounds a text from a crashed program or an alert, so that a card
// stays far below Feishu's body limit.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// mdEscape keeps names from being read as lark_md markup.
var mdEscape = strings.NewReplacer("*", "\\*", "_", "\\_", "~", "\\~", "[", "\\[", "]", "\\]", "<", "&lt;", ">", "&gt;", "`", "'")

func button(text, u, kind string) map[string]any {
	return map[string]any{"tag": "button", "text": plain(text), "url": u, "type": kind}
}

// httpURL reports whether a URL can back a Feishu button.
func httpURL(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != ""
}

// allowedHosts returns whether an http(s) URL's host is one of hosts
// (notify.bridge.button_hosts): a name, or *.domain for its subdomains.
func allowedHosts(hosts []string) func(string) bool {
	return func(u string) bool {
		p, err := url.Parse(u)
		if err != nil || !httpURL(u) || p.User != nil {
			return false
		}
		h := strings.ToLower(p.Hostname())
		for _, allowed := range hosts {
			allowed = strings.ToLower(allowed)
			if sub, ok := strings.CutPrefix(allowed, "*."); ok && strings.HasSuffix(h, "."+sub) || h == allowed {
				return true
			}
		}
		return false
	}
}

// card builds one card for a batch of items: a crash card, a digest of
// several programs' crashes, or an Alertmanager group.
func (b *feishuBot) card(batch []*item) map[string]any {
	t := lang[b.cfg.Lang]
	var card map[string]any
	switch {
	case batch[0].Alerts != nil:
		card = alertCard(batch[0].Alerts, t, b.buttons)
	case len(batch) == 1:
		card = crashCard(batch[0].Crash, t, b.cfg.Lang)
	default:
		card = digestCard(batch, t)
	}
	note := "corecatch " + b.o.Version
	if b.cfg.Keyword != "" {
		note += " · " + b.cfg.Keyword
	}
	els := card["elements"].([]any)
	card["elements"] = append(els, map[string]any{"tag": "note", "elements": []any{plain(note)}})
	card["config"] = map[string]any{"wide_screen_mode": true}
	return card
}

func header(title, severity string) map[string]any {
	return map[string]any{"title": plain(clip(title, 120)), "template": template(severity)}
}

func crashCard(c *Crash, t texts, l string) map[string]any {
	sig := c.Signal
	title := fmt.Sprintf(t.crash, sig, c.program())
	if c.Count > 1 {
		title = fmt.Sprintf(t.crashes, c.Count, sig, c.program())
	}
	when := c.Time.Local().Format("2006-01-02 15:04:05 MST")
	fields := []any{field(t.time, when), field(t.node, c.Node)}
	for _, f := range [][2]string{{t.namespace, c.Namespace}, {t.pod, c.Pod}, {t.container, c.Container}, {t.workload, c.Workload}} {
		if f[1] != "" {
			fields = append(fields, field(f[0], mdEscape.Replace(f[1])))
		}
	}
	exe := c.Exe
	if exe == "" {
		exe = c.Comm
	}
	fields = append(fields, field(t.exe, mdEscape.Replace(exe)), field(t.signal, signalText(sig, l)))
	if c.Title != "" {
		fields = append(fields, field(t.where, mdEscape.Replace(c.Title)))
	}
	if c.FaultAddr != "" {
		fields = append(fields, field(t.fault, c.FaultAddr))
	}
	fields = append(fields, field(t.core, fmt.Sprintf(t.stored, bundle.HumanBytes(c.RawBytes), bundle.HumanBytes(c.StoredBytes))))
	if c.Dedup > 1 || c.DedupOf != "" {
		text := fmt.Sprintf(t.dedup, c.Dedup)
		if c.DedupOf != "" {
			text += " · corecatch pull " + c.DedupOf
		}
		fields = append(fields, field(t.dedupName, text))
	}
	if c.Count > 1 {
		fields = append(fields, field(t.count, fmt.Sprintf("%d (%s – %s)", c.Count,
			c.First.Local().Format("15:04:05"), c.Time.Local().Format("15:04:05"))))
	}
	els := []any{map[string]any{"tag": "div", "fields": fields}}
	if len(c.Frames) > 0 {
		var lines []string
		for i, f := range c.Frames {
			lines = append(lines, fmt.Sprintf("#%d %s", i, mdEscape.Replace(clip(f, 160))))
		}
		els = append(els, map[string]any{"tag": "div", "text": md("**" + t.frames + "**\n" + strings.Join(lines, "\n"))})
	}
	if c.Missing != "" {
		els = append(els, map[string]any{"tag": "div", "text": md("**" + t.missing + "**: " + mdEscape.Replace(c.Missing))})
	}
	els = append(els, map[string]any{"tag": "div", "text": md("**" + t.debug + "**\ncorecatch pull " + c.ID + "\ncorecatch debug " + c.ID)})
	if httpURL(c.Download) {
		els = append(els, map[string]any{"tag": "action", "actions": []any{button(t.get, c.Download, "primary")}})
	}
	sev := crashSeverity(c)
	return map[string]any{"header": header(title, sev), "elements": els}
}

// digestCard is one card for many programs' crashes, so that a storm
// across workloads stays within the bot's rate limit.
func digestCard(batch []*item, t texts) map[string]any {
	total, node := 0, ""
	slices.SortFunc(batch, func(a, b *item) int { return b.Crash.Count - a.Crash.Count })
	var lines []string
	for i, it := range batch {
		c := it.Crash
		total += c.Count
		node = c.Node
		if i < 30 {
			ns := ""
			if c.Namespace != "" {
				ns = mdEscape.Replace(c.Namespace) + "/"
			}
			lines = append(lines, fmt.Sprintf("• **%s%s** %s ×%d · corecatch pull %s", ns, mdEscape.Replace(clip(c.program(), 80)), c.Signal, c.Count, c.ID))
		}
	}
	if len(batch) > 30 {
		lines = append(lines, fmt.Sprintf(t.more, len(batch)-30))
	}
	title := fmt.Sprintf(t.digest, total, len(batch), node)
	return map[string]any{"header": header(title, "critical"), "elements": []any{
		map[string]any{"tag": "div", "text": md(strings.Join(lines, "\n"))},
	}}
}

// alertCard renders an Alertmanager group; resolved groups are green and
// say so in the title, so that nobody mistakes one for a new page. Its
// buttons link only where allow says (notify.bridge.button_hosts): the
// payload's sender chose the URLs, and a button in the company's chat is
// trusted as if the bot had written it.
func alertCard(w *Webhook, t texts, allow func(string) bool) map[string]any {
	name := w.CommonLabels["alertname"]
	if name == "" {
		name = w.GroupLabels["alertname"]
	}
	firing := 0
	for _, a := range w.Alerts {
		if a.Status == "firing" {
			firing++
		}
	}
	sev := w.CommonLabels["severity"]
	title := fmt.Sprintf("🔥 %s [%d] %s", t.firing, firing, name)
	if w.Status == "resolved" {
		sev = "resolved"
		title = fmt.Sprintf("✅ %s %s", t.resolved, name)
	}
	var els []any
	var buttons []any
	for i, a := range w.Alerts {
		if i == cardAlerts {
			break
		}
		var sb strings.Builder
		summary := a.Annotations["summary"]
		if summary == "" {
			summary = a.Labels["alertname"]
		}
		mark := "🔴"
		if a.Status == "resolved" {
			mark = "🟢"
		}
		fmt.Fprintf(&sb, "%s **%s**\n", mark, mdEscape.Replace(clip(summary, 200)))
		// The description, then what corecatch's own alerts carry.
		for _, k := range []string{"description", "backtrace", "pull_command"} {
			if d := a.Annotations[k]; d != "" {
				sb.WriteString(mdEscape.Replace(clip(d, 400)) + "\n")
			}
		}
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
			if k != "alertname" && k != "severity" {
				labels = append(labels, k+"="+a.Labels[k])
			}
		}
		if len(labels) > 0 {
			sb.WriteString(mdEscape.Replace(clip(strings.Join(labels, " "), 300)) + "\n")
		}
		sb.WriteString(t.started + ": " + a.StartsAt.Local().Format(time.DateTime))
		if a.Status == "resolved" {
			sb.WriteString(" · " + t.ended + ": " + a.EndsAt.Local().Format(time.DateTime))
		}
		els = append(els, map[string]any{"tag": "div", "text": md(sb.String())})
		if i == 0 {
			if u := a.Annotations["runbook_url"]; allow(u) {
				buttons = append(buttons, button(t.runbook, u, "primary"))
			}
			if allow(a.GeneratorURL) {
				buttons = append(buttons, button(t.source, a.GeneratorURL, "default"))
			}
		}
	}
	if more := max(len(w.Alerts)-cardAlerts, 0) + w.TruncatedAlerts; more > 0 {
		els = append(els, map[string]any{"tag": "div", "text": md(fmt.Sprintf(t.more, more))})
	}
	if allow(w.ExternalURL) {
		buttons = append(buttons, button(t.am, w.ExternalURL, "default"))
	}
	if len(buttons) > 0 {
		els = append(els, map[string]any{"tag": "action", "actions": buttons})
	}
	return map[string]any{"header": header(title, sev), "elements": els}
}

// base is the executable's base name, the label metrics and alerts use.
func base(exe string) string {
	if exe == "" {
		return ""
	}
	return path.Base(exe)
}
