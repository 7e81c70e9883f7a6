{{- define "busbar.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "busbar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "busbar.selectorLabels" -}}
app.kubernetes.io/name: busbar-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "busbar.labels" -}}
{{ include "busbar.selectorLabels" . }}
app.kubernetes.io/part-of: busbar
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "busbar.serviceAccountName" -}}
{{- default (include "busbar.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Two writers would fight over the same objects, so more than one replica always elects a leader. */}}
{{- define "busbar.leaderElection" -}}
{{- or (gt (int .Values.replicaCount) 1) .Values.leaderElection.enabled -}}
{{- end -}}

