//! `limits.http2` through a real sidecar, with a real HTTP/2 client (the h2 crate) over mutual
//! TLS: the concurrent-stream limit is what the sidecar advertises, a header list over
//! `maxHeaderListBytes` is refused, and a client that resets its streams faster than
//! `maxResetsPerSecond` loses its connection (counted), while one that does not keeps it.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOUND: Duration = Duration::from_secs(15);

async fn series(admin: std::net::SocketAddr, series: &str) -> u64 {
    let text = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map_or(0, |v| v.trim().parse().unwrap())
}

const RAPID_RESETS: &str = r#"palisade_connections_closed_total{direction="inbound",reason="rapid_reset"}"#;

async fn start() -> Single {
    Single::start(|c| {
        c.limits.http2.max_concurrent_streams = 7;
        c.limits.http2.max_header_list_bytes = 4096;
        // Ten a second for this test's client, which proves a mesh identity (such a connection
        // may carry ten times the limit): past it before h2's own guard on streams reset before
        // they are accepted (20) closes the connection, whatever the machine's speed.
        c.limits.http2.max_resets_per_second = 1;
    })
    .await
}

/// A connection's preface and 200 streams each opened and reset at once, as raw frames to be
/// written in one go (CVE-2023-44487).
fn reset_flood() -> Vec<u8> {
    let mut flood = H2_PREFACE.to_vec();
    flood.extend(h2_frame(0x4, 0, 0, &[]));
    // GET https://orders.shop/ in HPACK: three static entries and a literal authority.
    let mut head = vec![0x82, 0x87, 0x84, 0x01, 11];
    head.extend_from_slice(b"orders.shop");
    for stream in (1..400u32).step_by(2) {
        flood.extend(h2_frame(0x1, 0x4 | 0x1, stream, &head)); // HEADERS, END_HEADERS | END_STREAM
        flood.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
    }
    flood
}

/// An HTTP/2 connection to the sidecar's inbound port, and the task driving it.
async fn h2(s: &Single) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let (client, connection) = h2::client::handshake(tls_h2(s).await).await.unwrap();
    (client, tokio::spawn(connection))
}

async fn tls_h2(s: &Single) -> MtlsStream {
    mtls_stream(s.sidecar.inbound, &s.client, b"h2").await.unwrap()
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("https://orders.shop{path}")).body(()).unwrap()
}

