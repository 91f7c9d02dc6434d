//! HTTP/1.1 upgrades (WebSockets) from the local app to another meshed workload. HTTP/2 between
//! the sidecars has no `Upgrade` (RFC 8441's extended CONNECT is not something pingora serves),
//! so such a request goes to the peer sidecar on a connection of its own: the same mutual TLS and
//! identity check as every mesh request, HTTP/1.1 by ALPN, as Linkerd's proxies do. The peer's
//! inbound listener judges it like any request (policy, JWT, WAF on its head, rate limits) and
//! passes it to its app; after a `101` the bytes are copied both ways until either side ends.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CONNECTION_SPECIFIC;

/// What one read from the peer may bring before it is passed on, at most; a relay starts at
/// [`FIRST_READ_CHUNK`] and doubles its reads while they come back full. Most WebSockets carry
/// small messages and sit idle, each holding its buffer for as long as it is open.
const READ_CHUNK: usize = 16 * 1024;
const FIRST_READ_CHUNK: usize = 2 * 1024;

/// An HTTP/1.1 request that asks to switch protocols, without a body (a WebSocket handshake is
/// a GET). `h2c` asks to upgrade the hop itself, not the app's conversation: it is dropped, with
/// the other connection headers, on the HTTP/2 path. A request with a body takes that path too.
pub fn asked(session: &mut Session) -> bool {
    if session.is_http2() || !session.is_body_empty() {
        return false;
    }
    let request = session.req_header();
    if request.version != Version::HTTP_11 {
        return false;
    }
    if !request.headers.contains_key(header::UPGRADE) {
        return false;
    }
    // On any of its `Upgrade` lines: a second one must not carry what the first would refuse.
    let h2c = protocols(&request.headers).any(|p| p.eq_ignore_ascii_case(b"h2c"));
    let connection_names_upgrade = request.headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|name| name.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    connection_names_upgrade && !h2c
}

/// The protocols `Upgrade` names, on all its lines (`websocket`, `foo/2`).
fn protocols(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// Whether a `101` switches to a protocol the request asked for, as RFC 9110 §7.8 has it send:
/// one without `Upgrade`, or naming another, would open a byte stream past the policy that
/// judged only the handshake.
fn switches_as_asked(asked: &http::HeaderMap, answered: &http::HeaderMap) -> bool {
    let mut named = protocols(answered).peekable();
    named.peek().is_some() && named.all(|p| protocols(asked).any(|a| a.eq_ignore_ascii_case(p)))
}

/// The app's upgrade request as the peer sidecar gets it: HTTP/1.1 with `Host` (pingora keeps
/// an absolute-form target's path alone), `Upgrade` and `Connection: upgrade` kept, every other
/// connection header (and those `Connection` names) dropped before the sidecar adds its own.
pub fn to_h1(request: &RequestHeader) -> pingora::Result<http::request::Parts> {
    let mut parts = request.as_owned_parts();
    let named = super::forward::connection_names(&parts.headers)?;
    for name in named.iter().chain(CONNECTION_SPECIFIC.iter()).filter(|n| **n != header::UPGRADE) {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::TE);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.version = Version::HTTP_11;
    Ok(parts)
}

/// Sends `request` (see [`to_h1`]) on `peer`, and answers the caller. `peer` is a connection to
/// the peer sidecar that agreed on HTTP/1.1, or on the inbound side to the app: `whom`, as
/// errors name it. A `101` turns both connections into one byte stream until either side ends
/// it; any other answer is passed on as it is, and ends the exchange.
/// `silence`: how long the peer may say nothing, waiting for its answer and after a `101`
/// (`inbound.appTimeout` for the app); `None`, for ever.
pub async fn exchange<S>(
    session: &mut Session,
    peer: S,
    whom: &'static str,
    request: http::request::Parts,
    timeouts: &super::CallerTimeouts,
    silence: Option<Duration>,
) -> pingora::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let up = |e: hyper::Error, what: &str| Error::because(ErrorType::ReadError, format!("{what} {whom}"), e).into_up();
    let answered = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(peer))
            .await
            .map_err(|e| up(e, "speaking HTTP/1.1 with"))?;
        // Ends when the connection does, or hands the connection over to the upgrade below.
        tokio::spawn(connection.with_upgrades());
        // What was asked, for the 101's check: the `Upgrade` lines alone.
        let mut asked = http::HeaderMap::new();
        for line in request.headers.get_all(header::UPGRADE) {
            asked.append(header::UPGRADE, line.clone());
        }
        let response = sender
            .send_request(http::Request::from_parts(request, Empty::new()))
            .await
            .map_err(|e| up(e, "sending the upgrade request to"))?;
        Ok::<_, Box<Error>>((asked, response))
    };
    let (asked, mut response) = match silence {
        Some(limit) => tokio::time::timeout(limit, answered).await.map_err(|_| quiet(whom, limit))??,
        None => answered.await?,
    };
    let upgraded = hyper::upgrade::on(&mut response);
    let (parts, mut body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS && !switches_as_asked(&asked, &parts.headers) {
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!("{whom} answered 101 without switching to a protocol the request asked for in Upgrade"),
        )
        .into_up());
    }
    let mut header = ResponseHeader::from(parts);
    if header.status != StatusCode::SWITCHING_PROTOCOLS {
        // Refused or answered as a plain request: framed afresh for the caller.
        for name in CONNECTION_SPECIFIC.iter() {
            header.remove_header(name);
        }
        let header = super::forward::downstream_header(session, header, false)?;
        session.write_response_header(header, false).await.map_err(Error::into_down)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| up(e, "reading the answer of"))?;
            if let Ok(data) = frame.into_data() {
                timeouts.write_body(session, Some(data), false).await?;
            }
        }
        return timeouts.write_body(session, Some(Bytes::new()), true).await;
    }
    header.set_version(Version::HTTP_11);
    session.write_response_header(Box::new(header), false).await.map_err(Error::into_down)?;
    let upgraded = upgraded.await.map_err(|e| up(e, "taking over the upgraded connection to"))?;
    relay(session, TokioIo::new(upgraded), whom, timeouts, silence).await
}

