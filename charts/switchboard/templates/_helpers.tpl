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
annotation: every section but route's rules, SLAs and thresholds, which route reloads from the
mounted file. route's spike window is sized at start, so it stays in. */}}
{{- define "switchboard.restartConfig" -}}
{{- $fixed := omit .Values.config "route" -}}
{{- $window := dig "route" "spikes" "window_minutes" "" .Values.config -}}
{{- toYaml (dict "config" $fixed "route_spike_window_minutes" $window) -}}
{{- end -}}
