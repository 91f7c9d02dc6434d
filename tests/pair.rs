//! A sidecar pair: app -> sidecar A (outbound) -> mutual TLS over HTTP/2 -> sidecar B (inbound) -> app.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_through_the_pair_carries_identity_and_request_id() {
    let pair = Pair::start().await;
    let response = http_client()
        .get(pair.url("/orders?id=7"))
        .header("host", B_AUTHORITY)
        .header("x-request-id", "trace-me-42")
        .header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/shop/sa/admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Seen = response.json().await.unwrap();
    assert_eq!(seen.path, "/orders");
    assert_eq!(seen.version, "HTTP/1.1", "the app gets the protocol the caller spoke");
    assert_eq!(
        seen.header("x-forwarded-client-cert"),
        Some(format!("By={};URI={}", id("shop", "orders"), id("shop", "frontend")).as_str())
    );
    assert_eq!(seen.header("x-request-id"), Some("trace-me-42"));
    assert_eq!(seen.header("palisade-orig-proto"), None, "internal headers never reach the app");

    // Pooled: further requests ride the same HTTP/2 connection between the sidecars.
    let client = http_client();
    for _ in 0..20 {
        let r = client.get(pair.url("/again")).header("host", B_AUTHORITY).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let metrics = client.get(format!("http://{}/metrics", pair.a.admin)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("palisade_tls_handshakes_total{direction=\"outbound\",result=\"success\"} 1\n"),
        "21 requests, one connection: {metrics}"
    );
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_with_the_wrong_identity() {
    let pki_pair = Pair::start().await;
    let pki = &pki_pair.pki;
    // Sidecar C is a valid mesh member, but not who A expects at `orders.shop`.
    let impostor_app = EchoApp::start().await;
    let files_c = pki.workload("c", &id("shop", "payments"));
    let c = start_sidecar(sidecar_config(&files_c, impostor_app.addr));
    // Sidecar R has a certificate from a CA outside the trust bundle.
    let rogue = Pki::new();
    let files_r = rogue.workload("r", &id("shop", "orders"));
    let r = start_sidecar(sidecar_config(&files_r, impostor_app.addr));
    // Sidecar D answers where nothing is pinned.
    let files_d = pki.workload("d", &id("shop", "payments"));
    let d = start_sidecar(sidecar_config(&files_d, impostor_app.addr));

    let files_a = pki.workload("a2", &id("shop", "frontend"));
    let mut config_a = sidecar_config(&files_a, "127.0.0.1:9".parse().unwrap());
    config_a.outbound.destinations = vec![
        route("impostor.shop", c.inbound, Some(&id("shop", "orders"))),
        route("rogue.shop", r.inbound, Some(&id("shop", "orders"))),
        route("orders.shop", pki_pair.b.inbound, Some(&id("shop", "orders"))),
        route("anyone.shop", d.inbound, None),
        // Another name for C's address, pinning nothing itself: held to the pin there.
        route("alias.shop", c.inbound, None),
    ];
    let a = start_sidecar(config_a);
    let client = http_client();
    let get = |host: &'static str| client.get(format!("http://{}/", a.outbound)).header("host", host).send();

    for host in ["impostor.shop", "rogue.shop", "alias.shop"] {
        let response = get(host).await.unwrap();
        assert_eq!(response.status(), 502, "{host}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_gateway", "{host}");
    }
    // The right server, and any server of the trust domain where no identity is pinned.
    assert_eq!(get("orders.shop").await.unwrap().status(), 200);
    assert_eq!(get("anyone.shop").await.unwrap().status(), 200);
    // A listed destination reached by its address, not its name, is held to the identity pinned
    // for it: C's (listed twice, and the pinned name holds) is not orders', B's is.
    for (address, status) in [(c.inbound, 502), (pki_pair.b.inbound, 200)] {
        let response = client.get(format!("http://{}/", a.outbound)).header("host", address.to_string()).send().await;
        assert_eq!(response.unwrap().status(), status, "{address}");
    }

    let metrics = client.get(format!("http://{}/metrics", a.admin)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("palisade_tls_handshakes_total{direction=\"outbound\",result=\"failure\"} 4"),
        "{metrics}"
    );
    a.shutdown();
    c.shutdown();
    r.shutdown();
    d.shutdown();
    pki_pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_without_a_sidecar_is_refused_unless_configured_as_passthrough() {
    let pki = Pki::new();
    let plain = EchoApp::start().await;
    let files = pki.workload("a", &id("shop", "frontend"));
    // The app calls a plaintext server by its address, as it would a database outside the mesh.
    let call = |a: &palisade::app::Sidecar| {
        http_client().get(format!("http://{}/db", a.outbound)).header("host", plain.addr.to_string()).send()
    };
    let mut config = sidecar_config(&files, "127.0.0.1:9".parse().unwrap());
    let events = tempfile::NamedTempFile::new().unwrap();
    config.telemetry.events.sink = palisade::config::EventSink::File(events.path().to_path_buf());
    let strict = start_sidecar(config);
    let refused = call(&strict).await.unwrap();
    assert_eq!(refused.status(), 502, "no mesh identity at the destination: refused, never plaintext");
    assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["error"], "bad_gateway");
    // The event says the destination is outside the mesh and what lets the app reach it.
    let refusals = events_where(
        "the refused handshake",
        1,
        || read_jsonl(events.path()),
        |e| e["message"].as_str().is_some_and(|m| m.contains(&plain.addr.to_string())),
    )
    .await;
    let message = refusals[0]["message"].as_str().unwrap();
    assert!(message.contains("answered in plaintext, so it is not in the mesh"), "{message}");
    assert!(message.contains("outbound.passthrough") && !message.contains("is the caller outside"), "{message}");
    strict.shutdown();

    let mut config = sidecar_config(&files, "127.0.0.1:9".parse().unwrap());
    config.outbound.passthrough = vec!["127.0.0.0/8".parse().unwrap()];
    let open = start_sidecar(config);
    let answer = call(&open).await.unwrap();
    assert_eq!(answer.status(), 200, "a passthrough destination is reached as it is");
    let seen: Seen = answer.json().await.unwrap();
    assert_eq!(seen.path, "/db");
    assert!(seen.header("x-forwarded-client-cert").is_none(), "no mesh identity is claimed in plaintext");
    assert!(seen.header("x-request-id").is_some());
    open.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_the_app_as_http2_with_trailers() {
    let pair = Pair::start().await;
    let client =
        reqwest::Client::builder().http2_prior_knowledge().resolve(B_AUTHORITY, pair.a.outbound).build().unwrap();
    let response = client.get(format!("http://{B_AUTHORITY}:{}/h2", pair.a.outbound.port())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Seen = response.json().await.unwrap();
    assert_eq!(seen.version, "HTTP/2.0");
    assert!(seen.header("x-forwarded-client-cert").is_some());

    // Trailers survive both hops.
    let tcp = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!("http://{B_AUTHORITY}/trailers"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"body"));
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_pass_through_the_pair() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    // B's app is a real gRPC server (the standard health service).
    let (reporter, grpc_addr) = grpc_health_app(&["orders"]).await;
    let pki = Pki::new();
    let files_a = pki.workload("a", &id("shop", "frontend"));
    let files_b = pki.workload("b", &id("shop", "orders"));
    let b = start_sidecar(sidecar_config(&files_b, grpc_addr));
    let mut config_a = sidecar_config(&files_a, "127.0.0.1:9".parse().unwrap());
    config_a.outbound.destinations = vec![route(B_AUTHORITY, b.inbound, Some(&id("shop", "orders")))];
    let a = start_sidecar(config_a);

    let channel = grpc_channel(a.outbound, B_AUTHORITY).await;
    let mut client = HealthClient::new(channel);

    // Unary: the status travels in trailers after the message.
    let reply = client.check(HealthCheckRequest { service: "orders".into() }).await.unwrap();
    assert_eq!(reply.into_inner().status, ServingStatus::Serving as i32);
    // An error status (trailers-only response) arrives intact.
    let missing = client.check(HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Server streaming: updates flow while the stream stays open.
    let mut stream = client.watch(HealthCheckRequest { service: "orders".into() }).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter.set_service_status("orders", tonic_health::ServingStatus::NotServing).await;
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    drop(stream);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_hop_headers_and_concurrent_callers_cross_the_pair_on_one_connection() {
    let pair = Pair::start().await;

    // A body much larger than an HTTP/2 window, sent while the response may already be coming.
    let big = vec![b'x'; 3 * 1024 * 1024 + 17];
    let response =
        http_client().post(pair.url("/upload")).header("host", B_AUTHORITY).body(big.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Seen = response.json().await.unwrap();
    assert_eq!((seen.method.as_str(), seen.body_bytes), ("POST", big.len()), "every byte arrives");

    // Connection-specific headers describe the app's connection to A, not the next hop.
    let request = format!(
        "GET /hop HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nConnection: keep-alive, x-hop-secret\r\nKeep-Alive: timeout=5\r\n\
         X-Hop-Secret: only-for-a\r\nTE: gzip\r\nX-End-To-End: kept\r\nContent-Length: 0\r\n\r\n"
    );
    let (head, body, _) = raw_exchange(pair.a.outbound, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen: Seen = serde_json::from_str(&body).unwrap();
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    for hop in ["x-hop-secret", "keep-alive", "te", "connection"] {
        assert_eq!(seen.header(hop), None, "{hop} must not cross the hop: {:?}", seen.headers);
    }

    // A streamed answer without a length reaches an HTTP/1.1 caller chunked and whole.
    let streamed = http_client().get(pair.url("/trailers")).header("host", B_AUTHORITY).send().await.unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.text().await.unwrap(), "body");

    // Sixteen callers at once, each on its own connection, share one connection between the sidecars.
    let calls = (0..16).map(|i| {
        let url = pair.url(&format!("/slow/50?caller={i}"));
        async move {
            let r = http_client().get(url).header("host", B_AUTHORITY).send().await.unwrap();
            r.status()
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let metrics =
        http_client().get(format!("http://{}/metrics", pair.a.admin)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("palisade_tls_handshakes_total{direction=\"outbound\",result=\"success\"} 1\n"),
        "one connection for every request so far: {metrics}"
    );
    pair.shutdown();
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_http1_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n =
            tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(stream, &mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
            });
            if length.is_some_and(|l| body.len() >= l) {
                return text;
            }
        }
    }
}

/// Writes `request` as raw bytes to `addr` and reads one HTTP/1.1 response: its head, its body,
/// and the connection for whatever the test reads next.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> (String, String, tokio::net::TcpStream) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
    let raw = read_http1_response(&mut stream).await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string(), stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_framing_headers_cannot_remove_the_sidecars_own_or_smuggle_a_body() {
    let pair = Pair::start().await;

    // `Connection` may name hop-by-hop headers; it cannot name away what the sidecar adds.
    let request = format!(
        "GET /named HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nConnection: palisade-orig-proto, x-request-id, traceparent\r\n\
         X-Request-Id: keep-me-7\r\nContent-Length: 0\r\n\r\n"
    );
    let (head, body, _) = raw_exchange(pair.a.outbound, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen: Seen = serde_json::from_str(&body).unwrap();
    assert_eq!(seen.version, "HTTP/1.1", "B still knows the app spoke HTTP/1.1");
    assert!(seen.header("x-request-id").is_some(), "the request id still travels: {:?}", seen.headers);

    // Content-Length beside Transfer-Encoding (SPEC section 5: ambiguous framing, 400): refused at
    // A before anything is forwarded, and the connection closes, so the bytes after the chunked
    // body cannot become a second request. B refuses the same request from a plaintext caller.
    let smuggle = |authority: &str| {
        format!(
            "POST /smuggle HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
             GET /smuggled HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        )
    };
    let policed = PolicedSidecar::start_with(&policy("open", "  mtls: PERMISSIVE\n"), |_| {}).await;
    for (side, addr) in [("outbound", pair.a.outbound), ("inbound", policed.sidecar.inbound)] {
        let (head, body, mut stream) = raw_exchange(addr, &smuggle(B_AUTHORITY)).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{side}: {head}");
        assert!(body.contains("invalid_request"), "{side}: {body}");
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest))
                .await;
        assert!(
            closed.is_ok() && rest.is_empty(),
            "{side}: no answer to a smuggled request: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    policed.shutdown();
    pair.shutdown();
}

/// A pair whose sidecar b enforces the policy `name` with `spec` from a file (kept while the
/// directory lives).
async fn pair_with_policy_on_b(name: &str, spec: &str) -> (tempfile::TempDir, Pair) {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    write_policy(&policy_path, &policy(name, spec));
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |_| {},
        |b| {
            b.workload.labels.insert("app".into(), "orders".into());
            b.policy.files = vec![policy_path.clone()];
        },
    )
    .await;
    (dir, pair)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_by_the_peer_reaches_the_caller_and_expect_continue_is_answered() {
    let (_dir, pair) = pair_with_policy_on_b("small", "  inputValidation: {maxBodyBytes: 1024}\n").await;

    // B refuses after reading past its limit, while A is still sending: the caller gets B's 413,
    // not a 502 about the upload that B stopped taking. A small declared body over the limit
    // (read whole before the app sees anything): the same.
    for size in [4 * 1024 * 1024, 2048] {
        let response = http_client()
            .post(pair.url("/upload"))
            .header("host", B_AUTHORITY)
            .body(vec![b'x'; size])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{size} bytes");
        let text = response.text().await.unwrap();
        assert!(text.contains(r#""error":"payload_too_large""#), "answered as the maxBodyBytes refusal: {text}");
    }

    // A small body behind Expect: 100-continue: A says continue, the body crosses, no stall.
    let mut stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let head =
        format!("POST /expect HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(800), tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
        .await
        .expect("100 Continue arrives before the client's own timeout")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"), "{}", String::from_utf8_lossy(&buf[..n]));
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"hello").await.unwrap();
    let raw = read_http1_response(&mut stream).await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen: Seen = serde_json::from_str(body).unwrap();
    assert_eq!(seen.body_bytes, 5);
    assert_eq!(seen.header("expect"), None, "the expectation was met at this hop");
    pair.shutdown();
}

/// Between sidecars a request is HTTP/2, whose host travels as `:authority` with no `Host` field:
/// a condition on `request.headers[host]` reads it there, and compares hosts as routers do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_conditions_hold_for_requests_that_come_through_the_callers_sidecar() {
    let rules = r#"  authorization:
    default: ALLOW
    rules:
      - {name: no-orders-admin, action: DENY, to: {paths: ["/admin*"]}, when: [{key: "request.headers[host]", values: [ORDERS.shop, "orders.shop:*"]}]}
      - {name: only-via-billing, action: DENY, to: {paths: ["/billing*"]}, when: [{key: "request.headers[host]", values: ["billing.*"]}]}
"#;
    let (_dir, pair) = pair_with_policy_on_b("hosts", rules).await;
    let client = http_client();
    for (host, path, status) in [
        (B_AUTHORITY, "/admin/x", 403),
        ("Orders.SHOP", "/admin/x", 403),
        (B_AUTHORITY, "/orders", 200),
        (B_AUTHORITY, "/billing", 200),
    ] {
        let answer = client.get(pair.url(path)).header("host", host).send().await.unwrap();
        assert_eq!(answer.status(), status, "{host} {path}");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", pair.b.admin)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("palisade_authz_decisions_total{")
            && l.contains(r#"rule="no-orders-admin""#)
            && l.ends_with(" 2")),
        "both refusals by the host rule: {metrics}"
    );
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_costs_no_request() {
    let app = EchoApp::start().await;
    let pki = Pki::new();
    let files_a = pki.workload("a", &id("shop", "frontend"));
    let files_b = pki.workload("b", &id("shop", "orders"));
    let b_port = free_port();
    let mut config_b = sidecar_config(&files_b, app.addr);
    config_b.inbound.listen = format!("127.0.0.1:{b_port}").parse().unwrap();
    let b = start_sidecar(config_b.clone());
    let mut config_a = sidecar_config(&files_a, "127.0.0.1:9".parse().unwrap());
    config_a.outbound.destinations = vec![route(B_AUTHORITY, b.inbound, Some(&id("shop", "orders")))];
    let a = start_sidecar(config_a);
    let url = format!("http://{}/before", a.outbound);
    let client = http_client();
    assert_eq!(client.get(&url).header("host", B_AUTHORITY).send().await.unwrap().status(), 200);

    // B restarts (a rolling update): its pooled connection in A goes away with a GOAWAY.
    b.shutdown();
    let b = start_sidecar(config_b);
    for i in 0..5 {
        let r =
            client.get(format!("http://{}/after/{i}", a.outbound)).header("host", B_AUTHORITY).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} after the restart");
    }
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_app_whole_below_and_above_the_held_size() {
    // 40 KB crosses the mesh hop in several HTTP/2 DATA frames and is read whole by B before the
    // request is sent; 70 KB is over the held size and streams through pingora's proxy.
    for size in [40_000usize, 70_000] {
        let (app_addr, mut app_read) = closing_app().await;
        let app = EchoApp::start().await;
        let pair = Pair::start_configured(app, |_| {}, |b| b.inbound.app.0 = app_addr).await;
        let body: String = (0..size).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let response = http_client()
            .post(pair.url("/upload"))
            .header("host", B_AUTHORITY)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{size} bytes");
        let seen = app_read.recv().await.unwrap();
        let (head, received) = seen.split_once("\r\n\r\n").unwrap();
        assert!(head.to_ascii_lowercase().contains(&format!("content-length: {size}")), "{head}");
        assert!(received == body, "{size} bytes arrive in order ({} arrived)", received.len());
        pair.shutdown();
    }
}

/// A raw HTTP/1.1 app on loopback: `serve` runs for each connection, with a sender for what it
/// reports.
async fn raw_app<T, F, Fut>(serve: F) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<T>)
where
    T: Send + 'static,
    F: Fn(tokio::net::TcpStream, tokio::sync::mpsc::UnboundedSender<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, sender.clone()));
        }
    });
    (addr, receiver)
}

/// The next request on `stream`: its head (up to the blank line) and its Content-Length body;
/// `None` once the other side closes.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::io::AsyncReadExt::read(stream, &mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ")?.trim().parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; length];
    tokio::io::AsyncReadExt::read_exact(stream, &mut body).await.ok()?;
    Some((head, body))
}

/// An HTTP/1.1 app that answers the first request on each connection and then, on the next one,
/// reads it and closes without a word: the keep-alive race every pooled client meets when an
/// app closes an idle connection just as a request is sent on it. Reports each request it read,
/// head and body.
async fn closing_app() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    raw_app(|mut stream, seen| async move {
        for answered in [true, false] {
            let Some((head, body)) = read_request(&mut stream).await else { return };
            let _ = seen.send(format!("{head}{}", String::from_utf8_lossy(&body)));
            if !answered {
                return; // closes without answering
            }
            let host =
                head.lines().find_map(|l| l.strip_prefix("host: ").or_else(|| l.strip_prefix("Host: "))).unwrap_or("-");
            let body = format!("{} host={host}", head.lines().next().unwrap_or(""));
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_closing_kept_alive_connections_costs_no_safe_request_and_never_repeats_an_unsafe_one() {
    let (app_addr, mut app_read) = closing_app().await;
    let app = EchoApp::start().await;
    let pair = Pair::start_configured(app, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    let client = http_client();

    // Every other request finds its pooled connection closed under it; B sends it again on a new
    // connection, so the caller never sees the race.
    for i in 0..10 {
        let response = client.get(pair.url(&format!("/read/{i}"))).header("host", B_AUTHORITY).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), format!("GET /read/{i} HTTP/1.1 host={B_AUTHORITY}"));
    }
    let mut reads = Vec::new();
    while let Ok(head) = app_read.try_recv() {
        reads.push(head.lines().next().unwrap_or("").to_string());
    }
    assert!(reads.len() > 10, "some requests met a closed connection and were sent again: {reads:?}");

    // A POST without a body may have been acted on before the connection closed: it is not sent
    // twice, and the caller learns the app failed it (502) instead.
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let response = client.post(pair.url(&format!("/write/{i}"))).header("host", B_AUTHORITY).send().await.unwrap();
        outcomes.push(response.status().as_u16());
    }
    assert!(outcomes.contains(&502) && outcomes.contains(&200), "{outcomes:?}");
    let mut writes = Vec::new();
    while let Ok(head) = app_read.try_recv() {
        writes.push(head.lines().next().unwrap_or("").to_string());
    }
    for i in 0..4 {
        let times = writes.iter().filter(|w| w.starts_with(&format!("POST /write/{i} "))).count();
        assert_eq!(times, 1, "POST /write/{i} reached the app once: {writes:?}");
    }

    // The same with small bodies (read whole by B before the request is sent): a PUT is safe to
    // repeat and is sent again with its body; a POST with a body is never sent twice.
    for i in 0..6 {
        let body = format!("put-body-{i}");
        let response =
            client.put(pair.url(&format!("/put/{i}"))).header("host", B_AUTHORITY).body(body).send().await.unwrap();
        assert_eq!(response.status(), 200, "PUT {i}");
    }
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let body = format!("post-body-{i}");
        let response =
            client.post(pair.url(&format!("/post/{i}"))).header("host", B_AUTHORITY).body(body).send().await.unwrap();
        outcomes.push(response.status().as_u16());
    }
    assert!(outcomes.contains(&502) && outcomes.contains(&200), "{outcomes:?}");
    let mut seen = Vec::new();
    while let Ok(request) = app_read.try_recv() {
        seen.push(request);
    }
    let puts: Vec<_> = seen.iter().filter(|r| r.starts_with("PUT /put/")).collect();
    assert!(puts.len() > 6, "some PUTs met a closed connection and were sent again: {seen:?}");
    for i in 0..6 {
        let copies = puts.iter().filter(|r| r.starts_with(&format!("PUT /put/{i} "))).collect::<Vec<_>>();
        assert!(!copies.is_empty(), "PUT {i} reached the app");
        for copy in copies {
            assert!(copy.ends_with(&format!("\r\n\r\nput-body-{i}")), "each copy carries the whole body: {copy:?}");
        }
    }
    for i in 0..4 {
        let copies: Vec<_> = seen.iter().filter(|r| r.starts_with(&format!("POST /post/{i} "))).collect();
        assert_eq!(copies.len(), 1, "POST /post/{i} reached the app once: {seen:?}");
        assert!(copies[0].ends_with(&format!("post-body-{i}")), "{copies:?}");
    }
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normalised_path_still_reaches_the_app_at_the_callers_authority() {
    let pair = Pair::start().await;
    // Dot segments are resolved before the policy judges the path, and the app gets the judged
    // path; over the HTTP/2 hop the authority is the request's only Host, so it must survive.
    for (method, body) in [("GET", ""), ("POST", "hello")] {
        let request = format!(
            "{method} /shop/../orders/./7?x=1 HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (head, body, _) = raw_exchange(pair.a.outbound, &request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{method}: {head}");
        let seen: Seen = serde_json::from_str(&body).unwrap();
        assert_eq!(seen.path, "/orders/7", "{method}");
        assert_eq!(seen.header("host"), Some(B_AUTHORITY), "{method}: {:?}", seen.headers);
    }
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_frees_the_apps_connection() {
    // An app that reads a request and never answers (a long poll), and says when its
    // connection closes.
    let (app_addr, mut closed) = scripted_app(None).await;
    let app = EchoApp::start().await;
    let pair = Pair::start_configured(app, |_| {}, |b| b.inbound.app.0 = app_addr).await;

    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let gave_up = impatient.get(pair.url("/poll")).header("host", B_AUTHORITY).send().await;
    assert!(gave_up.is_err(), "the app never answers: {gave_up:?}");
    assert_eq!(closed.recv().await, Some("open"), "B connected to the app");
    assert_eq!(closed.recv().await, Some("request"), "the request reached the app");
    let freed = tokio::time::timeout(Duration::from_secs(5), closed.recv()).await;
    assert_eq!(freed.ok().flatten(), Some("closed"), "B closes the app's connection once the caller is gone");
    pair.shutdown();
}

/// An HTTP/1.1 app that answers every request on a connection with `answer` (or, without one,
/// never answers: a long poll) and keeps the connection open; it reports "open" for each
/// connection, "request" for each request and "closed" when the other side closes a connection.
async fn scripted_app(
    answer: Option<&'static str>,
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
    raw_app(move |mut stream, events| async move {
        let _ = events.send("open");
        while read_request(&mut stream).await.is_some() {
            let _ = events.send("request");
            let Some(answer) = answer else { continue };
            if tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = events.send("closed");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_app_are_closed_in_time_without_waiting_for_traffic() {
    let (app_addr, mut events) =
        scripted_app(Some("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok")).await;
    let app = EchoApp::start().await;
    let pair = Pair::start_configured(app, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    // A burst opens several connections to the app, then nothing more is sent.
    let calls = (0..6).map(|i| {
        let url = pair.url(&format!("/burst/{i}"));
        async move { http_client().get(url).header("host", B_AUTHORITY).send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // The app allows 2 s idle; the sidecar keeps them 1 s and sweeps every 5 s, so every
    // connection is closed by the sidecar within seconds though no request follows.
    let (mut opened, mut requests, mut closed) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while requests < 6 || closed < opened {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some("open")) => opened += 1,
            Ok(Some("request")) => requests += 1,
            Ok(Some(_)) => closed += 1,
            _ => break,
        }
    }
    assert_eq!(requests, 6);
    assert!(opened >= 1 && closed == opened, "{closed} of {opened} idle connections closed");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_switching_protocols_unasked_is_a_bad_gateway() {
    let (app_addr, _events) =
        scripted_app(Some("HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: upgrade\r\n\r\n")).await;
    let app = EchoApp::start().await;
    let pair = Pair::start_configured(app, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let response = client.get(pair.url("/plain")).header("host", B_AUTHORITY).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wildcard_the_outbound_listener_refuses_any_address_of_this_host_for_itself() {
    // A listener on 0.0.0.0 with this host inside a passthrough block: every local address at
    // its port is the listener itself (one request went round 4,470 times).
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |a| {
            a.outbound.listen.0 = "0.0.0.0:0".parse().unwrap();
            a.outbound.passthrough = vec!["127.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap()];
        },
        |_| {},
    )
    .await;
    let port = pair.a.outbound.port();
    let listener = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let mut spellings = vec![format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"), format!("localhost:{port}")];
    // This host's address on the network, when it has one (no packet is sent).
    if probe.connect("192.0.2.1:9").is_ok() {
        spellings.push(format!("{}:{port}", probe.local_addr().unwrap().ip()));
    }
    for own in &spellings {
        let (head, _, _) = raw_exchange(listener, &format!("GET /loop HTTP/1.1\r\nHost: {own}\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{own}: {head}");
    }
    // One request each reached the listener: none went round.
    let metrics =
        http_client().get(format!("http://{}/metrics", pair.a.admin)).send().await.unwrap().text().await.unwrap();
    let outbound: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("palisade_requests_total{") && l.contains("direction=\"outbound\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(outbound, spellings.len() as f64, "{metrics}");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_listener_serves_ipv6_loopback_and_refuses_a_request_addressed_to_either_side_of_it() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback (lifecycle's unit tests cover the IPv4-only bind)");
        return;
    }
    let pair = Pair::start().await;
    let ipv6_side = std::net::SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), pair.a.outbound.port());
    let request = format!("GET /orders HTTP/1.1\r\nHost: {B_AUTHORITY}\r\n\r\n");
    let (head, body, _) = raw_exchange(ipv6_side, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen: Seen = serde_json::from_str(&body).unwrap();
    assert_eq!(seen.header("x-forwarded-client-cert").map(|x| x.ends_with(&id("shop", "frontend"))), Some(true));
    // An app's request for the outbound listener itself, by either family's address, is
    // refused rather than sent round to the listener again.
    let port = pair.a.outbound.port();
    let spellings = [
        pair.a.outbound.to_string(),
        ipv6_side.to_string(),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::]:{port}"),
    ];
    for own in spellings {
        let request = format!("GET /loop HTTP/1.1\r\nHost: {own}\r\n\r\n");
        let (head, _, _) = raw_exchange(ipv6_side, &request).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{own}: {head}");
    }
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_caller_gets_a_body_of_unknown_length_ended_by_the_close_never_chunked() {
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |_| {},
        |b| {
            b.inbound.mtls = palisade::config::MtlsMode::PERMISSIVE;
        },
    )
    .await;
    // The echo app streams /bytes/ without a length: 100000 rounds up to two 64 KiB pieces.
    let expected = 2 * 65536;
    for (side, addr) in [("outbound", pair.a.outbound), ("inbound in plaintext", pair.b.inbound)] {
        for connection in ["", "Connection: keep-alive\r\n"] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET /bytes/100000 HTTP/1.0\r\nHost: {B_AUTHORITY}\r\n{connection}\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            let read = tokio::time::timeout(patience(), tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw));
            assert!(read.await.is_ok(), "{side} {connection:?}: the sidecar must close to end the body");
            let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
            let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
            let body = &raw[at..];
            assert!(head.starts_with("http/1.1 200"), "{side} {connection:?}: {head}");
            assert!(!head.contains("transfer-encoding"), "{side} {connection:?}: HTTP/1.0 has no chunks: {head}");
            assert!(!head.contains("connection: keep-alive"), "{side} {connection:?}: {head}");
            assert_eq!(body.len(), expected, "{side} {connection:?}: {head}");
            assert!(body.iter().all(|b| *b == b'x'), "{side} {connection:?}: the body is the app's bytes alone");
        }
    }
    pair.shutdown();
}

/// RFC 6455 §4.2.2: the server's proof that it read the client's WebSocket key.
fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A WebSocket server (hyper, with upgrades) as far as the opening handshake goes, then an echo
/// of the bytes that follow. It says in `x-seen-xfcc` which caller the sidecar vouched for, and
/// counts the handshakes that reached it.
async fn websocket_app() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let key =
                        request.headers().get("sec-websocket-key").and_then(|k| k.to_str().ok()).map(String::from);
                    let websocket = request
                        .headers()
                        .get("upgrade")
                        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
                    let (Some(key), true) = (key, websocket) else {
                        return Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder().status(426).body(http_body_util::Empty::<Bytes>::new()).unwrap(),
                        );
                    };
                    seen.fetch_add(1, Ordering::SeqCst);
                    let xfcc = request
                        .headers()
                        .get("x-forwarded-client-cert")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static(""));
                    let upgrade = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let (mut from, mut to) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut from, &mut to).await;
                    });
                    Ok(hyper::Response::builder()
                        .status(101)
                        .header("upgrade", "websocket")
                        .header("connection", "Upgrade")
                        .header("sec-websocket-accept", websocket_accept(&key))
                        .header("x-seen-xfcc", xfcc)
                        .body(http_body_util::Empty::new())
                        .unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    (addr, handshakes)
}

const WEBSOCKET_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket client's opening handshake (hyper's client, with upgrades) to `path` through
/// sidecar A: the answer, and the connection it became when it was a 101.
async fn open_websocket(
    pair: &Pair,
    path: &str,
) -> (hyper::Response<hyper::body::Incoming>, Option<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>) {
    let stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = hyper::Request::builder()
        .uri(path)
        .header("host", B_AUTHORITY)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", WEBSOCKET_KEY)
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let mut response = sender.send_request(request).await.unwrap();
    if response.status() != 101 {
        return (response, None);
    }
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    (response, Some(hyper_util::rt::TokioIo::new(upgraded)))
}

/// A masked text frame from a client (RFC 6455 §5.2), and its echo read back whole.
async fn websocket_round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(socket: &mut S, text: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&frame).await.unwrap();
    let mut echoed = vec![0; frame.len()];
    tokio::time::timeout(patience(), socket.read_exact(&mut echoed)).await.expect("the echo in time").unwrap();
    assert_eq!(echoed, frame);
}

/// A pair whose B serves `app` under a policy that denies `paths` (rule `rule`) and allows the
/// rest; the policy's directory lives as long as the value returned with the pair.
async fn pair_denying(app: std::net::SocketAddr, rule: &str, paths: &str) -> (Pair, tempfile::TempDir) {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy_file = policy_dir.path().join("policy.yaml");
    let spec = format!(
        "  authorization:\n    default: ALLOW\n    rules:\n      - {{name: {rule}, action: DENY, to: {{paths: [\"{paths}\"]}}}}\n"
    );
    write_policy(&policy_file, &policy(rule, &spec));
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |_| {},
        |b| {
            b.inbound.app.0 = app;
            b.policy.files = vec![policy_file.clone()];
            b.workload.labels = [("app".to_string(), "orders".to_string())].into();
        },
    )
    .await;
    (pair, policy_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_refused_by_the_peers_policy_never_reaches_its_app() {
    let (app, handshakes) = websocket_app().await;
    let (pair, _policy_dir) = pair_denying(app, "no-chat", "/chat*").await;
    let (response, upgraded) = open_websocket(&pair, "/chat").await;
    assert_eq!(response.status(), 403, "{response:?}");
    assert!(upgraded.is_none());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0, "the app saw no handshake");
    // What the policy allows still upgrades, through the same sidecars.
    let (response, upgraded) = open_websocket(&pair, "/feed").await;
    assert_eq!(response.status(), 101);
    websocket_round_trip(&mut upgraded.unwrap(), "allowed").await;
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_the_pair_over_mutual_tls_and_stays_open_while_silent() {
    use tokio::io::AsyncWriteExt;
    let (app, handshakes) = websocket_app().await;
    // Both sidecars' body, head and idle timeouts end stalled and idle connections while the
    // WebSocket below says nothing; none may close it or write into it.
    let short = palisade::config::HumanDuration(Duration::from_secs(1));
    let shorten = |limits: &mut palisade::config::LimitsConfig| {
        limits.body_timeout = short;
        limits.header_timeout = short;
        limits.idle_timeout = short;
    };
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |a| shorten(&mut a.limits),
        |b| {
            b.inbound.app.0 = app;
            shorten(&mut b.limits);
        },
    )
    .await;
    let (response, upgraded) = open_websocket(&pair, "/chat?room=7").await;
    assert_eq!(response.status(), 101, "{response:?}");
    let headers = response.headers();
    assert_eq!(headers["sec-websocket-accept"], websocket_accept(WEBSOCKET_KEY).as_str());
    assert!(headers["upgrade"].as_bytes().eq_ignore_ascii_case(b"websocket"), "{headers:?}");
    assert_eq!(
        headers["x-seen-xfcc"],
        format!("By={};URI={}", id("shop", "orders"), id("shop", "frontend")).as_str(),
        "B vouched for A's identity, proved over mutual TLS"
    );
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    let mut socket = upgraded.unwrap();
    websocket_round_trip(&mut socket, "hello through the mesh").await;
    // A fragmented message's first frame starts with 0x41 ('A'), as a request head would.
    socket.write_all(&[0x41, 0x80, 0, 0, 0, 0]).await.unwrap();

    // At each sidecar, begun after the WebSocket's silence: a request whose body stalls, a
    // head that stops half-way, and a connection left idle after its answer.
    let caller = pair.pki.workload("caller", &id("shop", "frontend"));
    let stalled = format!("POST /stalled HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nContent-Length: 10\r\n\r\nab");
    let answered = format!("GET /idle HTTP/1.1\r\nHost: {B_AUTHORITY}\r\n\r\n");
    let mut held = Vec::new();
    for bytes in [stalled.as_str(), "GET /half HT", answered.as_str()] {
        let mut to_a = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
        to_a.write_all(bytes.as_bytes()).await.unwrap();
        let mut to_b = mtls_stream(pair.b.inbound, &caller, b"http/1.1").await.unwrap();
        to_b.write_all(bytes.as_bytes()).await.unwrap();
        held.push((to_a, to_b));
    }
    let closed = |admin: std::net::SocketAddr, direction: &'static str, reason: &'static str| async move {
        let metrics = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        let series = format!("palisade_connections_closed_total{{direction=\"{direction}\",reason=\"{reason}\"}} ");
        metrics.lines().any(|l| l.strip_prefix(series.as_str()).is_some_and(|v| v.trim() != "0"))
    };
    // (B's app answers the stalled upload at once, so there it is the idle timeout that ends it.)
    wait_for("A's body timeout", async || closed(pair.a.admin, "outbound", "body_timeout").await).await;
    for reason in ["header_timeout", "idle_timeout"] {
        wait_for(reason, async || closed(pair.b.admin, "inbound", reason).await).await;
        wait_for(reason, async || closed(pair.a.admin, "outbound", reason).await).await;
    }
    drop(held);
    // The fragment's end, and its echo: the bytes in between are the app's alone.
    socket.write_all(&[0x80, 0x80, 0, 0, 0, 0]).await.unwrap();
    let mut echoed = [0u8; 12];
    tokio::time::timeout(patience(), tokio::io::AsyncReadExt::read_exact(&mut socket, &mut echoed))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(echoed, [0x41, 0x80, 0, 0, 0, 0, 0x80, 0x80, 0, 0, 0, 0]);
    websocket_round_trip(&mut socket, "still here").await;

    // The caller's close reaches the app, and the app's end comes back.
    socket.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(patience(), tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut rest)).await;
    assert!(read.expect("the end in time").is_ok() && rest.is_empty(), "{rest:?}");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_that_names_its_representations_length_reaches_the_caller() {
    // RFC 9110 §8.6: a 304 may carry the Content-Length of what it stands for, with no body.
    let (app_addr, _events) =
        scripted_app(Some("HTTP/1.1 304 Not Modified\r\nETag: \"v7\"\r\nContent-Length: 1234\r\n\r\n")).await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    // The next answer on the connection shows that no body followed the first.
    let request = format!("GET /catalog HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nIf-None-Match: \"v7\"\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let mut raw = Vec::new();
    for last in [false, true] {
        let request = if last { request.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n") } else { request.clone() };
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
        let answers = if last { 2 } else { 1 };
        let mut buf = [0u8; 4096];
        while raw.windows(4).filter(|w| w == b"\r\n\r\n").count() < answers {
            let n = tokio::time::timeout(patience(), tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let answers: Vec<&str> = text.split("\r\n\r\n").filter(|a| !a.is_empty()).collect();
    assert_eq!(answers.len(), 2, "{text}");
    for head in answers {
        assert!(head.starts_with("HTTP/1.1 304"), "{text}");
        assert!(head.to_ascii_lowercase().contains("etag: \"v7\""), "{text}");
    }
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_callers_cookie_crumbs_reach_an_http1_app_as_one_cookie_line() {
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |_| {},
        |b| {
            b.inbound.app_protocol = palisade::config::AppProtocol::Http1;
        },
    )
    .await;
    // HTTP/2's :authority names the destination (a Host beside it that disagrees is refused).
    let client =
        reqwest::Client::builder().http2_prior_knowledge().resolve(B_AUTHORITY, pair.a.outbound).build().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.append("cookie", http::HeaderValue::from_static("session=abc"));
    headers.append("cookie", http::HeaderValue::from_static("theme=dark"));
    let url = format!("http://{B_AUTHORITY}:{}/crumbs", pair.a.outbound.port());
    let response = client.get(url).headers(headers).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, http::Version::HTTP_2), "{response:?}");
    let text = response.text().await.unwrap();
    let seen: Seen = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.headers.get("cookie"), Some(&vec!["session=abc; theme=dark".to_string()]), "{:?}", seen.headers);
    pair.shutdown();
}

/// An app that breaks its answer off (a reset after part of the body) failed the request,
/// whatever status it began with: both sidecars count it as the 502 it would have been, so a
/// success rate does not hide an app that crashes mid-answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_app_breaks_off_is_counted_as_a_failure_on_both_sidecars() {
    let (app_addr, _events) = raw_app(|mut stream, _events: tokio::sync::mpsc::UnboundedSender<()>| async move {
        if read_request(&mut stream).await.is_some() {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &[b'x'; 1000]).await;
            // Closed with a reset, not a FIN.
            let _ = stream.set_zero_linger();
        }
    })
    .await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let answer = client.get(pair.url("/broken")).header("host", B_AUTHORITY).send().await;
    let whole = match answer {
        Ok(answer) => answer.bytes().await.is_ok_and(|b| b.len() == 100000),
        Err(_) => false,
    };
    assert!(!whole, "the caller never gets the whole answer");
    let counted = |admin: std::net::SocketAddr, direction: &'static str| async move {
        let metrics = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        let failed = metrics.lines().any(|l| {
            l.starts_with("palisade_requests_total{")
                && l.contains(&format!("direction=\"{direction}\""))
                && l.contains("code=\"502\"")
        });
        let succeeded = metrics.lines().any(|l| {
            l.starts_with("palisade_requests_total{")
                && l.contains(&format!("direction=\"{direction}\""))
                && l.contains("code=\"200\"")
        });
        failed && !succeeded
    };
    wait_for("B counts a 502", async || counted(pair.b.admin, "inbound").await).await;
    wait_for("A counts a 502", async || counted(pair.a.admin, "outbound").await).await;
    pair.shutdown();
}

/// HTTP/1.0 may leave Host out; the app gets the request as HTTP/1.1, which must carry one
/// (nginx answers 400 without it): the app's own address stands in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_reaches_the_app_with_one() {
    let s = PolicedSidecar::start(&policy("open", "  authorization: {default: ALLOW}\n")).await;
    let (head, body, _) = raw_exchange(s.sidecar.inbound, "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{head}");
    let seen: Seen = serde_json::from_str(&body).unwrap();
    assert_eq!(seen.header("host"), Some(s.app.addr.to_string().as_str()), "{:?}", seen.headers);
    s.shutdown();
}

/// An HTTP/2 app gets the caller's authority; the Host an HTTP/1.0 request without one is
/// given must not replace it (gRPC servers and virtual hosts route by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_app_sees_the_callers_authority() {
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |_| {},
        |b| {
            b.inbound.app_protocol = palisade::config::AppProtocol::Http2;
        },
    )
    .await;
    let response = http_client().get(pair.url("/where")).header("host", B_AUTHORITY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Seen = response.json().await.unwrap();
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(seen.authority.as_deref(), Some(B_AUTHORITY), "{seen:?}");
    pair.shutdown();
}

