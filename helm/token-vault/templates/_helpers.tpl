{{/*
Shared helpers for the token-vault chart: names, labels, the image reference, the settings.toml
the vault reads, and the pod pieces (volumes, mounts, environment) that the Deployment and the
migration Job must agree on.
*/}}

{{/* Where things are mounted inside the container. Fixed: settings.toml refers to them. */}}
{{- define "token-vault.configDir" -}}/etc/token-vault/config{{- end -}}
{{- define "token-vault.configFile" -}}{{ include "token-vault.configDir" . }}/settings.toml{{- end -}}
{{- define "token-vault.keyringDir" -}}/etc/token-vault/keyring{{- end -}}
{{- define "token-vault.providersDir" -}}/etc/token-vault/providers{{- end -}}

{{- define "token-vault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, 63 characters at most (a DNS label); suffixes below stay within it. */}}
{{- define "token-vault.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "token-vault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "token-vault.labels" -}}
helm.sh/chart: {{ include "token-vault.chart" . }}
app.kubernetes.io/name: {{ include "token-vault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of the serving pods. The component label keeps the migration Job's pods out of
the Service, the PodDisruptionBudget, the NetworkPolicy and the spread constraints.
*/}}
{{- define "token-vault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-vault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "token-vault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "token-vault.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The migration Job runs before the release's own ServiceAccount exists on a first install, so it
gets a hook-scoped one (same annotations) when the chart creates accounts, and otherwise uses the
account the operator named.
*/}}
{{- define "token-vault.migrationServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- printf "%s-migrate" (include "token-vault.fullname" .) -}}
{{- else -}}
{{- include "token-vault.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{- define "token-vault.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Cross-field checks the JSON schema cannot express. Included by the Deployment, so that every
render (install, upgrade, template, lint) runs them.
*/}}
{{- define "token-vault.validate" -}}
{{- $names := list -}}
{{- range .Values.providers -}}
{{- if has .name $names -}}
{{- fail (printf "providers: the name %q appears twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- with dig "vault" "default_provider" "" .Values.settings -}}
{{- if not (has . $names) -}}
{{- fail (printf "settings.vault.default_provider: %q names no entry of providers" .) -}}
{{- end -}}
{{- end -}}
{{- /* The embedded SQLite store is one file on one machine: pods on other nodes can't share
it, and each pod's own file would refresh (and so spend) the same refresh tokens. The URL
normally comes from secrets.database, which the chart cannot read; the vault says so at start.
A URL given in extraEnv is checked here. */ -}}
{{- range .Values.extraEnv -}}
{{- if and (eq (toString .name) "TOKEN_VAULT_DATABASE__URL") (hasPrefix "sqlite:" (lower (toString .value))) -}}
{{- fail "TOKEN_VAULT_DATABASE__URL: the chart runs Postgres only; a sqlite: URL is the embedded store for a single node (one file, no replicas across pods; see docs/deploy.md)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "serviceMonitor.enabled requires metrics.enabled (the port the ServiceMonitor scrapes)" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.grpc.port)) -}}
{{- fail "metrics.port must differ from grpc.port" -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- if eq (int .Values.tls.healthPort) (int .Values.grpc.port) -}}
{{- fail "tls.healthPort must differ from grpc.port" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.tls.healthPort) (int .Values.metrics.port)) -}}
{{- fail "tls.healthPort must differ from metrics.port" -}}
{{- end -}}
{{- end -}}
{{- include "token-vault.validateShutdown" . -}}
{{- $auth := .Values.settings.auth -}}
{{- $callerNames := list -}}
{{- $identities := dict -}}
{{- range $i, $c := $auth.callers -}}
{{- if has $c.name $callerNames -}}
{{- fail (printf "settings.auth.callers: the name %q appears twice" $c.name) -}}
{{- end -}}
{{- $callerNames = append $callerNames $c.name -}}
{{- range $p := $c.providers -}}
{{- if not (or (eq $p "*") (has $p $names)) -}}
{{- fail (printf "settings.auth.callers[%d] (%s): provider %q names no entry of providers (use a configured name or \"*\")" $i $c.name $p) -}}
{{- end -}}
{{- end -}}
{{- $hashes := list -}}
{{- range $c.bearer_token_sha256 }}{{ $hashes = append $hashes (printf "sha256:%s" (lower .)) }}{{ end -}}
{{- range $id := concat (default (list) $c.mtls_uris) (default (list) $c.mtls_dns_names) $hashes -}}
{{- if hasKey $identities $id -}}
{{- fail (printf "settings.auth.callers: identity %q names two callers (%s and %s)" $id (get $identities $id) $c.name) -}}
{{- end -}}
{{- $_ := set $identities $id $c.name -}}
{{- end -}}
{{- if and (or $c.mtls_uris $c.mtls_dns_names) (not (and $.Values.tls.enabled $.Values.tls.clientCaKey)) -}}
{{- fail (printf "settings.auth.callers[%d] (%s) is identified by client certificate: set tls.enabled and tls.clientCaKey (mutual TLS)" $i $c.name) -}}
{{- end -}}
{{- if and $c.bearer_token_sha256 (not $.Values.tls.enabled) (not $auth.allow_bearer_without_tls) -}}
{{- fail (printf "settings.auth.callers[%d] (%s) presents a bearer token, which must not cross the network in clear: set tls.enabled (or, only behind a TLS-terminating sidecar, settings.auth.allow_bearer_without_tls)" $i $c.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Milliseconds in a duration written as values.schema.json accepts it: humantime's numbers with
units, one or more of them ("500ms", "45s", "1m30s", "1h 30m"). A float, so that no digit string
the schema lets through can wrap around into a small number. The units are those of the schema's
pattern; anything else fails, naming the value.
*/}}
{{- define "token-vault.durationMs" -}}
{{- $units := dict "nsec" 0.000001 "ns" 0.000001 "usec" 0.001 "us" 0.001 "µs" 0.001 "msec" 1.0 "ms" 1.0 "seconds" 1000.0 "second" 1000.0 "secs" 1000.0 "sec" 1000.0 "s" 1000.0 "minutes" 60000.0 "minute" 60000.0 "mins" 60000.0 "min" 60000.0 "m" 60000.0 "hours" 3600000.0 "hour" 3600000.0 "hrs" 3600000.0 "hr" 3600000.0 "h" 3600000.0 "days" 86400000.0 "day" 86400000.0 "d" 86400000.0 "weeks" 604800000.0 "week" 604800000.0 "w" 604800000.0 -}}
{{- $total := 0.0 -}}
{{- $parts := regexFindAll "[0-9]+\\s*[^0-9\\s]+" .value -1 -}}
{{- if not $parts -}}
{{- fail (printf "%s: %q is not a duration such as 45s, 1m30s or 500ms" .name .value) -}}
{{- end -}}
{{- range $parts -}}
{{- $unit := regexReplaceAll "^[0-9]+\\s*" . "" -}}
{{- if not (hasKey $units $unit) -}}
{{- fail (printf "%s: %q has the unknown unit %q" $.name $.value $unit) -}}
{{- end -}}
{{- $total = addf $total (mulf (regexFind "^[0-9]+" .) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
The pod must be allowed to stop on its own. On SIGTERM (after the preStop sleep, which Kubernetes
counts inside terminationGracePeriodSeconds) the vault stops accepting calls, gives in-flight calls
up to settings.server.shutdown_grace and, at the same time, lets every refresh in flight store the
refresh token the provider rotated, bounded by settings.refresh.lease_ttl; the audit writer then
has up to 5 s for its last write. A SIGKILL before that can land between the provider's rotation
and the commit: the only valid refresh token is lost, and presenting the old one again makes the
provider (Ory Hydra) revoke the customer's grant. Unset settings count at the vault's defaults,
20s and 45s (scripts/check-deploy checks rendered pods against config/defaults.toml).
*/}}
{{- define "token-vault.validateShutdown" -}}
{{- $graceText := dig "server" "shutdown_grace" "20s" .Values.settings -}}
{{- $leaseText := dig "refresh" "lease_ttl" "45s" .Values.settings -}}
{{- $grace := include "token-vault.durationMs" (dict "name" "settings.server.shutdown_grace" "value" $graceText) | float64 -}}
{{- $lease := include "token-vault.durationMs" (dict "name" "settings.refresh.lease_ttl" "value" $leaseText) | float64 -}}
{{- $preStop := int .Values.preStopSleepSeconds -}}
{{- $neededMs := addf (mulf $preStop 1000.0) (maxf $grace $lease) 5000.0 -}}
{{- $needed := ceil (divf $neededMs 1000.0) -}}
{{- $period := int .Values.terminationGracePeriodSeconds -}}
{{- if lt (mulf $period 1000.0) $neededMs -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) is shorter than a pod needs to stop: preStopSleepSeconds (%d s) + max(settings.server.shutdown_grace %q, settings.refresh.lease_ttl %q) + 5 s for the audit writer = %.0f s. Set terminationGracePeriodSeconds to at least %.0f: a refresh killed between the provider's rotation and the commit loses the customer's grant (docs/deploy.md, \"Stopping a pod\")" $period $preStop $graceText $leaseText $needed $needed) -}}
{{- end -}}
{{- end -}}

{{/* The TCP port an http(s) URL connects to: the one it names, else 443 (https) or 80 (http). */}}
{{- define "token-vault.urlPort" -}}
{{- $url := urlParse . -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" -}}
{{- if $port }}{{ $port }}{{ else if eq $url.scheme "http" }}80{{ else }}443{{ end -}}
{{- end -}}

{{/* One TOML value: strings (JSON string escapes are valid TOML), integers, floats, booleans. */}}
{{- define "token-vault.tomlScalar" -}}
{{- if eq .type "int" -}}{{ .value | int64 }}
{{- else if eq .type "float" -}}{{ .value | float64 }}
{{- else if eq .type "bool" -}}{{ .value }}
{{- else if eq .type "list" -}}{{ .value | toJson }}
{{- else -}}{{ .value | toString | toJson }}
{{- end -}}
{{- end -}}

{{/*
settings.toml: what the chart decides (mode, listener, where secret files are mounted), then the
operator's `settings`, [tls] from `tls`, [auth] with one [[auth.callers]] per caller, then one
table per provider. Helm's toToml is not used because it writes
every number as a float, which the vault's integer settings reject.
*/}}
{{- define "token-vault.settingsToml" -}}
{{- $types := dict "max_connections" "int" "cache_max_entries" "int" "max_attempts" "int" "max_margin_fraction" "float" "create_if_missing" "bool" "queue_capacity" "int" "max_aggregate_keys" "int" "max_concurrent_streams" "int" "max_health_watches" "int" "max_health_watches_per_connection" "int" "max_open_states" "int" "max_rotations" "int" "enabled" "bool" "max_per_second" "int" "watch_buffer" "int" "max_watchers" "int" "keep_generations" "int" -}}
{{- $host := .Values.grpc.host -}}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end -}}
# Rendered by the token-vault Helm chart; edit the chart's values, not this file.
# Layered over the binary's built-in defaults; TOKEN_VAULT_* variables override it.
mode = "production"

[server]
listen = {{ printf "%s:%d" $host (int .Values.grpc.port) | toJson }}
{{- range $k, $v := .Values.settings.server }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $types $k)) }}
{{- end }}

[database]
# url comes from the environment (TOKEN_VAULT_DATABASE__URL, from secrets.database).
{{- range $k, $v := .Values.settings.database }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $types $k)) }}
{{- end }}

[encryption]
keyring_file = {{ printf "%s/keyring" (include "token-vault.keyringDir" .) | toJson }}
{{- range $k, $v := .Values.settings.encryption }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $types $k)) }}
{{- end }}
{{- /* metrics.enabled serves GET /metrics on metrics.port (telemetry.metrics_listen). */ -}}
{{- $sections := deepCopy .Values.settings -}}
{{- if .Values.metrics.enabled -}}
{{- $telemetry := default (dict) (get $sections "telemetry") -}}
{{- $_ := set $telemetry "metrics_listen" (printf "%s:%d" $host (int .Values.metrics.port)) -}}
{{- $_ := set $sections "telemetry" $telemetry -}}
{{- end -}}
{{- range $section := list "vault" "refresh" "failover" "keepalive" "events" "retention" "log" "telemetry" "audit" }}
{{- with get $sections $section }}

