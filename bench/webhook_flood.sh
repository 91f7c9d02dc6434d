#!/usr/bin/env bash
# bench/webhook_flood.sh: the injection webhook under one client's flood, as an outside tester
# ran it: 60 TLS connections each holding most of a 4 MiB review, then eight complete 4 MB reviews
# at once; prints the control plane's resident memory. Loopback only, ports 26210-26217.
#
#     bench/webhook_flood.sh <palisade binary>
set -euo pipefail
P=$(realpath "$1"); D=$(mktemp -d); cd "$D"
$P ca init --out ca >/dev/null
$P ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/palisade-system/sa/palisade-control --dns palisade-control.palisade-system.svc --out control >/dev/null
mkdir policies
cat > control.yaml <<'Y'
identity: {files: {cert: control/tls.crt, key: control/tls.key, trustBundle: control/ca.crt}}
grpc:    {listen: "127.0.0.1:26210"}
admin:   {listen: "127.0.0.1:26214"}
policies: {dir: policies}
webhook: {listen: "127.0.0.1:26217", cert: control/tls.crt, key: control/tls.key, failurePolicy: Fail,
          sidecar: {identity: {trustAnchorsFile: ca/ca.crt}}}
Y
$P control --config control.yaml 2>/dev/null & echo $! > control.pid
for i in $(seq 50); do curl -sf http://127.0.0.1:26214/ready >/dev/null && break; sleep 0.1; done
python3 - <<'PY'
import socket, ssl, time, http.client, threading
pid = open("control.pid").read().strip()
def status(k): return int([l for l in open(f"/proc/{pid}/status") if l.startswith(k)][0].split()[1]) // 1024
ctx = ssl.create_default_context(cafile="ca/ca.crt"); ctx.check_hostname = False
print("RSS before:", status("VmRSS"), "MB")
held, refused = [], 0
for i in range(60):
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 26217)), server_hostname="x")
        s.sendall(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n{" + b" " * 4_150_000)
        held.append(s)
    except Exception:
        refused += 1
time.sleep(2)
print(f"60 held bodies: {len(held)} connections taken, {refused} refused; RSS {status('VmRSS')} MB")
for s in held: s.close()
head = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","namespace":"shop","operation":"CREATE","object":{"metadata":{"name":"a"},"spec":{"containers":[{"name":"a","image":"b"}]},"x":['
body = head + b"0," * 2_094_000 + b"0]}}}"
codes = []
def one():
    c = http.client.HTTPSConnection("127.0.0.1", 26217, context=ctx, timeout=60)
    c.request("POST", "/inject", body=body, headers={"content-type": "application/json"}); codes.append(c.getresponse().status)
t = [threading.Thread(target=one) for _ in range(8)]; [x.start() for x in t]; [x.join() for x in t]
print("8 complete 4 MB reviews at once:", sorted(codes), "peak RSS", status("VmHWM"), "MB")
PY
kill $(cat control.pid); rm -rf "$D"
