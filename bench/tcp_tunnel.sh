#!/usr/bin/env bash
# bench/tcp_tunnel.sh — what carrying TCP that is not HTTP between two mesh workloads costs: the
# mTLS tunnel from sidecar A's outbound listener to sidecar B's inbound listener.
#
# In a network namespace of its own (root: `unshare -n`, iptables), with B's "pod address"
# 127.0.0.97: the app's connections there go to A's outbound listener, A's own (gid 2102) are
# redirected into B's inbound listener (B's pod's capture), B's own (gid 2103) reach the servers.
# Each load runs once directly (no sidecars) and once through both sidecars:
#   - pingpong: ROUNDS (default 20000) round trips of 64 bytes on one connection: p50, p99;
#   - connect:  CONNECTS (default 1000) connections, each one round trip and a close: per second,
#               p50, p99 (the tunnel's handshake is in each);
#   - bulk:     BYTES (default 1 GB) in 1 MiB writes, the half-close, the count back: MB/s.
# Then B turns PERMISSIVE and the same loads run from a client without a sidecar (gid 2104),
# captured straight into B's inbound listener, as plaintext to B's opaque ports; and
#   - greeting: GREETINGS (default 20) connections to a server that speaks first, each waiting
#               for its first byte: directly, and through B (which waits 500 ms for a client
#               byte before it takes the silence for a server-first protocol's).
# Printed: each figure, both sidecars' CPU-seconds per load, their peak RSS.
#
# Usage: sudo bench/tcp_tunnel.sh [BINARY]     (default target/release/palisade)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/palisade}")
export ROUNDS=${ROUNDS:-20000} CONNECTS=${CONNECTS:-1000} BYTES=${BYTES:-1000000000} GREETINGS=${GREETINGS:-20}
[[ $(id -u) == 0 ]] || { echo "bench/tcp_tunnel.sh: needs root (a network namespace, iptables)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export BIN WORK
timeout 600 unshare -n bash -s <<'SCENARIO'
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
cd "$WORK"
"$BIN" ca init --trust-domain cluster.local --out ca >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/a/sa/a --out a >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/b/sa/b --out b >/dev/null
cat > servers.py <<'PY'
import socket, threading
def serve(port, handle):
    s = socket.create_server(("127.0.0.97", port), backlog=512)
    def loop():
        while True:
            c, _ = s.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
def echo(c):
    while chunk := c.recv(65536):
        c.sendall(chunk)
    c.close()
def sink(c):
    n = 0
    while chunk := c.recv(1 << 20):
        n += len(chunk)
    c.sendall(str(n).encode())
    c.close()
def greet(c):
    c.sendall(b"*")
    while c.recv(4096):
        pass
    c.close()
serve(5432, echo)
serve(5433, sink)
serve(5434, greet)
print("ready", flush=True)
threading.Event().wait()
PY
cat > load.py <<'PY'
import socket, sys, time
def quantiles(samples):
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6
def connect(port):
    s = socket.create_connection(("127.0.0.97", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
def exchange(s, message):
    s.sendall(message)
    got = b""
    while len(got) < len(message):
        got += s.recv(65536)
    assert got == message
message = b"\0" + b"q" * 63  # a zero byte first: not HTTP
load = sys.argv[1]
if load == "pingpong":
    s = connect(5432)
    exchange(s, message)
    samples = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); exchange(s, message); samples.append(time.perf_counter() - t)
    s.close()
    p50, p99 = quantiles(samples)
    print(f"pingpong: {len(samples)} round trips, p50 {p50:.0f} us, p99 {p99:.0f} us")
elif load == "connect":
    samples = []
    start = time.perf_counter()
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); s = connect(5432); exchange(s, message); s.close()
        samples.append(time.perf_counter() - t)
    rate = len(samples) / (time.perf_counter() - start)
    p50, p99 = quantiles(samples)
    print(f"connect: {len(samples)} connections, {rate:.0f}/s, p50 {p50:.0f} us, p99 {p99:.0f} us")
elif load == "greeting":
    samples = []
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); s = connect(5434); assert s.recv(1) == b"*"; s.close()
        samples.append(time.perf_counter() - t)
    p50, p99 = quantiles(samples)
    print(f"greeting: {len(samples)} connections, first byte p50 {p50 / 1000:.1f} ms, p99 {p99 / 1000:.1f} ms")
else:
    total = int(sys.argv[2]); block = b"\0" + b"x" * ((1 << 20) - 1)
    s = connect(5433); t = time.perf_counter(); sent = 0
    while sent < total: s.sendall(block); sent += len(block)
    s.shutdown(socket.SHUT_WR); got = int(s.recv(100)); dt = time.perf_counter() - t
    assert got == sent, (got, sent)
    print(f"bulk: {sent} bytes in {dt:.2f} s, {sent / dt / 1e6:.0f} MB/s")
PY
setpriv --regid=2105 --clear-groups python3 servers.py > servers.out 2>&1 &
cat > policy.yaml <<'YAML'
apiVersion: palisade.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: db, namespace: b}
spec:
  authorization:
    default: DENY
    rules:
      - {name: a-db, action: ALLOW, from: {principals: ["spiffe://cluster.local/ns/a/sa/a"]}, to: {ports: [5432, 5433]}}
