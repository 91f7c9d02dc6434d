//! Transparent capture: in a network namespace of its own, an iptables REDIRECT sends the app's
//! connection to 127.0.0.99:8080 into the outbound listener; the sidecar finds the original
//! destination with SO_ORIGINAL_DST and reaches the peer sidecar listening there over mTLS.
//! Needs root (namespaces, iptables), as the pod's init container does.

use std::process::Command;

const SCENARIO: &str = r#"
set -euo pipefail
# Whatever ends the scenario (a failed step, the test's timeout) ends what it started, or the
# test would wait on their open output for ever.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
trap 'exit 143' TERM
ip link set lo up
cd "$WORK"
"$BIN" ca init --trust-domain cluster.local --out ca >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/a/sa/a --out a >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/b/sa/b --out b >/dev/null
cat > echo.py <<'PY'
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("xfcc=%s\n" % self.headers.get("x-forwarded-client-cert")).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", 18080), H).serve_forever()
PY
python3 echo.py & 
cat > b.yaml <<YAML
identity: {files: {cert: b/tls.crt, key: b/tls.key, trustBundle: b/ca.crt}}
inbound: {listen: "127.0.0.99:8080", app: "127.0.0.1:18080"}
outbound: {listen: "127.0.0.1:25001"}
admin: {listen: "127.0.0.1:25000"}
telemetry: {events: {sink: "file:$WORK/b.events"}}
YAML
cat > a.yaml <<YAML
identity: {files: {cert: a/tls.crt, key: a/tls.key, trustBundle: a/ca.crt}}
inbound: {listen: "127.0.0.1:15006", app: "127.0.0.1:18081"}
outbound: {listen: "127.0.0.1:15001"}
admin: {listen: "127.0.0.1:15000"}
telemetry: {events: {sink: "file:$WORK/a.events"}}
YAML
"$BIN" sidecar --config b.yaml 2>b.log &
"$BIN" sidecar --config a.yaml 2>a.log &
for i in $(seq 1 100); do
  curl -sf http://127.0.0.1:15000/ready >/dev/null && curl -sf http://127.0.0.1:25000/ready >/dev/null \
    && curl -sf http://127.0.0.1:18080/ >/dev/null && break
  sleep 0.05
done
# The app runs as nobody; the sidecars (root here, uid 2102 in a pod) are not redirected.
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.99 --dport 8080 -m owner --uid-owner 65534 -j REDIRECT --to-ports 15001
setpriv --reuid=65534 --regid=65534 --clear-groups curl -s --max-time 5 http://127.0.0.99:8080/hello
echo
# Without the redirect, the same call is plaintext to an mTLS port and gets nothing.
if curl -s --max-time 5 http://127.0.0.99:8080/hello; then echo "UNEXPECTED: plaintext got through"; fi
kill %1 %2 %3 2>/dev/null || true
"#;

#[test]
fn redirected_traffic_reaches_its_original_destination_over_mtls() {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n") {
        eprintln!("skipped: needs root for a network namespace and iptables");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["60", "unshare", "-n", "bash", "-c", SCENARIO])
        .env("BIN", env!("CARGO_BIN_EXE_palisade"))
        .env("WORK", work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = ["a.log", "b.log"].map(|f| std::fs::read_to_string(work.path().join(f)).unwrap_or_default()).join("\n");
    assert!(out.status.success(), "scenario failed\nstdout: {stdout}\nstderr: {stderr}\nlogs: {logs}");
    assert!(
        stdout.contains("xfcc=By=spiffe://cluster.local/ns/b/sa/b;URI=spiffe://cluster.local/ns/a/sa/a"),
        "stdout: {stdout}\nstderr: {stderr}\nlogs: {logs}"
    );
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
}
