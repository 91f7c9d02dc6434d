//! Transparent capture: in a network namespace of its own, an iptables REDIRECT sends the app's
//! connection to 127.0.0.99:8080 into the outbound listener; the sidecar finds the original
//! destination with SO_ORIGINAL_DST and reaches the peer sidecar listening there over mTLS.
//! Needs root (namespaces, iptables), as the pod's init container does.

mod support;
use support::{netns_scenario, Scenario};

const SCENARIO: &str = r#"
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
    let Some(Scenario { stdout, context }) = netns_scenario(SCENARIO, 60, &["a.log", "b.log"]) else { return };
    assert!(
        stdout.contains("xfcc=By=spiffe://cluster.local/ns/b/sa/b;URI=spiffe://cluster.local/ns/a/sa/a"),
        "{context}"
    );
    assert!(!stdout.contains("UNEXPECTED"), "{context}");
}
