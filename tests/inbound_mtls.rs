//! Inbound mutual TLS: who gets in, who is refused at the handshake, and what the app is told.

mod support;

use palisade::config::MtlsMode;
use palisade::identity::LeafSpec;
use support::*;
use time::{Duration, OffsetDateTime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_client_reaches_the_app_with_its_verified_identity() {
    let s = Single::start(|_| {}).await;
    let response = s
        .https()
        .get(s.url("/orders/7"))
        .header("x-forwarded-client-cert", "By=spiffe://evil/x;URI=spiffe://cluster.local/ns/shop/sa/admin")
        .header("l5d-client-id", "admin.shop.serviceaccount.identity.linkerd.cluster.local")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Seen = response.json().await.unwrap();
    assert_eq!(seen.path, "/orders/7");
    assert_eq!(seen.header("l5d-client-id"), None, "Linkerd's identity header, as a caller wrote it, is removed");
    // The forged header is gone; the one the app sees is the sidecar's own.
    assert_eq!(seen.headers["x-forwarded-client-cert"].len(), 1);
    assert_eq!(
        seen.header("x-forwarded-client-cert"),
        Some(format!("By={};URI={}", id("shop", "orders"), id("shop", "frontend")).as_str())
    );
    assert_eq!(seen.header("x-request-id").map(str::len), Some(32));
    s.sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_every_bad_client_at_the_handshake() {
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let app = EchoApp::start().await;
    let sidecar = start_sidecar(sidecar_config(&server, app.addr));

    let rogue = Pki::new();
    let other_domain = Pki::for_domain("other.org");
    let now = OffsetDateTime::now_utc();
    let good = || LeafSpec::workload(&id("shop", "frontend"));
    let cases = [
        ("another CA", rogue.workload("rogue", &id("shop", "frontend"))),
        (
            "expired",
            pki.issue(
                "expired",
                &LeafSpec { not_before: now - Duration::days(2), not_after: now - Duration::days(1), ..good() },
            ),
        ),
        (
            "not yet valid",
            pki.issue(
                "future",
                &LeafSpec { not_before: now + Duration::days(1), not_after: now + Duration::days(2), ..good() },
            ),
        ),
        (
            "another trust domain, same CA",
            pki.issue("foreign", &LeafSpec::workload("spiffe://other.org/ns/shop/sa/frontend")),
        ),
        ("another trust domain's CA", other_domain.workload("other", "spiffe://other.org/ns/shop/sa/frontend")),
        (
            "no SPIFFE ID",
            pki.issue("dns-only", &LeafSpec { spiffe_id: None, dns_names: vec!["frontend.shop.svc".into()], ..good() }),
        ),
        ("no clientAuth usage", pki.issue("server-only", &LeafSpec { client_auth: false, ..good() })),
        (
            "no extended key usage at all",
            pki.issue("no-eku", &LeafSpec { client_auth: false, server_auth: false, ..good() }),
        ),
    ];
    for (what, files) in &cases {
        let result = handshake(sidecar.inbound, Some(files)).await;
        assert!(result.is_err(), "{what}: a client with this certificate must be refused");
    }
    // A good leaf sent with more intermediates than any mesh chain has (each a copy of the CA:
    // webpki would try them all): refused before the path is built. One is fine.
    let chained = |name: &str, copies: usize| {
        let files = pki.workload(name, &id("shop", "frontend"));
        let leaf = std::fs::read_to_string(&files.cert).unwrap();
        let ca = std::fs::read_to_string(&files.trust_bundle).unwrap();
        std::fs::write(&files.cert, format!("{leaf}{}", ca.repeat(copies))).unwrap();
        files
    };
    let long = handshake(sidecar.inbound, Some(&chained("long-chain", 5))).await;
    assert!(long.is_err(), "five intermediates must be refused");
    handshake(sidecar.inbound, Some(&chained("short-chain", 1))).await.expect("one intermediate is taken");
    let no_cert = handshake(sidecar.inbound, None).await;
    assert!(no_cert.is_err(), "a client without a certificate must be refused");
    // Plaintext gets no HTTP response at all in STRICT mode.
    let plain = http_client().get(format!("http://{}/", sidecar.inbound)).send().await;
    assert!(plain.is_err(), "plaintext must be refused in STRICT mode: {plain:?}");

    // The control case: the same server accepts a good certificate.
    let client = pki.workload("client", &id("shop", "frontend"));
    handshake(sidecar.inbound, Some(&client)).await.unwrap();

    let metrics =
        http_client().get(format!("http://{}/metrics", sidecar.admin)).send().await.unwrap().text().await.unwrap();
    let failures = metric(&metrics, "palisade_tls_handshakes_total{direction=\"inbound\",result=\"failure\"}");
    assert!(failures >= (cases.len() + 2) as f64, "failed handshakes counted: {failures}\n{metrics}");
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_mode_accepts_plaintext_without_a_principal_and_mtls_with_one() {
    let s = Single::start(|c| c.inbound.mtls = MtlsMode::PERMISSIVE).await;
    let (sidecar, client) = (&s.sidecar, &s.client);

    let plain: Seen = http_client()
        .get(format!("http://{}/plain", sidecar.inbound))
        .header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/shop/sa/admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain.path, "/plain");
    assert_eq!(plain.header("x-forwarded-client-cert"), None, "plaintext callers have no principal");

    let mtls: Seen = https_client(Some(client))
        .get(format!("https://{}/tls", sidecar.inbound))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(mtls.header("x-forwarded-client-cert").unwrap().ends_with(&id("shop", "frontend")));

    // TLS without a client certificate is still refused: PERMISSIVE relaxes plaintext only.
    assert!(handshake(sidecar.inbound, None).await.is_err());
    s.sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_down_gives_a_json_502_and_service_resumes_when_it_returns() {
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let client = pki.workload("client", &id("shop", "frontend"));
    let app = EchoApp::start().await;
    let app_addr = app.addr;
    app.stop();
    let gone = eventually(async || tokio::net::TcpStream::connect(app_addr).await.is_err()).await;
    assert!(gone, "the app stopped listening");
    let sidecar = start_sidecar(sidecar_config(&server, app_addr));
    let https = https_client(Some(&client));

    let response = https.get(format!("https://{}/x", sidecar.inbound)).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["request_id"], request_id.as_str());

    let _app = EchoApp::start_on(app_addr).await;
    let response = https.get(format!("https://{}/x", sidecar.inbound)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_answer_414_and_431_with_json() {
    let s = Single::start(|_| {}).await;
    let (sidecar, https) = (&s.sidecar, s.https());

    let long = format!("https://{}/{}", sidecar.inbound, "a".repeat(9000));
    let response = https.get(long).send().await.unwrap();
    assert_eq!(response.status(), 414);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"], "uri_too_long");

    let mut request = https.get(format!("https://{}/", sidecar.inbound));
    for i in 0..20 {
        request = request.header(format!("x-filler-{i}"), "v".repeat(4000));
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);

    // Past pingora's 64 KiB head buffer its parser refuses the request line: 414 still, on a
    // first request and on a kept-alive connection's next (outside tester j2: 400).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let huge = format!("GET /{} HTTP/1.1\r\nhost: orders.shop\r\n\r\n", "a".repeat(70_000));
    let mut first = mtls_stream(sidecar.inbound, &s.client, b"http/1.1").await.unwrap();
    let _ = first.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), first.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 414") && answer.contains(r#""error":"uri_too_long""#), "{answer}");
    let mut kept = mtls_stream(sidecar.inbound, &s.client, b"http/1.1").await.unwrap();
    kept.write_all(b"GET /ok HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        kept.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().trim().parse().unwrap();
    let mut body = vec![0u8; length];
    kept.read_exact(&mut body).await.unwrap();
    let _ = kept.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), kept.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 414"), "the next request's: {answer}");
    s.sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_app_gives_a_json_504_after_app_timeout() {
    let s = Single::start(|c| c.inbound.app_timeout = Some("300ms".parse().unwrap())).await;
    let (sidecar, https) = (&s.sidecar, s.https());
    let response = https.get(format!("https://{}/slow/2000", sidecar.inbound)).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"], "gateway_timeout");
    let response = https.get(format!("https://{}/slow/50", sidecar.inbound)).send().await.unwrap();
    assert_eq!(response.status(), 200, "a prompt app is unaffected");
    s.sidecar.shutdown();
}

/// The value of one sample in Prometheus text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap())).unwrap_or(0.0)
}

/// A client that holds a TLS session (a ticket or an id) from a first connection: resuming it
/// would restore the chain verified then without verifying it again, and let the client in after
/// its certificate, or the intermediate that signed it, has expired (or left the bundle's
/// trust). The sidecar never resumes: each connection's chain is verified afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_never_resumed_so_a_certificate_that_expired_since_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Single::start(|_| {}).await;
    for (n, versions) in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]].into_iter().enumerate() {
        let ends = OffsetDateTime::now_utc() + Duration::seconds(2);
        let spec = LeafSpec { not_after: ends, ..LeafSpec::workload(&id("shop", "frontend")) };
        let short = s.pki.issue(&format!("short-{n}"), &spec);
        // One client configuration for every connection: its session cache would hold what the
        // server offered to resume.
        let mut tls = client_tls_of(Some(&short), versions);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let name = rustls::pki_types::ServerName::try_from("orders.shop").unwrap();
        let get = async || -> (Option<rustls::HandshakeKind>, String) {
            let tcp = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
            let Ok(mut stream) = connector.connect(name.clone(), tcp).await else { return (None, String::new()) };
            let kind = stream.get_ref().1.handshake_kind();
            let _ = stream.write_all(b"GET /orders/1 HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\r\n").await;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            (kind, String::from_utf8_lossy(&answer).to_string())
        };
        for _ in 0..2 {
            let (kind, answer) = get().await;
            assert!(answer.starts_with("HTTP/1.1 200"), "valid: {answer}");
            assert_eq!(kind, Some(rustls::HandshakeKind::Full), "{versions:?}: never resumed");
        }
        let expired = eventually(async || OffsetDateTime::now_utc() > ends + Duration::seconds(1)).await;
        assert!(expired);
        // (TLS 1.3's client finishes its side before the server has judged its certificate.)
        let (kind, answer) = get().await;
        assert!(kind != Some(rustls::HandshakeKind::Resumed) && answer.is_empty(), "{versions:?}: let in: {answer}");
    }
    s.sidecar.shutdown();
}

