//! Captured outbound connections that are not HTTP (the app's own TLS, a database protocol): in a
//! network namespace of its own, an iptables REDIRECT sends every connection but the sidecar's to
//! 127.0.0.96/30 into the outbound listener. 127.0.0.98 is listed in `outbound.passthrough`,
//! 127.0.0.97 is not: in the first test it has no sidecar, in the second it is a mesh workload's.
//! Needs root (namespaces, iptables), as the pod's init container does.

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
    log.write(f"{c.getsockname()[0]}:{c.getsockname()[1]} received {data[:8].hex()}\n")
    try:
        c.sendall(b"echo:" + data)
    except OSError:
        pass
    c.close()
def banner_then_echo(c):
    c.sendall(b"banner from the server\n")
    while chunk := c.recv(4096):
        c.sendall(chunk)
    c.close()
serve("127.0.0.98", 11211, echo_after_eof)
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
# memcached's text protocol: a word and a blank, as a request line starts, but a whole line
# without HTTP's version: relayed, not answered with a 400.
print("memcached-passthrough", talk("127.0.0.98", 11211, b"get foo\r\n"))
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
curl -s http://127.0.0.1:15000/metrics | grep -E '^palisade_(outbound_opaque_connections_total|connections_closed_total|requests_total|tls_handshakes_total)' || true
echo "events: $(grep -c not_http a.events || true)"
# Each relay's access log line is written when both of its sides have closed.
for i in $(seq 1 100); do [ "$(grep -c '"protocol":"tcp"' a.access 2>/dev/null)" = 4 ] && break; sleep 0.05; done
grep '"protocol":"tcp"' a.access | sed 's/^/access: /' || true
# The destination without a sidecar says what it received once the refused tunnel has closed.
for i in $(seq 1 100); do grep -q '127.0.0.97:5432 received' accepted.log && break; sleep 0.05; done
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
    assert_eq!(line("memcached-passthrough"), r"b'echo:get foo\r\n'", "{context}");
    // The server speaks first on an opaque port: its banner arrives without the app sending a byte.
    assert_eq!(line("banner-passthrough"), r"b'banner from the server\n'", "{context}");
    // The app's own TLS, end to end through the relay (the sidecar cannot read it).
    assert_eq!(line("app-tls"), "app-tls-ok", "{context}");
    // HTTP to a listed destination still goes the HTTP way (forwarded as a request, not relayed).
    assert_eq!(line("plain-http"), "plain-http-ok", "{context}");
    // Unlisted, and without a sidecar to prove a mesh identity: the sidecar tried mutual TLS (a
    // tunnel), was refused, and closed the app's connection before a byte of it was sent.
    for refused in ["pg-unlisted", "banner-unlisted"] {
        let got = line(refused);
        assert!(
            // Closed (the sidecar read the first bytes), or reset, as the client's next call saw it.
            ["b''", "b'<ECONNRESET>'", "b'<EPIPE>'", "b'<ENOTCONN>'"].contains(&got),
            "{refused}: {got}\n{context}"
        );
    }
    assert!(
        stdout.contains("accepted: 127.0.0.97:5432 received 16"),
        "the unlisted destination saw a TLS handshake\n{context}"
    );
    assert_eq!(
        stdout.matches("0000000804d2162f").count(),
        1,
        "the app's bytes reached the listed destination only\n{context}"
    );
    assert_eq!(stdout.matches("accepted: 127.0.0.98:5432\n").count(), 1, "{context}");
    assert_eq!(stdout.matches("accepted: 127.0.0.98:3306").count(), 1, "{context}");
    // Counted: four relays (PostgreSQL, memcached, the banner, the app's TLS), two refusals, one
    // request.
    assert!(stdout.contains("palisade_outbound_opaque_connections_total 4"), "{context}");
    assert!(
        stdout.contains(r#"palisade_connections_closed_total{direction="outbound",reason="not_http"} 2"#),
        "{context}"
    );
    assert!(stdout.contains(r#"direction="outbound""#) && stdout.contains("palisade_requests_total"), "{context}");
    assert!(!stdout.contains("events: 0"), "no not_http event\n{context}");
    // The PostgreSQL server waits for its client: the handshake times out. The banner is no
    // ServerHello: the handshake fails at once.
    for tried in [
        r#"palisade_tls_handshakes_total{direction="outbound",result="timeout"} 1"#,
        r#"palisade_tls_handshakes_total{direction="outbound",result="failure"} 1"#,
    ] {
        assert!(stdout.contains(tried), "{tried}\n{context}");
    }
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
    assert_eq!(relays.len(), 4, "refused connections are events, not access lines\n{context}");
}

/// Two sidecars in one network namespace, standing in for two pods: A's app (any gid but the
/// sidecars') reaches 127.0.0.97, B's pod address, through A's outbound listener; A's own
/// connections there are redirected into B's inbound listener (B's pod's PREROUTING rule), and B's
/// own go to its app. C (gid 2104) has no sidecar. A second CA makes a forged certificate for A's
/// identity.
const MESH_SCENARIO: &str = r#"
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/a/sa/a --out a >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/b/sa/b --out b >/dev/null
"$BIN" ca issue --ca ca --spiffe-id spiffe://cluster.local/ns/d/sa/d --out d >/dev/null
"$BIN" ca init --trust-domain cluster.local --out other-ca >/dev/null
"$BIN" ca issue --ca other-ca --spiffe-id spiffe://cluster.local/ns/a/sa/a --out forged >/dev/null
cat > servers.py <<'PY'
import socket, threading
log = open("accepted.log", "a", buffering=1)
def serve(port, handle):
    s = socket.create_server(("127.0.0.97", port))
    def loop():
        while True:
            c, _ = s.accept()
            log.write(f"127.0.0.97:{port}\n")
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
def echo_after_eof(c):
    data = b""
    while chunk := c.recv(4096):
        data += chunk
    log.write(f"127.0.0.97:{c.getsockname()[1]} received {data[:8].hex()}\n")
    try:
        c.sendall(b"echo:" + data)
    except OSError:
        pass
    c.close()
def banner(c):
    c.sendall(b"banner from the server\n")
    while chunk := c.recv(4096):
        c.sendall(chunk)
    c.close()
def http_app(c):
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nhttp-app\n")
    c.close()
for port in (5432, 6000, 7000):
    serve(port, echo_after_eof)
serve(3306, banner)
serve(8080, http_app)
print("ready", flush=True)
threading.Event().wait()
PY
cat > client.py <<'PY'
import errno, socket, ssl, sys
def talk(port, send=None, wrap=None, host="127.0.0.97"):
    s = socket.create_connection((host, port), timeout=10)
    got = b""
    try:
        if wrap:
            s = wrap(s)
        if send is None:
            got = s.recv(4096)
        else:
            s.sendall(send)
            if not wrap:
                s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                got += chunk
    except (OSError, ssl.SSLError) as e:
        got += f"<{errno.errorcode.get(e.errno, type(e).__name__)}>".encode()
    s.close()
    return got
ssl_request = bytes([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
if sys.argv[1] == "revoke":
    # A connection a pool keeps open: the banner, then nothing until the server side closes.
    s = socket.create_connection(("127.0.0.97", 3306), timeout=30)
    banner = s.recv(4096)
    open("open", "w").close()
    try:
        rest = s.recv(4096)
    except OSError as e:
        rest = f"<{errno.errorcode.get(e.errno, type(e).__name__)}>".encode()
    print("revoked", banner, rest, flush=True)
elif sys.argv[1] == "app":
    print("pg-mesh", talk(5432, ssl_request))
    print("banner-mesh", talk(3306))
    print("denied-port", talk(7000, ssl_request))
    print("wrong-identity", talk(6000, ssl_request))
    # Bytes A's sidecar cannot take for HTTP (a zero byte first) but a request after them:
    # tunnelled, to B's HTTP port, which takes no tunnel.
    print("http-as-tcp", talk(8080, b"\x00GET / HTTP/1.1\r\nhost: b\r\n\r\n"))
    # D's sidecar sends everything to one fixed app port, an HTTP one: a tunnel addressed to
    # an opaque port (5432) would land there.
    print("fixed-app-port", talk(5432, b"\x00GET / HTTP/1.1\r\nhost: d\r\n\r\n", host="127.0.0.99"))
else:
    print("plaintext-from-c", talk(5432, ssl_request))
    def tunnel_client(cert):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(f"{cert}/tls.crt", f"{cert}/tls.key")
        context.set_alpn_protocols(["tcp.palisade.dev/v1"])
        return context.wrap_socket
    # A's own certificate, offering the tunnel straight to B's inbound port: the tunnel's path,
    # taken. The same client with a forged certificate for the same identity: refused there.
    print("tunnel-with-a-cert", talk(3306, wrap=tunnel_client("a")))
    print("forged-cert", talk(3306, wrap=tunnel_client("forged")))
PY
setpriv --regid=2105 --clear-groups python3 servers.py > servers.out 2>&1 &
cat > b-policy.yaml <<'YAML'
apiVersion: palisade.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: db, namespace: b}
spec:
  authorization:
    default: DENY
    rules:
      - {name: a-db, action: ALLOW, from: {principals: ["spiffe://cluster.local/ns/a/sa/a"]}, to: {ports: [5432, 3306, 6000, 8080]}}
YAML
cat > a.yaml <<YAML
identity: {files: {cert: a/tls.crt, key: a/tls.key, trustBundle: a/ca.crt}}
inbound: {listen: "127.0.0.1:15006", app: "127.0.0.1:18081"}
outbound:
  listen: "127.0.0.1:15001"
  opaquePorts: [3306]
  destinations: [{authority: "db:6000", address: "127.0.0.97:6000", identity: "spiffe://cluster.local/ns/b/sa/other"}]
admin: {listen: "127.0.0.1:15000"}
telemetry: {events: {sink: "file:$WORK/a.events"}, accessLogSink: "file:$WORK/a.access"}
YAML
cat > b.yaml <<YAML
identity: {files: {cert: b/tls.crt, key: b/tls.key, trustBundle: b/ca.crt}}
inbound: {listen: "127.0.0.1:15106", app: "0.0.0.0:0", opaquePorts: [5432, 3306, 6000, 7000]}
outbound: {listen: "127.0.0.1:15101"}
admin: {listen: "127.0.0.1:15100"}
workload: {namespace: b, serviceAccount: b}
policy: {files: [b-policy.yaml]}
telemetry: {events: {sink: "file:$WORK/b.events"}, accessLogSink: "file:$WORK/b.access"}
YAML
setpriv --regid=2102 --clear-groups "$BIN" sidecar --config a.yaml 2>a.log &
setpriv --regid=2103 --clear-groups "$BIN" sidecar --config b.yaml 2>b.log &
cat > d.yaml <<YAML
identity: {files: {cert: d/tls.crt, key: d/tls.key, trustBundle: d/ca.crt}}
inbound: {listen: "127.0.0.1:15206", app: "127.0.0.97:8080"}
outbound: {listen: "127.0.0.1:15201"}
admin: {listen: "127.0.0.1:15200"}
telemetry: {events: {sink: "file:$WORK/d.events"}}
YAML
setpriv --regid=2106 --clear-groups "$BIN" sidecar --config d.yaml 2>d.log &
for i in $(seq 1 200); do
  curl -sf http://127.0.0.1:15000/ready >/dev/null && curl -sf http://127.0.0.1:15100/ready >/dev/null \
    && curl -sf http://127.0.0.1:15200/ready >/dev/null \
    && grep -q ready servers.out && break
  sleep 0.05
done
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2103 -j RETURN
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2106 -j RETURN
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.99 -m owner --gid-owner 2102 -j REDIRECT --to-ports 15206
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.99 -j REDIRECT --to-ports 15001
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2102 -j REDIRECT --to-ports 15106
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -m owner --gid-owner 2104 -j REDIRECT --to-ports 15106
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.97 -j REDIRECT --to-ports 15001
python3 client.py app
setpriv --regid=2104 --clear-groups python3 client.py c
# Each tunnel's access line is written when both of its sides have closed.
for i in $(seq 1 100); do
  if [ "$(grep -c '"protocol":"tcp"' a.access 2>/dev/null)" = 5 ] && [ "$(grep -c '"protocol":"tcp"' b.access 2>/dev/null)" = 4 ] \
    && [ "$(grep -c 'inbound TLS handshake refused' b.events 2>/dev/null)" = 2 ] && grep -q 'denied TCP connection' b.events; then
    break
  fi
  sleep 0.05
done
curl -s http://127.0.0.1:15000/metrics | grep -E '^palisade_(outbound_opaque_connections_total|tls_handshakes_total|connections_closed_total)' | sed 's/^/a-metric: /' || true
curl -s http://127.0.0.1:15100/metrics | grep -E '^palisade_(tls_handshakes_total|authz_decisions_total)' | sed 's/^/b-metric: /' || true
# A policy update that no longer allows 3306 closes the tunnel a client holds open there.
python3 client.py revoke > revoke.out 2>&1 &
for i in $(seq 1 200); do [ -e open ] && break; sleep 0.05; done
sed -i 's/5432, 3306, 6000/5432, 6000/' b-policy.yaml
for i in $(seq 1 300); do grep -q revoked revoke.out && break; sleep 0.05; done
cat revoke.out
for i in $(seq 1 100); do grep -q '"end":"denied"' b.access && break; sleep 0.05; done
grep '"protocol":"tcp"' a.access | sed 's/^/a-access: /' || true
grep '"protocol":"tcp"' b.access | sed 's/^/b-access: /' || true
sed 's/^/a-event: /' a.events
sed 's/^/b-event: /' b.events
for i in $(seq 1 100); do grep -q inbound.opaquePorts d.events && break; sleep 0.05; done
sed 's/^/d-event: /' d.events
sed 's/^/accepted: /' accepted.log
"#;

#[test]
fn non_http_between_mesh_workloads_crosses_in_an_mtls_tunnel_judged_by_the_servers_policy() {
    let logs = ["a.log", "b.log", "d.log", "servers.out"];
    let Some(Scenario { stdout, context }) = netns_scenario(MESH_SCENARIO, 90, &logs) else { return };
    let line = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}\n{context}"))
    };
    let json_lines = |prefix: &str| -> Vec<serde_json::Value> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{context}")))
            .collect()
    };
    // Refused first. A forged certificate for A's very identity, offering the tunnel's protocol
    // straight to B's inbound port: refused in the handshake.
    assert!(!line("forged-cert").contains("echo"), "{context}");
    // C has no sidecar: its plaintext meets B's STRICT inbound (a TLS alert at most, never the app).
    assert!(!line("plaintext-from-c").contains("echo"), "{context}");
    let b_events = json_lines("b-event: ");
    let refused_handshakes: Vec<&str> = b_events
        .iter()
        .filter(|e| e["firewall_rule"]["uid"] == "mtls")
        .map(|e| e["status_detail"].as_str().unwrap())
        .collect();
    assert_eq!(refused_handshakes.len(), 2, "{context}");
    assert!(refused_handshakes.iter().any(|r| r.contains("BadSignature")), "{refused_handshakes:?}");
    // B's policy allows A on 5432, 3306, 6000 and 8080 only: 7000 is closed before B's app sees a
    // thing.
    assert_eq!(line("denied-port"), "b''", "{context}");
    assert!(!stdout.contains("accepted: 127.0.0.97:7000"), "{context}");
    let denied: Vec<&serde_json::Value> =
        b_events.iter().filter(|e| e["class_uid"] == 4001 && e["firewall_rule"]["uid"] == "b/db/default").collect();
    assert_eq!(denied.len(), 2, "a ConnectionDenied event at 7000, and at 3306 after the update\n{context}");
    assert_eq!(denied[0]["dst_endpoint"]["port"], 7000, "{}", denied[0]);
    assert_eq!(denied[0]["actor"]["user"]["uid"], "spiffe://cluster.local/ns/a/sa/a", "{}", denied[0]);
    assert_eq!(denied[0]["activity_name"], "Refuse", "{}", denied[0]);
    // A configured destination's identity must answer: B proves another, and A refuses it.
    assert!(!line("wrong-identity").contains("echo"), "{context}");
    let a_events = json_lines("a-event: ");
    assert!(
        a_events.iter().any(|e| e["status_detail"]
            == "127.0.0.97:6000 presented spiffe://cluster.local/ns/b/sa/b, expected spiffe://cluster.local/ns/b/sa/other"),
        "{context}"
    );
    // B may have reached its app before A refused B's identity and closed; nothing was sent.
    for l in stdout.lines().filter(|l| l.starts_with("accepted: 127.0.0.97:6000 received")) {
        assert_eq!(l, "accepted: 127.0.0.97:6000 received ", "{context}");
    }
    // HTTP that A's sidecar took for something else is tunnelled, and B refuses a tunnel to its
    // HTTP port (not in inbound.opaquePorts) although its policy allows A there: raw bytes
    // there would go around the pipeline.
    assert_eq!(line("http-as-tcp"), "b''", "{context}");
    assert!(!stdout.contains("accepted: 127.0.0.97:8080"), "{context}");
    let not_opaque: Vec<&serde_json::Value> =
        b_events.iter().filter(|e| e["firewall_rule"]["uid"] == "-/inbound.opaquePorts").collect();
    assert_eq!(not_opaque.len(), 1, "{context}");
    assert_eq!(not_opaque[0]["dst_endpoint"]["port"], 8080, "{}", not_opaque[0]);
    // With a fixed inbound.app port, the port the bytes would reach decides: D's app port is
    // HTTP's, so a tunnel addressed to 5432 is refused there too.
    assert_eq!(line("fixed-app-port"), "b''", "{context}");
    let d_refusals: Vec<serde_json::Value> =
        json_lines("d-event: ").into_iter().filter(|e| e["firewall_rule"]["uid"] == "-/inbound.opaquePorts").collect();
    assert_eq!(d_refusals.len(), 1, "{context}");
    assert_eq!(d_refusals[0]["dst_endpoint"]["port"], 5432, "{}", d_refusals[0]);
    let said = d_refusals[0]["message"].as_str().unwrap_or_default();
    assert!(said.contains("not in inbound.opaquePorts") && said.contains("palisade.dev/opaque-ports"), "{said}");
    // A caller with A's certificate that offers the tunnel itself takes the tunnel's path (the
    // forged certificate above was refused on that same path).
    assert_eq!(line("tunnel-with-a-cert"), r"b'banner from the server\n'", "{context}");
    // Then what works: a database's request ended by a half-close, through TLS both ways.
    assert_eq!(line("pg-mesh"), r"b'echo:\x00\x00\x00\x08\x04\xd2\x16/'", "{context}");
    // The server speaks first on an opaque port: its banner arrives without the app sending a byte.
    assert_eq!(line("banner-mesh"), r"b'banner from the server\n'", "{context}");
    assert_eq!(stdout.matches("accepted: 127.0.0.97:5432\n").count(), 1, "{context}");
    // Both ends log each tunnel with the identity the other side proved.
    let a_access = json_lines("a-access: ");
    let b_access = json_lines("b-access: ");
    let find = |lines: &[serde_json::Value], destination: &str| {
        lines
            .iter()
            .find(|l| l["destination"] == destination)
            .cloned()
            .unwrap_or_else(|| panic!("no access line for {destination}\n{context}"))
    };
    let (out, inn) = (find(&a_access, "127.0.0.97:5432"), find(&b_access, "127.0.0.97:5432"));
    for (l, direction, principal) in
        [(&out, "outbound", "spiffe://cluster.local/ns/b/sa/b"), (&inn, "inbound", "spiffe://cluster.local/ns/a/sa/a")]
    {
        assert_eq!(
            (&l["direction"], &l["principal"], &l["bytes_sent"], &l["bytes_received"], &l["end"]),
            (&direction.into(), &principal.into(), &8.into(), &13.into(), &"closed".into()),
            "{l}"
        );
    }
    let banner = find(&b_access, "127.0.0.97:3306");
    assert_eq!((&banner["bytes_sent"], &banner["bytes_received"]), (&0.into(), &23.into()), "{banner}");
    // A logged the denied tunnel too: nothing came back (B closed it with the request unread,
    // which the kernel tells A with a reset).
    let denied_out = find(&a_access, "127.0.0.97:7000");
    assert_eq!(denied_out["bytes_received"], 0, "{denied_out}");
    // The update that dropped 3306 from the rule closed the tunnel held open there: the client
    // had its banner, then the close; B logged it as denied, and said why.
    assert_eq!(line("revoked"), r"b'banner from the server\n' b''", "{context}");
    let revoked = b_access.iter().find(|l| l["end"] == "denied").unwrap_or_else(|| panic!("{context}"));
    assert_eq!((&revoked["destination"], &revoked["bytes_received"]), (&"127.0.0.97:3306".into(), &23.into()));
    assert_eq!(denied[1]["dst_endpoint"]["port"], 3306, "{}", denied[1]);
    // Counted (before the update): five tunnels opened by A (5432, 3306, 7000, 8080, and D's
    // 5432) and one refused (6000); B let in six handshakes (A's five and the one with A's certificate) and
    // refused two (plaintext, forged), and its policy decided five connections (8080 was refused
    // before the policy).
    for metric in [
        "a-metric: palisade_outbound_opaque_connections_total 5",
        r#"a-metric: palisade_tls_handshakes_total{direction="outbound",result="failure"} 1"#,
        r#"a-metric: palisade_tls_handshakes_total{direction="outbound",result="success"} 5"#,
        r#"b-metric: palisade_tls_handshakes_total{direction="inbound",result="success"} 6"#,
        r#"b-metric: palisade_tls_handshakes_total{direction="inbound",result="failure"} 2"#,
        r#"b-metric: palisade_authz_decisions_total{decision="allow",mode="ENFORCE",policy="b/db",rule="a-db"} 4"#,
        r#"b-metric: palisade_authz_decisions_total{decision="deny",mode="ENFORCE",policy="b/db",rule="default"} 1"#,
    ] {
        assert!(stdout.contains(metric), "{metric}\n{context}");
    }
}
