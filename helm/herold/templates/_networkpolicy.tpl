{{/* Egress rules shared by the relays' and the migration Job's policies. */}}

{{- define "herold.egressDns" -}}
# DNS.
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  {{- with .Values.networkPolicy.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "herold.egressCql" -}}
{{- if .Values.cql.enabled -}}
# Scylla (CQL): the contact points' ports and the extra ports.
- ports:
    {{- range (include "herold.ports" (list .Values.cql.contactPoints .Values.networkPolicy.cql.extraPorts) | fromJsonArray) }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.cql.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "herold.egressRedis" -}}
{{- if .Values.redis.enabled -}}
# Redis: the sentinels' or nodes' ports and the extra ports.
- ports:
    {{- range (include "herold.ports" (list .Values.redis.addresses .Values.networkPolicy.redis.extraPorts) | fromJsonArray) }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.redis.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "herold.egressOtlp" -}}
{{- if .Values.otlp.endpoint -}}
# The OpenTelemetry collector (OTLP over gRPC).
- ports:
    - protocol: TCP
      port: {{ include "herold.urlPort" .Values.otlp.endpoint }}
  {{- with .Values.networkPolicy.otlp.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}
