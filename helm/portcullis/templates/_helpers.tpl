{{/* Names and labels, as `helm create` makes them. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret names: the value, or <fullname>-<suffix>. */}}
{{- define "portcullis.assertionSecret" -}}
{{- default (printf "%s-assertion-key" (include "portcullis.fullname" .)) .Values.assertionKey.secretName }}
{{- end }}
{{- define "portcullis.oidcSecret" -}}
{{- default (printf "%s-oidc" (include "portcullis.fullname" .)) .Values.signIn.clientSecret.secretName }}
{{- end }}
{{- define "portcullis.sessionSecret" -}}
{{- default (printf "%s-session-keys" (include "portcullis.fullname" .)) .Values.signIn.session.secretName }}
{{- end }}

{{/* The ConfigMap holding the policy set (configMap and opa modes). */}}
{{- define "portcullis.policyConfigMap" -}}
{{- default (printf "%s-policy" (include "portcullis.fullname" .)) .Values.policy.existingConfigMap }}
{{- end }}

{{- define "portcullis.usesPolicyConfigMap" -}}
{{- if or (eq .Values.policy.mode "configMap") (and (eq .Values.policy.mode "opa") (not .Values.policy.opa.bundle.serviceUrl)) }}true{{ end }}
{{- end }}

{{/* Shadow mode: the candidate's source inside the pod ("" when off). */}}
{{- define "portcullis.shadowPolicyConfigMap" -}}
{{- default (printf "%s-shadow-policy" (include "portcullis.fullname" .)) .Values.policy.shadow.existingConfigMap }}
{{- end }}

{{- define "portcullis.shadowSource" -}}
{{- with .Values.policy.shadow }}
{{- if eq .mode "image" }}
{{- if not .path }}{{ fail "policy.shadow.mode image needs policy.shadow.path: the candidate's directory or bundle in the image" }}{{ end }}
{{- .path }}
{{- else if eq .mode "configMap" }}
{{- if and (not .files) (not .existingConfigMap) }}{{ fail "policy.shadow.mode configMap needs policy.shadow.files or policy.shadow.existingConfigMap" }}{{ end }}
{{- if .bundleKey }}/etc/portcullis/shadow-policy/{{ .bundleKey }}{{ else }}/etc/portcullis/shadow-policy{{ end }}
{{- else if eq .mode "opa" }}
{{- if not .url }}{{ fail "policy.shadow.mode opa needs policy.shadow.url: the OPA server that answers for the candidate" }}{{ end }}
{{- .url }}
{{- end }}
{{- end }}
{{- end }}

{{/* Deployment, or StatefulSet with decisionLog.statefulSet.enabled. */}}
{{- define "portcullis.workloadKind" -}}
{{- if .Values.decisionLog.statefulSet.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "portcullis.scheme" -}}
{{- if .Values.gateway.tls.secretName }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Mount points inside the pod. */}}
{{- define "portcullis.policySource" -}}
{{- if eq .Values.policy.mode "image" }}/opt/portcullis/policies
{{- else if eq .Values.policy.mode "opa" }}http://localhost:8181
{{- else if .Values.policy.bundleKey }}/etc/portcullis/policy/{{ .Values.policy.bundleKey }}
{{- else }}/etc/portcullis/policy
{{- end }}
{{- end }}

