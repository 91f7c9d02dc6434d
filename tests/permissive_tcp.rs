//! A PERMISSIVE workload's opaque ports take clients without a sidecar (a database's clients not
//! yet in the mesh): their plaintext, a server-first protocol's silence, and the app's own TLS
//! reach the app as bytes, judged by the policy as connections without a principal, and are cut
//! when the workload becomes STRICT. Under STRICT, or to a port that is HTTP's, they never reach
//! the app.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// A server-first app (a MySQL-like greeting), then an echo; it counts the connections it took,
/// those that have ended, and keeps what it received.
struct GreetingApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

const GREETING: &[u8] = b"greeting from the database\n";

impl GreetingApp {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        Self::start_with(tls, GREETING).await
    }

    /// An app that waits for its client, as an HTTP/1.1 server does.
    async fn start_silent() -> Self {
        Self::start_with(None, b"").await
    }

    /// An app that says `greeting` first (nothing: it waits for its client).
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>, greeting: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            GreetingApp { addr, accepted: Default::default(), ended: Default::default(), received: Default::default() };
        let (accepted, ended, received) = (app.accepted.clone(), app.ended.clone(), app.received.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tls, ended, received) = (tls.clone(), ended.clone(), received.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                greet_and_echo(stream, greeting, &received).await;
                            }
                        }
                        None => greet_and_echo(tcp, greeting, &received).await,
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        app
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

