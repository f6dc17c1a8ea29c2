{{/* The chart's name, truncated to what Kubernetes names allow. */}}
{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object. */}}
{{- define "gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the CA (tls.crt, tls.key): the existing one, cert-manager's, or the generated one. */}}
{{- define "gateway.caSecret" -}}
{{- if .Values.ca.existingSecret }}
{{- .Values.ca.existingSecret }}
{{- else }}
{{- printf "%s-ca" (include "gateway.fullname" .) }}
{{- end }}
{{- end }}

{{- define "gateway.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "gateway.fullname" .)) .Values.rules.existingConfigMap }}
{{- end }}

{{- define "gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* What values.schema.json cannot say (one value against another): refused here, with the reason. */}}
{{- define "gateway.validate" -}}
{{- $v := .Values }}
{{- if and $v.ca.existingSecret $v.ca.certManager.enabled }}
{{- fail "ca: set either ca.existingSecret or ca.certManager.enabled, not both (one CA source)" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling: minReplicas (%v) is more than maxReplicas (%v)" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- if lt (int $v.terminationGracePeriodSeconds) (add (int $v.drainSeconds) 30) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least drainSeconds (%v) + 30: after the drain the gateway needs time to spool and ship its audit records" $v.terminationGracePeriodSeconds $v.drainSeconds) }}
{{- end }}
{{- if gt (int $v.audit.textTtlDays) (int $v.audit.metadataTtlDays) }}
{{- fail (printf "audit: textTtlDays (%v) cannot be longer than metadataTtlDays (%v)" $v.audit.textTtlDays $v.audit.metadataTtlDays) }}
{{- end }}
{{- if and $v.networkPolicy.enabled $v.audit.clickhouse.url (not $v.networkPolicy.auditStore.peers) }}
{{- fail "networkPolicy: audit.clickhouse.url is set but networkPolicy.auditStore.peers is empty: the gateway could not reach its audit store" }}
{{- end }}
{{- end }}
