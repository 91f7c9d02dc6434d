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
#   A warm-up load (WARMUP, same rate and connections) precedes each measured run and is
#   excluded from every figure.
#
# How
#   Everything listens on 127.0.0.1 only; every load is bounded by oha's -z duration and a
#   per-request timeout. A temp dir holds the PKI, configs and nginx prefixes; all processes
#   started here are stopped by the EXIT trap. Results: bench/out/results.md (+ raw JSON,
#   logs under bench/out/).
#
# Usage
#   bench/pair.sh                           # 1000 req/s, 16 connections, 15 s
#   RATE=2000 CONNS=32 DURATION=30s bench/pair.sh
# Other overrides: WARMUP (2s), BASE_PORT (38000), PALISADE_THREADS (1), KEEP_TMP=1,
#   SKIP_INSTALL=1 (do not try apt/cargo), SKIP_BUILD=1 (use the existing release binary).
set -euo pipefail

RATE=${RATE:-1000}
CONNS=${CONNS:-16}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-2s}
BASE_PORT=${BASE_PORT:-38000}
PALISADE_THREADS=${PALISADE_THREADS:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/bench/out"
PALISADE="$ROOT/target/release/palisade"
CLK_TCK=$(getconf CLK_TCK)
PAGE_KB=$(( $(getconf PAGESIZE) / 1024 ))

# Ports (all on 127.0.0.1).
P_APP=$((BASE_PORT + 80))          # backend app (nginx, return 200)
P_A_ADMIN=$((BASE_PORT + 0))       # palisade A
P_A_OUT=$((BASE_PORT + 1))
P_A_IN=$((BASE_PORT + 6))
P_A_APP=$((BASE_PORT + 81))        #   A's own app: never called in this benchmark
P_B_ADMIN=$((BASE_PORT + 100))     # palisade B
P_B_OUT=$((BASE_PORT + 101))
P_B_IN=$((BASE_PORT + 106))
P_NGX_A=$((BASE_PORT + 201))       # nginx A (plaintext in)
P_NGX_B=$((BASE_PORT + 206))       # nginx B (mTLS in)

PIDS=()          # palisade processes we started
NGINX_PIDFILES=() # nginx masters we started
TMP=""

log() { printf '[pair.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- setup

install_deps() {
    [[ ${SKIP_INSTALL:-0} == 1 ]] && return 0
    local updated=0
    apt_update_once() { if [[ $updated == 0 ]]; then apt-get update -qq; updated=1; fi; }
    if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
        log "installing nginx"
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
    fi
    for tool in curl python3; do
        command -v "$tool" >/dev/null || { apt_update_once; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool"; }
    done
    if ! command -v oha >/dev/null; then
        apt_update_once
        if apt-cache policy oha 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            log "installing oha from apt"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq oha
        else
            log "oha is not packaged here; cargo install oha --locked (takes ~6 min on 2 cores)"
            cargo install oha --locked
        fi
    fi
}

build_palisade() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building palisade (release)"
        (cd "$ROOT" && cargo build --release --quiet)
    fi
    [[ -x $PALISADE ]] || die "no $PALISADE"
}

check_ports_free() {
    local p
    for p in $P_APP $P_A_ADMIN $P_A_OUT $P_A_IN $P_B_ADMIN $P_B_OUT $P_B_IN $P_NGX_A $P_NGX_B; do
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

# ---------------------------------------------------------------- processes

# nginx_start NAME: runs nginx with prefix $TMP/nginx-NAME and conf nginx.conf there.
nginx_start() {
    local name=$1 dir="$TMP/nginx-$1"
    nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" || die "nginx $name: bad config"
    nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
    NGINX_PIDFILES+=("$dir/nginx.pid")
    local i
    for i in $(seq 1 200); do [[ -s $dir/nginx.pid ]] && return 0; sleep 0.01; done
    die "nginx $name did not write its pid file"
}

# Common head of every nginx conf: one worker, everything inside the prefix dir.
nginx_conf_head() {
    local dir=$1
    mkdir -p "$dir/tmp"
    cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

start_app() {
    local dir="$TMP/nginx-app"
    mkdir -p "$dir"
    { nginx_conf_head "$dir"; cat <<EOF
    server {
        listen 127.0.0.1:$P_APP;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
    } > "$dir/nginx.conf"
    nginx_start app
}

start_nginx_pair() {
    local a="$TMP/nginx-a" b="$TMP/nginx-b" pki="$TMP/pki"
    mkdir -p "$a" "$b"
    { nginx_conf_head "$b"; cat <<EOF
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
            proxy_set_header Connection "";
        }
    }
}
EOF
    } > "$b/nginx.conf"
    { nginx_conf_head "$a"; cat <<EOF
    upstream nginx_b { server 127.0.0.1:$P_NGX_B; keepalive 32; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGX_A;
        location / {
            proxy_pass https://nginx_b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
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
    }
}
EOF
    } > "$a/nginx.conf"
    nginx_start b
    nginx_start a
}

stop_nginx_pair() {
    nginx_stop "$TMP/nginx-a/nginx.pid"
    nginx_stop "$TMP/nginx-b/nginx.pid"
}

nginx_stop() {
    local pidfile=$1 pid i
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    kill -QUIT "$pid" 2>/dev/null || return 0
    for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.01; done
    kill -TERM "$pid" 2>/dev/null || true
}

write_sidecar_conf() {  # name id-dir admin out in app [destinations-yaml]
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
telemetry: {accessLog: false}
EOF
}

# start_sidecar NAME ADMIN_PORT: prints "PID READY_MS". The launch and the /ready polling
# happen in one python process so the timing has no shell/curl start-up in it.
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
    exit "$rc"
}

# ---------------------------------------------------------------- measuring

# Children of an nginx master (its worker).
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }

