//! `limits.bodyTimeout`, `limits.sendTimeout` and `limits.maxConnectionsPerSource` through real
//! sidecars (issue 16): a request whose body stops arriving fails with 408 and its connection
//! closes, on both listeners and over HTTP/1.1 and HTTP/2, counted; a body that keeps coming,
//! however slowly, is not cut; a caller that stops reading its answer is cut off, counted, and
//! holds up no other request between the sidecars; every HTTP/2 stream gets room for its body
//! of its own; a body that follows an app's early answer ends its stream without a reset; one
//! source address past its connection limit is closed at accept while another is served. Raw TCP, raw mTLS and an h2 client, so nothing between the test and the sidecar
//! finishes a body on its own.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade::config::{HumanDuration, ListenAddr};
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// Far above the timeout: an answer that has not come by then was not made by it.
const BOUND: Duration = Duration::from_secs(15);

/// A head announcing a 100-byte body and the first 10 bytes of it; the other 90 never come.
const STALLED: &[u8] =
    b"POST /upload HTTP/1.1\r\nhost: orders.shop\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n0123456789";

async fn series(admin: SocketAddr, series: &str) -> u64 {
    let text = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map_or(0, |v| v.trim().parse().unwrap())
}

fn closed(direction: &str, reason: &str) -> String {
    format!("palisade_connections_closed_total{{direction=\"{direction}\",reason=\"{reason}\"}}")
}