/// Both directions of a WebSocket at once, more than any buffer holds: each sidecar copies
/// each direction on its own, so an app that echoes as it reads (and stops reading while its
/// writes wait) never stops the relay. Written one direction at a time, the first sidecar's
/// relay and the app waited on each other for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_carries_a_large_echo_both_ways_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 16 << 20;
    let (app, _handshakes) = websocket_app().await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app).await;
    let (response, upgraded) = open_websocket(&pair, "/bulk").await;
    assert_eq!(response.status(), 101);
    let (mut from, mut to) = tokio::io::split(upgraded.unwrap());
    let sending = tokio::spawn(async move {
        let piece = vec![7u8; 64 * 1024];
        for _ in 0..SIZE / piece.len() {
            to.write_all(&piece).await.unwrap();
        }
        to
    });
    let mut echoed = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    let read_all = async {
        while echoed < SIZE {
            let n = from.read(&mut buffer).await.unwrap();
            assert!(n > 0, "ended after {echoed} bytes");
            echoed += n;
        }
    };
    tokio::time::timeout(patience(), read_all).await.unwrap_or_else(|_| panic!("echoed {echoed} of {SIZE} bytes"));
    drop(tokio::time::timeout(patience(), sending).await.expect("all sent").unwrap());
    pair.shutdown();
}