/// CGI, WSGI, Rack/Puma and PHP read `x_user_id` as `x-user-id`: a caller's underscore spelling
/// of a header the sidecar sets (the caller's identity, a forwarded claim) would reach the app as
/// that header. Such headers are dropped by default (as nginx does), passed with `allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_underscores_do_not_reach_the_app_unless_allowed() {
    let send = async |s: &Single| -> Seen {
        let response = s
            .https()
            .get(s.url("/orders/7"))
            .header("X_Forwarded_Client_Cert", "By=spiffe://evil/x;URI=spiffe://cluster.local/ns/shop/sa/admin")
            .header("x_user_id", "admin")
            .header("x-kept", "yes")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    };
    let s = Single::start(|_| {}).await;
    let seen = send(&s).await;
    let underscored: Vec<&String> = seen.headers.keys().filter(|k| k.contains('_')).collect();
    assert!(underscored.is_empty(), "reached the app: {underscored:?}");
    assert_eq!(seen.header("x-kept"), Some("yes"));
    assert_eq!(
        seen.header("x-forwarded-client-cert"),
        Some(format!("By={};URI={}", id("shop", "orders"), id("shop", "frontend")).as_str())
    );
    s.sidecar.shutdown();

    let s = Single::start(|c| c.inbound.headers_with_underscores = palisade::config::UnderscoreHeaders::Allow).await;
    let seen = send(&s).await;
    assert_eq!(seen.header("x_user_id"), Some("admin"), "allowed: passed on");
    s.sidecar.shutdown();
}