[{{ $section }}]
{{- range $k, $v := . }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $types $k)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}

[tls]
# From the Secret tls.existingSecret, mounted at tls.mountPath.
cert_file = {{ printf "%s/%s" .Values.tls.mountPath .Values.tls.certKey | toJson }}
key_file = {{ printf "%s/%s" .Values.tls.mountPath .Values.tls.keyKey | toJson }}
{{- with .Values.tls.clientCaKey }}
client_ca_file = {{ printf "%s/%s" $.Values.tls.mountPath . | toJson }}
{{- end }}
# grpc.health.v1 alone, in plaintext, for the kubelet's gRPC probes.
plaintext_health_listen = {{ printf "%s:%d" $host (int .Values.tls.healthPort) | toJson }}
{{- end }}
{{- $auth := .Values.settings.auth }}
{{- $authTypes := dict "allow_bearer_without_tls" "bool" "default_max_concurrent_calls" "int" "default_begin_authorization_per_second" "int" "default_begin_authorization_burst" "int" }}

[auth]
mode = {{ $auth.mode | toJson }}
{{- range $k, $v := omit $auth "mode" "callers" }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $authTypes $k)) }}
{{- end }}
{{- $callerTypes := dict "mtls_uris" "list" "mtls_dns_names" "list" "bearer_token_sha256" "list" "rpcs" "list" "providers" "list" "tenants" "list" "max_concurrent_calls" "int" "requests_per_second" "int" "burst" "int" "begin_authorization_per_second" "int" "begin_authorization_burst" "int" }}
{{- range $auth.callers }}

