//! Connection deadlines on the data listeners (issue 16): a client that sends its request head a
//! byte at a time, or nothing, or stays connected between requests, is closed at
//! `limits.headerTimeout` / `limits.idleTimeout`, and each closure is counted. A head that was
//! started and not finished is answered 408 first (SPEC section 5); silence is closed silently. Real listeners: raw
//! TCP on the plaintext outbound port, raw mTLS on the inbound port. Short configured deadlines;
//! every wait is bounded well above them.

mod support;

use std::time::Duration;

use palisade::config::HumanDuration;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Far above either deadline: a connection still open then was not closed by them.
const BOUND: Duration = Duration::from_secs(10);
/// One byte of request head per this: pingora's per-read timers restart on every byte.
const DRIP: Duration = Duration::from_millis(200);
/// A request head longer than BOUND / DRIP bytes, so it can never be finished in the test.
const LONG_HEAD: &[u8] =
    b"GET /slow HTTP/1.1\r\nhost: orders.shop\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

async fn start() -> Single {
    start_logging_to(&tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap()).await
}

/// [`start`], its access log written to `access_log`.
async fn start_logging_to(access_log: &std::path::Path) -> Single {
    Single::start(|c| {
        c.limits.header_timeout = HumanDuration(HEADER_TIMEOUT);
        c.limits.idle_timeout = HumanDuration(IDLE_TIMEOUT);
        c.telemetry.access_log_sink = palisade::config::EventSink::File(access_log.to_path_buf());
    })
    .await
}

/// Sends `LONG_HEAD` a byte per `DRIP` (at most BOUND / DRIP bytes) until the sidecar closes the
/// connection: how long after the first byte that was, and what the sidecar sent before.
async fn drip_until_closed<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> (Duration, String) {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(DRIP);
    let mut scratch = [0u8; 512];
    let mut answer = Vec::new();
    let mut bytes = LONG_HEAD.iter().take((BOUND.as_millis() / DRIP.as_millis()) as usize);
    loop {
        tokio::select! {
            biased;
            read = stream.read(&mut scratch) => match read {
                // End of stream or reset: closed.
                Ok(0) | Err(_) => return (started.elapsed(), String::from_utf8_lossy(&answer).to_string()),
                Ok(n) => answer.extend_from_slice(&scratch[..n]),
            },
            _ = ticks.tick(), if answer.is_empty() => {
                let Some(byte) = bytes.next() else {
                    panic!("still open after {:?} of one byte per {DRIP:?}", started.elapsed());
                };
                if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                    return (started.elapsed(), String::from_utf8_lossy(&answer).to_string());
                }
            }
        }
    }
}