async fn greet_and_echo<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    greeting: &[u8],
    received: &std::sync::Mutex<Vec<u8>>,
) {
    if !greeting.is_empty() && stream.write_all(greeting).await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        received.lock().unwrap().extend_from_slice(&buf[..n]);
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads until `want` bytes came, or the stream ended (then fewer); an error ends it too.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, want: usize) -> Vec<u8> {
    let mut got = vec![0u8; want];
    let mut n = 0;
    while n < want {
        match tokio::time::timeout(patience(), stream.read(&mut got[n..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => n += read,
            Err(_) => panic!("nothing more within {:?} after {:?}", patience(), &got[..n]),
        }
    }
    got.truncate(n);
    got
}

/// A sidecar for `shop/orders` whose app (at `app`) has one port, an opaque one.
async fn sidecar_before(app: SocketAddr, spec: &str) -> PolicedSidecar {
    PolicedSidecar::start_with(&policy("db", spec), |c| {
        c.inbound.app = palisade::config::ListenAddr(app);
        c.inbound.opaque_ports = vec![app.port()];
    })
    .await
}

/// `palisade_authz_decisions_total` for `shop/db`'s `default` rule allowing.
async fn allowed_by_default(s: &PolicedSidecar) -> u64 {
    let metrics = s.metrics().await;
    let series = metrics.lines().find(|l| {
        l.starts_with("palisade_authz_decisions_total{")
            && l.contains("decision=\"allow\"")
            && l.contains("policy=\"shop/db\"")
            && l.contains("rule=\"default\"")
    });
    series.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

const PERMISSIVE_OPEN: &str = "  mtls: PERMISSIVE\n  authorization: {default: ALLOW}\n";

/// PostgreSQL's SSLRequest: not HTTP, not TLS.
const SSL_REQUEST: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_an_opaque_port_reaches_the_app_under_permissive_as_the_policy_allows_until_strict() {
    let app = GreetingApp::start(None).await;
    // Only mesh workloads of the trust domain may connect: plaintext has no principal.
    let mesh_only = "  mtls: PERMISSIVE\n  authorization:\n    default: DENY\n    rules:\n      - {name: mesh, action: ALLOW, from: {principals: [\"spiffe://cluster.local/*\"]}}\n";
    let s = sidecar_before(app.addr, mesh_only).await;
    let refused_plaintext = |e: &serde_json::Value| {
        e["message"].as_str().is_some_and(|m| m.starts_with("denied TCP connection from 127.0.0.1 (plaintext)"))
    };

    // Refused by the policy, client first and server first: closed, the app never reached.
    let mut client_first = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    client_first.write_all(SSL_REQUEST).await.unwrap();
    assert_eq!(read_some(&mut client_first, 1).await, b"", "closed without an answer");
    let mut server_first = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert_eq!(read_some(&mut server_first, 1).await, b"", "closed without a greeting");
    let denied = s.events_where("two plaintext connections denied", 2, refused_plaintext).await;
    assert!(denied.iter().all(|e| e["firewall_rule"]["uid"] == "shop/db/default"), "{denied:?}");
    assert!(denied.iter().all(|e| e.get("actor").is_none()), "no workload named: {denied:?}");
    // A mesh caller's tunnel is allowed by the same policy, and reaches the app.
    let frontend = s.pki.workload("frontend", &id("shop", "frontend"));
    let mut tunnel = mtls_stream(s.sidecar.inbound, &frontend, palisade::tls::TUNNEL_ALPN).await.unwrap();
    assert_eq!(read_some(&mut tunnel, GREETING.len()).await, GREETING);
    assert_eq!(app.accepted(), 1, "only the tunnel reached the app");

    // Allowed: client first (its bytes echoed after the greeting) and server first (greeted
    // without a word).
    write_policy(&s.policy_file, &policy("db", PERMISSIVE_OPEN));
    let greeted = eventually(|| async {
        let mut probe = TcpStream::connect(s.sidecar.inbound).await.unwrap();
        probe.write_all(SSL_REQUEST).await.unwrap();
        read_some(&mut probe, GREETING.len()).await == GREETING
    })
    .await;
    assert!(greeted, "the open policy lets plaintext in");
    let allowed_before = allowed_by_default(&s).await;
    let mut client_first = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    client_first.write_all(SSL_REQUEST).await.unwrap();
    let mut answer = GREETING.to_vec();
    answer.extend_from_slice(SSL_REQUEST);
    assert_eq!(read_some(&mut client_first, answer.len()).await, answer);
    let mut server_first = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert_eq!(read_some(&mut server_first, GREETING.len()).await, GREETING, "greeted without a word");
    server_first.write_all(b"ping").await.unwrap();
    assert_eq!(read_some(&mut server_first, 4).await, b"ping");
    // A text protocol's command (memcached's) is bytes for the app too, as the port says.
    let mut text = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    text.write_all(b"get user:1\r\n").await.unwrap();
    let echoed = read_some(&mut text, GREETING.len() + 12).await;
    assert_eq!(&echoed[GREETING.len()..], b"get user:1\r\n");
    let counted = allowed_by_default(&s).await - allowed_before;
    assert_eq!(counted, 3, "each plaintext connection is an authorisation decision");
    // An HTTP request still goes through the pipeline, opaque port or not: the app's greeting is
    // no HTTP answer, so the caller gets the sidecar's 502, not the app's bytes.
    for request in
        [&b"GET / HTTP/1.1\r\nhost: orders.shop\r\n\r\n"[..], b"\r\nGET\t/ HTTP/1.1\r\nhost: orders.shop\r\n\r\n"]
    {
        let mut http = TcpStream::connect(s.sidecar.inbound).await.unwrap();
        http.write_all(request).await.unwrap();
        // The sidecar's answer (502: the app's greeting is no HTTP; 400: a tab the parser refuses).
        let answer = read_some(&mut http, 12).await;
        let said = String::from_utf8_lossy(&answer);
        assert!(said == "HTTP/1.1 502" || said == "HTTP/1.1 400", "{request:?}: {said:?}");
    }

    // STRICT: open plaintext connections are closed, the tunnel stays, new plaintext is refused.
    let before = app.accepted();
    write_policy(&s.policy_file, &policy("db", "  mtls: STRICT\n  authorization: {default: ALLOW}\n"));
    let ended = |e: &serde_json::Value| {
        refused_plaintext(e) && e["message"].as_str().is_some_and(|m| m.ends_with("after its port became STRICT"))
    };
    // client_first, server_first and text were open.
    s.events_where("the open plaintext connections closed at STRICT", 3, ended).await;
    assert_eq!(read_some(&mut client_first, 1).await, b"", "closed");
    assert_eq!(read_some(&mut server_first, 1).await, b"", "closed");
    tunnel.write_all(b"still here").await.unwrap();
    assert_eq!(read_some(&mut tunnel, 10).await, b"still here", "mutual TLS is not cut");
    let mut late = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    late.write_all(SSL_REQUEST).await.unwrap();
    let answer = read_some(&mut late, 64).await;
    assert_eq!(answer.first(), Some(&21), "a TLS alert, then the end: {answer:?}");
    assert_eq!(app.accepted(), before, "no new connection reached the app");
    let cut_lines = || {
        let lines = read_jsonl(&s.access_log);
        lines.iter().filter(|l| l["protocol"] == "tcp" && l.get("principal").is_none() && l["end"] == "denied").count()
    };
    assert!(eventually_blocking(|| cut_lines() == 3), "an access line each, ended as denied: {}", cut_lines());
    // What a migration watches: plaintext (no principal) beside mutual TLS, port by port.
    let metrics = s.metrics().await;
    let connections = |principal: &str, decision: &str| {
        let labels =
            format!("{{decision=\"{decision}\",port=\"{}\",source_principal=\"{principal}\"}}", app.addr.port());
        let line = metrics.lines().find(|l| l.starts_with(&format!("palisade_inbound_tcp_connections_total{labels}")));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(connections("", "allow"), 4, "the probe let in, and three more\n{metrics}");
    assert!(connections("", "deny") >= 2, "the two the first policy refused\n{metrics}");
    assert_eq!(connections(&id("shop", "frontend"), "allow"), 1, "the tunnel\n{metrics}");
    assert_eq!(connections("", "http"), 2, "the two requests the pipeline took\n{metrics}");
    s.shutdown();
}

/// A rustls server configuration for the app's own TLS, with a certificate of its own CA.
fn app_tls(files: &palisade::identity::WorkloadFiles) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&files.cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// How a TLS client says hello.
struct Hello<'a> {
    alpn: &'a [&'a [u8]],
    /// Names `db.example` (SNI), as a client that dialled a host name does; else none, as a
    /// sidecar's HTTP client (and a client that dialled an address) does.
    sni: bool,
    certificate: Option<&'a palisade::identity::WorkloadFiles>,
}

/// A TLS connection to `addr` as `hello` says, and the first byte the server sends on it; the
/// error when there is none (the handshake refused, or the connection closed).
async fn tls_client(addr: SocketAddr, hello: Hello<'_>) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = client_tls(hello.certificate);
    config.alpn_protocols = hello.alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = hello.sni;
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("db.example").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    // TLS 1.3: the server's refusal of what the client sent arrives after the client's side.
    let mut first = [0u8; 1];
    match tls.read(&mut first).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ if first[0] == GREETING[0] => Ok(tls),
        _ => Err(std::io::Error::other(format!("not the app's greeting: {first:?}"))),
    }
}

/// The DER of the first certificate in a PEM file.
fn certificate_der(path: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_tls_from_a_client_without_a_sidecar_reaches_the_app_only_on_a_permissive_opaque_port() {
    let app_pki = Pki::for_domain("db.example");
    let app_files = app_pki.workload("db", "spiffe://db.example/ns/data/sa/db");
    let app = GreetingApp::start(Some(app_tls(&app_files))).await;
    let s = sidecar_before(app.addr, "  mtls: STRICT\n  authorization: {default: ALLOW}\n").await;
    let plain = |alpn| Hello { alpn, sni: true, certificate: None };

    // STRICT: the sidecar's own handshake, which wants a mesh certificate, refuses it.
    assert!(tls_client(s.sidecar.inbound, plain(&[])).await.is_err(), "STRICT refuses TLS without a mesh certificate");
    assert_eq!(app.accepted(), 0);

    write_policy(&s.policy_file, &policy("db", PERMISSIVE_OPEN));
    let permissive = eventually(|| async { s.config_dump().await["policy"]["mtls"] == "PERMISSIVE" }).await;
    assert!(permissive, "the PERMISSIVE policy is in force");
    // What a sidecar says (h2, no server named) is the mesh's HTTP: refused without a
    // certificate, and never the app's.
    let sidecars_http = Hello { alpn: &[b"h2"], sni: false, certificate: None };
    assert!(tls_client(s.sidecar.inbound, sidecars_http).await.is_err(), "h2 without SNI is the mesh's");
    // The tunnel's protocol without a certificate: refused by the tunnel's handshake.
    let tunnel = Hello { alpn: &[palisade::tls::TUNNEL_ALPN], sni: false, certificate: None };
    assert!(tls_client(s.sidecar.inbound, tunnel).await.is_err(), "a tunnel needs a mesh certificate");
    assert_eq!(app.accepted(), 0);
    // With a mesh certificate, the sidecar's HTTP answers (its own certificate): not the app.
    let frontend = s.pki.workload("frontend", &id("shop", "frontend"));
    let mut config = client_tls(Some(&frontend));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.enable_sni = false;
    let tcp = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(s.sidecar.inbound.ip().into());
    let mesh = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let presented = mesh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, certificate_der(&s.pki.path("orders").join("tls.crt")), "the sidecar's own");
    drop(mesh);

    // The app's own TLS, end to end: without ALPN, with its own protocol, as an HTTPS client
    // (h2 and the host it dialled), and a ClientHello longer than the 2 KiB a sidecar's fits in.
    let long_names: Vec<Vec<u8>> = (0..40).map(|i| format!("{i:02}-{}", "x".repeat(60)).into_bytes()).collect();
    let long: Vec<&[u8]> = long_names.iter().map(Vec::as_slice).collect();
    let hellos: [&[&[u8]]; 4] = [&[], &[b"redis"], &[b"h2", b"http/1.1"], &long];
    for alpn in hellos {
        let mut tls = tls_client(s.sidecar.inbound, plain(alpn)).await.unwrap_or_else(|e| panic!("{alpn:?}: {e}"));
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(presented, certificate_der(&app_files.cert), "the app's certificate, not the sidecar's");
        let rest = read_some(&mut tls, GREETING.len() - 1).await;
        assert_eq!(rest, GREETING[1..]);
        tls.write_all(b"AUTH secret\r\n").await.unwrap();
        assert_eq!(read_some(&mut tls, 13).await, b"AUTH secret\r\n");
    }
    assert_eq!(app.accepted(), hellos.len());
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_idles_out_at_the_http_idle_timeout_and_a_tunnel_does_not() {
    let app = GreetingApp::start(None).await;
    let s = PolicedSidecar::start_with(&policy("db", PERMISSIVE_OPEN), |c| {
        c.inbound.app = palisade::config::ListenAddr(app.addr);
        c.inbound.opaque_ports = vec![app.addr.port()];
        c.limits.idle_timeout = palisade::config::HumanDuration(std::time::Duration::from_secs(1));
    })
    .await;
    let frontend = s.pki.workload("frontend", &id("shop", "frontend"));
    let mut tunnel = mtls_stream(s.sidecar.inbound, &frontend, palisade::tls::TUNNEL_ALPN).await.unwrap();
    assert_eq!(read_some(&mut tunnel, GREETING.len()).await, GREETING);
    let mut plaintext = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert_eq!(read_some(&mut plaintext, GREETING.len()).await, GREETING);
    // Both now silent: the plaintext is closed a second later, the tunnel is not.
    assert_eq!(read_some(&mut plaintext, 1).await, b"", "closed when idle");
    let idled = || {
        let lines = read_jsonl(&s.access_log);
        lines
            .iter()
            .filter(|l| l["protocol"] == "tcp" && l.get("principal").is_none() && l["end"] == "idle_timeout")
            .count()
    };
    assert!(eventually_blocking(|| idled() == 1), "its access line says why");
    tunnel.write_all(b"still here").await.unwrap();
    assert_eq!(read_some(&mut tunnel, 10).await, b"still here", "the tunnel outlives HTTP's idle timeout");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_that_is_not_http_to_an_http_port_never_reaches_the_app() {
    let app = GreetingApp::start(None).await;
    // The app's port is not opaque: plaintext is HTTP's, whose pipeline refuses what is not.
    let s = PolicedSidecar::start_with(&policy("db", PERMISSIVE_OPEN), |c| {
        c.inbound.app = palisade::config::ListenAddr(app.addr);
    })
    .await;
    for first in [SSL_REQUEST, b"\x16\x03\x01\x00\x05hello"] {
        let mut tcp = TcpStream::connect(s.sidecar.inbound).await.unwrap();
        tcp.write_all(first).await.unwrap();
        let answer = read_some(&mut tcp, 64).await;
        assert!(!answer.starts_with(GREETING), "{first:?}: {answer:?}");
    }
    assert_eq!(app.accepted(), 0, "nothing reached the app");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_level_permissive_mode_opens_a_database_port_of_a_strict_workload() {
    let app = GreetingApp::start(None).await;
    let port = app.addr.port();
    let open = format!(
        "  mtls: STRICT\n  portLevelMtls: {{{port}: {{mode: PERMISSIVE}}}}\n  authorization: {{default: ALLOW}}\n"
    );
    let s = sidecar_before(app.addr, &open).await;
    let mut client = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert_eq!(read_some(&mut client, GREETING.len()).await, GREETING, "greeted through a PERMISSIVE port");
    // An update that leaves the port PERMISSIVE (the workload is STRICT throughout) keeps it.
    let version = s.config_dump().await["policy"]["version"].clone();
    let more = format!(
        "  mtls: STRICT\n  portLevelMtls: {{{port}: {{mode: PERMISSIVE}}}}\n  authorization:\n    default: ALLOW\n    rules:\n      - {{name: no-batch, action: DENY, from: {{namespaces: [batch]}}}}\n"
    );
    write_policy(&s.policy_file, &policy("db", &more));
    assert!(eventually(|| async { s.config_dump().await["policy"]["version"] != version }).await, "updated");
    client.write_all(b"ping").await.unwrap();
    assert_eq!(read_some(&mut client, 4).await, b"ping", "still relayed");
    // The port's entry gone: STRICT like the rest, and its plaintext is cut.
    write_policy(&s.policy_file, &policy("db", "  mtls: STRICT\n  authorization: {default: ALLOW}\n"));
    assert_eq!(read_some(&mut client, 1).await, b"", "closed");
    let ended =
        |e: &serde_json::Value| e["message"].as_str().is_some_and(|m| m.ends_with("after its port became STRICT"));
    s.events_where("the plaintext connection closed", 1, ended).await;
    // A PERMISSIVE workload whose port says STRICT: refused when it connects.
    let strict_port = format!(
        "  mtls: PERMISSIVE\n  portLevelMtls: {{{port}: {{mode: STRICT}}}}\n  authorization: {{default: ALLOW}}\n"
    );
    write_policy(&s.policy_file, &policy("db", &strict_port));
    let in_force = || async {
        let dump = s.config_dump().await;
        dump["policy"]["mtls"] == "PERMISSIVE" && dump["policy"]["portLevelMtls"][port.to_string()] == "STRICT"
    };
    assert!(eventually(in_force).await, "the port's STRICT is in force");
    let mut late = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    late.write_all(SSL_REQUEST).await.unwrap();
    let answer = read_some(&mut late, 64).await;
    assert!(!answer.starts_with(GREETING), "refused: {answer:?}");
    assert_eq!(app.accepted(), 1);
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_after_the_wait_for_a_server_first_app_still_never_reaches_the_app() {
    let app = GreetingApp::start_silent().await;
    let s = sidecar_before(app.addr, PERMISSIVE_OPEN).await;
    // Silent past the wait: the sidecar connects the app, in case it speaks first.
    let mut client = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert!(eventually(|| async { app.accepted() == 1 }).await, "the app is connected after the wait");
    // The app says nothing (an HTTP server never does); the client speaks first after all.
    client.write_all(b"GET /admin HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.unwrap();
    assert_eq!(read_some(&mut client, 1).await, b"", "closed");
    assert!(eventually(|| async { app.ended() == 1 }).await, "the app's connection is closed too");
    assert_eq!(app.received(), b"", "not a byte reached the app");
    let refused = |e: &serde_json::Value| {
        e["message"].as_str().is_some_and(|m| m.ends_with("only the HTTP pipeline takes requests"))
    };
    s.events_where("the request after the wait refused", 1, refused).await;
    // A command that is no request, after the same wait, reaches the app.
    let mut client = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert!(eventually(|| async { app.accepted() == 2 }).await, "connected after the wait");
    client.write_all(b"get user:1\r\n").await.unwrap();
    assert_eq!(read_some(&mut client, 12).await, b"get user:1\r\n", "echoed by the app");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_app_that_speaks_first_is_no_server_first_protocol_for_a_client_that_waited() {
    // An HTTP/2 server with prior knowledge sends its SETTINGS as soon as it accepts.
    let settings: &[u8] = &[0, 0, 6, 0x04, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 100];
    let app = GreetingApp::start_with(None, settings).await;
    let s = sidecar_before(app.addr, PERMISSIVE_OPEN).await;
    let mut client = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    assert!(eventually(|| async { app.accepted() == 1 }).await, "the app is connected after the wait");
    assert_eq!(read_some(&mut client, 1).await, b"", "closed, the app's SETTINGS not passed on");
    let refused = |e: &serde_json::Value| {
        e["message"].as_str().is_some_and(|m| m.ends_with("only the HTTP pipeline takes requests"))
    };
    s.events_where("the wait for an HTTP/2 app refused", 1, refused).await;
    let _ = client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(eventually(|| async { app.ended() == 1 }).await, "the app's connection is closed");
    assert_eq!(app.received(), b"", "not a byte reached the app");
    s.shutdown();
}