/// The peer said nothing for `limit`: the app's timeout (504 before a `101`).
fn quiet(whom: &str, limit: Duration) -> Box<Error> {
    Error::explain(ErrorType::ReadTimedout, format!("{whom} said nothing for {limit:?}")).into_up()
}

/// Copies the caller's bytes to the peer and the peer's to the caller, each direction on its
/// own: the peer's connection is written by a task of its own, so a write that waits on the
/// peer never stops this side reading what the peer sends (a busy echo both ways once held
/// both sidecars' buffers full for good). A side that ends its half is passed on as the end of
/// the other's writing; the exchange is over when the peer has ended its half (what the app has
/// to say is said), or either side fails. Silence is timed only as `silence` says (the app's
/// `appTimeout`: the peer's silence, whatever the caller sends): an open WebSocket may rightly
/// say nothing for long. Writes to the caller stay held to `sendTimeout`, so a caller that
/// stops reading does not hold the peer's bytes for ever.
async fn relay(
    session: &mut Session,
    peer: TokioIo<hyper::upgrade::Upgraded>,
    whom: &'static str,
    timeouts: &super::CallerTimeouts,
    silence: Option<Duration>,
) -> pingora::Result<()> {
    // The peer's silence, put off by each read from it; none without a limit.
    let mut peer_quiet = silence.map(|limit| (limit, Box::pin(tokio::time::sleep(limit))));
    session.set_read_timeout(None);
    let (mut from_peer, to_peer) = tokio::io::split(peer);
    let (caller_bytes, to_write) = tokio::sync::mpsc::channel::<Bytes>(WRITES_QUEUED);
    let _writer = AbortOnDrop(tokio::spawn(write_peer(to_write, to_peer)));
    // Dropped once the caller has ended its half: the writer then ends the peer's.
    let mut caller_bytes = Some(caller_bytes);
    // Each piece read is handed on as it is: the buffer is taken whole, and its memory comes
    // back for the next read once the piece has been written.
    let mut chunk = FIRST_READ_CHUNK;
    let mut buffer = bytes::BytesMut::with_capacity(chunk);
    let mut caller_done = false;
    loop {
        // The caller is read only while the queue to the peer has room for what it sends.
        let room = caller_bytes.as_ref().is_some_and(|queue| queue.capacity() > 0);
        tokio::select! {
            read = session.read_request_body(), if room => match read.map_err(Error::into_down)? {
                Some(data) => {
                    if caller_bytes.as_ref().is_some_and(|queue| queue.try_send(data).is_err()) {
                        return Err(peer_gone(whom));
                    }
                }
                None => caller_done = true,
            },
            // Wakes once the writer has made room (the permit is given back at once).
            room = async { caller_bytes.as_ref()?.reserve().await.ok() }, if !room && caller_bytes.is_some() => {
                if room.is_none() {
                    return Err(peer_gone(whom));
                }
            }
            read = from_peer.read_buf(&mut buffer) => match ended_or(read).map_err(|e| read_failed(whom, e).into_up())? {
                0 => return timeouts.write_body(session, Some(Bytes::new()), true).await,
                n => {
                    if let Some((limit, timer)) = peer_quiet.as_mut() {
                        timer.as_mut().reset(tokio::time::Instant::now() + *limit);
                    }
                    chunk = next_chunk(chunk, n);
                    timeouts.write_body(session, Some(buffer.split().freeze()), false).await?;
                    buffer.reserve(chunk);
                }
            },
            limit = async { match peer_quiet.as_mut() {
                Some((limit, timer)) => { timer.as_mut().await; *limit }
                None => std::future::pending().await,
            } } => return Err(quiet(whom, limit)),
        }
        if caller_done {
            caller_bytes = None;
        }
    }
}