/// SPEC section 5: a head that did not arrive in time is answered 408, then closed.
fn assert_408(answer: &str, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer:?}");
    let lower = answer.to_ascii_lowercase();
    for header in ["content-type: application/json", "x-request-id:", "connection: close"] {
        assert!(lower.contains(header), "{what}: no {header} in {answer}");
    }
    assert!(answer.contains(r#""error":"request_timeout""#), "{what}: {answer}");
}

/// Reads until the sidecar closes the connection (at most BOUND); what it sent.
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await.expect("closed within the bound") {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn closed(s: &Single, direction: &str, reason: &str) -> u64 {
    closed_at(s.sidecar.admin, direction, reason).await
}

async fn closed_at(admin: std::net::SocketAddr, direction: &str, reason: &str) -> u64 {
    let text = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap();
    let text = text.text().await.unwrap();
    let series = format!("palisade_connections_closed_total{{direction=\"{direction}\",reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

async fn mtls(s: &Single) -> MtlsStream {
    mtls_stream(s.sidecar.inbound, &s.client, b"http/1.1").await.unwrap()
}

fn assert_at_deadline(elapsed: Duration, deadline: Duration, what: &str) {
    assert!(elapsed >= deadline - Duration::from_millis(100), "{what}: closed after {elapsed:?}, before {deadline:?}");
    assert!(elapsed < deadline + Duration::from_secs(5), "{what}: closed only after {elapsed:?}");
}

/// The answer's request id leads somewhere: to its access-log line, and it is counted.
async fn assert_recorded(s: &Single, access_log: &std::path::Path, answer: &str, direction: &str, principal: &str) {
    let id = answer.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("an id").trim().to_string();
    let logged = eventually(async || {
        read_jsonl(access_log)
            .iter()
            .any(|l| l["request_id"] == id.as_str() && l["status"] == 408 && l["principal"] == principal)
    })
    .await;
    assert!(logged, "{direction}: {id} not in {:?}", read_jsonl(access_log));
    let metrics = http_client().get(format!("http://{}/metrics", s.sidecar.admin)).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let counted = metrics.lines().any(|l| {
        l.starts_with("palisade_requests_total{")
            && l.contains(&format!("direction=\"{direction}\""))
            && l.contains("code=\"408\"")
            && l.ends_with(" 1")
    });
    assert!(counted, "{direction}: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_is_answered_408_and_closed_at_the_header_timeout_on_both_listeners() {
    let access_log = tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap();
    let s = start_logging_to(&access_log).await;

    let outbound = tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap();
    let (elapsed, answer) = drip_until_closed(outbound).await;
    assert_at_deadline(elapsed, HEADER_TIMEOUT, "outbound, plaintext");
    assert_408(&answer, "outbound, plaintext");
    assert_eq!(closed(&s, "outbound", "header_timeout").await, 1);
    assert_recorded(&s, &access_log, &answer, "outbound", "").await;

    let inbound = mtls(&s).await;
    let (elapsed, answer) = drip_until_closed(inbound).await;
    assert_at_deadline(elapsed, HEADER_TIMEOUT, "inbound, mTLS");
    assert_408(&answer, "inbound, mTLS");
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 1);
    // Who sent it, as the handshake proved.
    assert_recorded(&s, &access_log, &answer, "inbound", &id("shop", "frontend")).await;
}

/// httparse skips empty lines before a request line: a head that starts with them, on a new
/// connection or a kept-alive one, is held to the deadline like any other (both let a client
/// trickle a head for ever before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_starts_with_empty_lines_is_held_to_the_header_timeout() {
    let s = start().await;

    let mut outbound = tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap();
    outbound.write_all(b"\r\n\r\n").await.unwrap();
    let (elapsed, answer) = drip_until_closed(outbound).await;
    assert_at_deadline(elapsed, HEADER_TIMEOUT, "outbound, empty lines first");
    assert_408(&answer, "outbound, empty lines first");

    // Kept alive after an answer, then a CRLF and a head a byte at a time.
    let mut inbound = mtls(&s).await;
    answered_once(&mut inbound).await;
    inbound.write_all(b"\r\n").await.unwrap();
    let (elapsed, answer) = drip_until_closed(inbound).await;
    assert_at_deadline(elapsed, HEADER_TIMEOUT, "inbound, kept alive, an empty line first");
    assert_408(&answer, "inbound, kept alive, an empty line first");
    assert_eq!(closed(&s, "outbound", "header_timeout").await, 1);
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 1);
    assert_eq!(closed(&s, "inbound", "idle_timeout").await, 0);
}

/// One request on a kept-alive connection, and its whole answer (its head, then its
/// content-length of body), so that what is read next is only what came after it.
async fn answered_once<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    stream.write_all(b"GET /first HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1];
    let whole = |answer: &[u8]| {
        let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length: usize = head.split("\r\n").find_map(|l| l.strip_prefix("content-length: "))?.parse().ok()?;
        (body.len() == length).then_some(())
    };
    while whole(&answer).is_none() {
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf)).await.expect("answered").unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
}

/// HTTP/2 is told from HTTP/1.1 by its whole 24-byte preface, not its first bytes: a head that
/// starts like the preface, and a client that stops within the preface (HTTP/2 chosen by ALPN),
/// are held to the header deadline. Both were held for ever: the first bytes alone turned the
/// deadline off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_or_a_preface_that_starts_like_http2_is_held_to_the_header_timeout() {
    let s = start().await;

    let mut outbound = tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap();
    outbound.write_all(b"PRI ").await.unwrap();
    let (elapsed, answer) = drip_until_closed(outbound).await;
    assert_at_deadline(elapsed, HEADER_TIMEOUT, "outbound, PRI and then a head");
    assert_408(&answer, "outbound, PRI and then a head");

    let mut inbound = mtls_stream(s.sidecar.inbound, &s.client, b"h2").await.unwrap();
    let started = Instant::now();
    inbound.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // The server's SETTINGS may come first; then only the close.
    read_until_closed(&mut inbound).await;
    assert_at_deadline(started.elapsed(), HEADER_TIMEOUT, "inbound, HTTP/2 by ALPN, part of the preface");

    assert_eq!(closed(&s, "outbound", "header_timeout").await, 1);
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 1);
}

