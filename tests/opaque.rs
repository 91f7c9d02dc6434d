//! Captured outbound connections that are not HTTP (the app's own TLS, a database protocol): in a
//! network namespace of its own, an iptables REDIRECT sends every connection but the sidecar's to
//! 127.0.0.96/30 into the outbound listener. 127.0.0.98 is listed in `outbound.passthrough`,
//! 127.0.0.97 is not. Needs root (namespaces, iptables), as the pod's init container does.

mod support;
use support::{netns_scenario, Scenario};

const SCENARIO: &str = r#"
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/a/sa/a --out a >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/ext/sa/api --out ext >/dev/null
cat > servers.py <<'PY'
import http.server, socket, ssl, sys, threading
log = open("accepted.log", "a", buffering=1)
def serve(host, port, handle):
    s = socket.create_server((host, port))
    def loop():
        while True:
            c, _ = s.accept()
            log.write(f"{host}:{port}\n")
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
def echo_after_eof(c):
    # Answers only once the client has closed its half: the relay must pass the half-close on.
    data = b""
    while chunk := c.recv(4096):
        data += chunk
    c.sendall(b"echo:" + data)
    c.close()
def banner_then_echo(c):
    c.sendall(b"banner from the server\n")
    while chunk := c.recv(4096):
        c.sendall(chunk)
    c.close()
for host in ("127.0.0.98", "127.0.0.97"):
    serve(host, 5432, echo_after_eof)
    serve(host, 3306, banner_then_echo)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (self.server.answer + "\n").encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