/// The upgrade request a raw client sends through A to B's app, with `extra` after it.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: {WEBSOCKET_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n{extra}"
    )
}

/// What a raw app reported, up to its `closed` once its connection ended.
async fn heard_until_closed(seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut heard = Vec::new();
    while heard.last().is_none_or(|h: &String| h != "closed") {
        let next = tokio::time::timeout(patience(), seen.recv()).await.expect("the app's connection ends");
        heard.push(next.unwrap());
    }
    heard
}

/// Everything a raw client reads until the connection ends (or errs).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        while let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(stream, &mut buf).await {
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(patience(), read_all).await.expect("the connection ends");
    String::from_utf8_lossy(&raw).to_string()
}

/// After a `101` the bytes are the app's protocol's: an app that breaks the upgraded connection
/// off must not have either sidecar write its JSON error into the stream (a WebSocket client
/// took it for a frame and failed with a protocol error); the caller's connection just ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_the_app_breaks_off_ends_without_an_error_body_in_it() {
    let (app, _events) = raw_app(|mut stream, _events: tokio::sync::mpsc::UnboundedSender<()>| async move {
        if read_request(&mut stream).await.is_some() {
            let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await;
            // Closed with a reset, not a FIN.
            let _ = stream.set_zero_linger();
        }
    })
    .await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app).await;
    let mut stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, upgrade_request("/chat", "").as_bytes()).await.unwrap();
    let read = read_until_closed(&mut stream).await;
    let (head, stream_bytes) = read.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{read:?}"));
    assert!(head.starts_with("HTTP/1.1 101"), "{read:?}");
    assert!("hello".starts_with(stream_bytes), "only the app's bytes: {stream_bytes:?}");
    pair.shutdown();
}