/// An HTTP/2 request head may come in pieces too: HEADERS without END_HEADERS, then
/// CONTINUATION frames as slowly as the client likes. Held to the head's deadline from its first
/// frame (it was held only to the idle timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_head_left_unfinished_is_closed_at_the_header_timeout() {
    let s = start().await;
    let mut inbound = mtls_stream(s.sidecar.inbound, &s.client, b"h2").await.unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = vec![0, 0, payload.len() as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    wire.extend(frame(0x1, 0x1, 1, &[0x82])); // HEADERS, END_STREAM, no END_HEADERS: more to come
    inbound.write_all(&wire).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut inbound).await;
    assert_at_deadline(started.elapsed(), HEADER_TIMEOUT, "inbound, an HTTP/2 head without its end");
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 1);
}

/// One HEADERS frame holding the whole head, its payload left unfinished (or sent a byte a
/// second): held to the head's deadline too (outside tester j2: the stream counted as open from
/// the frame's header, so the connection was neither in a head nor idle, and stayed open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_head_frame_left_unfinished_is_closed_at_the_header_timeout() {
    let s = start().await;
    let mut inbound = mtls_stream(s.sidecar.inbound, &s.client, b"h2").await.unwrap();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
                                                // HEADERS, END_STREAM | END_HEADERS, 200 bytes announced; 20 of them sent.
    wire.extend([0, 0, 200, 0x1, 0x5, 0, 0, 0, 1]);
    wire.extend([0x82; 20]);
    inbound.write_all(&wire).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut inbound).await;
    assert_at_deadline(started.elapsed(), HEADER_TIMEOUT, "inbound, an HTTP/2 head frame cut short");
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 1);
}

