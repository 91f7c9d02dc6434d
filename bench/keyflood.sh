#!/usr/bin/env bash
# Memory under a flood of distinct rate-limit keys (issue 3): a sidecar with a per-header-key
# limit, 100,000 distinct keys sent as fast as four keep-alive connections go, RSS and live
# buckets sampled every second, then again after 3 s idle. Loopback only; bounded by N.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release/palisade"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
TMP=$(mktemp -d /tmp/palisade-keyflood.XXXXXX)
cleanup() { [ -n "${SC:-}" ] && kill "$SC" 2>/dev/null; nginx -p "$TMP/ngx" -c "$TMP/ngx/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
mkdir -p "$TMP/ngx"
cat > "$TMP/ngx/nginx.conf" <<NGX
worker_processes 1; pid $TMP/ngx/nginx.pid; error_log $TMP/ngx/error.log;
events {}
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:26080; location / { return 200 "ok\n"; } } }
NGX
nginx -p "$TMP/ngx" -c "$TMP/ngx/nginx.conf"
"$BIN" ca init --trust-domain demo.local --out "$TMP/ca" >/dev/null
"$BIN" ca issue --ca "$TMP/ca" --spiffe-id spiffe://demo.local/ns/demo/sa/b --out "$TMP/b" >/dev/null
cat > "$TMP/policy.yaml" <<YAML
apiVersion: palisade.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: flood, namespace: demo}
spec:
  selector: {matchLabels: {app: b}}
  rateLimits:
    - {name: per-key, key: "request.headers[x-api-key]", rate: 100, per: 1s, burst: 200}
YAML
cat > "$TMP/b.yaml" <<YAML
identity: {files: {cert: $TMP/b/tls.crt, key: $TMP/b/tls.key, trustBundle: $TMP/b/ca.crt}}
trustDomain: demo.local
inbound: {listen: "127.0.0.1:26006", app: "127.0.0.1:26080", mtls: PERMISSIVE}
outbound: {listen: "127.0.0.1:26001"}
admin: {listen: "127.0.0.1:26000"}
workload: {namespace: demo, serviceAccount: b, labels: {app: b}}
policy: {files: [$TMP/policy.yaml]}
telemetry: {events: {sink: "file:$TMP/events.jsonl"}}
YAML
"$BIN" sidecar --config "$TMP/b.yaml" 2>"$TMP/sidecar.log" &
SC=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:26000/ready >/dev/null && break; sleep 0.05; done
timeout 300 python3 "$ROOT/bench/keyflood.py" 26006 26000 "$SC"
