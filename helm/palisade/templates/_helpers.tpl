{{/* Labels every object of the release carries. */}}
{{- define "palisade.labels" -}}
app.kubernetes.io/name: palisade
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The control plane's pods. */}}
{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: palisade
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "palisade.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "palisade.initImage" -}}
{{ .Values.initImage.repository }}:{{ .Values.initImage.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Service the sidecars and the API server reach; the sidecars' defaults name it. */}}
{{- define "palisade.service" -}}palisade-control{{- end }}

{{/* With pki.certManager.issuerRef the mesh CA is that issuer's intermediate: "true", else empty. */}}
{{- define "palisade.caIsIntermediate" -}}
{{- if and (eq .Values.pki.source "certManager") .Values.pki.certManager.issuerRef }}true{{ end }}
{{- end }}

{{/* The mesh's roots in the control plane: what its CA hands out and injected sidecars check it with.
     pki.trustBundle when given (a rotation's two roots); else an intermediate's are the issuer's, a
     file of their own, and a root is its own. */}}
{{- define "palisade.caRoots" -}}
{{- if .Values.pki.trustBundle }}/etc/palisade/trust/roots.crt
{{- else if include "palisade.caIsIntermediate" . }}/etc/palisade/ca/roots.crt
{{- else }}/etc/palisade/ca/ca.crt{{ end }}
{{- end }}

{{/* A resource quantity as a number of cores or bytes, to compare a request with its limit (Go
     templates have no quantity type): the forms values.schema.json admits, a decimal number with no
     suffix or one of m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei. A float: exact for whole numbers
     with any suffix, and close enough for fractions that only equal quantities could compare wrong. */}}
{{- define "palisade.quantity" -}}
{{- if kindIs "string" . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $suffix := trimPrefix $number . }}
{{- if eq $suffix "m" }}
{{- /* Divided, not multiplied by 0.001: 100m is then the same float as 0.1. */}}
{{- divf $number 1000 }}
{{- else }}
{{- $scale := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- mulf $number (get $scale $suffix) }}
{{- end }}
{{- else }}
{{- float64 . }}
{{- end }}
{{- end }}

{{/* Fails the render when a request is more than its limit (`name`: the value, `resources`: its
     requests and limits). Injected containers' resources live in a ConfigMap, so nothing refuses
     them at install: the API server would refuse every injected pod instead. */}}
{{- define "palisade.checkResources" -}}
{{- $limits := .resources.limits | default dict }}
{{- range $resource, $request := .resources.requests | default dict }}
{{- if hasKey $limits $resource }}
{{- $limit := index $limits $resource }}
{{- if gt (float64 (include "palisade.quantity" $request)) (float64 (include "palisade.quantity" $limit)) }}
{{- fail (printf "%s: requests.%s (%s) is more than limits.%s (%s): the API server would refuse every injected pod" $.name $resource (toJson $request | trimAll "\"") $resource (toJson $limit | trimAll "\"")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The injection settings (the control plane's webhook.sidecar section). */}}
{{- define "palisade.sidecarSettings" -}}
image: {{ include "palisade.image" . | quote }}
initImage: {{ include "palisade.initImage" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
controlPlane:
  service: {{ include "palisade.service" . }}
  namespace: {{ .Release.Namespace }}
trustDomain: {{ .Values.trustDomain | quote }}
identity:
  mode: {{ .Values.identity.mode }}
  {{- if eq .Values.identity.mode "controlPlane" }}
  trustAnchorsFile: {{ include "palisade.caRoots" . }}
  {{- else }}
  secretName: {{ .Values.identity.secretName | quote }}
  {{- end }}
proxyUid: {{ .Values.sidecar.proxyUid }}
logLevel: {{ .Values.sidecar.logLevel | quote }}
resources: {{- toYaml .Values.sidecar.resources | nindent 2 }}
initResources: {{- toYaml .Values.sidecar.initResources | nindent 2 }}
excludedNamespaces: {{- toYaml (concat (list "kube-system") .Values.webhook.excludeNamespaces) | nindent 2 }}
excludeInboundPorts: {{- toYaml .Values.sidecar.excludeInboundPorts | nindent 2 }}
excludeOutboundPorts: {{- toYaml .Values.sidecar.excludeOutboundPorts | nindent 2 }}
excludeOutboundCidrs: {{- toYaml .Values.sidecar.excludeOutboundCidrs | nindent 2 }}
outboundPassthrough: {{- toYaml .Values.sidecar.outboundPassthrough | nindent 2 }}
opaquePorts: {{- toYaml .Values.sidecar.opaquePorts | nindent 2 }}
{{- with .Values.sidecar.telemetry }}
telemetry: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