YAML
# What B's policy becomes for the last loads: PERMISSIVE, and clients by address too.
sed -e 's/^spec:$/spec:\n  mtls: PERMISSIVE/' -e '$a\      - {name: c-db, action: ALLOW, from: {ipBlocks: [127.0.0.0/8]}, to: {ports: [5432, 5433, 5434]}}' \
    policy.yaml > permissive.yaml
cat > a.yaml <<YAML
identity: {files: {cert: a/tls.crt, key: a/tls.key, trustBundle: a/ca.crt}}
inbound: {listen: "127.0.0.1:15006", app: "127.0.0.1:18081"}
outbound: {listen: "127.0.0.1:15001"}
admin: {listen: "127.0.0.1:15000"}
telemetry: {accessLogSink: "file:$WORK/a.access"}
YAML
cat > b.yaml <<YAML
identity: {files: {cert: b/tls.crt, key: b/tls.key, trustBundle: b/ca.crt}}
inbound: {listen: "127.0.0.1:15106", app: "0.0.0.0:0", opaquePorts: [5432, 5433, 5434]}
outbound: {listen: "127.0.0.1:15101"}
admin: {listen: "127.0.0.1:15100"}
workload: {namespace: b, serviceAccount: b}
policy: {files: [policy.yaml]}
telemetry: {accessLogSink: "file:$WORK/b.access"}
YAML
setpriv --regid=2102 --clear-groups "$BIN" sidecar --config a.yaml >a.events 2>a.log &
A=$!
setpriv --regid=2103 --clear-groups "$BIN" sidecar --config b.yaml >b.events 2>b.log &
B=$!
for _ in $(seq 1 200); do
    curl -sf http://127.0.0.1:15000/ready >/dev/null && curl -sf http://127.0.0.1:15100/ready >/dev/null \
        && grep -q ready servers.out && break
    sleep 0.05
done
echo "RSS at ready: A $(awk '/VmRSS/ {print $2, $3}' /proc/$A/status), B $(awk '/VmRSS/ {print $2, $3}' /proc/$B/status)"
run() {
    python3 load.py pingpong "$ROUNDS"
    python3 load.py connect "$CONNECTS"
    python3 load.py bulk "$BYTES"
}
echo "== direct"
run
python3 load.py greeting "$GREETINGS"
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2103 -j RETURN
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2102 -j REDIRECT --to-ports 15106
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2104 -j REDIRECT --to-ports 15106
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner ! --gid-owner 2105 -j REDIRECT --to-ports 15001
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "== through the tunnel (CPU in ticks of 1/$(getconf CLK_TCK) s, A then B)"
for load in "pingpong $ROUNDS" "connect $CONNECTS" "bulk $BYTES"; do
    a0=$(ticks $A); b0=$(ticks $B)
    # shellcheck disable=SC2086
    line=$(python3 load.py $load)
    echo "$line; CPU A $(( $(ticks $A) - a0 )), B $(( $(ticks $B) - b0 ))"
done
tunnels=$(curl -s http://127.0.0.1:15000/metrics | awk '/^palisade_outbound_opaque_connections_total/ {print $2}')
expected=$(( CONNECTS + 2 ))
[[ $tunnels == "$expected" ]] || { echo "A counted $tunnels tunnels, not $expected" >&2; exit 1; }
for _ in $(seq 1 100); do
    [[ $(grep -c '"protocol":"tcp"' b.access) == "$expected" ]] && break
    sleep 0.05
done
[[ $(grep -c '"principal":"spiffe://cluster.local/ns/a/sa/a"' b.access) == "$expected" ]] \
    || { echo "B did not log every tunnel as A's" >&2; exit 1; }
cp permissive.yaml policy.yaml
for _ in $(seq 1 200); do
    curl -s http://127.0.0.1:15100/config_dump | grep -Eq '"mtls": ?"PERMISSIVE"' && break
    sleep 0.05
done
curl -s http://127.0.0.1:15100/config_dump | grep -Eq '"mtls": ?"PERMISSIVE"' || { echo "B is not PERMISSIVE" >&2; exit 1; }
echo "== plaintext from a client without a sidecar, through B alone (PERMISSIVE)"
for load in "pingpong $ROUNDS" "connect $CONNECTS" "bulk $BYTES" "greeting $GREETINGS"; do
    b0=$(ticks $B)
    # shellcheck disable=SC2086
    line=$(setpriv --regid=2104 --clear-groups python3 load.py $load)
    echo "$line; CPU B $(( $(ticks $B) - b0 ))"
done
plaintext=$(( CONNECTS + 2 + GREETINGS ))
for _ in $(seq 1 100); do
    [[ $(grep '"protocol":"tcp"' b.access | grep -vc '"principal"') == "$plaintext" ]] && break
    sleep 0.05
done
[[ $(grep '"protocol":"tcp"' b.access | grep -vc '"principal"') == "$plaintext" ]] \
    || { echo "B did not log every plaintext connection" >&2; exit 1; }
echo "peak RSS: A $(awk '/VmHWM/ {print $2, $3}' /proc/$A/status), B $(awk '/VmHWM/ {print $2, $3}' /proc/$B/status)"
SCENARIO