/// A `101` must switch to a protocol the request named (RFC 9110 §7.8): an app that answers one
/// without `Upgrade` would otherwise open a byte stream past B's policy, and a request denied
/// to the caller would reach it on that stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_names_no_protocol_asked_for_opens_nothing() {
    let (app, mut seen) = raw_app(|mut stream, seen: tokio::sync::mpsc::UnboundedSender<String>| async move {
        while let Some((head, _)) = read_request(&mut stream).await {
            let _ = seen.send(head.lines().next().unwrap_or_default().to_string());
            let answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
        }
        let _ = seen.send("closed".to_string());
    })
    .await;
    let (pair, _policy_dir) = pair_denying(app, "admin", "/admin*").await;
    let smuggled = format!("GET /admin/secret HTTP/1.1\r\nHost: {B_AUTHORITY}\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, upgrade_request("/chat", &smuggled).as_bytes()).await.unwrap();
    let read = read_until_closed(&mut stream).await;
    assert!(read.starts_with("HTTP/1.1 502"), "{read:?}");
    // The app got the handshake and nothing after it, until its connection ended.
    let heard = heard_until_closed(&mut seen).await;
    assert_eq!(heard, ["GET /chat HTTP/1.1", "closed"]);
    pair.shutdown();
}

/// `h2c` on a second `Upgrade` line is the hop's, as on the first: the request takes the plain
/// path and the app never sees an upgrade to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_a_second_upgrade_line_is_not_passed_on() {
    let (app, handshakes) = websocket_app().await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app).await;
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {B_AUTHORITY}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\
         Sec-WebSocket-Key: {WEBSOCKET_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (head, _, _) = raw_exchange(pair.a.outbound, &request).await;
    assert!(head.starts_with("HTTP/1.1 426"), "the app saw no upgrade: {head}");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0);
    pair.shutdown();
}

