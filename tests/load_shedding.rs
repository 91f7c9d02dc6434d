//! Load shedding (SPEC section 3 `limits.maxInflight`): past the limit of requests in flight a
//! new request is answered 503 with `Retry-After` at once, counted, and the listener recovers as
//! soon as the requests in flight end. Real sidecar, real mTLS client; the app holds requests
//! until the test releases them, so "in flight" is known without timing anything.

mod support;

use std::time::Duration;

use support::*;

const MAX_INFLIGHT: usize = 2;

async fn shed(admin: std::net::SocketAddr) -> u64 {
    let text = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    let series = "palisade_requests_shed_total{direction=\"inbound\"} ";
    text.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_inflight_requests_get_503_with_retry_after_and_service_recovers_when_load_drops() {
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let client_files = pki.workload("client", &id("shop", "frontend"));
    let app = HoldingApp::start().await;
    let mut config = sidecar_config(&server, app.addr);
    config.limits.max_inflight = MAX_INFLIGHT;
    // The holding app speaks HTTP/1.1 only; the client may pick HTTP/2 (each request a stream).
    config.inbound.app_protocol = palisade::config::AppProtocol::Http1;
    let sidecar = start_sidecar(config);
    let client = https_client(Some(&client_files));
    let url = |path: &str| format!("https://{}{path}", sidecar.inbound);

    // Below the limit: served.
    assert_eq!(client.get(url("/ok")).send().await.unwrap().status(), 200);

    // Fill the limit with requests the app holds.
    let held: Vec<_> = (0..MAX_INFLIGHT)
        .map(|_| {
            let (client, url) = (client.clone(), url("/hold"));
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    app.wait_held(MAX_INFLIGHT).await;

    // Over it: 503 at once, with Retry-After, never reaching the app. Bounded: five requests.
    for i in 0..5 {
        let started = std::time::Instant::now();
        let response = client.get(url(&format!("/over/{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 503, "request {i} over the limit");
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.text().await.unwrap();
        assert!(body.contains("\"error\":\"unavailable\""), "{body}");
        assert!(started.elapsed() < Duration::from_secs(5), "shed at once, not queued");
    }
    assert_eq!(app.held.load(std::sync::atomic::Ordering::SeqCst), MAX_INFLIGHT, "shed requests never reached the app");
    assert_eq!(shed(sidecar.admin).await, 5);

    // Load drops: the held requests finish, and the next request is served at once.
    app.release(MAX_INFLIGHT);
    for task in held {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    assert_eq!(client.get(url("/after")).send().await.unwrap().status(), 200, "recovered");
    assert_eq!(shed(sidecar.admin).await, 5);
    sidecar.shutdown();
}
