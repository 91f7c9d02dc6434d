//! Request smuggling and path forms (issue 14) through real sidecars: each vector is written
//! byte for byte by a raw TCP or TLS client to the inbound listener (mutual TLS and plaintext)
//! and to the outbound listener (which forwards over mutual TLS to a second sidecar's inbound),
//! against a policy that denies `/admin*`. Behind the sidecar is an app that records every byte
//! it receives, so "refused" means 400 (with the JSON body and `x-request-id` of SPEC section 5)
//! and an app that saw nothing; "judged" means the app saw exactly the judged path.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use palisade::app::Sidecar;
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the app behind the sidecar received, byte for byte, and the request heads it answered.
#[derive(Clone, Default)]
struct Log {
    bytes: Arc<Mutex<Vec<u8>>>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn received(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// An HTTP/1.1 app that records everything and answers each request with 200 and the request
/// target it saw. It reads a body by Content-Length or to the chunked terminator.
struct RecordingApp {
    addr: SocketAddr,
    log: Log,
}

impl RecordingApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Log::default();
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        RecordingApp { addr, log }
    }
}

async fn serve(mut stream: TcpStream, log: Log) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: a head, then its body.
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let lower = head.to_ascii_lowercase();
        let body_done = |b: &[u8]| -> Option<usize> {
            if lower.contains("transfer-encoding: chunked") {
                b.windows(5).position(|w| w == b"0\r\n\r\n").map(|at| at + 5)
            } else {
                let n = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                (b.len() >= n).then_some(n)
            }
        };
        let body_end = loop {
            if let Some(n) = body_done(&buf[head_end..]) {
                break head_end + n;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        buf.drain(..body_end);
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        log.heads.lock().unwrap().push(head);
        let body = serde_json::json!({ "target": target }).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

const DENY_ADMIN: &str = r#"  authorization:
    default: ALLOW
    rules:
      - {name: no-admin, action: DENY, to: {paths: ["/admin*"]}}
"#;

/// Where a raw request goes in.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The inbound listener over mutual TLS, as a meshed peer.
    InboundMtls,
    /// The inbound listener in plaintext (PERMISSIVE), as a caller from outside the mesh.
    InboundPlain,
    /// Sidecar a's outbound listener, on to sidecar b's inbound over mutual TLS.
    Outbound,
}

const ALL: [Via; 3] = [Via::InboundMtls, Via::InboundPlain, Via::Outbound];

/// Sidecar b (orders, with the DENY /admin* policy, PERMISSIVE) in front of the recording app,
/// and sidecar a whose outbound routes `orders.shop` to b.
struct Setup {
    _pki: Pki,
    peer: palisade::identity::WorkloadFiles,
    a: Sidecar,
    b: Sidecar,
    app: RecordingApp,
    _policy: PathBuf,
}

impl Setup {
    async fn start() -> Setup {
        let app = RecordingApp::start().await;
        let pki = Pki::new();
        let files_b = pki.workload("b", &id("shop", "orders"));
        let files_a = pki.workload("a", &id("shop", "frontend"));
        let peer = pki.workload("peer", &id("shop", "frontend"));
        let policy_file = pki.path("policy.yaml");
        write_policy(&policy_file, &policy("deny-admin", DENY_ADMIN));
        let mut config_b = sidecar_config(&files_b, app.addr);
        config_b.inbound.mtls = palisade::config::MtlsMode::PERMISSIVE;
        config_b.policy.files = vec![policy_file.clone()];
        config_b.workload.namespace = Some("shop".into());
        config_b.workload.service_account = Some("orders".into());
        config_b.workload.labels = [("app".to_string(), "orders".to_string())].into();
        let b = start_sidecar(config_b);
        let mut config_a = sidecar_config(&files_a, "127.0.0.1:9".parse().unwrap());
        config_a.outbound.destinations = vec![route(B_AUTHORITY, b.inbound, Some(&id("shop", "orders")))];
        config_a.workload.namespace = Some("shop".into());
        config_a.workload.service_account = Some("frontend".into());
        let a = start_sidecar(config_a);
        Setup { _pki: pki, peer, a, b, app, _policy: policy_file }
    }

    /// Writes `request` as it is and reads the whole answer (every request says
    /// `connection: close`, or the sidecar closes after a refusal).
    async fn send(&self, via: Via, request: &[u8]) -> Answer {
        match via {
            Via::InboundPlain => exchange(TcpStream::connect(self.b.inbound).await.unwrap(), request).await,
            Via::Outbound => exchange(TcpStream::connect(self.a.outbound).await.unwrap(), request).await,
            Via::InboundMtls => {
                let tcp = TcpStream::connect(self.b.inbound).await.unwrap();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(Some(&self.peer))));
                let tls = connector.connect(ServerName::try_from("orders.shop").unwrap(), tcp).await.unwrap();
                exchange(tls, request).await
            }
        }
    }

    /// A request the policy allows, sent and seen by the app: every refusal before it must
    /// have left the app nothing, and the app's log is then exactly this request.
    async fn assert_app_saw_nothing_before_a_good_request(&self, via: Via, what: &str) {
        assert_eq!(self.app.log.received(), 0, "{what} via {via:?}: the app received {:?}", self.bytes());
        let answer = self.send(via, &get("/orders/sentinel", "")).await;
        assert_eq!(answer.status, 200, "{via:?}: {answer:?}");
        assert_eq!(self.app.log.heads().len(), 1, "{via:?}: {:?}", self.app.log.heads());
        assert!(self.app.log.heads()[0].starts_with("GET /orders/sentinel HTTP/1.1\r\n"), "{:?}", self.app.log.heads());
    }

    fn bytes(&self) -> String {
        String::from_utf8_lossy(&self.app.log.bytes.lock().unwrap()).to_string()
    }

    fn shutdown(self) {
        self.a.shutdown();
        self.b.shutdown();
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Answer {
    // The sidecar may refuse and close before it has read everything; the answer still counts.
    let _ = stream.write_all(request).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(patience(), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete answer in time: {:?}", String::from_utf8_lossy(&raw));
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    Answer { status, head: head.to_string(), body: body.to_string() }
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n{extra}\r\n").into_bytes()
}

/// The response is the sidecar's own refusal: `status`, `{"error": code, "request_id": id}`,
/// `x-request-id: id`.
#[track_caller]
fn assert_refusal(answer: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    let body: serde_json::Value =
        serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {answer:?}"));
    assert_eq!(body["error"], code, "{what}: {answer:?}");
    let id = body["request_id"].as_str().unwrap_or_else(|| panic!("{what}: no request_id: {answer:?}"));
    assert!(!id.is_empty(), "{what}");
    assert_eq!(answer.header("x-request-id"), Some(id), "{what}: {answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"), "{what}: {answer:?}");
}

/// Path forms that common backends route to `/admin`: each refused with 400, the app sees none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_forms_backends_route_to_admin_are_refused_on_both_listeners() {
    let setup = Setup::start().await;
    let forms: &[(&str, &[u8])] = &[
        ("trailing dot", b"/admin."),
        ("trailing dots", b"/admin.."),
        ("trailing dot mid-path", b"/admin./users"),
        ("encoded trailing dot", b"/admin%2e"),
        ("encoded trailing space", b"/admin%20"),
        ("encoded TAB", b"/admin%09"),
        ("encoded CR LF", b"/admin%0d%0a"),
        ("raw TAB in the target", b"/admin\t"),
        ("raw TAB inside the path", b"/ad\tmin"),
        ("raw 0x01", b"/ad\x01min"),
        ("raw DEL", b"/admin\x7f"),
        ("double encoding", b"/%2561dmin"),
        ("double-encoded dots", b"/%252e%252e/admin"),
        ("fullwidth a, encoded UTF-8", b"/%EF%BD%81dmin"),
        ("Kelvin sign", b"/%E2%84%AAelvin"),
        ("overlong slash", b"/orders/%C0%AF..%C0%AFadmin"),
        ("raw UTF-8 fullwidth a", "/\u{ff41}dmin".as_bytes()),
    ];
    for via in ALL {
        for (what, path) in forms {
            let mut request = b"GET ".to_vec();
            request.extend_from_slice(path);
            request.extend_from_slice(b" HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n");
            let answer = setup.send(via, &request).await;
            assert_refusal(&answer, 400, "invalid_request", &format!("{what} via {via:?}"));
        }
        // Judged, not refused: a DENY rule ignores case.
        for path in ["/ADMIN", "/Admin/users", "/%41DMIN"] {
            let answer = setup.send(via, &get(path, "")).await;
            assert_refusal(&answer, 403, "forbidden", &format!("{path} via {via:?}"));
        }
    }
    setup.assert_app_saw_nothing_before_a_good_request(Via::InboundMtls, "path forms").await;
    setup.shutdown();
}