/// Writes `request`, then reads until the sidecar closes the connection (at most BOUND): what
/// it answered, and how long after the write the connection closed.
async fn stall<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> (String, Duration) {
    stream.write_all(request).await.unwrap();
    stream.flush().await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await.expect("closed within the bound") {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&out).to_string(), started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn assert_timed_out(answer: &str, elapsed: Duration, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer:?}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json") && lower.contains("x-request-id:"), "{what}: {answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{what}: {answer}");
    assert!(elapsed >= BODY_TIMEOUT - Duration::from_millis(100), "{what}: answered after {elapsed:?}");
}

async fn mtls(addr: SocketAddr, client: &palisade::identity::WorkloadFiles, alpn: &[u8]) -> TlsStream {
    mtls_stream(addr, client, alpn).await.unwrap()
}

type TlsStream = MtlsStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http1_body_gets_408_and_the_connection_closes_on_both_listeners() {
    // Outbound: the app's plaintext HTTP/1.1, on its way to the peer (whose own timeout is
    // longer, so only this hop's is tested).
    let pair =
        Pair::start_configured(EchoApp::start().await, |a| a.limits.body_timeout = HumanDuration(BODY_TIMEOUT), |_| {})
            .await;
    let outbound = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let (answer, elapsed) = stall(outbound, STALLED).await;
    assert_timed_out(&answer, elapsed, "outbound");
    assert_eq!(series(pair.a.admin, &closed("outbound", "body_timeout")).await, 1);
    pair.shutdown();

    // Inbound: an HTTP/1.1 caller over mutual TLS.
    let s = Single::start(|c| c.limits.body_timeout = HumanDuration(BODY_TIMEOUT)).await;
    let inbound = mtls(s.sidecar.inbound, &s.client, b"http/1.1").await;
    let (answer, elapsed) = stall(inbound, STALLED).await;
    assert_timed_out(&answer, elapsed, "inbound");
    assert_eq!(series(s.sidecar.admin, &closed("inbound", "body_timeout")).await, 1);
}

/// An HTTP/2 caller over mutual TLS to a sidecar whose app speaks HTTP/1.1.
async fn h2_caller(s: &Single) -> h2::client::SendRequest<bytes::Bytes> {
    let tls = mtls(s.sidecar.inbound, &s.client, b"h2").await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
}

async fn read_all(body: &mut h2::RecvStream) -> String {
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&text).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_gets_408_on_its_stream() {
    let s = Single::start(|c| {
        c.limits.body_timeout = HumanDuration(BODY_TIMEOUT);
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1;
    })
    .await;
    // A small declared body (read whole before the app sees the request), a large one and one
    // of no declared length (both passed to the app as they arrive), and both sizes again with
    // `Expect: 100-continue`: each stalls after 10 bytes.
    let cases = [
        ("small declared", Some("100"), false),
        ("large declared", Some("1000000"), false),
        ("undeclared", None, false),
        ("small declared, expecting 100-continue", Some("100"), true),
        ("large declared, expecting 100-continue", Some("1000000"), true),
    ];
    for (n, (what, length, expect)) in cases.into_iter().enumerate() {
        let mut client = h2_caller(&s).await;
        let mut request = http::Request::post("https://orders.shop/upload").header("content-type", "text/plain");
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        if expect {
            request = request.header("expect", "100-continue");
        }
        let (response, mut body) = client.send_request(request.body(()).unwrap(), false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"0123456789"), false).unwrap();
        let started = Instant::now();
        let response = tokio::time::timeout(BOUND, response).await.expect(what).unwrap();
        assert_eq!(response.status(), 408, "{what}");
        assert!(
            started.elapsed() >= BODY_TIMEOUT - Duration::from_millis(100),
            "{what}: after {:?}",
            started.elapsed()
        );
        let text = read_all(&mut response.into_body()).await;
        assert!(text.contains(r#""error":"request_timeout""#), "{what}: {text}");
        assert_eq!(series(s.sidecar.admin, &closed("inbound", "body_timeout")).await, n as u64 + 1, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_http2_body_of_no_declared_length_reaches_the_app_whole() {
    let s = Single::start(|c| c.inbound.app_protocol = palisade::config::AppProtocol::Http1).await;
    let mut client = h2_caller(&s).await;
    let request = http::Request::post("https://orders.shop/upload").body(()).unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // 300 pieces of 1 KiB, far past what the sidecar reads whole (h2 sends them as the
    // window allows).
    let piece = bytes::Bytes::from(vec![b'x'; 1024]);
    for i in 0..300 {
        body.send_data(piece.clone(), i == 299).unwrap();
    }
    let response = tokio::time::timeout(BOUND, response).await.expect("answered").unwrap();
    assert_eq!(response.status(), 200);
    let text = read_all(&mut response.into_body()).await;
    assert!(text.contains(r#""body_bytes":307200"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_with_expect_100_continue_reaches_the_app_whole() {
    let s = Single::start(|c| c.inbound.app_protocol = palisade::config::AppProtocol::Http1).await;
    // Read whole by the sidecar first, and passed on as it arrives (the app answers the
    // `Expect` itself then; its interim answer goes no further).
    for size in [100usize, 200 * 1024] {
        let mut client = h2_caller(&s).await;
        let request = http::Request::post("https://orders.shop/upload")
            .header("content-length", size.to_string())
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from(vec![b'x'; size]), true).unwrap();
        let response = tokio::time::timeout(BOUND, response).await.expect("answered").unwrap();
        assert_eq!(response.status(), 200, "{size} bytes");
        let text = read_all(&mut response.into_body()).await;
        assert!(text.contains(&format!(r#""body_bytes":{size}"#)), "{size} bytes: {text}");
    }
}

/// An app that answers `413` as soon as it has a request head, without reading the body, and
/// keeps the connection: the sidecar must not pool it, as the rest of the body would be read as
/// the next request. Counts the connections it accepted.
async fn refusing_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
                if conn.write_all(answer).await.is_err() {
                    return;
                }
                // Reads (and drops) whatever else comes, until the sidecar closes.
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_answers_before_the_streamed_body_ends_is_heard_and_its_connection_not_reused() {
    let (app, accepted) = refusing_app().await;
    let s = Single::start(|c| {
        c.inbound.app = palisade::config::ListenAddr(app);
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1;
    })
    .await;
    let mut client = h2_caller(&s).await;
    for i in 1..=2 {
        let request = http::Request::post("https://orders.shop/upload").body(()).unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        // A first piece of an unannounced body; the rest would follow, were it wanted.
        body.send_data(bytes::Bytes::from(vec![b'x'; 100 * 1024]), false).unwrap();
        let response = tokio::time::timeout(BOUND, response).await.expect("answered").unwrap();
        assert_eq!(response.status(), 413, "request {i}");
        assert_eq!(read_all(&mut response.into_body()).await, "big!", "request {i}");
        client = client.ready().await.unwrap();
        // Each request had a connection of its own: the first, left mid-body, was not reused.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), i, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_keeps_coming_is_not_cut_however_long_it_takes_in_all() {
    // The timeout is for silence: five pieces, each well within it, take longer in all.
    let s = Single::start(|c| c.limits.body_timeout = HumanDuration(Duration::from_secs(3))).await;
    let mut inbound = mtls(s.sidecar.inbound, &s.client, b"http/1.1").await;
    inbound
        .write_all(b"POST /upload HTTP/1.1\r\nhost: orders.shop\r\ncontent-length: 5\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // The client's pace, not a wait for the sidecar: a byte every 700 ms.
    let mut pace = tokio::time::interval(Duration::from_millis(700));
    for byte in b"abcde" {
        pace.tick().await;
        inbound.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, inbound.read_to_end(&mut answer)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""body_bytes":5"#), "{answer}");
    assert_eq!(series(s.sidecar.admin, &closed("inbound", "body_timeout")).await, 0);
}

/// Connects from `source` (a loopback address) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A mutual TLS handshake from `source` (a loopback address): whether it completed.
async fn handshake_from(source: &str, s: &Single) -> Option<TlsStream> {
    let tcp = connect_from(source, s.sidecar.inbound).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(Some(&s.client))));
    let mut tls = connector.connect(ServerName::try_from("orders.shop").unwrap(), tcp).await.ok()?;
    // TLS 1.3: the client's side is done before the server's; a closed connection shows on use.
    tls.write_all(b"GET /ok HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.ok()?;
    let mut buf = [0u8; 12];
    tokio::time::timeout(BOUND, tls.read_exact(&mut buf)).await.ok()?.ok()?;
    buf.starts_with(b"HTTP/1.1 200").then_some(tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_past_its_connection_limit_is_closed_at_accept_and_others_are_served() {
    const PER_SOURCE: usize = 2;
    let s = Single::start(|c| {
        c.limits.max_connections_per_source = PER_SOURCE;
        // The held connections stay for the whole test.
        c.limits.header_timeout = HumanDuration(Duration::from_secs(60));
    })
    .await;
    // Connections that were served and stay open (keep-alive).
    let mut held = Vec::new();
    for _ in 0..PER_SOURCE {
        held.push(handshake_from("127.0.0.1", &s).await.expect("served below the limit"));
    }
    // One more from the same address is closed at accept: no handshake, counted.
    assert!(handshake_from("127.0.0.1", &s).await.is_none(), "past the source's limit");
    wait_for("the refusal counted", async || series(s.sidecar.admin, &closed("inbound", "source_limit")).await >= 1)
        .await;
    // Another source is not limited by this one's connections.
    assert!(handshake_from("127.0.0.2", &s).await.is_some(), "another source is served");
    // A connection of the limited source ends: it gets its place back.
    drop(held.pop());
    wait_for("a place for the source again", async || handshake_from("127.0.0.1", &s).await.is_some()).await;

    // The outbound listener's one caller is the pod's own app: not limited per source.
    let mut outbound = Vec::new();
    for _ in 0..PER_SOURCE + 2 {
        outbound.push(connect_from("127.0.0.1", s.sidecar.outbound).await);
    }
    for stream in outbound.iter_mut() {
        // No route there: a 502, but an answer, not a connection closed at accept.
        stream.write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:9\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(BOUND, stream.read_to_end(&mut answer)).await.expect("answered").unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 "), "answered, not closed at accept");
    }
    assert_eq!(series(s.sidecar.admin, &closed("outbound", "source_limit")).await, 0);
    drop(held);
}

const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Far more than the socket buffers, the windows and the sidecar's pieces between the app and a
/// caller that stopped reading can hold: the answer cannot all be sent without the caller.
const LARGE_ANSWER: usize = 64 << 20;

/// Asks over HTTP/1.1 for a large answer, reads its first bytes and then nothing until the
/// sidecar has counted the request cut off (`series` on `admin`); then reads what was left in the
/// buffers: the connection must end, well short of the whole answer.
async fn stop_reading<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, admin: SocketAddr, series_name: &str) {
    let request = format!("GET /bytes/{LARGE_ANSWER} HTTP/1.1\r\nhost: orders.shop\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let first = tokio::time::timeout(BOUND, stream.read(&mut buf)).await.expect("answer started").unwrap();
    assert!(String::from_utf8_lossy(&buf[..first]).starts_with("HTTP/1.1 200"), "{series_name}");
    assert!(eventually(async || series(admin, series_name).await == 1).await, "{series_name} never counted");
    let mut total = first;
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await.expect("the connection ended") {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < LARGE_ANSWER, "{series_name}: the whole answer came ({total} bytes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_is_cut_off_on_both_listeners() {
    // Outbound: the app's plaintext HTTP/1.1; the answer comes from the peer.
    let pair =
        Pair::start_configured(EchoApp::start().await, |a| a.limits.send_timeout = HumanDuration(SEND_TIMEOUT), |_| {})
            .await;
    let outbound = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    stop_reading(outbound, pair.a.admin, &closed("outbound", "send_timeout")).await;
    pair.shutdown();

    // Inbound: an HTTP/1.1 caller over mutual TLS, then an HTTP/2 one whose stream is reset while
    // its connection stays for other streams.
    let s = Single::start(|c| c.limits.send_timeout = HumanDuration(SEND_TIMEOUT)).await;
    let inbound = mtls(s.sidecar.inbound, &s.client, b"http/1.1").await;
    let series_name = closed("inbound", "send_timeout");
    stop_reading(inbound, s.sidecar.admin, &series_name).await;

    let mut client = h2_caller(&s).await;
    let request = http::Request::get(format!("https://orders.shop/bytes/{LARGE_ANSWER}")).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(BOUND, response).await.expect("answered").unwrap();
    assert_eq!(response.status(), 200);
    // Nothing is read (no window given back) until the sidecar has given up on the stream.
    let mut body = response.into_body();
    assert!(eventually(async || series(s.sidecar.admin, &series_name).await == 2).await, "h2 never counted");
    let mut total = 0;
    let reset = loop {
        match tokio::time::timeout(BOUND, body.data()).await.expect("the stream ended") {
            Some(Ok(chunk)) => {
                total += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly after {total} bytes"),
        }
    };
    assert!(reset.is_reset(), "{reset}");
    assert!(total < LARGE_ANSWER, "{total}");
    // The connection serves on.
    let (response, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(http::Request::get("https://orders.shop/ok").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(tokio::time::timeout(BOUND, response).await.expect("answered").unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_stops_reading_one_answer_holds_up_no_other_request_to_the_peer() {
    // Requests from A to B share one HTTP/2 connection: what one stalled answer keeps of the
    // connection's flow-control window must leave the rest of it to the others.
    let pair = Pair::start().await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut download = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
        let request = format!("GET /bytes/{LARGE_ANSWER} HTTP/1.1\r\nhost: {B_AUTHORITY}\r\n\r\n");
        download.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 1024];
        let n = tokio::time::timeout(BOUND, download.read(&mut head)).await.expect("answer started").unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head[..n]));
        // Read no more of it.
        stalled.push(download);
    }
    for i in 0..5 {
        let request = http_client().get(pair.url(&format!("/ok?n={i}"))).header("host", B_AUTHORITY);
        let response =
            tokio::time::timeout(BOUND, request.send()).await.expect("answered while the downloads stall").unwrap();
        assert_eq!(response.status(), 200);
    }
    drop(stalled);
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_http2_stream_gets_room_for_its_body_of_its_own() {
    // A body the app stops taking keeps its stream's window; the connection's must leave room
    // for the other streams' bodies (with h2's default of 64 KiB for both, one stalled upload
    // stopped every other upload on the connection). Room is granted from the windows the
    // sidecar advertised, before any byte is sent.
    let s = Single::start(|_| {}).await;
    let mut client = h2_caller(&s).await;
    let mut streams = Vec::new();
    for i in 0..4 {
        let request = http::Request::post(format!("https://orders.shop/upload?n={i}")).body(()).unwrap();
        let (_, mut body) = client.send_request(request, false).unwrap();
        body.reserve_capacity(1 << 20);
        streams.push(body);
        client = client.ready().await.unwrap();
    }
    // What each stream may send now, granted by the connection task as the windows allow.
    let room = || streams.iter().map(|body| body.capacity()).sum::<usize>();
    assert!(eventually(async || room() >= 4 * 256 * 1024).await, "four streams were granted {} bytes in all", room());
}

/// An app that answers `413` as soon as it has a request head, as nginx or Go's server may,
/// and then reads and drops the body, ready for the next request on the connection.
async fn early_refusing_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut piece = vec![0u8; 65536];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut piece).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&piece[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!").await.is_err()
                    {
                        return;
                    }
                    buf.drain(..end + 4);
                    let mut left = length.saturating_sub(buf.len());
                    buf.drain(..length.min(buf.len()));
                    while left > 0 {
                        match conn.read(&mut piece).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if n <= left => left -= n,
                            Ok(n) => {
                                buf.extend_from_slice(&piece[left..n]);
                                left = 0;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The next frame's kind, flags and stream.
async fn next_frame(tls: &mut TlsStream, buf: &mut Vec<u8>) -> (u8, u8, u32) {
    loop {
        if buf.len() >= 9 {
            let length = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() >= 9 + length {
                let found = (buf[3], buf[4], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff);
                buf.drain(..9 + length);
                return found;
            }
        }
        let mut piece = [0u8; 16384];
        let n = tokio::time::timeout(BOUND, tls.read(&mut piece)).await.expect("a frame").unwrap();
        assert!(n > 0, "the sidecar closed the connection");
        buf.extend_from_slice(&piece[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_follows_the_apps_early_answer_ends_its_stream_cleanly() {
    // A peer sidecar's upload whose app answered from the head (as nginx or Go's server may):
    // the rest of the body, near behind, is read and dropped and the stream ends without a
    // reset. Reset at the answer instead, the rest arrives for a stream h2 may have forgotten
    // (under load, past the 50 it remembers a second), each DATA frame an error it counts:
    // past 1,024 it closed the connection between the sidecars with every request on it (seen
    // at saturation with 100 KB uploads to an nginx app).
    let app = early_refusing_app().await;
    let s = Single::start(|c| {
        c.inbound.app = ListenAddr(app);
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1;
    })
    .await;
    let mut tls = mtls(s.sidecar.inbound, &s.client, b"h2").await;
    tls.write_all(H2_PREFACE).await.unwrap();
    tls.write_all(&h2_frame(4, 0, 0, &[])).await.unwrap();
    let mut buf = Vec::new();
    // The sidecar's SETTINGS (its stream window among them) hold once acknowledged; until
    // then a body past 64 KiB would be a flow-control error.
    while !matches!(next_frame(&mut tls, &mut buf).await, (4, 0, _)) {}
    tls.write_all(&h2_frame(4, 0x1, 0, &[])).await.unwrap();
    // HPACK, literals without indexing: :method POST (static 3), :scheme https (7), :path
    // /upload (name 4), :authority orders.shop (name 1), content-length 81920 (name 28): past
    // what the sidecar reads whole before the app sees the request.
    let mut head = vec![0x83, 0x87, 0x04, 7];
    head.extend_from_slice(b"/upload");
    head.extend_from_slice(&[0x01, 11]);
    head.extend_from_slice(b"orders.shop");
    head.extend_from_slice(&[0x0f, 13, 5]);
    head.extend_from_slice(b"81920");
    // The body in five frames of the default largest size.
    let data = vec![b'x'; 16384];
    for n in 0..3u32 {
        let stream = 1 + 2 * n;
        let mut request = h2_frame(1, 0x4, stream, &head);
        request.extend_from_slice(&h2_frame(0, 0, stream, &data));
        tls.write_all(&request).await.unwrap();
        let mut seen = Vec::new();
        // The whole answer: its last DATA frame ends the stream on the sidecar's side.
        loop {
            let (kind, flags, id) = next_frame(&mut tls, &mut buf).await;
            seen.push((kind, id));
            if (kind, flags & 0x1, id) == (0, 0x1, stream) {
                break;
            }
        }
        // Then the rest of the body, and a PING: what the sidecar sent about the stream is in
        // before the PING's answer.
        let mut rest = Vec::new();
        for piece in 1..5 {
            rest.extend_from_slice(&h2_frame(0, if piece == 4 { 0x1 } else { 0 }, stream, &data));
        }
        rest.extend_from_slice(&h2_frame(6, 0, 0, &[7; 8]));
        tls.write_all(&rest).await.unwrap();
        loop {
            let (kind, flags, id) = next_frame(&mut tls, &mut buf).await;
            seen.push((kind, id));
            if (kind, flags & 0x1) == (6, 0x1) {
                break;
            }
        }
        assert!(!seen.contains(&(3, stream)), "stream {stream} was reset: {seen:?}");
        assert!(!seen.iter().any(|(kind, _)| *kind == 7), "GOAWAY: {seen:?}");
    }
}

/// An HTTP/2 app (gRPC) may send an answer only as far as the sidecar's window for it: what a
/// caller that stops reading makes the sidecar hold. pingora's default was 8 MiB a stream (40
/// such callers held 320 MB of sidecar B).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_app_may_send_a_stream_no_more_than_a_small_window_ahead_of_its_caller() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (capacity_tx, mut capacity_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(tcp).await.unwrap();
        let (_request, mut respond) = connection.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        let mut stream = respond.send_response(http::Response::new(()), false).unwrap();
        stream.reserve_capacity(8 << 20);
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await.unwrap().unwrap();
        let _ = capacity_tx.send(granted);
        // Held open until the test ends.
        std::future::pending::<()>().await;
    });
    let s = Single::start(|c| {
        c.inbound.app.0 = app;
        c.inbound.app_protocol = palisade::config::AppProtocol::Http2;
    })
    .await;
    let mut client = h2_caller(&s).await;
    let request = http::Request::post("https://orders.shop/t.Echo/Stream").header("content-type", "application/grpc");
    let (_response, _body) = client.send_request(request.body(()).unwrap(), true).unwrap();
    let granted = tokio::time::timeout(BOUND, capacity_rx.recv()).await.expect("the app's window in time").unwrap();
    assert!(granted > 0 && granted <= 256 * 1024, "the app may send {granted} bytes ahead");
}

/// A gRPC stream may be silent for longer than `bodyTimeout` (a watch, a subscription): the
/// outbound side does not time it, as the inbound side does not. A request that is not gRPC,
/// stalled beside it on the same connection, still gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_grpc_stream_outlives_the_body_timeout_that_ends_a_stalled_upload_beside_it() {
    let pair =
        Pair::start_configured(EchoApp::start().await, |a| a.limits.body_timeout = HumanDuration(BODY_TIMEOUT), |_| {})
            .await;
    let tcp = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut open = |content_type: &str| {
        let request = http::Request::post(format!("http://{B_AUTHORITY}/stream")).header("content-type", content_type);
        let (response, mut body) = client.send_request(request.body(()).unwrap(), false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"\x00\x00\x00\x00\x01x"), false).unwrap();
        (response, body)
    };
    let (grpc, mut grpc_body) = open("application/grpc");
    // Two uploads, the second begun once the first has timed out: the call has then been
    // silent for a whole body timeout at least.
    for _ in 0..2 {
        let (upload, _upload_body) = open("text/plain");
        let upload = tokio::time::timeout(BOUND, upload).await.expect("the upload's answer in time").unwrap();
        assert_eq!(upload.status(), 408);
    }
    // Silent for the whole body timeout and more: the gRPC call still completes.
    grpc_body.send_data(bytes::Bytes::new(), true).unwrap();
    let grpc = tokio::time::timeout(BOUND, grpc).await.expect("the call's answer in time").unwrap();
    assert_eq!(grpc.status(), 200);
    pair.shutdown();
}