cpu_ticks() {  # sum of utime+stime over the given pids
    local total=0 pid stat rest
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        rest=${stat##*) }          # fields from 3 (state) on
        set -- $rest
        total=$(( total + ${12} + ${13} ))   # fields 14 and 15
    done
    echo "$total"
}

hwm_kb() {  # sum of VmHWM over the given pids
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
        total=$(( total + v ))
    done
    echo "$total"
}

# oha_run URL OUTFILE DURATION [extra args...]
oha_run() {
    local url=$1 outf=$2 dur=$3; shift 3
    oha --no-tui --latency-correction -q "$RATE" -c "$CONNS" -z "$dur" -t 10s \
        --output-format json -o "$outf" "$@" "$url"
}

check_ok() {  # URL [curl args]: one request must answer 200 "ok"
    local url=$1; shift
    local i body
    for i in $(seq 1 100); do
        body=$(curl -sS --max-time 2 -f "$@" "$url" 2>/dev/null) && [[ $body == ok ]] && return 0
        sleep 0.05
    done
    die "no 200 ok from $url"
}

# measure LABEL URL "PROC-GROUPS" [oha args]
#   PROC-GROUPS: space-separated NAME=pid,pid,... for each proxy process (group) to account.
measure() {
    local label=$1 url=$2 groups=$3; shift 3
    log "$label: warm-up $WARMUP"
    oha_run "$url" "$OUT/raw/$label.warmup.json" "$WARMUP" "$@"
    local g name pids before=() after=()
    for g in $groups; do pids=${g#*=}; before+=("$(cpu_ticks ${pids//,/ })"); done
    log "$label: measured run $DURATION at $RATE req/s, $CONNS connections"
    oha_run "$url" "$OUT/raw/$label.json" "$DURATION" "$@"
    local i=0 line=""
    for g in $groups; do
        name=${g%%=*}; pids=${g#*=}
        after=$(cpu_ticks ${pids//,/ })
        line+="$name:$(( after - before[i] )):$(hwm_kb ${pids//,/ }) "
        i=$((i + 1))
    done
    echo "$label|$line" >> "$TMP/procs.txt"
}

# ---------------------------------------------------------------- main

main() {
    install_deps
    build_palisade
    command -v oha >/dev/null || die "oha missing"
    mkdir -p "$OUT/raw" "$OUT/logs"
    rm -f "$OUT"/raw/*.json "$OUT"/logs/*
    TMP=$(mktemp -d /tmp/palisade-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    : > "$TMP/procs.txt"
    check_ports_free
    make_pki
    start_app
    check_ok "http://127.0.0.1:$P_APP/"
    local app_pid; app_pid=$(<"$TMP/nginx-app/nginx.pid")
    local app_pids; app_pids="$app_pid,$(children "$app_pid" | paste -sd,)"

    # a) direct
    measure direct "http://127.0.0.1:$P_APP/" "app=$app_pids"

    # b) palisade pair
    write_sidecar_conf b "$TMP/pki/b" "$P_B_ADMIN" "$P_B_OUT" "$P_B_IN" "$P_APP"
    write_sidecar_conf a "$TMP/pki/a" "$P_A_ADMIN" "$P_A_OUT" "$P_A_IN" "$P_A_APP" \
        "[{authority: b.demo, address: \"127.0.0.1:$P_B_IN\", identity: \"spiffe://demo.local/ns/demo/sa/b\"}]"
    local pb ready_b pa ready_a
    read -r pb ready_b < <(start_sidecar b "$P_B_ADMIN")
    [[ -n ${pb:-} ]] || die "sidecar b did not start"
    PIDS+=("$pb")
    read -r pa ready_a < <(start_sidecar a "$P_A_ADMIN")
    [[ -n ${pa:-} ]] || die "sidecar a did not start"
    PIDS+=("$pa")
    log "palisade ready: B ${ready_b} ms, A ${ready_a} ms"
    echo "$ready_a $ready_b" > "$TMP/ready.txt"
    check_ok "http://127.0.0.1:$P_A_OUT/" -H "Host: b.demo"
    measure palisade "http://127.0.0.1:$P_A_OUT/" "A=$pa B=$pb app=$app_pids" -H "Host: b.demo"
    curl -sS --max-time 2 "http://127.0.0.1:$P_A_ADMIN/metrics" > "$OUT/raw/palisade-a.metrics" || true
    curl -sS --max-time 2 "http://127.0.0.1:$P_B_ADMIN/metrics" > "$OUT/raw/palisade-b.metrics" || true
    stop_pid "$pa"; stop_pid "$pb"
    PIDS=()

    # c) nginx pair
    start_nginx_pair
    check_ok "http://127.0.0.1:$P_NGX_A/"
    local na nb
    na=$(<"$TMP/nginx-a/nginx.pid"); nb=$(<"$TMP/nginx-b/nginx.pid")
    na="$na,$(children "$na" | paste -sd,)"; nb="$nb,$(children "$nb" | paste -sd,)"
    measure nginx "http://127.0.0.1:$P_NGX_A/" "A=$na B=$nb app=$app_pids"
    stop_nginx_pair

    report > "$OUT/results.md"
    cat "$OUT/results.md"
}

report() {
    python3 - "$OUT/raw" "$TMP/procs.txt" "$TMP/ready.txt" "$CLK_TCK" \
        "$RATE" "$CONNS" "$DURATION" "$WARMUP" "$PALISADE_THREADS" <<'PY'
import json, sys, datetime, platform, os, subprocess
raw, procs_f, ready_f, tck, rate, conns, dur, warm, threads = sys.argv[1:10]
tck = int(tck)
procs = {}
for line in open(procs_f):
    label, rest = line.strip().split("|", 1)
    procs[label] = {}
    for item in rest.split():
        name, ticks, hwm = item.split(":")
        procs[label][name] = (int(ticks) / tck, int(hwm) / 1024)
ready_a, ready_b = open(ready_f).read().split()

def stats(label):
    d = json.load(open(f"{raw}/{label}.json"))
    codes = {str(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errors = d.get("errorDistribution", {})
    n_ok = sum(codes.values())
    n = n_ok + sum(errors.values())
    lp = d.get("latencyPercentiles", {})
    s = d["summary"]
    return dict(
        n=n, codes=codes, errors=errors, success=s.get("successRate", 0) * 100,
        rps=s.get("requestsPerSec", 0),
        p50=lp.get("p50", 0) * 1000, p99=lp.get("p99", 0) * 1000, p999=lp.get("p99.9", 0) * 1000,
        mx=s.get("slowest", 0) * 1000,
    )

labels = [("direct", "a) direct: client → app"),
          ("palisade", "b) Palisade pair (mTLS h2)"),
          ("nginx", "c) nginx pair (mTLS, HTTP/1.1 keepalive)")]
S = {l: stats(l) for l, _ in labels}

def fmt_codes(st):
    parts = [f"{k}: {v}" for k, v in sorted(st["codes"].items())]
    parts += [f"error \"{k}\": {v}" for k, v in st["errors"].items()]
    return ", ".join(parts) or "none"

def cpu_per_k(label, name):
    secs, _ = procs[label][name]
    return secs / S[label]["n"] * 1000

def nginx_ver():
    r = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return (r.stderr or r.stdout).strip().split("/")[-1]
def oha_ver():
    return subprocess.run(["oha", "--version"], capture_output=True, text=True).stdout.strip().split()[-1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")

print(f"### Results — {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
print()
print(f"Load: oha {oha_ver()}, `-q {rate} -c {conns} -z {dur} --latency-correction`, keep-alive on, "
      f"{warm} warm-up excluded. Machine: {os.cpu_count()} CPUs, {cpu}; nginx {nginx_ver()}; "
      f"Palisade threads: {threads}, nginx worker_processes 1.")
print()
print("| run | requests | achieved req/s | success | status codes | p50 ms | p99 ms | p99.9 ms | max ms |")
print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
for l, title in labels:
    st = S[l]
    print(f"| {title} | {st['n']} | {st['rps']:.0f} | {st['success']:.2f}% | {fmt_codes(st)} | "
          f"{st['p50']:.3f} | {st['p99']:.3f} | {st['p999']:.3f} | {st['mx']:.2f} |")
print()
print("| run | process | CPU-s per 1,000 req | peak RSS (VmHWM) MB | start-to-ready ms |")
print("|---|---|---:|---:|---:|")
for l, title in labels:
    names = [n for n in ("A", "B") if n in procs[l]]
    for n in names:
        kind = "Palisade sidecar" if l == "palisade" else "nginx (master+worker)"
        ready = (ready_a if n == "A" else ready_b) if l == "palisade" else "—"
        print(f"| {title} | {kind} {n} | {cpu_per_k(l, n):.4f} | {procs[l][n][1]:.1f} | {ready} |")
    if names:
        tot = sum(cpu_per_k(l, n) for n in names)
        rss = sum(procs[l][n][1] for n in names)
        print(f"| {title} | **pair total** | **{tot:.4f}** | **{rss:.1f}** | |")
    print(f"| {title} | app nginx (master+worker, context) | {cpu_per_k(l, 'app'):.4f} | {procs[l]['app'][1]:.1f} | |")
print()
print("CPU-s per 1,000 req = (utime+stime after − before the measured run) / CLK_TCK / requests × 1000. "
      "nginx figures add master and worker (peak RSS summed, so shared pages count twice).")
PY
}

main "$@"