/// Request lines and Host fields that parsers read their own ways: 400 on both listeners, the
/// app sees none. pingora parses `GET admin` with the path `/`; RFC 9112 section 3.2 answers an
/// HTTP/1.1 request without exactly one Host with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_not_in_origin_form_and_host_fields_not_one_are_refused_on_both_listeners() {
    let setup = Setup::start().await;
    let cases: &[(&str, &str)] = &[
        ("a relative target", "GET admin HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n"),
        ("authority form", "GET orders.shop:80 HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n"),
        ("two blanks before the target", "GET  /admin HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n"),
        ("asterisk form", "OPTIONS * HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n"),
        ("no Host", "GET /orders HTTP/1.1\r\nconnection: close\r\n\r\n"),
        ("two Hosts", "GET /orders HTTP/1.1\r\nhost: orders.shop\r\nhost: evil.shop\r\nconnection: close\r\n\r\n"),
        ("a Host list", "GET /orders HTTP/1.1\r\nhost: orders.shop, evil.shop\r\nconnection: close\r\n\r\n"),
        ("a Host list in HTTP/1.0", "GET /orders HTTP/1.0\r\nhost: orders.shop, evil.shop\r\n\r\n"),
        // The policy read `orders.shop:80` as the host; nginx routes these as `orders.shop`.
        ("a Host with two ports", "GET /orders HTTP/1.1\r\nhost: orders.shop:80:80\r\nconnection: close\r\n\r\n"),
        ("a Host with two colons", "GET /orders HTTP/1.1\r\nhost: orders.shop::\r\nconnection: close\r\n\r\n"),
        ("a Host with a word for a port", "GET /orders HTTP/1.1\r\nhost: orders.shop:x\r\nconnection: close\r\n\r\n"),
        ("a Host with userinfo", "GET /orders HTTP/1.1\r\nhost: evil@orders.shop\r\nconnection: close\r\n\r\n"),
        ("an unclosed IPv6 literal", "GET /orders HTTP/1.1\r\nhost: [::1\r\nconnection: close\r\n\r\n"),
        // Empty labels, which resolvers and routers drop, and percent-encoding, which an app may
        // decode: each is `evil.shop` to something behind the policy.
        ("a Host with two trailing dots", "GET /orders HTTP/1.1\r\nhost: evil.shop..\r\nconnection: close\r\n\r\n"),
        ("a Host with an empty label", "GET /orders HTTP/1.1\r\nhost: evil..shop\r\nconnection: close\r\n\r\n"),
        ("a Host with a leading dot", "GET /orders HTTP/1.1\r\nhost: .evil.shop\r\nconnection: close\r\n\r\n"),
        ("a Host of a dot", "GET /orders HTTP/1.1\r\nhost: .:80\r\nconnection: close\r\n\r\n"),
        ("a percent-encoded Host", "GET /orders HTTP/1.1\r\nhost: evil%2eshop\r\nconnection: close\r\n\r\n"),
        // A port in another spelling than its one, or a port without a host.
        ("a port with a leading zero", "GET /orders HTTP/1.1\r\nhost: orders.shop:080\r\nconnection: close\r\n\r\n"),
        ("an empty port", "GET /orders HTTP/1.1\r\nhost: orders.shop:\r\nconnection: close\r\n\r\n"),
        ("a port over 65535", "GET /orders HTTP/1.1\r\nhost: orders.shop:99999\r\nconnection: close\r\n\r\n"),
        ("a port without a host", "GET /orders HTTP/1.1\r\nhost: :80\r\nconnection: close\r\n\r\n"),
    ];
    for via in ALL {
        for (what, request) in cases {
            let answer = setup.send(via, request.as_bytes()).await;
            assert_refusal(&answer, 400, "invalid_request", &format!("{what} via {via:?}"));
        }
    }
    setup.assert_app_saw_nothing_before_a_good_request(Via::InboundMtls, "request lines").await;
    // HTTP/1.0 may omit Host (the inbound listener serves it; the outbound one has no route).
    let answer = setup.send(Via::InboundMtls, b"GET /orders HTTP/1.0\r\n\r\n").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    for host in ["orders.shop:8080", "ORDERS.shop.", "10.1.2.3:80", "[::1]:8080", "[fe80::1]", "my_host.shop"] {
        let request = format!("GET /orders HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = setup.send(Via::InboundMtls, request.as_bytes()).await;
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
    }
    setup.shutdown();
}

