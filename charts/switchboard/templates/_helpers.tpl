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

{{/* The configuration a running pod of one service cannot apply, hashed into its pods'
checksum/config annotation (root, service): the shared sections every service reads, and of
the service's own section what it cannot reload. route's: what it sets up at start (its spike
windows, the SLA sweep's interval, standby replicas, the conversations' TTL, which sizes the
window of recorded corrections); the rest of it (rules, SLAs, thresholds, keywords) route
reloads from the mounted file. classify's: all but the model it loads by itself. Another
service's section rolls only that service's pods (route and notify restore their tables
when they move). */}}
{{- define "switchboard.restartConfig" -}}
{{- $config := .root.Values.config -}}
{{- $atStart := dict
  "spikes.window_minutes" (dig "route" "spikes" "window_minutes" "" $config)
  "spikes.baseline_windows" (dig "route" "spikes" "baseline_windows" "" $config)
  "spikes.samples" (dig "route" "spikes" "samples" "" $config)
  "sla.check_interval_s" (dig "route" "sla" "check_interval_s" "" $config)
  "standby_replicas" (dig "route" "standby_replicas" "" $config)
  "conversations.ttl_hours" (dig "route" "conversations" "ttl_hours" "" $config) -}}
{{- /* classify loads a new model (artifact, runtime...) from the file by itself */ -}}
{{- $classifyAtStart := omit (dig "classify" (dict) $config) "artifact" "backbone" "max_length" "threads" "runtime" "bucket_size" -}}
{{- $own := dict "route" $atStart "classify" $classifyAtStart "ingest" (dig "ingest" (dict) $config) "notify" (dig "notify" (dict) $config) -}}
{{- toYaml (dict "shared" (omit $config "ingest" "classify" "route" "notify") "own" (get $own .service)) -}}
{{- end -}}

{{/* Values that cannot work together fail the install, naming the key: the services would
refuse them at start anyway (shared/settings.py), and an idle autoscaled pod costs a core. */}}
{{- define "switchboard.validate" -}}
{{- $kafka := .Values.kafka -}}
{{- $protocol := $kafka.securityProtocol -}}
{{- if and $kafka.sasl.mechanism (not (hasPrefix "SASL_" $protocol)) -}}
{{- fail (printf "kafka.sasl.mechanism: set, but kafka.securityProtocol %s does not use SASL" $protocol) -}}
{{- end -}}
{{- /* kafka.sasl given in part: the services would start without the rest (or with
KAFKA_SASL_* from secretEnvFrom, the way to give all three there instead) */ -}}
{{- $sasl := list $kafka.sasl.mechanism $kafka.sasl.username $kafka.sasl.passwordSecret.name -}}
{{- if and (hasPrefix "SASL_" $protocol) (has "" $sasl) (not (eq (join "" $sasl) "")) -}}
{{- fail "kafka.sasl: give kafka.sasl.mechanism, kafka.sasl.username and kafka.sasl.passwordSecret.name together (or none of them, and KAFKA_SASL_* through secretEnvFrom)" -}}
{{- end -}}
{{- if and $kafka.tls.caSecret (not (has $protocol (list "SSL" "SASL_SSL"))) -}}
{{- fail (printf "kafka.tls.caSecret: set, but kafka.securityProtocol %s is not TLS" $protocol) -}}
{{- end -}}
{{- /* A consumer group has no more busy members than its topic has partitions. */ -}}
{{- $partitions := int (dig "topics" "partitions" 3 .Values.config) -}}
{{- $most := ternary .Values.keda.maxReplicas (ternary .Values.autoscaling.maxReplicas .Values.services.classify.replicas .Values.autoscaling.enabled) .Values.keda.enabled -}}
{{- if gt (int $most) $partitions -}}
{{- fail (printf "classify's replicas (at most %d): more than config.topics.partitions (%d); the others would sit idle. Raise the partitions with them" (int $most) $partitions) -}}
{{- end -}}
{{- end -}}
