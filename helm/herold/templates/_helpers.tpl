{{/* Names ------------------------------------------------------------- */}}

{{- define "herold.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herold.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A name derived from the full name: herold.child (list . "admin") */}}
{{- define "herold.child" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "herold.fullname" $ctx | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{/* The relays' Deployment and the resources that belong to it (QUIC
     Service, ConfigMap, HPA, PDB, NetworkPolicy): <fullname>-relay, e.g.
     herold-relay for the release herold, as the runbooks name it. */}}
{{- define "herold.relayName" -}}
{{- include "herold.child" (list . "relay") -}}
{{- end -}}

{{- define "herold.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------ */}}

{{- define "herold.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herold.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end -}}

{{/* Labels of every resource; the component is "relay" unless given. */}}
{{- define "herold.labels" -}}
helm.sh/chart: {{ include "herold.chart" . }}
app.kubernetes.io/name: {{ include "herold.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herold
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herold.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herold.relayName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image: repository:tag[@digest], the tag pinned (appVersion by default). */}}
{{- define "herold.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if or (eq $tag "latest") (eq $tag "") -}}
{{- fail "herold: image.tag must be a pinned version (it defaults to the chart's appVersion); \"latest\" or an empty tag is refused" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Listener addresses: IPv6 addresses go in brackets. */}}
{{- define "herold.addr" -}}
{{- $host := index . 0 -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" $host (index . 1) -}}
{{- else -}}
{{- printf "%s:%v" $host (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* Drain and termination --------------------------------------------- */}}

{{/* terminationGracePeriodSeconds = drain grace + margin. */}}
{{- define "herold.terminationGracePeriodSeconds" -}}
{{- add (int .Values.drain.graceSeconds) (int .Values.drain.terminationMarginSeconds) -}}
{{- end -}}

{{/* Secrets: where each file comes from and where it is mounted ------- */}}

{{- define "herold.tlsSecretName" -}}
{{- default (include "herold.child" (list . "tls")) .Values.tls.existingSecret -}}
{{- end -}}
{{- define "herold.adminTlsSecretName" -}}
{{- default (include "herold.child" (list . "admin-tls")) .Values.admin.tls.existingSecret -}}
{{- end -}}
{{- define "herold.adminClientCASecretName" -}}
{{- default (include "herold.child" (list . "admin-client-ca")) .Values.admin.tls.clientCA.existingSecret -}}
{{- end -}}
{{- define "herold.adminOperatorsSecretName" -}}
{{- default (include "herold.child" (list . "admin-operators")) .Values.admin.operators.existingSecret -}}
{{- end -}}

{{- define "herold.hasAdminTls" -}}
{{- if or .Values.admin.tls.existingSecret (and .Values.admin.tls.cert .Values.admin.tls.key) -}}true{{- end -}}
{{- end -}}
{{- define "herold.hasAdminClientCA" -}}
{{- if or .Values.admin.tls.clientCA.existingSecret .Values.admin.tls.clientCA.pem -}}true{{- end -}}
{{- end -}}
{{- define "herold.hasOperators" -}}
{{- if or .Values.admin.operators.existingSecret .Values.admin.operators.toml -}}true{{- end -}}
{{- end -}}
{{- define "herold.hasToken" -}}
{{- if .Values.admin.token.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Mount points in the pod. */}}
{{- define "herold.paths" -}}
config: /etc/herold/config
tls: /etc/herold/tls
adminTls: /etc/herold/admin-tls
adminClientCA: /etc/herold/admin-client-ca
adminOperators: /etc/herold/admin-operators
adminToken: /etc/herold/admin-token
{{- end -}}

{{/* Router and store --------------------------------------------------- */}}

{{/* The relay's `redis` setting: redis://, sentinel://master@, cluster://. */}}
{{- define "herold.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $hosts := join "," $r.addresses -}}
{{- if eq $r.mode "sentinel" -}}
{{- printf "sentinel://%s@%s" $r.masterName $hosts -}}
{{- else if eq $r.mode "cluster" -}}
{{- printf "cluster://%s" $hosts -}}
{{- else -}}
{{- printf "redis://%s" (first $r.addresses) -}}
{{- end -}}
{{- end -}}

{{/* Ports of host:port strings plus extra ports, deduplicated, as a JSON list. */}}
{{- define "herold.ports" -}}
{{- $ports := list -}}
{{- range (index . 0) -}}
{{- $parts := splitList ":" (toString .) -}}
{{- if gt (len $parts) 1 -}}
{{- $ports = append $ports (int (last $parts)) -}}
{{- end -}}
{{- end -}}
{{- range (index . 1) -}}
{{- $ports = append $ports (int .) -}}
{{- end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}

{{/* Port of an http(s):// URL (the OTLP endpoint); 4317 when it names none. */}}
{{- define "herold.urlPort" -}}
{{- $u := urlParse . -}}
{{- $parts := splitList ":" $u.host -}}
{{- if and (gt (len $parts) 1) (regexMatch "^[0-9]+$" (last $parts)) -}}
{{- last $parts -}}
{{- else if eq $u.scheme "https" -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}

{{/* The relay's config.toml ------------------------------------------- */}}

{{/* One TOML value: strings quoted (JSON escapes are valid TOML), floats
     with a decimal point, whole numbers as integers, booleans as they are. */}}
{{- define "herold.tomlValue" -}}
{{- $key := index . 0 -}}
{{- $v := index . 1 -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if eq $key "trace_sample_ratio" -}}
{{- $s := printf "%g" (float64 $v) -}}
{{- if or (contains "." $s) (contains "e" $s) -}}{{ $s }}{{- else -}}{{ $s }}.0{{- end -}}
{{- else -}}
{{- int64 $v -}}
{{- end -}}
{{- end -}}

{{- define "herold.configToml" -}}
{{- $paths := include "herold.paths" . | fromYaml -}}
{{- $bind := .Values.bindAddress -}}
# herold-relay configuration (herold-relay --config); generated by the Helm
# chart. Keys are the relay's flags with _ for -; see herold-relay --help.

# Listeners: on the pod address, so the Services and probes reach them.
listen = {{ include "herold.addr" (list $bind .Values.ports.quic) | quote }}
{{- if .Values.admin.expose }}
admin_listen = {{ include "herold.addr" (list $bind .Values.ports.admin) | quote }}
{{- else }}
admin_listen = {{ include "herold.addr" (list "127.0.0.1" .Values.ports.admin) | quote }}
{{- end }}
metrics_listen = {{ include "herold.addr" (list $bind .Values.ports.ops) | quote }}
{{- if .Values.service.quic.tcpFallback }}
# The TCP fallback (WebSocket over TLS) on the QUIC port's number.
tcp_listen = {{ include "herold.addr" (list $bind .Values.ports.quic) | quote }}
{{- else }}
tcp_fallback = false
{{- end }}
data_dir = {{ .Values.dataDir | quote }}

# TLS of QUIC (mounted Secret).
tls_cert = {{ printf "%s/%s" $paths.tls .Values.tls.certKey | quote }}
tls_key = {{ printf "%s/%s" $paths.tls .Values.tls.keyKey | quote }}

# Admin API: TLS and operators (mounted Secrets).
{{- if include "herold.hasAdminTls" . }}
admin_tls_cert = {{ printf "%s/%s" $paths.adminTls .Values.admin.tls.certKey | quote }}
admin_tls_key = {{ printf "%s/%s" $paths.adminTls .Values.admin.tls.keyKey | quote }}
{{- end }}
{{- if include "herold.hasAdminClientCA" . }}
admin_client_ca = {{ printf "%s/%s" $paths.adminClientCA .Values.admin.tls.clientCA.key | quote }}
{{- end }}
{{- if include "herold.hasOperators" . }}
admin_operators_file = {{ printf "%s/%s" $paths.adminOperators .Values.admin.operators.key | quote }}
{{- end }}
{{- if include "herold.hasToken" . }}
admin_token_file = {{ printf "%s/%s" $paths.adminToken .Values.admin.token.key | quote }}
{{- end }}

# Drain: SIGTERM waits this long for devices to leave.
drain_grace_secs = {{ int64 .Values.drain.graceSeconds }}
{{- if not (kindIs "invalid" .Values.drain.reconnectSpreadMs) }}
drain_reconnect_spread_ms = {{ int64 .Values.drain.reconnectSpreadMs }}
{{- end }}
{{- if .Values.cql.enabled }}

# Store: Scylla (CQL).
cql_contact_points = {{ join "," .Values.cql.contactPoints | quote }}
cql_keyspace = {{ .Values.cql.keyspace | quote }}
cql_consistency = {{ .Values.cql.consistency | quote }}
cql_replication = {{ .Values.cql.replication | quote }}
{{- if .Values.cql.acceptWeakDurability }}
cql_accept_weak_durability = true
{{- end }}
{{- end }}
{{- if .Values.redis.enabled }}

# Router: Redis.
redis = {{ include "herold.redisUrl" . | quote }}
{{- if not (kindIs "invalid" .Values.redis.prefix) }}
redis_prefix = {{ .Values.redis.prefix | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.redis.leaseMs) }}
redis_lease_ms = {{ int64 .Values.redis.leaseMs }}
{{- end }}
{{- end }}
{{- if .Values.otlp.endpoint }}

# Traces: OTLP over gRPC.
otlp_endpoint = {{ .Values.otlp.endpoint | quote }}
{{- if not (kindIs "invalid" .Values.otlp.sampleRatio) }}
trace_sample_ratio = {{ include "herold.tomlValue" (list "trace_sample_ratio" .Values.otlp.sampleRatio) }}
{{- end }}
{{- end }}
{{- $set := dict -}}
{{- range $k, $v := .Values.config -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $set $k $v -}}
{{- end -}}
{{- end -}}
{{- if $set }}

# Limits and logs (values: config).
{{- range $k := keys $set | sortAlpha }}
{{ $k }} = {{ include "herold.tomlValue" (list $k (get $set $k)) }}
{{- end }}
{{- end }}
{{ end -}}

{{/* Guards: combinations the relay would refuse or that would lose data. */}}
{{- define "herold.validate" -}}
{{- $v := .Values -}}
{{- if not (or $v.tls.existingSecret (and $v.tls.cert $v.tls.key)) -}}
{{- fail "herold: tls.existingSecret is required (a Secret with the QUIC certificate chain and key, e.g. `kubectl create secret tls herold-tls --cert=... --key=...`), or tls.cert and tls.key inline: the relay has no certificate otherwise (the chart never runs it with --dev)" -}}
{{- end -}}
{{- if and (or $v.tls.cert $v.tls.key) (not (and $v.tls.cert $v.tls.key)) -}}
{{- fail "herold: tls.cert and tls.key go together; set both or use tls.existingSecret" -}}
{{- end -}}
{{- if and (or $v.admin.tls.cert $v.admin.tls.key) (not (and $v.admin.tls.cert $v.admin.tls.key)) -}}
{{- fail "herold: admin.tls.cert and admin.tls.key go together; set both or use admin.tls.existingSecret" -}}
{{- end -}}
{{- if not (or (include "herold.hasOperators" .) (include "herold.hasToken" .)) -}}
{{- if $v.admin.expose -}}
{{- fail (printf "herold: the admin API listens on %s (admin.expose=true) and the relay refuses that without operators: set admin.operators.existingSecret (a Secret holding operators.toml, see docs/admin.md) or admin.token.existingSecret" (include "herold.addr" (list $v.bindAddress $v.ports.admin))) -}}
{{- else -}}
{{- fail "herold: the relay refuses to serve the admin API without operators, on loopback too (every process in the pod would be organisation admin): set admin.operators.existingSecret (a Secret holding operators.toml, see docs/admin.md) or admin.token.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if $v.admin.expose -}}
{{- if not (include "herold.hasAdminTls" .) -}}
{{- fail (printf "herold: the admin API listens on %s (admin.expose=true) and the relay refuses that without TLS (operator tokens would travel in the clear): set admin.tls.existingSecret (a Secret with the admin API's certificate and key)" (include "herold.addr" (list $v.bindAddress $v.ports.admin))) -}}
{{- end -}}
{{- end -}}
{{- if and (include "herold.hasAdminClientCA" .) (not (include "herold.hasAdminTls" .)) -}}
{{- fail "herold: admin.tls.clientCA needs admin.tls (the client CA is part of the admin API's TLS)" -}}
{{- end -}}
{{- if $v.cql.enabled -}}
{{- if not $v.cql.contactPoints -}}
{{- fail "herold: cql.enabled needs cql.contactPoints (host:port of one or more Scylla nodes)" -}}
{{- end -}}
{{- if not $v.cql.replication -}}
{{- fail "herold: cql.enabled needs cql.replication, e.g. nts:<datacenter>=3 (the relay's own default, simple:1, keeps one copy of every message)" -}}
{{- end -}}
{{- end -}}
{{- if $v.redis.enabled -}}
{{- if not $v.cql.enabled -}}
{{- fail "herold: redis.enabled needs cql.enabled: the relays of a cluster share one store, and the embedded store belongs to one process" -}}
{{- end -}}
{{- if not $v.redis.addresses -}}
{{- fail "herold: redis.enabled needs redis.addresses (host:port of the sentinels, cluster nodes or the Redis)" -}}
{{- end -}}
{{- if and (eq $v.redis.mode "sentinel") (not $v.redis.masterName) -}}
{{- fail "herold: redis.mode=sentinel needs redis.masterName" -}}
{{- end -}}
{{- end -}}
{{- if or $v.autoscaling.enabled (gt (int $v.replicaCount) 1) -}}
{{- if not (and $v.cql.enabled $v.redis.enabled) -}}
{{- fail "herold: more than one relay (replicaCount > 1 or autoscaling.enabled) needs cql.enabled and redis.enabled: relays on the embedded store cannot share conversations" -}}
{{- end -}}
{{- end -}}
{{- if not $v.cql.enabled -}}
{{- if and (not $v.persistence.enabled) (not $v.persistence.allowEphemeral) -}}
{{- fail "herold: the embedded store (cql.enabled=false) needs persistence.enabled, or every restart loses all accounts and messages; set persistence.allowEphemeral=true to try the chart out anyway" -}}
{{- end -}}
{{- if and $v.persistence.enabled (ne $v.strategy.type "Recreate") -}}
{{- fail "herold: the embedded store on a volume needs strategy.type=Recreate: a rolling update would start a second relay on the same store" -}}
{{- end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $v.drain.reconnectSpreadMs)) (ge (int64 $v.drain.reconnectSpreadMs) (mul (int64 $v.drain.graceSeconds) 1000)) -}}
{{- fail "herold: drain.reconnectSpreadMs must be below drain.graceSeconds (in milliseconds): devices still waiting to reconnect would be cut off at the end of the grace" -}}
{{- end -}}
{{- if and $v.redis.enabled (gt (len (include "herold.relayName" .)) 33) -}}
{{- fail (printf "herold: the Deployment name %q is longer than 33 characters: relays in a cluster take their node id from the pod name, which the relay cuts to 50 characters, and pod names add 17 (the ReplicaSet hash and a random suffix) at the end, so the relays would share one id; set fullnameOverride to something shorter" (include "herold.relayName" .)) -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail "herold: autoscaling.minReplicas is above autoscaling.maxReplicas" -}}
{{- end -}}
{{- if eq (int $v.ports.quic) (int $v.ports.admin) -}}
{{- fail "herold: ports.quic and ports.admin must differ" -}}
{{- end -}}
{{- if eq (int $v.ports.ops) (int $v.ports.admin) -}}
{{- fail "herold: ports.ops must differ from ports.admin (both are TCP on the same address)" -}}
{{- end -}}
{{- if not (and $v.resources.requests $v.resources.limits) -}}
{{- fail "herold: resources.requests and resources.limits are required (the autoscaler measures CPU against the request)" -}}
{{- end -}}
{{- $_ := include "herold.image" . -}}
{{- end -}}