/// `inbound.appTimeout` holds an app's silence on an upgrade as on any request: one that never
/// answers the handshake is a 504, and one that says nothing for that long after its `101` has
/// the connection closed (README, WebSockets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_timeout_holds_its_silence_on_an_upgrade() {
    let (app, _events) = raw_app(|mut stream, _events: tokio::sync::mpsc::UnboundedSender<()>| async move {
        let Some((head, _)) = read_request(&mut stream).await else { return };
        if head.starts_with("GET /switches") {
            let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
        }
        // Then nothing, until the other side lets go.
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await;
    })
    .await;
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |_| {},
        |b| {
            b.inbound.app.0 = app;
            b.inbound.app_timeout = Some("300ms".parse().unwrap());
        },
    )
    .await;
    let (head, body, _) = raw_exchange(pair.a.outbound, &upgrade_request("/silent", "")).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(body.contains("gateway_timeout"), "{body}");
    let mut stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, upgrade_request("/switches", "").as_bytes()).await.unwrap();
    let read = read_until_closed(&mut stream).await;
    assert!(read.starts_with("HTTP/1.1 101"), "{read:?}");
    assert!(read.ends_with("\r\n\r\n"), "nothing after the 101 but the end: {read:?}");
    pair.shutdown();
}

/// A request that is no upgrade of the sidecar's (h2c on a second `Upgrade` line, or HTTP/1.0,
/// straight to B's inbound) reaches an HTTP/1.1 app without its upgrade fields, and an app's 101
/// to it is a 502 that switches nothing: a request B denies sent after it never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_off_the_upgrade_path_opens_no_stream_to_the_app_straight_to_the_inbound() {
    let (app, mut seen) = raw_app(|mut stream, seen: tokio::sync::mpsc::UnboundedSender<String>| async move {
        while let Some((head, _)) = read_request(&mut stream).await {
            let upgrade = head.to_ascii_lowercase().contains("\r\nupgrade:");
            let _ = seen.send(format!("{} upgrade={upgrade}", head.lines().next().unwrap_or_default()));
            let answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
        }
        let _ = seen.send("closed".to_string());
    })
    .await;
    let documents = policy(
        "no-admin",
        "  authorization:\n    default: ALLOW\n    rules:\n      - {name: admin, action: DENY, to: {paths: [\"/admin*\"]}}\n",
    );
    let s = PolicedSidecar::start_with(&documents, |c| c.inbound.app.0 = app).await;
    // HTTP/1.0 cannot upgrade at all: off the upgrade path too.
    for (version, second) in [("HTTP/1.1", "Upgrade: h2c\r\n"), ("HTTP/1.0", "")] {
        let request = format!(
            "GET /chat {version}\r\nHost: {B_AUTHORITY}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{second}\
             Sec-WebSocket-Key: {WEBSOCKET_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n\
             GET /admin/secret HTTP/1.1\r\nHost: {B_AUTHORITY}\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
        let read = read_until_closed(&mut stream).await;
        assert!(read.starts_with("HTTP/1.1 502"), "{version}: {read:?}");
        let heard = heard_until_closed(&mut seen).await;
        assert_eq!(heard, ["GET /chat HTTP/1.1 upgrade=false", "closed"], "{version}: {read:?}");
    }
    s.shutdown();
}