/// Writes what the caller sent to the peer, each piece flushed: a TLS stream (the peer sidecar)
/// holds the tail of a write while its socket is full, and without the flush the last bytes the
/// caller sent waited for more that never came. The queue's end is passed on as the end of the
/// peer's half.
async fn write_peer<W: tokio::io::AsyncWrite + Unpin>(
    mut queue: tokio::sync::mpsc::Receiver<Bytes>,
    mut to_peer: W,
) -> std::io::Result<()> {
    while let Some(bytes) = queue.recv().await {
        to_peer.write_all(&bytes).await?;
        to_peer.flush().await?;
    }
    to_peer.shutdown().await
}

/// Pieces of the caller's bytes queued for the peer before the caller is read no further.
const WRITES_QUEUED: usize = 4;

/// The task writing to the peer, ended with the relay (a write the peer never takes would
/// otherwise hold it and the connection).
struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn peer_gone(whom: &str) -> Box<Error> {
    Error::explain(ErrorType::WriteError, format!("the upgraded connection to {whom} stopped taking bytes")).into_up()
}

/// The next read's size after one of `read` bytes into `chunk`: doubled while reads fill it.
fn next_chunk(chunk: usize, read: usize) -> usize {
    match read >= chunk {
        true => (chunk * 2).min(READ_CHUNK),
        false => chunk,
    }
}

/// A peer sidecar that ends an upgraded connection when its app did may close its TLS without a
/// `close_notify` (pingora does): that is the end of the peer's half, as a FIN is, not a failure
/// to log. What the bytes carried (a WebSocket's close frame) says whether it ended well.
fn ended_or(read: std::io::Result<usize>) -> std::io::Result<usize> {
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

fn read_failed(whom: &str, e: std::io::Error) -> Box<Error> {
    Error::because(ErrorType::ReadError, format!("reading the upgraded connection to {whom}"), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", target, None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    /// A writer that holds what it is given until flushed, as a TLS stream over a full socket does.
    #[test]
    fn reads_grow_while_they_come_back_full_up_to_their_most() {
        assert_eq!(next_chunk(FIRST_READ_CHUNK, 10), FIRST_READ_CHUNK, "a small message keeps a small buffer");
        let mut chunk = FIRST_READ_CHUNK;
        for _ in 0..10 {
            chunk = next_chunk(chunk, chunk);
        }
        assert_eq!(chunk, READ_CHUNK);
    }

    #[test]
    fn a_peer_gone_without_close_notify_has_ended_its_half() {
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify",
        );
        assert_eq!(ended_or(Err(eof)).unwrap(), 0);
        assert_eq!(ended_or(Ok(7)).unwrap(), 7);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(ended_or(Err(reset)).is_err(), "a reset is still a failure");
    }

    #[tokio::test(start_paused = true)]
    async fn every_piece_for_the_peer_is_flushed_as_it_is_written() {
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let (queue, to_write) = tokio::sync::mpsc::channel(WRITES_QUEUED);
        let writer = tokio::spawn(write_peer(to_write, tokio::io::BufWriter::new(near)));
        queue.send(Bytes::from_static(b"the last frame")).await.unwrap();
        let mut got = [0u8; 14];
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), far.read_exact(&mut got)).await;
        read.expect("the piece reaches the peer without more behind it").unwrap();
        assert_eq!(&got, b"the last frame");
        drop(queue);
        writer.await.unwrap().unwrap();
        assert_eq!(far.read(&mut got).await.unwrap(), 0, "the queue's end ends the peer's half");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_and_loses_the_other_connection_headers() {
        let parts = to_h1(&request(
            b"/chat",
            &[
                ("host", "chat.shop"),
                ("connection", "keep-alive, Upgrade, x-private"),
                ("upgrade", "websocket"),
                ("x-private", "hop only"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        ))
        .unwrap();
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.uri, "/chat");
        assert_eq!(parts.headers["host"], "chat.shop");
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        for gone in ["x-private", "keep-alive", "te"] {
            assert!(!parts.headers.contains_key(gone), "{gone} must not reach the peer");
        }
    }
}