plain = http.server.ThreadingHTTPServer(("127.0.0.98", 8080), H); plain.answer = "plain-http-ok"
tls = http.server.ThreadingHTTPServer(("127.0.0.98", 8443), H); tls.answer = "app-tls-ok"
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain("ext/tls.crt", "ext/tls.key")
tls.socket = context.wrap_socket(tls.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
print("ready", flush=True)
tls.serve_forever()
PY
cat > client.py <<'PY'
import errno, socket
def talk(host, port, send=None):
    """What comes back: everything until the server closes when the client sends and closes its
    half, else the server's first words. An error (a reset) is shown by its errno's name."""
    s = socket.create_connection((host, port), timeout=5)
    got = b""
    try:
        if send is None:
            got = s.recv(4096)
        else:
            s.sendall(send)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                got += chunk
    except OSError as e:
        got += f"<{errno.errorcode.get(e.errno, type(e).__name__)}>".encode()
    s.close()
    return got
# PostgreSQL's SSLRequest: a length prefix, so not HTTP from its first byte.
ssl_request = bytes([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
print("pg-passthrough", talk("127.0.0.98", 5432, ssl_request))
print("pg-unlisted", talk("127.0.0.97", 5432, ssl_request))
print("banner-passthrough", talk("127.0.0.98", 3306))
print("banner-unlisted", talk("127.0.0.97", 3306))
PY
python3 servers.py > servers.out 2>&1 &
cat > a.yaml <<YAML
identity: {files: {cert: a/tls.crt, key: a/tls.key, trustBundle: a/ca.crt}}
inbound: {listen: "127.0.0.1:15006", app: "127.0.0.1:18081"}
outbound: {listen: "127.0.0.1:15001", passthrough: ["127.0.0.98/32"], opaquePorts: [3306]}
admin: {listen: "127.0.0.1:15000"}
telemetry: {events: {sink: "file:$WORK/a.events"}, accessLogSink: "file:$WORK/a.access"}
YAML
# The sidecar runs under gid 2102, whose connections are not redirected (in a pod: its uid).
setpriv --regid=2102 --clear-groups "$BIN" sidecar --config a.yaml 2>a.log &
for i in $(seq 1 200); do
  curl -sf http://127.0.0.1:15000/ready >/dev/null && grep -q ready servers.out && break
  sleep 0.05
done
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.96/30 -m owner ! --gid-owner 2102 -j REDIRECT --to-ports 15001
python3 client.py
echo "app-tls $(curl -sk --max-time 5 https://127.0.0.98:8443/)"
echo "plain-http $(curl -s --max-time 5 http://127.0.0.98:8080/)"
for i in $(seq 1 100); do grep -q not_http a.events 2>/dev/null && break; sleep 0.05; done
curl -s http://127.0.0.1:15000/metrics | grep -E '^palisade_(outbound_opaque_connections_total|connections_closed_total|requests_total)' || true
echo "events: $(grep -c not_http a.events || true)"
# Each relay's access log line is written when both of its sides have closed.
for i in $(seq 1 100); do [ "$(grep -c '"protocol":"tcp"' a.access 2>/dev/null)" = 3 ] && break; sleep 0.05; done
grep '"protocol":"tcp"' a.access | sed 's/^/access: /' || true
sed 's/^/accepted: /' accepted.log
"#;

#[test]
fn captured_traffic_that_is_not_http_is_relayed_to_passthrough_destinations_and_refused_elsewhere() {
    let logs = ["a.log", "servers.out", "a.events", "a.access"];
    let Some(Scenario { stdout, context }) = netns_scenario(SCENARIO, 90, &logs) else { return };
    let line = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}\n{context}"))
    };
    // Not HTTP, to a listed destination: relayed both ways, the client's half-close passed on.
    assert_eq!(line("pg-passthrough"), r"b'echo:\x00\x00\x00\x08\x04\xd2\x16/'", "{context}");
    // The server speaks first on an opaque port: its banner arrives without the app sending a byte.
    assert_eq!(line("banner-passthrough"), r"b'banner from the server\n'", "{context}");
    // The app's own TLS, end to end through the relay (the sidecar cannot read it).
    assert_eq!(line("app-tls"), "app-tls-ok", "{context}");
    // HTTP to a listed destination still goes the HTTP way (forwarded as a request, not relayed).
    assert_eq!(line("plain-http"), "plain-http-ok", "{context}");
    // Unlisted: closed by the sidecar before anything reached the destination.
    for refused in ["pg-unlisted", "banner-unlisted"] {
        let got = line(refused);
        assert!(
            // Closed (the sidecar read the first bytes), or reset, as the client's next call saw it.
            ["b''", "b'<ECONNRESET>'", "b'<EPIPE>'", "b'<ENOTCONN>'"].contains(&got),
            "{refused}: {got}\n{context}"
        );
    }
    assert!(!stdout.contains("accepted: 127.0.0.97"), "an unlisted destination was reached\n{context}");
    assert_eq!(stdout.matches("accepted: 127.0.0.98:5432").count(), 1, "{context}");
    assert_eq!(stdout.matches("accepted: 127.0.0.98:3306").count(), 1, "{context}");
    // Counted: three relays (PostgreSQL, the banner, the app's TLS), two refusals, one request.
    assert!(stdout.contains("palisade_outbound_opaque_connections_total 3"), "{context}");
    assert!(
        stdout.contains(r#"palisade_connections_closed_total{direction="outbound",reason="not_http"} 2"#),
        "{context}"
    );
    assert!(stdout.contains(r#"direction="outbound""#) && stdout.contains("palisade_requests_total"), "{context}");
    assert!(!stdout.contains("events: 0"), "no not_http event\n{context}");
    // One access log line per relay, with what it carried each way and how it ended.
    let relays: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("access: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{context}")))
        .collect();
    let relay = |destination: &str| {
        relays
            .iter()
            .find(|r| r["destination"] == destination)
            .unwrap_or_else(|| panic!("no access log line for {destination}\n{context}"))
    };
    let pg = relay("127.0.0.98:5432");
    assert_eq!(
        (&pg["bytes_sent"], &pg["bytes_received"], &pg["end"]),
        (&8.into(), &13.into(), &"closed".into()),
        "{pg}"
    );
    assert_eq!((&pg["direction"], &pg["protocol"]), (&"outbound".into(), &"tcp".into()), "{pg}");
    assert!(pg["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{pg}");
    let banner = relay("127.0.0.98:3306");
    assert_eq!((&banner["bytes_sent"], &banner["bytes_received"]), (&0.into(), &23.into()), "{banner}");
    let tls = relay("127.0.0.98:8443");
    assert!(tls["bytes_sent"].as_u64() > Some(200) && tls["bytes_received"].as_u64() > Some(500), "{tls}");
    assert_eq!(relays.len(), 3, "refused connections are events, not access lines\n{context}");
}
