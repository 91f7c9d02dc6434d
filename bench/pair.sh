#!/usr/bin/env bash
# bench/pair.sh — Palisade sidecar pair vs an nginx mTLS pair (issue 2).
#
# What it measures
#   The same fixed-rate HTTP load (oha, open model with --latency-correction, so queueing
#   delay counts against the proxy; keep-alive on) is sent three times:
#     a) direct   client → app
#     b) palisade client → sidecar A outbound (Host: b.demo) → mTLS (h2) → sidecar B inbound → app
#     c) nginx    client → nginx A (plaintext) → mTLS (HTTP/1.1, upstream keepalive) → nginx B → app
#   The app is its own nginx process (1 worker) answering `return 200 "ok"`.
#   Every proxy runs one worker: Palisade `threads: 1`, nginx `worker_processes 1`.
#
#   Per run: p50 / p99 / p99.9 latency (ms), success rate and status codes, achieved rate;
#   per proxy process: CPU-seconds per 1,000 requests (utime+stime from /proc/PID/stat,
#   before/after the measured load, / CLK_TCK; nginx counts master + worker), peak RSS
#   (VmHWM, MB; nginx: master + worker added up), and for Palisade the start-to-ready time
#   (launch of `palisade sidecar` until admin GET /ready answers 200, polled every 5 ms).
#   Also, as a diagnostic, how many new connections B and the app accepted during the
#   measured run (Palisade B: inbound TLS handshakes from /metrics; nginx: stub_status
#   "accepts" on a separate status port), and how busy the whole machine was.
#   A warm-up load (WARMUP, same rate and connections) precedes each measured run and is
#   excluded from every figure. oha cancels the requests still in flight at the deadline;
#   those are listed as "cut at deadline", not as failures. The "machine busy / oha / other"
#   column says how much CPU the rest of the machine used during the run: a run with a large
#   "other" share was disturbed and its tail latencies are not comparable.
#   Every nginx gets keepalive_requests 1000000 (default 1000) so neither pair closes
#   keep-alive connections in the middle of a run.
#
# Cost: about 60 s of load phase; plus a release build when the sources changed, and on a
#   fresh machine `cargo install oha` (about 6-7 min on 2 cores).
#
# How
#   Everything listens on 127.0.0.1 only; every load is bounded by oha's -z duration and a
#   per-request timeout. A temp dir holds the PKI, configs and nginx prefixes; all processes
#   started here are stopped by the EXIT trap. Results: bench/out/results.md (+ raw oha JSON
#   and Palisade metrics under bench/out/raw, logs under bench/out/logs).
#
# Usage
#   bench/pair.sh                           # 1000 req/s, 16 connections, 15 s
#   RATE=2000 CONNS=32 DURATION=30s bench/pair.sh
#   POLICY_RULES=20 bench/pair.sh           # sidecar B enforces a 20-rule policy and two rate limits
#   PROFILE=1 bench/pair.sh                 # also `perf record -g` each proxy process during its
#                                           # measured run: bench/out/raw/LABEL-NAME.perf.data
#                                           # (perf report -i ...); profiling costs CPU, so the
#                                           # figures of a profiled run are not comparable
#   PROFILE=1 PROFILE_ARGS="-e probe_libc:malloc" bench/pair.sh
#                                           # perf record's arguments instead of "-F 4999 -g": here
#                                           # every call of an uprobe made first with
#                                           # `perf probe -x /lib/x86_64-linux-gnu/libc.so.6 malloc`
#                                           # (allocations per request: samples / responses); add
#                                           # "--call-graph dwarf,16384" for where they come from
#                                           # (release builds keep no frame pointers; perf then
#                                           # loses samples, so read shares, not counts)
#   TELEMETRY=full bench/pair.sh            # both sidecars: 1% of traces to a live OTLP receiver
#                                           # (examples/otlp_sink), security events and access log
#                                           # to files (off by default: metrics only, no access log);
#                                           # TELEMETRY=traces or accesslog: only that one on
#   PGO=0 bench/pair.sh                     # measure a plain `cargo build --release` binary instead of
#                                           # the profile-guided build (scripts/build-pgo.sh) that is
#                                           # what Palisade ships
#   PLAIN=1 bench/pair.sh                   # both: the profile-guided pair and then the plain build's
#                                           # pair (PALISADE_PLAIN_BIN, default target/release/palisade),
#                                           # with nginx, in the same run
#   BODY_BYTES=1024 bench/pair.sh           # every run POSTs a body of that many bytes
#   API_PROTECTION=1 bench/pair.sh          # sidecar B also requires a JWT (RS256, JWKS file) and runs
#                                           # the WAF in BLOCK mode at paranoia 1; every run (nginx and
#                                           # direct too) sends the same Authorization header, a query of
#                                           # ten parameters and, with BODY_BYTES, a JSON body; implies
#                                           # POLICY_RULES=20 unless set
#   RESPONSE_BYTES=16384 bench/pair.sh      # the app answers with a body of that many bytes (not "ok")
#   HEADERS=30 bench/pair.sh                # every request carries 30 extra headers (x-h1..x-h30)
#   RATE=max CONNS=32 bench/pair.sh         # saturation: oha sends as fast as the CONNS connections
#                                           # allow (closed model); compare requests per CPU-second
# Other overrides: WARMUP (2s), BASE_PORT (27000), PALISADE_THREADS (1), KEEP_TMP=1,
#   SKIP_INSTALL=1 (do not try apt/cargo), SKIP_BUILD=1 (use the binary already built),
#   PALISADE_BIN (the binary to measure), BENCH_OUT (bench/out), ONLY=palisade (the Palisade
#   pair alone, no report: how scripts/build-pgo.sh trains its profile).
set -euo pipefail

