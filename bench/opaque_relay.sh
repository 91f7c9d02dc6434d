#!/usr/bin/env bash
# bench/opaque_relay.sh — how fast the outbound listener relays TCP that is not HTTP (the app's
# own TLS, a database protocol) to an `outbound.passthrough` destination, and what it costs.
#
# In a network namespace of its own (root: `unshare -n`, iptables), a Python client sends BYTES
# (default 4 GB) in 1 MiB writes to a Python sink on 127.0.0.98:5432, once directly and once
# redirected through the sidecar's outbound listener (iptables REDIRECT of everything but the
# sidecar's gid 2102), then closes its half; the sink answers with the count it received.
# Printed: MB/s each way, the sidecar's CPU-seconds for the relayed run, its peak RSS.
#
# Usage: sudo bench/opaque_relay.sh [BINARY]     (default target/release/palisade)
#        BYTES=1000000000 sudo bench/opaque_relay.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/palisade}")
BYTES=${BYTES:-4000000000}
[[ $(id -u) == 0 ]] || { echo "bench/opaque_relay.sh: needs root (a network namespace, iptables)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export BIN WORK BYTES
timeout 300 unshare -n bash -s <<'SCENARIO'
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
cd "$WORK"
"$BIN" ca init --trust-domain cluster.local --out ca >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/a/sa/a --out a >/dev/null
cat > sink.py <<'PY'
import socket
s = socket.create_server(("127.0.0.98", 5432)); print("ready", flush=True)
while True:
    c, _ = s.accept(); n = 0
    while chunk := c.recv(1 << 20): n += len(chunk)
    c.sendall(str(n).encode()); c.close()
PY
cat > send.py <<'PY'
import socket, sys, time
total = int(sys.argv[1]); block = b"\0" + b"x" * ((1 << 20) - 1)  # a zero byte first: not HTTP
s = socket.create_connection(("127.0.0.98", 5432)); t = time.monotonic(); sent = 0
while sent < total: s.sendall(block); sent += len(block)
s.shutdown(socket.SHUT_WR); got = int(s.recv(100)); dt = time.monotonic() - t
assert got == sent, (got, sent)
print(f"{sent} bytes in {dt:.2f} s: {sent / dt / 1e6:.0f} MB/s")
PY
python3 sink.py > sink.out &
cat > a.yaml <<YAML
identity: {files: {cert: a/tls.crt, key: a/tls.key, trustBundle: a/ca.crt}}
inbound: {listen: "127.0.0.1:15006", app: "127.0.0.1:18081"}
outbound: {listen: "127.0.0.1:15001", passthrough: ["127.0.0.98/32"]}
admin: {listen: "127.0.0.1:15000"}
YAML
setpriv --regid=2102 --clear-groups "$BIN" sidecar --config a.yaml >a.events 2>a.log &
SIDECAR=$!
for _ in $(seq 1 200); do
    curl -sf http://127.0.0.1:15000/ready >/dev/null && grep -q ready sink.out && break
    sleep 0.05
done
echo "direct:  $(python3 send.py "$BYTES")"
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.98 -m owner ! --gid-owner 2102 -j REDIRECT --to-ports 15001
ticks() { awk '{print $14 + $15}' "/proc/$SIDECAR/stat"; }
t0=$(ticks)
echo "relayed: $(python3 send.py "$BYTES")"
t1=$(ticks)
relayed=$(curl -s http://127.0.0.1:15000/metrics | awk '/^palisade_outbound_opaque_connections_total/ {print $2}')
[[ $relayed == 1 ]] || { echo "the sidecar counted $relayed relayed connections, not 1" >&2; exit 1; }
echo "sidecar: $(( t1 - t0 )) ticks of CPU (CLK_TCK $(getconf CLK_TCK)) for the relayed run; $(grep VmHWM "/proc/$SIDECAR/status" | tr -s ' ')"
SCENARIO
