{{- define "switchboard.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchboard.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "switchboard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The configuration a running pod cannot apply, hashed into each pod's checksum/config
annotation: every section but route's, and of route's what it sets up at start (its spike
windows, the SLA sweep's interval, standby replicas, the conversations' TTL, which sizes the
window of recorded corrections). The rest of route's section (rules, SLAs,
thresholds, keywords) route reloads from the mounted file. */}}
{{- define "switchboard.restartConfig" -}}
{{- $config := .Values.config -}}
{{- $atStart := dict
  "spikes.window_minutes" (dig "route" "spikes" "window_minutes" "" $config)
  "spikes.baseline_windows" (dig "route" "spikes" "baseline_windows" "" $config)
  "spikes.samples" (dig "route" "spikes" "samples" "" $config)
  "sla.check_interval_s" (dig "route" "sla" "check_interval_s" "" $config)
  "standby_replicas" (dig "route" "standby_replicas" "" $config)
  "conversations.ttl_hours" (dig "route" "conversations" "ttl_hours" "" $config) -}}
{{- /* classify loads a new model (artifact, runtime...) from the file by itself */ -}}
{{- $classifyAtStart := omit (dig "classify" (dict) $config) "artifact" "backbone" "max_length" "threads" "runtime" "bucket_size" -}}
{{- toYaml (dict "config" (omit $config "route" "classify") "route_at_start" $atStart "classify_at_start" $classifyAtStart) -}}
{{- end -}}