RATE=${RATE:-1000}
CONNS=${CONNS:-16}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-2s}
BASE_PORT=${BASE_PORT:-27000}   # ports BASE..BASE+296; keep below the ephemeral range
PALISADE_THREADS=${PALISADE_THREADS:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${BENCH_OUT:-$ROOT/bench/out}
# Where cargo puts what it builds here: CARGO_TARGET_DIR when it is set (relative to the
# repository, where cargo runs), else target/. A machine that sets it had the example built
# there and looked for it in target/ (scripts/build-pgo.sh stopped at its training).
CARGO_OUT=${CARGO_TARGET_DIR:-target}
[[ $CARGO_OUT == /* ]] || CARGO_OUT="$ROOT/$CARGO_OUT"
PGO=${PGO:-1}
if [[ $PGO == 1 ]]; then
    PALISADE=${PALISADE_BIN:-$ROOT/target/pgo/release/palisade}
else
    PALISADE=${PALISADE_BIN:-$CARGO_OUT/release/palisade}
fi
ONLY=${ONLY:-all}
PLAIN=${PLAIN:-0}
if [[ $PLAIN == 1 && $PGO != 1 ]]; then
    echo "bench/pair.sh: PLAIN=1 adds the plain build beside the PGO one; with PGO=0 the pair already is the plain build" >&2
    PLAIN=0
fi
PALISADE_PLAIN=${PALISADE_PLAIN_BIN:-$CARGO_OUT/release/palisade}
BODY_BYTES=${BODY_BYTES:-0}
RESPONSE_BYTES=${RESPONSE_BYTES:-0}
HEADERS=${HEADERS:-0}
HEADER_ARGS=()
for ((i = 1; i <= HEADERS; i++)); do HEADER_ARGS+=(-H "x-h$i: value-$i-of-a-typical-api-header"); done
API_PROTECTION=${API_PROTECTION:-0}
if [[ $API_PROTECTION == 1 ]]; then POLICY_RULES=${POLICY_RULES:-20}; fi
BODY_ARGS=()
if (( BODY_BYTES > 0 )) && [[ $API_PROTECTION == 1 ]]; then
    # A JSON order of about BODY_BYTES: what the WAF reads at any depth.
    BODY_ARGS=(-m POST -T application/json -d "$(python3 -c '
import json, sys
n = int(sys.argv[1]); items = []
while len(json.dumps({"items": items})) < n:
    items.append({"sku": "A-%04d" % len(items), "qty": 2, "note": "leave at the door, ring twice"})
print(json.dumps({"customer": "c-1042", "items": items}))' "$BODY_BYTES")")
elif (( BODY_BYTES > 0 )); then
    BODY_ARGS=(-m POST -d "$(head -c "$BODY_BYTES" /dev/zero | tr '\0' x)")
fi
# The query every run sends with API_PROTECTION=1 (ten parameters, as a typical API call).
QUERY=""
AUTH_ARGS=()
[[ $API_PROTECTION == 1 ]] && QUERY="?page=2&size=50&sort=created&order=desc&status=open&q=blue+shoes&from=2026-01-01&to=2026-12-31&currency=EUR&lang=en"
CLK_TCK=$(getconf CLK_TCK)
read -ra PERF_ARGS <<<"${PROFILE_ARGS:--F 4999 -g}"

# Ports (all on 127.0.0.1).
P_APP=$((BASE_PORT + 80))          # backend app (nginx, return 200)
P_APP_STATUS=$((BASE_PORT + 90))   #   its stub_status
P_A_ADMIN=$((BASE_PORT + 0))       # palisade A
P_A_OUT=$((BASE_PORT + 1))
P_A_IN=$((BASE_PORT + 6))
P_A_APP=$((BASE_PORT + 81))        #   A's own app: never called in this benchmark
P_B_ADMIN=$((BASE_PORT + 100))     # palisade B
P_B_OUT=$((BASE_PORT + 101))
P_B_IN=$((BASE_PORT + 106))
P_NGX_A=$((BASE_PORT + 201))       # nginx A (plaintext in)
P_NGX_A_STATUS=$((BASE_PORT + 290))
P_NGX_B=$((BASE_PORT + 206))       # nginx B (mTLS in)
P_NGX_B_STATUS=$((BASE_PORT + 296))
P_OTLP=$((BASE_PORT + 150))        # OTLP/gRPC receiver (TELEMETRY=full)
TELEMETRY=${TELEMETRY:-off}
OTLP_SINK="$CARGO_OUT/release/examples/otlp_sink"

PIDS=()           # palisade processes we started
NGINX_PIDFILES=() # nginx masters we started
TMP=""
WWW=""            # the app's response body (RESPONSE_BYTES), readable by nginx's worker
NGX_TMP=""        # nginx's temporary files (request bodies past its buffer), writable by its worker

log() { printf '[pair.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- setup

APT_UPDATED=0
apt_update_once() { if [[ $APT_UPDATED == 0 ]]; then apt-get update -qq; APT_UPDATED=1; fi; }
apt_install() { apt_update_once; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; }

install_deps() {
    [[ ${SKIP_INSTALL:-0} == 1 ]] && return 0
    if ! command -v nginx >/dev/null; then
        log "installing nginx"
        apt_install nginx-light || apt_install nginx
    fi
    local tool
    for tool in curl python3; do command -v "$tool" >/dev/null || apt_install "$tool"; done
    command -v ss >/dev/null || apt_install iproute2
    # the benchmark's JWT signer (make_token falls back to a venv where apt cannot run)
    if [[ $API_PROTECTION == 1 ]] && ! python3 -c 'import cryptography' 2>/dev/null; then
        apt_install python3-cryptography || true
    fi
    if ! command -v oha >/dev/null; then
        apt_update_once
        if apt-cache policy oha 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            log "installing oha from apt"
            apt_install oha
        else
            log "oha is not packaged here: cargo install oha --locked (about 6 min on 2 cores)"
            cargo install oha --locked
        fi
    fi
}

build_palisade() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        if [[ $PGO == 1 ]]; then
            "$ROOT/scripts/build-pgo.sh"
        fi
        if [[ $PGO == 0 || $PLAIN == 1 ]]; then
            log "building palisade (release)"
            (cd "$ROOT" && cargo build --release --quiet)
        fi
        if [[ $TELEMETRY != off ]]; then (cd "$ROOT" && cargo build --release --quiet --example otlp_sink); fi
    fi
    if [[ ! -x $PALISADE ]]; then
        if [[ $PGO == 1 ]]; then
            die "no $PALISADE: build it with scripts/build-pgo.sh (or measure the plain build: PGO=0)"
        fi
        die "no $PALISADE: build it with cargo build --release"
    fi
    [[ $PLAIN == 0 || -x $PALISADE_PLAIN ]] || die "no $PALISADE_PLAIN: build it with cargo build --release"
}

check_ports_free() {
    local p lo hi
    read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range
    if (( BASE_PORT + 296 >= lo && BASE_PORT <= hi )); then
        log "warning: ports $BASE_PORT-$((BASE_PORT + 296)) overlap the ephemeral range $lo-$hi;" \
            "another program's outgoing connection may take one of them mid-run"
    fi
    for p in $P_APP $P_APP_STATUS $P_A_ADMIN $P_A_OUT $P_A_IN $P_B_ADMIN $P_B_OUT $P_B_IN \
             $P_NGX_A $P_NGX_A_STATUS $P_NGX_B $P_NGX_B_STATUS; do
        if ss -Htln "sport = :$p" | grep -q .; then die "port $p is in use (set BASE_PORT)"; fi
    done
}

make_pki() {
    log "PKI in $TMP/pki"
    "$PALISADE" ca init --trust-domain demo.local --out "$TMP/pki/ca" >/dev/null
    "$PALISADE" ca issue --ca "$TMP/pki/ca" --spiffe-id spiffe://demo.local/ns/demo/sa/a \
        --dns a.demo --out "$TMP/pki/a" >/dev/null
    "$PALISADE" ca issue --ca "$TMP/pki/ca" --spiffe-id spiffe://demo.local/ns/demo/sa/b \
        --dns b.demo --out "$TMP/pki/b" >/dev/null
}

# ---------------------------------------------------------------- nginx

# nginx_start NAME: runs nginx with prefix $TMP/nginx-NAME and its nginx.conf (daemonised,
# pid file in the prefix; -e keeps even the startup error log out of /var/log).
nginx_start() {
    local name=$1 dir="$TMP/nginx-$1" i
    nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" || die "nginx $name: bad config"
    nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
    NGINX_PIDFILES+=("$dir/nginx.pid")
    for i in $(seq 1 200); do [[ -s $dir/nginx.pid ]] && return 0; sleep 0.01; done
    die "nginx $name did not write its pid file"
}

nginx_stop() {
    local pidfile=$1 pid i
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    kill -QUIT "$pid" 2>/dev/null || return 0
    for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.01; done
    kill -TERM "$pid" 2>/dev/null || true
}

# nginx_conf NAME STATUS_PORT SERVER-BLOCKS: one worker, everything inside the prefix dir,
# keep-alive limits out of the way, and a stub_status server on its own port.
nginx_conf() {
    local name=$1 status_port=$2 servers=$3 dir="$TMP/nginx-$1"
    # nginx's worker (another user than this script) writes a request body larger than its
    # buffer to a file: in a directory of its own that the worker can reach, not in $TMP beside
    # the keys and tokens (a body it cannot write there is a 500).
    if [[ -z $NGX_TMP ]]; then
        NGX_TMP=$(mktemp -d /tmp/palisade-bench-nginx.XXXXXX)
        chmod 755 "$NGX_TMP"
    fi
    mkdir -p "$dir" "$NGX_TMP/$name"
    cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX_TMP/$name/body;
    proxy_temp_path $NGX_TMP/$name/proxy;
    fastcgi_temp_path $NGX_TMP/$name/fastcgi;
    uwsgi_temp_path $NGX_TMP/$name/uwsgi;
    scgi_temp_path $NGX_TMP/$name/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$status_port;
        location = /status { stub_status; }
    }
$servers
}
EOF
}

start_app() {
    if (( RESPONSE_BYTES > 0 )); then
        # nginx's worker, another user than this script, reads the body: it lives in a directory
        # of its own that anyone may read, not in $TMP beside the keys and tokens.
        WWW=$(mktemp -d /tmp/palisade-bench-www.XXXXXX)
        chmod 755 "$WWW"
        { printf ok; head -c $((RESPONSE_BYTES - 2)) /dev/zero | tr '\0' x; } > "$WWW/body.txt"
        chmod 644 "$WWW/body.txt"
    fi
    nginx_conf app "$P_APP_STATUS" "
    server {
        listen 127.0.0.1:$P_APP;
        $(if (( RESPONSE_BYTES > 0 )); then
            echo "root $WWW; location / { default_type text/plain; try_files /body.txt =404; }"
        else
            echo "location / { default_type text/plain; return 200 \"ok\n\"; }"
        fi)
    }"
    nginx_start app
}

start_nginx_pair() {
    local pki="$TMP/pki"
    nginx_conf b "$P_NGX_B_STATUS" "
    upstream app { server 127.0.0.1:$P_APP; keepalive 32; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGX_B ssl;
        ssl_certificate $pki/b/tls.crt;
        ssl_certificate_key $pki/b/tls.key;
        ssl_client_certificate $pki/b/ca.crt;
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
    nginx_conf a "$P_NGX_A_STATUS" "
    upstream nginx_b { server 127.0.0.1:$P_NGX_B; keepalive 32; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGX_A;
        location / {
            proxy_pass https://nginx_b;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_ssl_certificate $pki/a/tls.crt;
            proxy_ssl_certificate_key $pki/a/tls.key;
            proxy_ssl_trusted_certificate $pki/a/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name b.demo;
            proxy_ssl_server_name on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_session_reuse on;
        }
    }"
    nginx_start b
    nginx_start a
}

# ---------------------------------------------------------------- palisade

write_sidecar_conf() {  # NAME ID-DIR ADMIN OUT IN APP [DESTINATIONS-YAML]
    local name=$1 idd=$2 admin=$3 outp=$4 inp=$5 app=$6 dest=${7:-"[]"}
    cat > "$TMP/$name.yaml" <<EOF
identity: {files: {cert: $idd/tls.crt, key: $idd/tls.key, trustBundle: $idd/ca.crt}}
trustDomain: demo.local
inbound: {listen: "127.0.0.1:$inp", app: "127.0.0.1:$app", mtls: STRICT}
outbound:
  listen: "127.0.0.1:$outp"
  destinations: $dest
admin: {listen: "127.0.0.1:$admin"}
threads: $PALISADE_THREADS
drainPeriod: 1s
EOF
    if [[ $TELEMETRY != off ]]; then
        local access=false otlp=""
        [[ $TELEMETRY == full || $TELEMETRY == accesslog ]] && access=true
        [[ $TELEMETRY == full || $TELEMETRY == traces ]] &&
            otlp="  otlp: {endpoint: \"http://127.0.0.1:$P_OTLP\", protocol: grpc, sampling: 0.01}"
        cat >> "$TMP/$name.yaml" <<EOF
telemetry:
  accessLog: $access
  accessLogSink: "file:$TMP/$name-access.jsonl"
  events: {sink: "file:$TMP/$name-events.jsonl", format: ocsf}
$otlp
EOF
    else
        echo "telemetry: {accessLog: false}" >> "$TMP/$name.yaml"
    fi
    if [[ $name == b && ${POLICY_RULES:-0} -gt 0 ]]; then
        write_policy "$TMP/policy.yaml" "$POLICY_RULES"
        cat >> "$TMP/$name.yaml" <<EOF
workload: {namespace: demo, serviceAccount: b, labels: {app: b}}
policy: {files: ["$TMP/policy.yaml"]}
EOF
    fi
}

# make_token: an RS256 key pair, its JWKS ($TMP/jwks.json) and a token valid for an hour in
# AUTH_ARGS, signed by Python's `cryptography` (an independent signer; installed into
# target/bench-venv when the system Python lacks it).
make_token() {
    local py=python3
    if ! python3 -c 'import cryptography' 2>/dev/null; then
        py=$ROOT/target/bench-venv/bin/python
        if [[ ! -x $py ]] || ! "$py" -c 'import cryptography' 2>/dev/null; then
            log "installing Python cryptography into target/bench-venv (for the benchmark's JWT)"
            python3 -m venv "$ROOT/target/bench-venv" && "$ROOT/target/bench-venv/bin/pip" install -q cryptography==50.0.2 ||
                die "cannot install cryptography for API_PROTECTION=1"
        fi
    fi
    local token
    token=$("$py" - "$TMP/jwks.json" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
n = key.public_key().public_numbers()
as_bytes = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
json.dump({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": b64(as_bytes(n.n)), "e": b64(as_bytes(n.e))}]}, open(sys.argv[1], "w"))
header = b64(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())
claims = b64(json.dumps({"iss": "https://issuer.bench.local", "sub": "user-1042", "aud": "b", "exp": int(time.time()) + 3600, "scope": "orders:read"}).encode())
signature = key.sign(f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
print(f"{header}.{claims}.{b64(signature)}")
PY
) || die "token generation failed"
    AUTH_ARGS=(-H "Authorization: Bearer $token")
}

# write_policy FILE N: N authorisation rules (N-1 DENY rules that do not match the benchmark's
# requests, so every request is checked against all of them, and one ALLOW for sidecar A), a
# per-caller and a global rate limit set high enough never to refuse at the benchmark's rate.
write_policy() {
    local file=$1 n=$2 i
    {
        echo "apiVersion: palisade.dev/v1alpha1"
        echo "kind: SecurityPolicy"
        echo "metadata: {name: bench, namespace: demo}"
        echo "spec:"
        echo "  selector: {matchLabels: {app: b}}"
        echo "  authorization:"
        echo "    default: DENY"
        echo "    rules:"
        for ((i = 1; i < n; i++)); do
            case $((i % 3)) in
                0) echo "      - {name: deny-$i, action: DENY, to: {paths: [\"/private-$i/*\"]}}" ;;
                1) echo "      - {name: deny-$i, action: DENY, from: {principals: [\"spiffe://demo.local/ns/x$i/*\"]}}" ;;
                2) echo "      - {name: deny-$i, action: DENY, to: {methods: [DELETE]}, when: [{key: \"request.headers[x-d$i]\", values: [\"*\"]}]}" ;;
            esac
        done
        echo "      - {name: from-a, action: ALLOW, from: {principals: [\"spiffe://demo.local/ns/demo/sa/a\"]}, to: {methods: [GET, POST]}}"
        echo "  rateLimits:"
        echo "    - {name: per-caller, key: source.principal, rate: 50000, per: 1s, burst: 50000}"
        echo "    - {name: everyone, key: global, rate: 100000, per: 1s, burst: 100000}"
        if [[ $API_PROTECTION == 1 ]]; then
            echo "  inputValidation: {maxBodyBytes: 1048576, maxHeaderBytes: 65536, maxUriBytes: 8192, waf: {mode: BLOCK, paranoia: 1}}"
            echo "  authentication:"
            echo "    requireJwt: true"
            echo "    jwt:"
            echo "      - {issuer: \"https://issuer.bench.local\", audiences: [b], jwks: {file: \"$TMP/jwks.json\"}, forwardClaims: [{claim: sub, header: x-user}]}"
        else
            echo "  inputValidation: {maxBodyBytes: 1048576, maxHeaderBytes: 65536, maxUriBytes: 8192}"
        fi
    } > "$file"
    "$PALISADE" check "$file" >&2 || die "generated policy does not check"
}

# start_sidecar NAME ADMIN_PORT: prints "PID READY_MS". The launch and the /ready polling
# happen in one python process so the timing has no shell or curl start-up in it.
start_sidecar() {
    local name=$1 admin=$2
    python3 - "$PALISADE" "$TMP/$name.yaml" "$admin" \
        "$OUT/logs/palisade-$name.stdout" "$OUT/logs/palisade-$name.stderr" <<'PY'
import http.client, subprocess, sys, time
binary, conf, port, out, err = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
t0 = time.monotonic()
p = subprocess.Popen([binary, "sidecar", "--config", conf], stdin=subprocess.DEVNULL,
                     stdout=open(out, "ab"), stderr=open(err, "ab"))
deadline = t0 + 15.0
while True:
    if p.poll() is not None:
        sys.exit(f"palisade exited with {p.returncode} before ready; see {err}")
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        c.request("GET", "/ready")
        status = c.getresponse().status
        c.close()
        if status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        p.kill()
        sys.exit("palisade not ready within 15 s")
    time.sleep(0.005)
print(p.pid, f"{(time.monotonic() - t0) * 1000:.1f}")
PY
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 500); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.01; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid f
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for f in "${NGINX_PIDFILES[@]}"; do nginx_stop "$f"; done
    if [[ -n $TMP && -d $TMP ]]; then
        for f in "$TMP"/nginx-*/error.log; do
            [[ -f $f ]] && cp "$f" "$OUT/logs/$(basename "$(dirname "$f")").error.log"
        done
        if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    [[ -z ${WWW:-} ]] || rm -rf "$WWW"
    [[ -z ${NGX_TMP:-} ]] || rm -rf "$NGX_TMP"
    [[ $rc == 0 ]] || log "exit $rc; stopped the processes this script started (logs: $OUT/logs)"
    exit "$rc"
}

# ---------------------------------------------------------------- measuring

# Children of an nginx master (its worker).
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }

cpu_ticks() {  # PID...: sum of utime+stime (fields 14 and 15 of /proc/PID/stat)
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        # shellcheck disable=SC2086
        set -- ${stat##*) }         # fields from 3 (state) on; comm may hold spaces
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}

hwm_kb() {  # PID...: sum of VmHWM
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
        total=$(( total + v ))
    done
    echo "$total"
}

child_ticks() {  # CPU ticks of this shell's finished children (cutime+cstime): oha's share
    local stat
    stat=$(<"/proc/$$/stat")
    # shellcheck disable=SC2086
    set -- ${stat##*) }
    echo $(( ${14} + ${15} ))
}

machine_ticks() {  # "busy total" jiffies over all CPUs, from /proc/stat
    awk '/^cpu / {t=0; for (i=2; i<=NF; i++) t+=$i; print t-$5-$6, t}' /proc/stat
}

# counter KIND:PORT — connections accepted so far.
#   ngx:PORT  nginx stub_status "accepts" (the status request's own connection included)
#   pal:PORT  Palisade admin /metrics, inbound TLS handshakes that succeeded
counter() {
    local kind=${1%%:*} port=${1#*:}
    case $kind in
        ngx) curl -sS --max-time 2 "http://127.0.0.1:$port/status" | awk 'NR == 3 {print $1}' ;;
        pal) curl -sS --max-time 2 "http://127.0.0.1:$port/metrics" |
                 awk '/^palisade_tls_handshakes_total\{direction="inbound",result="success"\}/ {print $2}' |
                 grep . || echo 0 ;;
    esac
}

# oha_run URL OUTFILE DURATION [oha args...]
oha_run() {
    local url=$1 outf=$2 dur=$3; shift 3
    local rate=(--latency-correction -q "$RATE")
    [[ $RATE == max ]] && rate=()
    oha --no-tui "${rate[@]}" -c "$CONNS" -z "$dur" -t 10s \
        --output-format json -o "$outf" "${BODY_ARGS[@]}" "${AUTH_ARGS[@]}" "${HEADER_ARGS[@]}" "$@" "$url$QUERY"
}

check_ok() {  # URL [curl args]: one request must answer 200 "ok"
    local url=$1; shift
    local i body
    for i in $(seq 1 100); do
        body=$(curl -sS --max-time 2 -f "$@" "$url" 2>/dev/null) && [[ $body == ok* ]] && return 0
        sleep 0.05
    done
    die "no 200 ok from $url"
}

check_no_cert_refused() {  # URL: without a client certificate B must not answer 200
    local code
    code=$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true)
    [[ $code != 200 ]] || die "$1 answered 200 without a client certificate"
    log "mTLS check: $1 without a client certificate -> ${code:-000} (refused, as it should be)"
}

# measure LABEL URL "PROCS" "COUNTERS" [oha args...]
#   PROCS:    space-separated NAME=pid,pid,... (a proxy process, or nginx master+worker)
#   COUNTERS: space-separated NAME=KIND:PORT (see counter)
# Appends one line to $TMP/measure.txt; the raw oha JSON goes to $OUT/raw/LABEL.json.
measure() {
    local label=$1 url=$2 procs=$3 counters=$4; shift 4
    log "$label: warm-up $WARMUP"
    oha_run "$url" "$OUT/raw/$label.warmup.json" "$WARMUP" "$@"
    local g c pid cpu0=() cnt0=() m0 m1
    local pids=()
    for g in $procs; do IFS=, read -ra pids <<<"${g#*=}"; cpu0+=("$(cpu_ticks "${pids[@]}")"); done
    for c in $counters; do cnt0+=("$(counter "${c#*=}")"); done
    local own1=0 oha0 oha1
    m0=$(machine_ticks); oha0=$(child_ticks)
    log "$label: measured run $DURATION at $RATE req/s, $CONNS connections"
    local perfs=()
    if [[ -n ${PROFILE:-} ]]; then
        for g in $procs; do
            [[ ${g%%=*} == app ]] && continue
            perf record -q "${PERF_ARGS[@]}" -p "${g#*=}" -o "$OUT/raw/$label-${g%%=*}.perf.data" >/dev/null 2>&1 &
            perfs+=("$!")
        done
    fi
    oha_run "$url" "$OUT/raw/$label.json" "$DURATION" "$@"
    for g in "${perfs[@]}"; do kill -INT "$g" 2>/dev/null || true; wait "$g" 2>/dev/null || true; done
    m1=$(machine_ticks); oha1=$(child_ticks)
    local i=0 line="$label|"
    for g in $procs; do
        IFS=, read -ra pids <<<"${g#*=}"
        local d=$(( $(cpu_ticks "${pids[@]}") - cpu0[i] ))
        own1=$(( own1 + d ))
        line+="${g%%=*}:$d:$(hwm_kb "${pids[@]}") "
        # where the resident pages are, for when a peak moves: status (RssAnon/RssFile) and
        # every mapping's Rss after the measured run
        for pid in "${pids[@]}"; do
            { cat "/proc/$pid/status"; cat "/proc/$pid/smaps"; } \
                > "$OUT/raw/$label-${g%%=*}-$pid.memory" 2>/dev/null || true
        done
        i=$((i + 1))
    done
    line+="|"; i=0
    for c in $counters; do
        line+="${c%%=*}:$(( $(counter "${c#*=}") - cnt0[i] )):${c#*=} "
        i=$((i + 1))
    done
    local b0 t0 b1 t1
    read -r b0 t0 <<<"$m0"; read -r b1 t1 <<<"$m1"
    # per mille of all CPUs: whole machine busy; what neither the measured processes nor oha used
    local other=$(( b1 - b0 - own1 - (oha1 - oha0) ))
    (( other < 0 )) && other=0
    line+="|$(( (b1 - b0) * 1000 / (t1 - t0) )):$(( (oha1 - oha0) * 1000 / (t1 - t0) )):$(( other * 1000 / (t1 - t0) ))"
    echo "$line" >> "$TMP/measure.txt"
}

# palisade_pair LABEL BINARY: starts sidecars B and A from BINARY, measures the pair as LABEL, stops them.
palisade_pair() {
    local label=$1 binary=$2
    write_sidecar_conf b "$TMP/pki/b" "$P_B_ADMIN" "$P_B_OUT" "$P_B_IN" "$P_APP"
    write_sidecar_conf a "$TMP/pki/a" "$P_A_ADMIN" "$P_A_OUT" "$P_A_IN" "$P_A_APP" \
        "[{authority: b.demo, address: \"127.0.0.1:$P_B_IN\", identity: \"spiffe://demo.local/ns/demo/sa/b\"}]"
    local pa pb ready_a ready_b
    # Run a fresh copy, as a node runs the file it just unpacked from the image layer. How much of
    # the binary's code is resident depends on how its page cache was filled: a freshly written
    # file is held in large folios, and a fault maps the whole folio around the code it needs; the
    # same bytes read back after eviction measured 3.4 MB less at B. A copy is the same every run,
    # and the worse case.
    cp "$binary" "$TMP/palisade-$label"
    binary=$TMP/palisade-$label
    read -r pb ready_b < <(PALISADE=$binary start_sidecar b "$P_B_ADMIN") || true
    [[ -n ${pb:-} ]] || die "sidecar b did not start (see $OUT/logs)"
    PIDS+=("$pb")
    read -r pa ready_a < <(PALISADE=$binary start_sidecar a "$P_A_ADMIN") || true
    [[ -n ${pa:-} ]] || die "sidecar a did not start (see $OUT/logs)"
    PIDS+=("$pa")
    log "$label ready: B ${ready_b} ms, A ${ready_a} ms"
    echo "$ready_a $ready_b" > "$TMP/ready-$label.txt"
    check_ok "http://127.0.0.1:$P_A_OUT/$QUERY" -H "Host: b.demo" "${AUTH_ARGS[@]}"
    check_no_cert_refused "https://127.0.0.1:$P_B_IN/"
    measure "$label" "http://127.0.0.1:$P_A_OUT/" "A=$pa B=$pb app=$app_pids" \
        "b_conns=pal:$P_B_ADMIN app_conns=ngx:$P_APP_STATUS" -H "Host: b.demo"
    curl -sS --max-time 2 "http://127.0.0.1:$P_A_ADMIN/metrics" > "$OUT/raw/$label-a.metrics" || true
    curl -sS --max-time 2 "http://127.0.0.1:$P_B_ADMIN/metrics" > "$OUT/raw/$label-b.metrics" || true
    stop_pid "$pa"; stop_pid "$pb"
    if [[ $TELEMETRY != off ]]; then
        sleep 1.5   # the sink writes its count once a second
        local exported dropped
        exported=$(cat "$OUT"/raw/"$label"-[ab].metrics | awk '/^palisade_trace_spans_exported_total/ {s += $2} END {print s + 0}')
        dropped=$(cat "$OUT"/raw/"$label"-[ab].metrics | awk '/^palisade_trace_spans_dropped_total/ {s += $2} END {print s + 0}')
        echo "$TELEMETRY: traces (1% sampled, to a live OTLP/gRPC receiver) $([[ $TELEMETRY == full || $TELEMETRY == traces ]] && echo on || echo off), access log (JSON lines to a file) $([[ $TELEMETRY == full || $TELEMETRY == accesslog ]] && echo on || echo off); the receiver got $(cat "$TMP/spans.count" 2>/dev/null || echo '?') spans in all (the $label sidecars had counted $exported exported, $dropped dropped at the end of their run); security events to a file; metrics" >> "$TMP/telemetry.txt"
    else
        echo "metrics only (no traces, no access log; no security events occur)" > "$TMP/telemetry.txt"
    fi
}

# ---------------------------------------------------------------- main

main() {
    local t_start=$SECONDS
    export LOAD_AT_START PALISADE
    LOAD_AT_START=$(cut -d' ' -f1 /proc/loadavg)
    install_deps
    build_palisade
    command -v oha >/dev/null || die "oha missing"
    mkdir -p "$OUT/raw" "$OUT/logs"
    rm -f "$OUT"/raw/* "$OUT"/logs/*
    TMP=$(mktemp -d /tmp/palisade-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    : > "$TMP/measure.txt"
    check_ports_free
    make_pki
    start_app
    check_ok "http://127.0.0.1:$P_APP/"
    local app_pid app_pids
    app_pid=$(<"$TMP/nginx-app/nginx.pid")
    app_pids="$app_pid,$(children "$app_pid" | paste -sd,)"
    local t_load=$SECONDS

    # a) direct
    [[ $ONLY == palisade ]] || measure direct "http://127.0.0.1:$P_APP/" "app=$app_pids" "app_conns=ngx:$P_APP_STATUS"

    # b) palisade pair (and b2, the plain build's, with PLAIN=1)
    if [[ $TELEMETRY != off ]]; then
        [[ -x $OTLP_SINK ]] || die "no $OTLP_SINK (cargo build --release --example otlp_sink)"
        "$OTLP_SINK" "127.0.0.1:$P_OTLP" "$TMP/spans.count" > "$OUT/logs/otlp-sink.log" 2>&1 &
        PIDS+=("$!")
    fi
    [[ $API_PROTECTION == 1 ]] && make_token
    palisade_pair palisade "$PALISADE"
    [[ $PLAIN == 0 ]] || palisade_pair palisade_plain "$PALISADE_PLAIN"
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    if [[ $ONLY == palisade ]]; then
        log "the Palisade pair alone (ONLY=palisade): no report"
        return 0
    fi

    # c) nginx pair
    start_nginx_pair
    check_ok "http://127.0.0.1:$P_NGX_A/"
    check_no_cert_refused "https://127.0.0.1:$P_NGX_B/"
    local na nb
    na=$(<"$TMP/nginx-a/nginx.pid"); nb=$(<"$TMP/nginx-b/nginx.pid")
    na="$na,$(children "$na" | paste -sd,)"; nb="$nb,$(children "$nb" | paste -sd,)"
    measure nginx "http://127.0.0.1:$P_NGX_A/" "A=$na B=$nb app=$app_pids" \
        "b_conns=ngx:$P_NGX_B_STATUS app_conns=ngx:$P_APP_STATUS"
    nginx_stop "$TMP/nginx-a/nginx.pid"; nginx_stop "$TMP/nginx-b/nginx.pid"

    local rev
    rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    [[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] ||
        rev+=" + uncommitted changes"
    rev+=", binary sha256 $(sha256sum "$PALISADE" | cut -c1-12)"
    if [[ $PGO == 1 ]]; then rev+=", profile-guided build (scripts/build-pgo.sh)"; else rev+=", plain release build (PGO=0)"; fi
    (( BODY_BYTES == 0 )) || rev+="; every request a POST with a ${BODY_BYTES}-byte body"
    [[ $API_PROTECTION == 0 ]] || rev+="; API protection on B: RS256 JWT required, WAF BLOCK paranoia 1, a ${POLICY_RULES}-rule policy; every request carries the token and a ten-parameter query"
    (( PLAIN == 0 )) || rev+="; b2) is the plain release build, binary sha256 $(sha256sum "$PALISADE_PLAIN" | cut -c1-12)"
    report "$(( SECONDS - t_start ))" "$(( SECONDS - t_load ))" "$rev" > "$OUT/results.md"
    cat "$OUT/results.md"
}

report() {  # WALL_SECONDS LOAD_PHASE_SECONDS PALISADE_REVISION
    TELEMETRY_NOTE=$(cat "$TMP/telemetry.txt") python3 - "$OUT/raw" "$TMP/measure.txt" "$TMP" "$CLK_TCK" \
        "$RATE" "$CONNS" "$DURATION" "$WARMUP" "$PALISADE_THREADS" "$1" "$2" "$3" <<'PY'
import json, sys, datetime, os, subprocess
raw, measure_f, tmp, tck, rate, conns, dur, warm, threads, wall, load_wall, rev = sys.argv[1:13]
tck = int(tck)
M = {}
for line in open(measure_f):
    label, procs, counters, busy = line.rstrip("\n").split("|")
    busy, oha, other = (int(x) / 10 for x in busy.split(":"))
    m = M[label] = {"procs": {}, "conns": {}, "busy": busy, "oha": oha, "other": other}
    for item in procs.split():
        name, ticks, hwm = item.split(":")
        m["procs"][name] = (int(ticks) / tck, int(hwm) / 1024)
    for item in counters.split():
        name, delta, kind, _port = item.split(":")
        # a stub_status read counts its own connection: the "after" read adds one
        m["conns"][name] = int(delta) - (1 if kind == "ngx" else 0)
ready = {}
for label in M:
    if label.startswith("palisade"):
        ready[label] = open(f"{tmp}/ready-{label}.txt").read().split()

def stats(label):
    d = json.load(open(f"{raw}/{label}.json"))
    codes = {str(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errors = d.get("errorDistribution", {})
    lp, s = d.get("latencyPercentiles", {}), d["summary"]
    ms = lambda v: (v or 0) * 1000
    return dict(done=sum(codes.values()), codes=codes, errors=errors,
                ok=codes.get("200", 0), rps=s.get("requestsPerSec", 0),
                p50=ms(lp.get("p50")), p99=ms(lp.get("p99")), p999=ms(lp.get("p99.9")),
                mx=ms(s.get("slowest")))

titles = {"direct": "a) direct", "palisade": "b) Palisade pair", "palisade_plain": "b2) Palisade pair, plain build",
          "nginx": "c) nginx pair"}
labels = [(l, titles[l]) for l in M]
S = {l: stats(l) for l, _ in labels}

def codes(st):
    return ", ".join(f"{k}: {v}" for k, v in sorted(st["codes"].items())) or "none"

def errs(st):
    # oha ends the run at the deadline and cancels what is in flight; those are not failures
    cut = {k: v for k, v in st["errors"].items() if "deadline" in k}
    other = {k: v for k, v in st["errors"].items() if k not in cut}
    parts = [f"{sum(cut.values())} cut at deadline"] if cut else []
    parts += [f"{k}: {v}" for k, v in other.items()]
    return "; ".join(parts) or "0"

def per_k(label, secs):
    return secs / S[label]["done"] * 1000 if S[label]["done"] else float("nan")

def pair_cpu(label):
    """CPU-seconds per 1,000 requests of the pair's two proxies (A and B) together."""
    return per_k(label, sum(cpu for name, (cpu, _) in M[label]["procs"].items() if name in ("A", "B")))

def version(cmd, stream):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return getattr(r, stream).strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")

print(f"### Run of {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
print()
print(f"- load: {version(['oha', '--version'], 'stdout')}, `-q {rate} -c {conns} -z {dur} --latency-correction`, "
      f"keep-alive on, {warm} warm-up per run excluded")
print(f"- machine: {os.cpu_count()} CPUs ({cpu}), 1-min load average at start {os.environ['LOAD_AT_START']}; "
      f"{version(['nginx', '-v'], 'stderr').split(': ')[-1]}; Palisade threads: {threads}, nginx worker_processes 1")
print(f"- palisade: {version([os.environ['PALISADE'], '--version'], 'stdout')} built from {rev}")
print(f"- Palisade telemetry: {os.environ['TELEMETRY_NOTE']}")
print(f"- script wall time {wall} s (load phase {load_wall} s)")
print()
print("| run | 200 / all responses | other errors | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | machine busy / oha / other |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
for l, title in labels:
    st = S[l]
    print(f"| {title} | {st['ok']} / {st['done']} ({codes(st)}) | {errs(st)} | {st['rps']:.0f} | "
          f"{st['p50']:.3f} | {st['p99']:.3f} | {st['p999']:.3f} | {st['mx']:.2f} | "
          f"{M[l]['busy']:.0f}% / {M[l]['oha']:.0f}% / {M[l]['other']:.0f}% |")
print()
print("| run | process | CPU-s per 1,000 req | req per CPU-s | peak RSS MB | start-to-ready ms |")
print("|---|---|---:|---:|---:|---:|")
rps_cpu = lambda k: f"{1000 / k:.0f}" if k > 0 else "—"
for l, title in labels:
    P = M[l]["procs"]
    names = [n for n in ("A", "B") if n in P]
    for n in names:
        kind = "Palisade sidecar" if l in ready else "nginx master+worker"
        ready_ms = ready[l][0 if n == "A" else 1] if l in ready else "—"
        print(f"| {title} | {kind} {n} | {per_k(l, P[n][0]):.3f} | {rps_cpu(per_k(l, P[n][0]))} | {P[n][1]:.1f} | {ready_ms} |")
    if names:
        both = pair_cpu(l)
        print(f"| {title} | **A + B** | **{both:.3f}** | **{rps_cpu(both)}** | "
              f"**{sum(P[n][1] for n in names):.1f}** | |")
    print(f"| {title} | app nginx (context) | {per_k(l, P['app'][0]):.3f} | | {P['app'][1]:.1f} | |")
print()
if "nginx" in M:
    for l, title in labels:
        if l in ready and S[l]["done"] and S["nginx"]["done"]:
            print(f"- {title} against the nginx pair: CPU per request {pair_cpu(l) / pair_cpu('nginx'):.2f}x, "
                  f"requests per CPU-second {pair_cpu('nginx') / pair_cpu(l):.2f}x, achieved req/s "
                  f"{S[l]['rps'] / S['nginx']['rps']:.2f}x, p99 {S[l]['p99'] / S['nginx']['p99']:.2f}x")
    print()
print("| run | new connections into B during the run | new connections into the app during the run |")
print("|---|---:|---:|")
for l, title in labels:
    C = M[l]["conns"]
    b = C.get("b_conns")
    print(f"| {title} | {'—' if b is None else b} | {C.get('app_conns')} |")
print()
print("Machine busy / oha / other: share of all CPUs during the measured run (from /proc/stat), the part used by "
      "oha, and the part used by neither oha nor the measured processes (other work on the machine, plus "
      "interrupt time: a large 'other' means the run was disturbed).")
print()
print("CPU-s per 1,000 req = (utime+stime after − before the measured run) / CLK_TCK / responses × 1000. "
      "Peak RSS is VmHWM, each Palisade run from a freshly written copy of its binary (as a node runs what it unpacked: the worse case); raw/LABEL-NAME-PID.memory has where the pages are; for nginx master and worker are added (shared pages count twice). "
      "New connections into B: Palisade B's inbound TLS handshakes (/metrics), nginx B's stub_status accepts; "
      "into the app: the app's stub_status accepts.")
PY
}

main "$@"
