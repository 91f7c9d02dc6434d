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
     requests and limits, `refused`: what the API server would refuse). Injected containers'
     resources live in a ConfigMap, so nothing refuses them at install: the API server would refuse
     every injected pod instead; the control plane's would leave its Deployment without pods while
     the install reports success. */}}
{{- define "palisade.checkResources" -}}
{{- $limits := .resources.limits | default dict }}
{{- range $resource, $request := .resources.requests | default dict }}
{{- if hasKey $limits $resource }}
{{- $limit := index $limits $resource }}
{{- if gt (float64 (include "palisade.quantity" $request)) (float64 (include "palisade.quantity" $limit)) }}
{{- fail (printf "%s: requests.%s (%s) is more than limits.%s (%s): the API server would refuse %s" $.name $resource (toJson $request | trimAll "\"") $resource (toJson $limit | trimAll "\"") ($.refused | default "every injected pod")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails the render on an address or CIDR block the control plane would refuse at start
     (`name`: the value, `blocks`: its list): values.schema.json checks the characters, this the
     rest: an IPv6 address's groups, and bits set past a block's prefix (`10.1.2.3/8`). Go templates
     have no address type, so the 32 and 128 bits are counted here, a 16-bit group at a time. */}}
{{- define "palisade.checkCidrs" -}}
{{- $hex := dict "0" 0 "1" 1 "2" 2 "3" 3 "4" 4 "5" 5 "6" 6 "7" 7 "8" 8 "9" 9 "a" 10 "b" 11 "c" 12 "d" 13 "e" 14 "f" 15 }}
{{- range $i, $block := .blocks }}
{{- $where := printf "%s[%d]: %q" $.name $i $block }}
{{- $parts := splitList "/" $block }}
{{- $address := first $parts }}
{{- $groups := list }}
{{- $bits := 16 }}
{{- if contains "." $address }}
{{- $bits = 8 }}
{{- $groups = splitList "." $address }}
{{- else }}
{{- $halves := splitList "::" $address }}
{{- if gt (len $halves) 2 }}
{{- fail (printf "%s: \"::\" may stand for zero groups once in an IPv6 address" $where) }}
{{- end }}
{{- $left := ternary (list) (splitList ":" (first $halves)) (eq (first $halves) "") }}
{{- $right := list }}
{{- if eq (len $halves) 2 }}
{{- $right = ternary (list) (splitList ":" (last $halves)) (eq (last $halves) "") }}
{{- end }}
{{- $given := add (len $left) (len $right) }}
{{- if or (and (eq (len $halves) 2) (gt $given 7)) (and (eq (len $halves) 1) (ne $given 8)) }}
{{- fail (printf "%s: an IPv6 address has eight groups of 1-4 hex digits, \"::\" standing for one or more that are zero" $where) }}
{{- end }}
{{- $groups = $left }}
{{- range until (sub 8 $given | int) }}
{{- $groups = append $groups "0" }}
{{- end }}
{{- $groups = concat $groups $right }}
{{- end }}
{{- range $groups }}
{{- if not (regexMatch (ternary "^[0-9]{1,3}$" "^[0-9a-fA-F]{1,4}$" (eq $bits 8)) .) }}
{{- fail (printf "%s: expected an IP address or CIDR block such as 10.0.0.0/8 or fd00::/8" $where) }}
{{- end }}
{{- end }}
{{- $prefix := ternary (atoi (last $parts)) (mul (len $groups) $bits) (eq (len $parts) 2) }}
{{- range $g, $group := $groups }}
{{- /* The bits of this group past the prefix must all be 0. */}}
{{- $past := sub (mul (add $g 1) $bits) $prefix }}
{{- if gt $past 0 }}
{{- $value := 0 }}
{{- if eq $bits 8 }}
{{- $value = atoi $group }}
{{- else }}
{{- range splitList "" (lower $group) }}
{{- $value = add (mul $value 16) (get $hex .) }}
{{- end }}
{{- end }}
{{- $span := 1 }}
{{- range until (min $past $bits | int) }}
{{- $span = mul $span 2 }}
{{- end }}
{{- if ne (mod $value $span) 0 }}
{{- fail (printf "%s has bits set past its /%d prefix: write the block's own first address, or the prefix meant" $where $prefix) }}
{{- end }}
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
excludedNamespaces: {{- toYaml .Values.webhook.excludeNamespaces | nindent 2 }}
excludeInboundPorts: {{- toYaml .Values.sidecar.excludeInboundPorts | nindent 2 }}
excludeOutboundPorts: {{- toYaml .Values.sidecar.excludeOutboundPorts | nindent 2 }}
excludeOutboundCidrs: {{- toYaml .Values.sidecar.excludeOutboundCidrs | nindent 2 }}
outboundPassthrough: {{- toYaml .Values.sidecar.outboundPassthrough | nindent 2 }}
opaquePorts: {{- toYaml .Values.sidecar.opaquePorts | nindent 2 }}
{{- with .Values.sidecar.telemetry }}
telemetry: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
