{{/* The ServiceBus's name: busName, else the release's. */}}
{{- define "busbar-app.busName" -}}
{{- .Values.busName | default .Release.Name -}}
{{- end -}}

{{/* The services, each with the defaults filled in, as YAML (read back with fromYaml). Fails
     when there are none: this chart is nothing without an app's values. */}}
{{- define "busbar-app.services" -}}
{{- if not .Values.services -}}
{{- fail "no services: give the app's values, e.g. -f helm/busbar-app/values-blog.yaml (see values.yaml)" -}}
{{- end -}}
{{- $out := dict -}}
{{- range $name, $s := .Values.services -}}
{{- $d := $.Values.serviceDefaults -}}
{{- $image := dict "repository" $s.image.repository "tag" ($s.image.tag | default $d.image.tag) -}}
{{- $db := $s.database | default dict -}}
{{- if and $db.url $db.existingSecret -}}
{{- fail (printf "services.%s.database: give url or existingSecret, not both" $name) -}}
{{- end -}}
{{- $_ := set $out $name (dict
  "image" $image
  "port" $s.port
  "replicas" (hasKey $s "replicas" | ternary $s.replicas $d.replicas)
  "resources" ($s.resources | default $d.resources)
  "env" ($s.env | default dict)
  "bundledDb" (not (or $db.url $db.existingSecret))
  "dbSecret" ($db.existingSecret | default (printf "%s-db" $name))
  "database" $db) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "busbar-app.labels" -}}
app.kubernetes.io/part-of: {{ include "busbar-app.busName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "busbar-app.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "busbar-app.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "busbar-app.jetstreamUrl" -}}
{{- if .Values.jetstream.url -}}
{{- .Values.jetstream.url -}}
{{- else if .Values.jetstream.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" .Release.Name .Release.Namespace -}}
{{- else -}}
{{- fail "transport jetstream needs jetstream.url, or jetstream.nats.enabled to deploy a NATS server" -}}
{{- end -}}
{{- end -}}

{{- define "busbar-app.deployNats" -}}
{{- and (eq .Values.transport "jetstream") (not .Values.jetstream.url) .Values.jetstream.nats.enabled -}}
{{- end -}}

{{- define "busbar-app.pullPolicySkip" -}}
{{- if ne .Values.imagePullPolicy "Always" -}}
checkov.io/skip9: CKV_K8S_15=imagePullPolicy {{ .Values.imagePullPolicy }} was chosen for images loaded into a local cluster
{{- end -}}
{{- end -}}