{{/* The gateway's config file (README "Running it"). */}}
{{- define "portcullis.gatewayConfig" -}}
{{- if and (not .Values.gateway.issuers) (not .Values.signIn.enabled) }}
{{- fail "gateway.issuers is empty and signIn.enabled is false: nobody could sign in (set one)" }}
{{- end -}}
listeners:
  - address: 0.0.0.0
    port: {{ .Values.gateway.port }}
    {{- if .Values.gateway.tls.secretName }}
    tls: {cert: /etc/portcullis/tls/tls.crt, key: /etc/portcullis/tls/tls.key}
    {{- end }}
{{- with .Values.gateway.routes }}
routes:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.gateway.issuers }}
issuers:
  {{- toYaml . | nindent 2 }}
{{- end }}
policy:
  source: {{ include "portcullis.policySource" . }}
  timeout_ms: {{ .Values.gateway.policyTimeoutMs }}
  {{- /* Files the kubelet updates in place are watched (live and shadow alike). */}}
  watch: {{ or (eq .Values.policy.mode "configMap") (eq .Values.policy.shadow.mode "configMap") }}
  poll_interval: {{ .Values.policy.pollInterval }}
  {{- with include "portcullis.shadowSource" . }}
  shadow: {{ . | quote }}
  {{- end }}
{{- /* null (unset, or --set-json 'gateway.hstsMaxAge=null'): no header */}}
hsts_max_age: {{ if kindIs "invalid" .Values.gateway.hstsMaxAge }}null{{ else }}{{ int64 .Values.gateway.hstsMaxAge }}{{ end }}
assertion:
  key_file: /etc/portcullis/assertion/assertion-key.pem
  issuer: {{ .Values.gateway.assertion.issuer | quote }}
  ttl: {{ .Values.gateway.assertion.ttl }}
{{- if eq (int .Values.gateway.adminPort) (int .Values.gateway.port) }}
{{- fail "gateway.adminPort must differ from gateway.port: /metrics never shares the public port" }}
{{- end }}
admin_listener:
  address: 0.0.0.0
  port: {{ .Values.gateway.adminPort }}
decision_log:
  path: /var/lib/portcullis/decisions.log
  sign_interval: {{ .Values.gateway.decisionLog.signInterval }}
  {{- with .Values.gateway.decisionLog.durability }}
  durability: {{ . }}
  {{- end }}
  {{- with .Values.gateway.decisionLog.sinks }}
  {{- include "portcullis.checkSinks" . }}
  sinks:
    {{- range . }}
    - name: {{ .name | quote }}
      kind: {{ .kind }}
      {{- /* absent: the gateway's default (opa) */}}
      {{- with .format }}
      format: {{ . }}
      {{- end }}
      {{- with .address }}
      address: {{ . | quote }}
      {{- end }}
      {{- with .url }}
      url: {{ . | quote }}
      {{- end }}
      {{- with .envelope }}
      envelope: {{ . }}
      {{- end }}
      {{- with .facility }}
      facility: {{ . }}
      {{- end }}
      {{- with .sourcetype }}
      sourcetype: {{ . | quote }}
      {{- end }}
      {{- with .index }}
      index: {{ . | quote }}
      {{- end }}
      {{- with .timeout }}
      timeout: {{ . }}
      {{- end }}
      {{- with .backlogAlertBytes }}
      backlog_alert_bytes: {{ . | int64 }}
      {{- end }}
      {{- if eq .kind "file" }}
      {{- /* on the state volume (the claim, when one is set), beside the log */}}
      path: {{ printf "/var/lib/portcullis/%s" (.path | default (printf "%s.jsonl" .name)) | quote }}
      {{- end }}
      {{- if .tokenSecret }}
      token_file: {{ printf "/etc/portcullis/sinks/%s/token" .name | quote }}
      {{- end }}
      {{- /* syslog: tls {} or true is TLS with the system CAs (an empty map is false to `if`);
             false or absent, plain TCP. http (the schema allows a map only, on an https url):
             the url's scheme decides, tls narrows it. */}}
      {{- if or (kindIs "map" .tls) (and (kindIs "bool" .tls) .tls) }}
      {{- $tls := dict }}
      {{- if and (kindIs "map" .tls) .tls.caSecret }}
      {{- $_ := set $tls "ca_file" (printf "/etc/portcullis/sinks/%s/ca.crt" .name) }}
      {{- end }}
      {{- if and (kindIs "map" .tls) .tls.clientCertSecret }}
      {{- $_ := set $tls "cert_file" (printf "/etc/portcullis/sinks/%s/tls.crt" .name) }}
      {{- $_ := set $tls "key_file" (printf "/etc/portcullis/sinks/%s/tls.key" .name) }}
      {{- end }}
      {{- if and (kindIs "map" .tls) .tls.serverName }}
      {{- $_ := set $tls "server_name" .tls.serverName }}
      {{- end }}
      tls: {{ toJson $tls }}
      {{- end }}
    {{- end }}
  {{- end }}
{{- if .Values.signIn.enabled }}
{{- if not (and .Values.signIn.issuer .Values.signIn.clientId) }}
{{- fail "signIn.enabled needs signIn.issuer and signIn.clientId" }}
{{- end }}
sign_in:
  issuer: {{ .Values.signIn.issuer | quote }}
  client_id: {{ .Values.signIn.clientId | quote }}
  {{- if not .Values.signIn.publicClient }}
  client_secret_file: /etc/portcullis/oidc/client-secret
  {{- end }}
  scopes: {{ toJson .Values.signIn.scopes }}
  {{- with .Values.signIn.externalUrl }}
  external_url: {{ . | quote }}
  {{- end }}
  groups_claim: {{ .Values.signIn.groupsClaim | quote }}
