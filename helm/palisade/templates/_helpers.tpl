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
  trustAnchorsFile: /etc/palisade/ca/ca.crt
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
{{- end }}
