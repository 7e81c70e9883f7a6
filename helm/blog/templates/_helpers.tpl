{{/* The four services and their ports. The ports are the course's; the ServiceBus and the Ingress use them too. */}}
{{- define "blog.services" -}}
posts: 4000
comments: 4001
moderation: 4003
query: 4002
{{- end -}}

{{- define "blog.labels" -}}
app.kubernetes.io/part-of: blog
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "blog.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "blog.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "blog.jetstreamUrl" -}}
{{- if .Values.jetstream.url -}}
{{- .Values.jetstream.url -}}
{{- else if .Values.jetstream.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" .Release.Name .Release.Namespace -}}
{{- else -}}
{{- fail "transport jetstream needs jetstream.url, or jetstream.nats.enabled to deploy a NATS server" -}}
{{- end -}}
{{- end -}}

{{- define "blog.deployNats" -}}
{{- and (eq .Values.transport "jetstream") (not .Values.jetstream.url) .Values.jetstream.nats.enabled -}}
{{- end -}}

{{- define "blog.pullPolicySkip" -}}
{{- if ne .Values.imagePullPolicy "Always" -}}
checkov.io/skip9: CKV_K8S_15=imagePullPolicy {{ .Values.imagePullPolicy }} was chosen for images loaded into a local cluster
{{- end -}}
{{- end -}}