[[auth.callers]]
name = {{ .name | toJson }}
{{- range $k, $v := omit . "name" }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $callerTypes $k)) }}
{{- end }}
{{- end }}
{{- $providersDir := include "token-vault.providersDir" . }}
{{- $providerTypes := dict "pkce" "bool" "default_scopes" "list" "redirect_uris" "list" }}
{{- range .Values.providers }}

[providers.{{ .name }}]
{{- if .client_secret.nextKey }}
client_secret_files = [{{ printf "%s/%s/client-secret" $providersDir .name | toJson }}, {{ printf "%s/%s/client-secret-next" $providersDir .name | toJson }}]
{{- else }}
client_secret_file = {{ printf "%s/%s/client-secret" $providersDir .name | toJson }}
{{- end }}
{{- range $k, $v := omit . "name" "client_secret" "extra_authorization_params" }}
{{ $k }} = {{ include "token-vault.tomlScalar" (dict "value" $v "type" (get $providerTypes $k)) }}
{{- end }}
{{- with .extra_authorization_params }}
extra_authorization_params = { {{- $first := true }}{{ range $k, $v := . }}{{ if not $first }},{{ end }} {{ $k | toJson }} = {{ $v | toString | toJson }}{{ $first = false }}{{ end }} }
{{- end }}
{{- end }}
{{ end -}}

