{{/* The objects' name: the release's, with "corecatch" added unless it says so. */}}
{{- define "corecatch.fullname" -}}
{{- if contains "corecatch" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-corecatch" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "corecatch.selectorLabels" -}}
app.kubernetes.io/name: corecatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "corecatch.labels" -}}
{{ include "corecatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Where the pod mounts what the config names. */}}
{{- define "corecatch.configDir" -}}/etc/corecatch{{- end -}}
{{- define "corecatch.feishuDir" -}}/etc/corecatch/secrets/feishu{{- end -}}
{{- define "corecatch.bridgeDir" -}}/etc/corecatch/secrets/bridge{{- end -}}
{{- define "corecatch.binMount" -}}/host/bin{{- end -}}
{{- define "corecatch.procSysKernel" -}}/host/proc/sys/kernel{{- end -}}

{{/* config.yaml: the host paths and the secrets' files, then .Values.config over them. */}}
{{- define "corecatch.config" -}}
{{- $c := dict
  "store" (printf "file://%s/bundles" .Values.host.dataDir)
  "spool" (printf "%s/spool" .Values.host.dataDir)
  "socket" (printf "%s/agent.sock" .Values.host.runDir)
  "coredump_socket" (printf "%s/coredump.sock" .Values.host.runDir)
  "identity" (dict "cri_endpoint" (printf "unix://%s" .Values.criSocket))
  "host" (dict "bin_dir" .Values.host.binDir "bin_mount" (include "corecatch.binMount" .) "proc_sys_kernel" (include "corecatch.procSysKernel" .))
  "notify" (dict "alertmanager" (dict "url" .Values.alertmanager.url))
  "analysis" (dict "max_memory" .Values.analysisMaxMemory)
-}}
{{- with .Values.feishu.existingSecret }}
{{- $bot := dict "name" "default" "lang" $.Values.feishu.lang "webhook_file" (printf "%s/webhook" (include "corecatch.feishuDir" $)) -}}
{{- if $.Values.feishu.signed }}{{ $_ := set $bot "secret_file" (printf "%s/secret" (include "corecatch.feishuDir" $)) }}{{ end -}}
{{- $_ := set $c.notify "feishu" (list (merge (deepCopy $.Values.feishu.extra) $bot)) -}}
{{- end }}
{{- if .Values.bridge.enabled }}
{{- if not .Values.bridge.existingSecret }}{{ fail "bridge.enabled needs bridge.existingSecret: a Secret with the bearer token under key \"token\"" }}{{ end -}}
{{- $_ := set $c.notify "bridge" (dict "listen" (printf ":%v" .Values.bridge.port) "token_file" (printf "%s/token" (include "corecatch.bridgeDir" .)) "button_hosts" .Values.bridge.buttonHosts) -}}
{{- end }}
{{- toYaml (mergeOverwrite $c (deepCopy .Values.config)) -}}
{{- end -}}
