{{/*
The chart's name, and the name of its objects: the release's name when it already says khan (release "khan" ->
"khan", as deploy/base names them), else "<release>-khan". Both cut to 63 characters, a label value's limit.
*/}}
{{- define "khan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "khan.fullname" -}}
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

{{- define "khan.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Every object's labels. deploy/base carries the same ones but helm.sh/chart and app.kubernetes.io/managed-by,
which say who installed the object.
*/}}
{{- define "khan.labels" -}}
helm.sh/chart: {{ include "khan.chart" . }}
{{ include "khan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/part-of: {{ include "khan.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What the DaemonSet, the Service and the monitors select the agents' pods by. */}}
{{- define "khan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "khan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "khan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "khan.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The identity the PodMonitor and ServiceMonitor scrape as, and its token's Secret. */}}
{{- define "khan.scraperName" -}}
{{- printf "%s-scraper" (include "khan.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "khan.metricsReaderName" -}}
{{- printf "%s-metrics-reader" (include "khan.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The scraper account, its token and its binding exist when a monitor scrapes with a token. */}}
{{- define "khan.scraperEnabled" -}}
{{- if and (or .Values.podMonitor.enabled .Values.serviceMonitor.enabled) (eq .Values.web.auth "kubernetes") }}true{{ end }}
{{- end }}

{{/* The image: repository:tag, or repository@digest when a digest is given (the tag is then only a label). */}}
{{- define "khan.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* http or https, as the agent serves. */}}
{{- define "khan.scheme" -}}
{{- if eq .Values.web.tls.mode "none" }}http{{ else }}https{{ end }}
{{- end }}

{{/*
A flag's value as the agent reads it: values arrive as float64, which Go prints as 3.3554432e+07; a whole
number is printed as one.
*/}}
{{- define "khan.flagValue" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* The agent's arguments: the protection of its endpoints, then the agent: map, then extraArgs. */}}
{{- define "khan.args" -}}
- agent
- --auth={{ .Values.web.auth }}
{{- if eq .Values.web.tls.mode "selfSigned" }}
- --tls-self-signed
{{- else if eq .Values.web.tls.mode "secret" }}
- --web-config-file=/etc/khan/web/web.yml
{{- end }}
{{- if ne (int .Values.port) 9986 }}
- --listen=:{{ .Values.port }}
{{- end }}
{{- range $key, $value := .Values.agent }}
{{- if kindIs "bool" $value }}
{{- if $value }}
- {{ printf "--%s" (kebabcase $key) | quote }}
{{- end }}
{{- else if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
- {{ printf "--%s=%s" (kebabcase $key) (include "khan.flagValue" $value) | quote }}
{{- end }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