/// Sends a bodiless request on the connection: the answer's status.
async fn send(client: &h2::client::SendRequest<bytes::Bytes>, request: http::Request<()>) -> u16 {
    let mut ready = client.clone().ready().await.unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    tokio::time::timeout(BOUND, response).await.expect("answered").unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_advertised_and_a_long_header_list_is_refused() {
    let s = start().await;
    let (client, _connection) = h2(&s).await;
    assert_eq!(send(&client, get("/ok")).await, 200);
    // The SETTINGS the sidecar sent, as the client took them.
    assert_eq!(client.current_max_send_streams(), 7);
    let long = http::Request::get("https://orders.shop/long").header("x-padding", "a".repeat(5000)).body(()).unwrap();
    assert_eq!(send(&client, long).await, 431, "a header list over maxHeaderListBytes");
    assert_eq!(send(&client, get("/after")).await, 200, "the connection goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_streams_faster_than_the_limit_loses_its_connection() {
    let s = start().await;
    // Legitimate use first: many requests, none reset, on one connection.
    let (client, connection) = h2(&s).await;
    for i in 0..30 {
        assert_eq!(send(&client, get(&format!("/ok/{i}"))).await, 200);
    }
    assert!(!connection.is_finished());
    assert_eq!(series(s.sidecar.admin, RAPID_RESETS).await, 0);

    // Rapid reset: streams opened and cancelled at once, up to 200 of them (the limit is 10 a second
    // for this client).
    let (client, connection) = h2(&s).await;
    for i in 0..200 {
        let Ok(mut ready) = client.clone().ready().await else { break };
        let Ok((_, mut body)) = ready.send_request(get(&format!("/reset/{i}")).map(|_| ()), false) else { break };
        body.send_reset(h2::Reason::CANCEL);
    }
    let ended = tokio::time::timeout(BOUND, connection).await.expect("the sidecar closed the connection");
    assert!(ended.unwrap().is_err(), "closed under the client, not by it");
    wait_for("the closure counted", async || series(s.sidecar.admin, RAPID_RESETS).await == 1).await;

    // The same flood as raw frames, all written before anything is read (h2's client stops at
    // its first write error, before it reads what came): the sidecar says why it closes, with
    // a GOAWAY(ENHANCE_YOUR_CALM) naming the last stream it saw opened, as the 2023 advisories
    // have servers do.
    let mut tls = tls_h2(&s).await;
    let flood = reset_flood();
    // The sidecar may close before it has read it all: what it said is read either way.
    let _ = tls.write_all(&flood).await;
    let _ = tls.flush().await;
    let mut said = Vec::new();
    let read =
        tokio::time::timeout(BOUND, tls.read_to_end(&mut said)).await.expect("the sidecar closed the connection");
    assert!(read.is_ok(), "a clean close (TLS close_notify), not a truncated one: {read:?}");
    let (last, code) = h2_goaway(&said).unwrap_or_else(|| panic!("no GOAWAY in {said:?}"));
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    assert!(last % 2 == 1 && last < 400, "the last stream opened, {last}");
    wait_for("the second closure counted", async || series(s.sidecar.admin, RAPID_RESETS).await == 2).await;
    // Another connection is served.
    let (client, _connection) = h2(&s).await;
    assert_eq!(send(&client, get("/fresh")).await, 200);
}

/// An `:authority` is held to what a Host is (one host, no empty labels, no percent-encoding):
/// `evil.shop..` is `evil.shop` to routers that drop empty labels, not to a policy's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_that_is_not_one_host_is_refused() {
    let s = start().await;
    let (client, _connection) = h2(&s).await;
    let mut sent = Vec::new();
    for authority in ["evil.shop..", "evil..shop", ".evil.shop", "evil%2eshop:8080"] {
        // Some of these the http crate will not put in a URI; other clients send them.
        let Ok(request) = http::Request::get(format!("https://{authority}/x")).body(()) else { continue };
        assert_eq!(send(&client, request).await, 400, "{authority}");
        sent.push(authority);
    }
    assert!(sent.contains(&"evil.shop..") && sent.contains(&"evil..shop"), "{sent:?}");
    // Without `:authority`, the `host` field is what the policy reads: held to the same form.
    // (h2's client puts the URI's authority in `:authority`; a relative URI leaves it out.)
    for (host, status) in [("evil.shop..", 400), ("orders.shop:080", 400), ("orders.shop", 200)] {
        let request = http::Request::get("/x").header("host", host).body(()).unwrap();
        assert_eq!(send(&client, request).await, status, "host {host}");
    }
    for authority in ["orders.shop", "orders.shop.", "orders.shop:8080", "[::1]:8080"] {
        let request = http::Request::get(format!("https://{authority}/x")).body(()).unwrap();
        assert_eq!(send(&client, request).await, 200, "{authority}");
    }
}

/// h2's own guard (streams the peer reset before the server accepted them, 20 at most) closes
/// a connection flooded faster than the sidecar's count sees: that closure is counted too, as
/// `http2_abuse` (outside tester j2: the classic CVE-2023-44487 flood, everything in one write,
/// left no metric and no event, and a warning line per connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_h2_itself_closes_is_counted() {
    let s = Single::start(|c| c.limits.http2.max_resets_per_second = 100_000).await;
    let mut tls = tls_h2(&s).await;
    let _ = tls.write_all(&reset_flood()).await;
    let _ = tls.flush().await;
    let mut said = Vec::new();
    let _ = tokio::time::timeout(BOUND, tls.read_to_end(&mut said)).await.expect("the connection closed");
    let (_, code) = h2_goaway(&said).unwrap_or_else(|| panic!("no GOAWAY in {said:?}"));
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM, h2's");
    let abuse = r#"palisade_connections_closed_total{direction="inbound",reason="http2_abuse"}"#;
    wait_for("the closure counted", async || series(s.sidecar.admin, abuse).await == 1).await;
    assert_eq!(series(s.sidecar.admin, RAPID_RESETS).await, 0, "not the sidecar's own count");
}