/// After an answer, a head may start with any character a method may (httparse takes digits and
/// symbols too): held to the deadline like one that starts with a letter (it was held for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_head_that_starts_with_a_digit_or_symbol_is_held_to_the_header_timeout() {
    let s = start().await;
    for (n, first) in [b"0", b"~"].into_iter().enumerate() {
        let mut inbound = mtls(&s).await;
        answered_once(&mut inbound).await;
        inbound.write_all(first).await.unwrap();
        let (elapsed, answer) = drip_until_closed(inbound).await;
        let what = format!("inbound, kept alive, a head starting {:?}", first[0] as char);
        assert_at_deadline(elapsed, HEADER_TIMEOUT, &what);
        assert_408(&answer, &what);
        assert_eq!(closed(&s, "inbound", "header_timeout").await, n as u64 + 1);
    }
    assert_eq!(closed(&s, "inbound", "idle_timeout").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let s = start().await;
    let mut outbound = tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut outbound).await.is_empty());
    assert_at_deadline(started.elapsed(), HEADER_TIMEOUT, "outbound, silent");
    let mut inbound = mtls(&s).await;
    let started = Instant::now();
    assert!(read_until_closed(&mut inbound).await.is_empty());
    assert_at_deadline(started.elapsed(), HEADER_TIMEOUT, "inbound, silent after the handshake");
    assert_eq!(closed(&s, "outbound", "header_timeout").await, 1);
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout_after_its_answer() {
    let s = start().await;
    let mut inbound = mtls(&s).await;
    inbound.write_all(b"GET /first HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut inbound).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
    // The answer comes at once; the close only at the idle deadline, not the head's.
    assert_at_deadline(started.elapsed(), IDLE_TIMEOUT, "inbound, idle after an answer");
    assert_eq!(closed(&s, "inbound", "idle_timeout").await, 1);
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_head_in_time_is_served_and_keep_alive_carries_the_next_request() {
    // The control case: prompt clients are never cut, whatever the deadlines.
    let s = start().await;
    let client = s.https();
    for i in 0..3 {
        let response = client.get(s.url(&format!("/ok/{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(closed(&s, "inbound", "header_timeout").await, 0);
    assert_eq!(closed(&s, "inbound", "idle_timeout").await, 0);
}

/// The plaintext port tells HTTP/1.1 from HTTP/2 by the first bytes: a whole request shorter than
/// HTTP/2's 24-byte preface is answered at once, not held for bytes that never come and then
/// answered 408 at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shorter_than_the_http2_preface_is_answered_on_the_plaintext_port() {
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |a| a.limits.header_timeout = HumanDuration(HEADER_TIMEOUT),
        |_| {},
    )
    .await;
    let mut outbound = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    outbound.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut outbound).await).to_string();
    // Without a Host there is nowhere to send it: 400 (a head held back was answered 408).
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(closed_at(pair.a.admin, "outbound", "header_timeout").await, 0);
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_keep_alive_serves_the_next_request_then_closes_when_idle() {
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |a| {
            a.limits.header_timeout = HumanDuration(HEADER_TIMEOUT);
            a.limits.idle_timeout = HumanDuration(IDLE_TIMEOUT);
        },
        |_| {},
    )
    .await;
    let mut outbound = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    // Two requests on one connection, the second after the first's answer: keep-alive works.
    for i in 0..2 {
        let request = format!("GET /ka/{i} HTTP/1.1\r\nhost: {B_AUTHORITY}\r\ncontent-length: 0\r\n\r\n");
        outbound.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(BOUND, outbound.read(&mut byte)).await.expect("an answer").unwrap();
            assert_eq!(n, 1, "closed before answering request {i}: {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a sized answer");
        let mut body = vec![0u8; length];
        outbound.read_exact(&mut body).await.unwrap();
    }
    let started = Instant::now();
    assert!(read_until_closed(&mut outbound).await.is_empty(), "nothing more is sent");
    assert_at_deadline(started.elapsed(), IDLE_TIMEOUT, "outbound, idle after two answers");
    assert_eq!(closed_at(pair.a.admin, "outbound", "idle_timeout").await, 1);
    assert_eq!(closed_at(pair.a.admin, "outbound", "header_timeout").await, 0);
    pair.shutdown();
}

/// An HTTP/2 connection is idle while no stream is open: one whose stream outlives the idle
/// timeout is not cut, and it is closed (with a GOAWAY) once no stream has been open for that
/// long. The sidecar's own timer does it: pingora's kept a timer per idle spell alive for the
/// whole timeout, memory a busy connection grew by with every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_is_closed_once_no_stream_has_been_open_for_the_idle_timeout() {
    let pair =
        Pair::start_configured(EchoApp::start().await, |a| a.limits.idle_timeout = HumanDuration(IDLE_TIMEOUT), |_| {})
            .await;
    let tcp = tokio::net::TcpStream::connect(pair.a.outbound).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // A stream open for longer than the idle timeout: the connection is busy, not idle.
    let slow = format!("http://{B_AUTHORITY}/slow/{}", (IDLE_TIMEOUT + Duration::from_millis(700)).as_millis());
    let (answer, _) = client.send_request(http::Request::get(slow).body(()).unwrap(), true).unwrap();
    let answer = tokio::time::timeout(BOUND, answer).await.expect("an answer").unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    while let Some(piece) = body.data().await {
        piece.unwrap();
    }
    drop(body);
    let started = Instant::now();
    // The client keeps its handle: only the sidecar ends the connection.
    let closed = tokio::time::timeout(BOUND, connection).await.expect("closed within the bound").unwrap();
    assert!(closed.is_ok(), "closed in good order, not broken: {closed:?}");
    drop(client);
    // The sidecar's idle spell began when it wrote the stream's end, a little before this
    // client had read it: the lower bound is looser than the other deadlines'.
    let elapsed = started.elapsed();
    assert!(elapsed >= IDLE_TIMEOUT / 2, "closed after {elapsed:?}, well before the idle timeout");
    assert!(elapsed < IDLE_TIMEOUT + Duration::from_secs(5), "closed only after {elapsed:?}");
    assert_eq!(closed_at(pair.a.admin, "outbound", "idle_timeout").await, 1);
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_data_ports_connection_limit_new_connections_are_closed_and_the_admin_port_answers() {
    const LIMIT: usize = 3;
    let s = Single::start(|c| {
        c.limits.max_connections = LIMIT;
        // Long enough that the held connections stay for the whole test.
        c.limits.header_timeout = HumanDuration(Duration::from_secs(60));
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap());
    }
    // The accept loop takes them in order; one more is closed at once, without an answer.
    wait_for("the connection past the limit closed", async || {
        let mut extra = tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap();
        let _ = extra.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(BOUND, extra.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    })
    .await;
    assert!(closed(&s, "outbound", "connection_limit").await >= 1);
    let ready = http_client().get(format!("http://{}/ready", s.sidecar.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the admin port has its own connection slots");
    drop(held);
}