/// An app that ends its upgraded connection with a FIN ends the WebSocket: B closes its side to
/// A (pingora sends no TLS `close_notify`), and A takes that as the end, counted as the 101 it
/// was, not as a failure of the peer (a 502 and an ERROR line at every such close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_the_app_ends_is_no_failure_of_the_peer() {
    let (app, _events) = raw_app(|mut stream, _events: tokio::sync::mpsc::UnboundedSender<()>| async move {
        if read_request(&mut stream).await.is_some() {
            let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        }
    })
    .await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app).await;
    let mut stream = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, upgrade_request("/chat", "").as_bytes()).await.unwrap();
    let read = read_until_closed(&mut stream).await;
    assert!(read.starts_with("HTTP/1.1 101") && read.ends_with("\r\n\r\nbye"), "{read:?}");
    let counted = async |code: &str| {
        let metrics = http_client().get(format!("http://{}/metrics", pair.a.admin)).send().await.unwrap();
        metrics.text().await.unwrap().lines().any(|l| {
            l.starts_with("palisade_requests_total{") && l.contains("direction=\"outbound\"") && l.contains(code)
        })
    };
    wait_for("A counts the upgrade", async || counted("code=\"101\"").await).await;
    assert!(!counted("code=\"502\"").await, "counted as a failure too");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_app_cuts_short_reaches_the_caller_as_begun_and_then_closed() {
    // The app promises 100 bytes, sends 10 and closes. The caller got an empty reply: the head
    // and the 10 bytes sat in A's write buffer (an answer of known length is sent at its end)
    // and went with the connection. Clients take an empty reply for a kept-alive connection
    // closed under them, and some send the request again.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app_addr, _) = raw_app(|mut stream, _: tokio::sync::mpsc::UnboundedSender<()>| async move {
        if read_request(&mut stream).await.is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
        }
    })
    .await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    let mut caller = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    caller.write_all(b"GET /cut HTTP/1.1\r\nHost: orders.shop\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(patience(), caller.read_to_end(&mut answer)).await.expect("closed").unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    let body = &text[text.find("\r\n\r\n").expect("a whole head") + 4..];
    assert!(body.len() < 100 && "0123456789".starts_with(body), "{text:?}");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_hop_by_hop_answer_fields_stay_on_its_hop() {
    // RFC 9110 §7.6.1, as for requests: what the answer's Connection names, and Keep-Alive (the
    // app's timeout, not the sidecar's), never reach the caller; the framing and the rest do.
    use tokio::io::AsyncWriteExt;
    let (app_addr, _) = raw_app(|mut stream, _: tokio::sync::mpsc::UnboundedSender<()>| async move {
        while read_request(&mut stream).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret, content-length\r\nX-Secret: s\r\n\
                          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    let answer = http_client().get(pair.url("/hop")).header("host", B_AUTHORITY).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let headers = answer.headers().clone();
    for gone in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(!headers.contains_key(gone), "{gone}: {headers:?}");
    }
    assert_eq!(headers.get("x-kept").map(|v| v.as_bytes()), Some(&b"k"[..]), "{headers:?}");
    assert_eq!(answer.text().await.unwrap(), "ok");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_both_ways_is_passed_on_chunked_and_its_app_connection_not_reused() {
    // Content-Length beside Transfer-Encoding (RFC 9112 §6.3): the chunked framing wins, and the
    // connection it came on is not trusted with another request.
    use tokio::io::AsyncWriteExt;
    let (app_addr, mut accepted) = raw_app(|mut stream, accepted: tokio::sync::mpsc::UnboundedSender<()>| async move {
        let _ = accepted.send(());
        while read_request(&mut stream).await.is_some() {
            let answer =
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let pair = Pair::start_configured(EchoApp::start().await, |_| {}, |b| b.inbound.app.0 = app_addr).await;
    for _ in 0..2 {
        let answer = http_client().get(pair.url("/twice")).header("host", B_AUTHORITY).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "hello");
    }
    assert_eq!(accepted.recv().await, Some(()));
    assert_eq!(accepted.try_recv(), Ok(()), "the second request had a connection of its own");
    pair.shutdown();
}
