//! `limits.http2` through a real sidecar, with a real HTTP/2 client (the h2 crate) over mutual
//! TLS: the concurrent-stream limit is what the sidecar advertises, a header list over
//! `maxHeaderListBytes` is refused, and a client that resets its streams faster than
//! `maxResetsPerSecond` loses its connection (counted), while one that does not keeps it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::*;

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
        c.limits.http2.max_resets_per_second = 10;
    })
    .await
}

/// An HTTP/2 connection to the sidecar's inbound port, and the task driving it.
async fn h2(s: &Single) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let mut tls = client_tls(Some(&s.client));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("orders.shop").unwrap(), tcp)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    (client, tokio::spawn(connection))
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

    // Rapid reset: streams opened and cancelled at once, up to 200 of them (the limit is 10 a second).
    let (client, connection) = h2(&s).await;
    for i in 0..200 {
        let Ok(mut ready) = client.clone().ready().await else { break };
        let Ok((_, mut body)) = ready.send_request(get(&format!("/reset/{i}")).map(|_| ()), false) else { break };
        body.send_reset(h2::Reason::CANCEL);
    }
    let ended = tokio::time::timeout(BOUND, connection).await.expect("the sidecar closed the connection");
    assert!(ended.unwrap().is_err(), "closed under the client, not by it");
    wait_for("the closure counted", async || series(s.sidecar.admin, RAPID_RESETS).await == 1).await;
    // Another connection is served.
    let (client, _connection) = h2(&s).await;
    assert_eq!(send(&client, get("/fresh")).await, 200);
}
