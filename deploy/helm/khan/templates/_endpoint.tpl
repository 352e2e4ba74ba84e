{{/*
What the PodMonitor's and the ServiceMonitor's endpoint share: the port, the scheme, the scraper's token when the
agents run --auth kubernetes, and the job label the rules and dashboards select (monitoring.job). Called with
(dict "root" $ "monitor" .Values.podMonitor).
*/}}
{{- define "khan.monitorEndpoint" -}}
{{- $root := .root }}
{{- $monitor := .monitor }}
- port: metrics
  path: /metrics
  interval: {{ $monitor.interval }}
  {{- with $monitor.scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
  scheme: {{ include "khan.scheme" $root }}
  {{- if ne $root.Values.web.tls.mode "none" }}
  {{- with $monitor.tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- if include "khan.scraperEnabled" $root }}
  authorization:
    type: Bearer
    credentials:
      name: {{ include "khan.scraperName" $root }}-token
      key: token
  {{- end }}
  relabelings:
    - targetLabel: job
      replacement: {{ $root.Values.monitoring.job }}
    {{- with $monitor.relabelings }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $monitor.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
