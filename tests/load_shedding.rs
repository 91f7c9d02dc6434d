//! Load shedding (SPEC section 3 `limits.maxInflight`): past the limit of requests in flight a
//! new request is answered 503 with `Retry-After` at once, counted, and the listener recovers as
//! soon as the requests in flight end. Real sidecar, real mTLS client; the app holds requests
//! until the test releases them, so "in flight" is known without timing anything.

mod support;

use std::time::Duration;

use palisade::app::Sidecar;
use palisade::identity::WorkloadFiles;
use support::*;

const MAX_INFLIGHT: usize = 2;

async fn shed(admin: std::net::SocketAddr) -> u64 {
    let text = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    let series = "palisade_requests_shed_total{direction=\"inbound\"} ";
    text.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |v| v.trim().parse().unwrap())
}

/// A sidecar in front of an app that holds `/hold` until released, with `limits.maxInflight`
/// and `limits.maxInflightPerSource` as given; its PKI and a client's certificate.
async fn holding_sidecar(max: usize, per_source: usize) -> (Pki, WorkloadFiles, HoldingApp, Sidecar) {
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let client_files = pki.workload("client", &id("shop", "frontend"));
    let app = HoldingApp::start().await;
    let mut config = sidecar_config(&server, app.addr);
    config.limits.max_inflight = max;
    config.limits.max_inflight_per_source = Some(per_source);
    // The holding app speaks HTTP/1.1 only; the client may pick HTTP/2 (each request a stream).
    config.inbound.app_protocol = palisade::config::AppProtocol::Http1;
    let sidecar = start_sidecar(config);
    (pki, client_files, app, sidecar)
}

/// `n` requests to `url` sent at once, each answered when the app lets it go: their statuses.
fn hold(client: &reqwest::Client, url: &str, n: usize) -> Vec<tokio::task::JoinHandle<reqwest::Result<u16>>> {
    (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_inflight_requests_get_503_with_retry_after_and_service_recovers_when_load_drops() {
    // One client, one source: its share is the whole listener here.
    let (_pki, client_files, app, sidecar) = holding_sidecar(MAX_INFLIGHT, MAX_INFLIGHT).await;
    let client = https_client(Some(&client_files));
    let url = |path: &str| format!("https://{}{path}", sidecar.inbound);

    // Below the limit: served.
    assert_eq!(client.get(url("/ok")).send().await.unwrap().status(), 200);

    // Fill the limit with requests the app holds.
    let held = hold(&client, &url("/hold"), MAX_INFLIGHT);
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

/// One caller may take the listener's requests in flight but the last share of them, which is
/// kept for other callers (outside tester j2: one source's 4,471 held streams made every other
/// caller's request 503). Its next request is shed, counted for it; another source's is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holding_all_but_the_last_share_is_shed_and_other_sources_are_served() {
    const MAX: usize = 6;
    const SHARE: usize = 2;
    const HOG: usize = MAX - SHARE;
    let (_pki, client_files, app, sidecar) = holding_sidecar(MAX, SHARE).await;
    let client_at = |source: [u8; 4]| {
        let mut tls = client_tls(Some(&client_files));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .local_address(std::net::IpAddr::from(source))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let url = |path: &str| format!("https://{}{path}", sidecar.inbound);
    let hog = client_at([127, 0, 0, 1]);
    let held = hold(&hog, &url("/hold"), HOG);
    app.wait_held(HOG).await;
    let over = hog.get(url("/over")).send().await.unwrap();
    assert_eq!(over.status(), 503, "past its share, with only the last share free");
    assert_eq!(over.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(shed(sidecar.admin).await, 1);
    // Other sources: served (each shares the hog's count only if its keyed hash lands in the
    // hog's bucket, 1 in 2048; of eight, one is served unless all eight do).
    let mut served = 0;
    for n in 2..10u8 {
        let status = client_at([127, 0, 0, n]).get(url("/ok")).send().await.unwrap().status();
        assert!(status == 200 || status == 503, "{status}");
        served += usize::from(status == 200);
    }
    assert!(served >= 1, "no other source was served");
    app.release(HOG);
    for task in held {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    assert_eq!(hog.get(url("/after")).send().await.unwrap().status(), 200, "its slots back");
    sidecar.shutdown();
}
