{{- /*
palisade.webhookCertificate: the injection webhook's serving pair to install, as YAML (cert, key,
ca, trusted: the caBundle's PEMs, notAfter: Unix seconds), given the Secret found on the cluster
(or nothing), the time now (Unix seconds), validityDays, commonName and dnsNames.
The Secret's pair is kept while more than 30 days (a third of its life, if that is shorter) are
left of it, by the end the chart wrote in its palisade.dev/not-after annotation; otherwise
(none, or no annotation: a pair of a chart before it) a new pair is made. An expired pair made the
API server refuse to call the webhook, and with failurePolicy Fail every pod of a meshed
namespace. The old CA is trusted beside the new one for a week (previous-ca.crt): the API server
has the new caBundle at once, the control plane the new Secret when its kubelet syncs it.
*/ -}}
{{- define "palisade.webhookCertificate" -}}
{{- $validity := int .validityDays }}
{{- $renewBefore := min (mul 30 86400) (div (mul $validity 86400) 3) }}
{{- $data := dict }}
{{- $annotations := dict }}
{{- with .secret }}
{{- $data = .data | default dict }}
{{- $annotations = (.metadata | default dict).annotations | default dict }}
{{- end }}
{{- $notAfter := index $annotations "palisade.dev/not-after" | default "0" | int64 }}
{{- $pair := dict }}
{{- if and (index $data "tls.key") (gt $notAfter (add .now $renewBefore)) }}
{{- /* The CA a renewal replaced stays trusted for a week after it (previous-ca.crt, renewed-at):
an upgrade soon after a renewal, before the control plane's kubelet gave it the new pair, must
not leave the API server trusting only the new CA. */}}
{{- $previous := "" }}
{{- $renewedAt := index $annotations "palisade.dev/renewed-at" | default "0" | int64 }}
{{- if and (index $data "previous-ca.crt") (lt .now (add $renewedAt (mul 7 86400))) }}
{{- $previous = index $data "previous-ca.crt" | b64dec }}
{{- end }}
{{- $pair = dict "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) "ca" (index $data "ca.crt" | b64dec) "previous" $previous "renewedAt" $renewedAt "notAfter" $notAfter }}
{{- else }}
{{- /* Its own CA: the API server trusts this one for the webhook only, never a mesh identity. */}}
{{- $wca := genCA "Palisade webhook CA" $validity }}
{{- $cert := genSignedCert .commonName nil .dnsNames $validity $wca }}
{{- $old := "" }}
{{- if index $data "ca.crt" }}
{{- $old = index $data "ca.crt" | b64dec }}
{{- end }}
{{- $pair = dict "cert" $cert.Cert "key" $cert.Key "ca" $wca.Cert "previous" $old "renewedAt" .now "notAfter" (add .now (mul $validity 86400)) }}
{{- end }}
{{- $trusted := printf "%s\n" (compact (list (trim $pair.ca) (trim $pair.previous)) | join "\n") }}
{{- merge (dict "trusted" $trusted "renewedAt" (toString $pair.renewedAt) "notAfter" (toString $pair.notAfter)) $pair | toYaml }}
{{- end }}