/// Ambiguous body framing: 400 before a byte reaches the app, on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_before_anything_reaches_the_app() {
    let setup = Setup::start().await;
    let head = "POST /orders HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n";
    let cases: &[(&str, String)] = &[
        ("a Content-Length list", format!("{head}content-length: 5, 5\r\n\r\nhello")),
        ("two Content-Lengths", format!("{head}content-length: 5\r\ncontent-length: 5\r\n\r\nhello")),
        ("two different Content-Lengths", format!("{head}content-length: 5\r\ncontent-length: 6\r\n\r\nhello!")),
        ("Content-Length with a sign", format!("{head}content-length: +5\r\n\r\nhello")),
        (
            "Transfer-Encoding beside Content-Length",
            format!("{head}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
        ("gzip, chunked", format!("{head}transfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("chunked, chunked", format!("{head}transfer-encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        (
            "two Transfer-Encodings",
            format!("{head}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
        ("identity", format!("{head}transfer-encoding: identity\r\n\r\nhello")),
        ("a bad chunk size", format!("{head}transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")),
        ("a negative chunk size", format!("{head}transfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")),
        (
            "a bad chunk size after Expect",
            format!("{head}expect: 100-continue\r\ntransfer-encoding: chunked\r\n\r\nq\r\nhello\r\n0\r\n\r\n"),
        ),
    ];
    for via in ALL {
        for (what, request) in cases {
            let answer = setup.send(via, request.as_bytes()).await;
            // A `100 Continue` the sidecar sent first comes before the refusal.
            let answer = match answer.status {
                100 => {
                    let rest = answer.body.clone();
                    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((&rest, ""));
                    let status = head[9..12].parse().unwrap();
                    Answer { status, head: head.to_string(), body: body.to_string() }
                }
                _ => answer,
            };
            assert_refusal(&answer, 400, "invalid_request", &format!("{what} via {via:?}"));
        }
    }
    setup.assert_app_saw_nothing_before_a_good_request(Via::Outbound, "framing").await;
    // A good chunked body still streams through, on each listener.
    for via in ALL {
        let request = format!("{head}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        let answer = setup.send(via, request.as_bytes()).await;
        assert_eq!(answer.status, 200, "{via:?}: {answer:?}");
    }
    assert!(setup.bytes().contains("hello"), "{}", setup.bytes());
    setup.shutdown();
}

/// Method override headers: 400 on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_are_refused() {
    let setup = Setup::start().await;
    for via in ALL {
        for header in ["X-HTTP-Method-Override: DELETE", "x-http-method: DELETE", "X-Method-Override: PUT"] {
            let answer = setup.send(via, &get("/orders/1", &format!("{header}\r\n"))).await;
            assert_refusal(&answer, 400, "invalid_request", &format!("{header} via {via:?}"));
        }
    }
    setup.assert_app_saw_nothing_before_a_good_request(Via::InboundPlain, "method override").await;
    setup.shutdown();
}

/// The app sees exactly the judged path: normalised, and in the form the policy matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_exactly_the_judged_path() {
    let setup = Setup::start().await;
    let cases = [
        ("/orders/%61b", "/orders/ab"),
        ("/public/../orders", "/orders"),
        ("//orders//7/", "/orders/7/"),
        ("/orders/caf%c3%a9", "/orders/caf%C3%A9"),
        ("/orders/a%20b", "/orders/a%20b"),
        ("/orders/100%25", "/orders/100%25"),
        ("/orders/v1.2/x.json?q=1", "/orders/v1.2/x.json?q=1"),
    ];
    for via in ALL {
        for (sent, judged) in cases {
            let before = setup.app.log.heads().len();
            let answer = setup.send(via, &get(sent, "")).await;
            assert_eq!(answer.status, 200, "{sent} via {via:?}: {answer:?}");
            let heads = setup.app.log.heads();
            assert_eq!(heads.len(), before + 1, "{sent} via {via:?}");
            let seen = heads[before].split(' ').nth(1).unwrap().to_string();
            assert_eq!(seen, judged, "{sent} via {via:?}");
        }
    }
    setup.shutdown();
}

fn header_of<'h>(head: &'h str, name: &str) -> Vec<&'h str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// Request ids: a plaintext caller's is replaced, a meshed peer's and the local app's (when
/// well-formed) are kept; a malformed or repeated `traceparent` never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context_the_app_can_trust() {
    let setup = Setup::start().await;
    let good_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (via, kept) in [(Via::InboundPlain, false), (Via::InboundMtls, true), (Via::Outbound, true)] {
        for (traceparent, passes) in [
            ("garbage", false),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", false),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false),
            (good_parent, true),
        ] {
            let before = setup.app.log.heads().len();
            let extra = format!("x-request-id: caller-chosen-1\r\ntraceparent: {traceparent}\r\ntracestate: k=v\r\n");
            let answer = setup.send(via, &get("/orders", &extra)).await;
            assert_eq!(answer.status, 200, "{via:?}: {answer:?}");
            let head = setup.app.log.heads()[before].clone();
            let ids = header_of(&head, "x-request-id");
            assert_eq!(ids.len(), 1, "{via:?}: {head}");
            if kept {
                assert_eq!(ids[0], "caller-chosen-1", "{via:?}");
            } else {
                assert_ne!(ids[0], "caller-chosen-1", "{via:?}");
                assert_eq!(ids[0].len(), 32, "{via:?}");
            }
            let parents = header_of(&head, "traceparent");
            if passes {
                assert_eq!(parents, [good_parent], "{via:?}: {head}");
            } else {
                assert!(parents.is_empty(), "{traceparent} via {via:?}: {head}");
                assert!(header_of(&head, "tracestate").is_empty(), "{via:?}: {head}");
            }
        }
        // Two traceparents: neither is believed.
        let before = setup.app.log.heads().len();
        let extra = format!("traceparent: {good_parent}\r\ntraceparent: {good_parent}\r\n");
        let answer = setup.send(via, &get("/orders", &extra)).await;
        assert_eq!(answer.status, 200, "{via:?}: {answer:?}");
        let head = setup.app.log.heads()[before].clone();
        assert!(header_of(&head, "traceparent").is_empty(), "{via:?}: {head}");
    }
    setup.shutdown();
}

/// Heads pingora's own parser refuses, before any phase of ours runs: the answer still carries
/// the JSON body and `x-request-id`, and the app sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_refusals_carry_the_json_body_and_request_id() {
    let setup = Setup::start().await;
    let start = "GET /orders HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n";
    let big = format!("{start}x-big: {}\r\n\r\n", "b".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("NUL in a header value", format!("{start}x-a: a\0b\r\n\r\n").into_bytes()),
        ("bare CR in a header value", format!("{start}x-a: a\rb\r\n\r\n").into_bytes()),
        ("obs-fold", format!("{start}x-a: a\r\n  folded\r\n\r\n").into_bytes()),
        ("duplicate Host", format!("{start}host: evil.example\r\n\r\n").into_bytes()),
        ("space before the colon", format!("{start}x-a : b\r\n\r\n").into_bytes()),
        (
            "two different Content-Lengths",
            b"POST /orders HTTP/1.1\r\nhost: orders.shop\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"
                .to_vec(),
        ),
        ("a 70 KiB head", big.into_bytes()),
    ];
    for via in ALL {
        for (what, request) in &cases {
            let answer = setup.send(via, request).await;
            let what = format!("{what} via {via:?}");
            match answer.status {
                431 => assert_refusal(&answer, 431, "headers_too_large", &what),
                _ => assert_refusal(&answer, 400, "invalid_request", &what),
            }
        }
    }
    setup.assert_app_saw_nothing_before_a_good_request(Via::InboundMtls, "parser refusals").await;
    // Each refusal is counted as an invalid request, under its caller where it proved one.
    let invalid = async |side: &Sidecar, filter: &str| -> f64 {
        let metrics = http_client().get(format!("http://{}/metrics", side.admin)).send().await.unwrap();
        let metrics = metrics.text().await.unwrap();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("palisade_requests_total{") && l.contains(r#"decision="invalid""#) && l.contains(filter)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let n = cases.len() as f64;
    assert_eq!(invalid(&setup.b, r#"direction="inbound""#).await, 2.0 * n, "via mTLS and in plaintext");
    assert_eq!(invalid(&setup.b, &format!(r#"source_principal="{}""#, id("shop", "frontend"))).await, n);
    assert_eq!(invalid(&setup.a, r#"direction="outbound""#).await, n);
    setup.shutdown();
}

/// After a good request on one keep-alive connection, pingora's refusal of the next head there
/// is answered in the same shape: the guard follows each request, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parser_refusal_after_a_good_request_on_one_connection_is_json_too() {
    let setup = Setup::start().await;
    for via in [Via::InboundPlain, Via::Outbound] {
        let addr = match via {
            Via::Outbound => setup.a.outbound,
            _ => setup.b.inbound,
        };
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /orders/1 HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.unwrap();
        // Read the first answer whole (its Content-Length), leaving the connection open.
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let first_done = |raw: &[u8]| {
            let text = String::from_utf8_lossy(raw);
            let (head, body) = text.split_once("\r\n\r\n")?;
            let length: usize = header_of(head, "content-length").first()?.parse().ok()?;
            (body.len() >= length).then_some(())
        };
        while first_done(&raw).is_none() {
            let n = tokio::time::timeout(patience(), stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "{via:?}: closed after {:?}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&chunk[..n]);
        }
        assert!(raw.starts_with(b"HTTP/1.1 200"), "{via:?}: {:?}", String::from_utf8_lossy(&raw));
        let answer = exchange(stream, b"GET /orders/2 HTTP/1.1\r\nhost: orders.shop\r\nx-a: a\0b\r\n\r\n").await;
        assert_refusal(&answer, 400, "invalid_request", &format!("second head via {via:?}"));
    }
    setup.shutdown();
}