session:
  key_files:
    {{- range .Values.signIn.session.keys }}
    - /etc/portcullis/session/{{ . }}
    {{- end }}
  cookie_name: {{ .Values.signIn.session.cookieName | quote }}
  secure: {{ .Values.signIn.session.secure }}
  lifetime: {{ .Values.signIn.session.lifetime }}
{{- end }}
{{- with .Values.sharedState }}
{{- if .enabled }}
{{- if not .redisUrl }}
{{- fail "sharedState.enabled needs sharedState.redisUrl (redis://host:6379/0)" }}
{{- end }}
shared_state:
  redis:
    url: {{ .redisUrl | quote }}
    {{- if .password.secretName }}
    password_file: /etc/portcullis/redis/password
    {{- end }}
    {{- if .tlsCaSecretName }}
    tls: {ca_file: /etc/portcullis/redis-ca/ca.crt}
    {{- end }}
  on_unavailable: {{ .onUnavailable }}
  timeouts: {request: {{ .timeouts.request }}, connect: {{ .timeouts.connect }}, retry_interval: {{ .timeouts.retryInterval }}}
  rate_limits:
    source_ip: {requests: {{ .rateLimits.sourceIp.requests }}, window: {{ .rateLimits.sourceIp.window }}}
    identity: {requests: {{ .rateLimits.identity.requests }}, window: {{ .rateLimits.identity.window }}}
    {{- with .rateLimits.apps }}
    apps:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  lockout: {after_denies: {{ .lockout.afterDenies }}, window: {{ .lockout.window }}, duration: {{ .lockout.duration }}}
{{- end }}
{{- end }}
{{- end }}

{{/* What the gateway refuses across sinks, refused before anything is installed
     (the schema sees one sink at a time). */}}
{{- define "portcullis.checkSinks" -}}
{{- $names := dict }}
{{- $files := dict }}
{{- range $index, $sink := . }}
{{- with index $names $sink.name }}
{{- fail (printf "gateway.decisionLog.sinks[%d].name: %q is also sinks[%s]'s name; each sink needs its own (it names the sink's cursor, metrics and Secrets' directory)" $index $sink.name .) }}
{{- end }}
{{- $_ := set $names $sink.name (toString $index) }}
{{- if eq $sink.kind "file" }}
{{- $file := $sink.path | default (printf "%s.jsonl" $sink.name) }}
{{- with index $files $file }}
{{- fail (printf "gateway.decisionLog.sinks[%d].path: %q is also sinks[%s]'s file; each file sink needs a file of its own" $index $file .) }}
{{- end }}
{{- $_ := set $files $file (toString $index) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A sink with Secrets to mount (its token, CA, client certificate): "true" or "". */}}
{{- define "portcullis.sinkHasSecrets" -}}
{{- if or .tokenSecret (and (kindIs "map" .tls) (or .tls.caSecret .tls.clientCertSecret)) }}true{{ end }}
{{- end }}

{{/* The restricted Pod Security Standard, for every container. */}}
{{- define "portcullis.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