{{/* Volumes shared by the Deployment and the migration Job. `keyring` is for serving pods only. */}}
{{- define "token-vault.volumes" -}}
- name: settings
  configMap:
    name: {{ .configMap }}
    items:
      - key: settings.toml
        path: settings.toml
{{- if .keyring }}
- name: keyring
  secret:
    secretName: {{ .root.Values.secrets.keyring.existingSecret }}
    # 0440: readable by the pod's fsGroup (the vault's group), nobody else.
    defaultMode: 288
    items:
      - key: {{ .root.Values.secrets.keyring.key }}
        path: keyring
{{- end }}
- name: provider-secrets
  projected:
    defaultMode: 288
    sources:
{{- range .root.Values.providers }}
      - secret:
          name: {{ .client_secret.existingSecret }}
          items:
            - key: {{ .client_secret.key | default "client-secret" }}
              path: {{ .name }}/client-secret
{{- if .client_secret.nextKey }}
            - key: {{ .client_secret.nextKey }}
              path: {{ .name }}/client-secret-next
{{- end }}
{{- end }}
{{- end -}}

{{- define "token-vault.volumeMounts" -}}
- name: settings
  mountPath: {{ include "token-vault.configDir" .root }}
  readOnly: true
{{- if .keyring }}
- name: keyring
  mountPath: {{ include "token-vault.keyringDir" .root }}
  readOnly: true
{{- end }}
- name: provider-secrets
  mountPath: {{ include "token-vault.providersDir" .root }}
  readOnly: true
{{- end -}}

{{/* Environment shared by the Deployment and the migration Job. */}}
{{- define "token-vault.env" -}}
- name: TOKEN_VAULT_CONFIG
  value: {{ include "token-vault.configFile" . }}
- name: TOKEN_VAULT_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.database.existingSecret }}
      key: {{ .Values.secrets.database.key }}
{{- end -}}
