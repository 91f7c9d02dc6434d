//! Local rate limits through a real sidecar: burst, refill, isolation, the 429 and its headers,
//! and a flood of distinct keys that does not stay in memory.

mod support;

use support::*;

const LIMITS: &str = r#"  rateLimits:
    - {name: per-caller, match: {methods: [GET], paths: ["/api*"]}, key: source.principal, rate: 1, per: 10s, burst: 3}
    - {name: everyone, match: {paths: ["/global*"]}, key: global, rate: 10, per: 3600s, burst: 10}
    - {name: per-key, match: {paths: ["/keyed*"]}, key: "request.headers[x-api-key]", rate: 1, per: 60s, burst: 2}
    - {name: per-ip, match: {paths: ["/ip*"]}, key: source.ip, rate: 1, per: 60s, burst: 1}
"#;

async fn admitted(
    s: &PolicedSidecar,
    caller: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if s.send(caller, method, path, headers).await.status == 200 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_refill_with_standard_headers() {
    let s = PolicedSidecar::start(&policy("limits", LIMITS)).await;
    assert_eq!(admitted(&s, "frontend", "GET", "/api/x", &[], 3).await, 3, "the burst");
    let refused = s.send("frontend", "GET", "/api/x", &[]).await;
    assert_eq!(refused.status, 429);
    // One token every 10 s: the next comes within 10 s, sooner the longer the burst took.
    let wait: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    assert_eq!(refused.header("ratelimit-policy"), Some(r#""per-caller";q=1;w=10"#));
    assert_eq!(refused.header("ratelimit"), Some(format!(r#""per-caller";r=0;t={wait}"#).as_str()));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert!(refused.body.contains(r#""error":"rate_limited""#), "{}", refused.body);

    // Isolated: another principal has its own bucket; another method is not limited.
    assert_eq!(admitted(&s, "billing", "GET", "/api/x", &[], 3).await, 3);
    assert_eq!(admitted(&s, "frontend", "POST", "/api/x", &[], 5).await, 5);

    // Tokens come back (at exactly the rate, capped at the burst: policy::ratelimit's tests,
    // on a clock of their own).
    let refilled = eventually(async || s.send("frontend", "GET", "/api/x", &[]).await.status == 200).await;
    assert!(refilled, "the bucket refills");

    let metrics = s.metrics().await;
    assert!(
        metrics.contains(
            r#"palisade_ratelimit_decisions_total{limit="per-caller",policy="shop/limits",result="limited"}"#
        ),
        "{metrics}"
    );
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_is_shared_and_keyed_limits_are_not() {
    let s = PolicedSidecar::start(&policy("limits", LIMITS)).await;
    let a = admitted(&s, "frontend", "GET", "/global", &[], 8).await;
    let b = admitted(&s, "billing", "GET", "/global", &[], 8).await;
    let c = admitted(&s, "plain", "GET", "/global", &[], 4).await;
    // A token comes back every six minutes: however slow the machine, none refills in the test.
    assert_eq!(a + b + c, 10, "one shared bucket of 10: {a}+{b}+{c}");

    assert_eq!(admitted(&s, "plain", "GET", "/keyed", &[("x-api-key", "k1")], 4).await, 2);
    assert_eq!(admitted(&s, "plain", "GET", "/keyed", &[("x-api-key", "k2")], 4).await, 2);
    assert_eq!(admitted(&s, "plain", "GET", "/keyed", &[], 4).await, 2, "requests without the header share a bucket");

    assert_eq!(admitted(&s, "plain", "GET", "/ip", &[], 3).await, 1, "per source IP");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keys_are_forgotten() {
    let limits =
        "  rateLimits:\n    - {name: per-key, key: \"request.headers[x-api-key]\", rate: 50, per: 1s, burst: 5}\n";
    let s = PolicedSidecar::start(&policy("flood", limits)).await;
    // 3,000 distinct keys, sent 16 at a time.
    let sidecar = &s;
    let mut sent = 0;
    for batch in 0..(3000 / 16) {
        let requests = (0..16).map(|i| {
            let key = format!("key-{batch}-{i}");
            async move { sidecar.send("plain", "GET", "/", &[("x-api-key", key.as_str())]).await.status }
        });
        for status in futures::future::join_all(requests).await {
            assert_eq!(status, 200);
            sent += 1;
        }
    }
    assert!(sent >= 2990);
    let keys = |dump: serde_json::Value| dump["policy"]["rateLimitKeys"].as_u64().unwrap();
    let live = keys(s.config_dump().await);
    assert!(live > 0, "buckets exist while the keys are fresh");
    // A bucket of 5 at 50/s is full again after 0.1 s; the reload loop forgets it within ~1 s.
    let forgotten = eventually(|| async { keys(s.config_dump().await) == 0 }).await;
    assert!(forgotten, "idle buckets are dropped (was {live})");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_spends_no_token_of_a_later_limit() {
    let limits = "  rateLimits:\n    - {name: per-key, key: \"request.headers[x-api-key]\", rate: 1, per: 60s, burst: 1}\n    - {name: everyone, key: global, rate: 1, per: 60s, burst: 5}\n";
    let s = PolicedSidecar::start(&policy("order", limits)).await;
    // One noisy key: one request through, then refused by its own limit only.
    assert_eq!(admitted(&s, "plain", "GET", "/", &[("x-api-key", "noisy")], 10).await, 1);
    // The shared bucket still holds the other four tokens for everyone else.
    for key in ["a", "b", "c", "d"] {
        assert_eq!(s.send("plain", "GET", "/", &[("x-api-key", key)]).await.status, 200, "{key}");
    }
    assert_eq!(s.send("plain", "GET", "/", &[("x-api-key", "e")]).await.status, 429, "now the global limit is spent");
    s.shutdown();
}

/// One response off a keep-alive HTTP/1.1 connection: its head, and its body by Content-Length.
async fn one_response(stream: &mut MtlsStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(patience(), stream.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before an answer: {}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&read[..head_end]).to_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    while read.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside the body");
        read.extend_from_slice(&chunk[..n]);
    }
    (head, String::from_utf8_lossy(&read[head_end..head_end + length]).to_string())
}

/// A caller over a limit keeps its HTTP/1.1 connection (as nginx keeps it), so it need not
/// handshake again; a refused request with a body, whose bytes the next parse would read as a
/// request, closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_a_request_without_a_body_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = PolicedSidecar::start(&policy("limits", LIMITS)).await;
    let mut stream = s.http1_connection("frontend").await;
    let get = b"GET /ip/x HTTP/1.1\r\nhost: orders.shop\r\n\r\n";
    let mut statuses = Vec::new();
    for _ in 0..3 {
        stream.write_all(get).await.unwrap();
        let (head, body) = one_response(&mut stream).await;
        assert!(!head.contains("connection: close"), "{head}");
        statuses.push(head[9..12].to_string());
        if statuses.len() > 1 {
            assert!(body.contains("rate_limited"), "{body}");
        }
    }
    assert_eq!(statuses, ["200", "429", "429"], "three answers on one connection");
    // Refused with its body unread: the connection ends with the answer.
    stream.write_all(b"POST /ip/x HTTP/1.1\r\nhost: orders.shop\r\ncontent-length: 5\r\n\r\nhello").await.unwrap();
    let (head, _) = one_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 429") && head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(patience(), stream.read_to_end(&mut rest)).await.expect("closed");
    assert!(n.is_err() || rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    s.shutdown();
}
