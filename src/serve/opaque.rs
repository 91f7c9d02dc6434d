//! Captured outbound connections that are not HTTP: the app's own TLS (HTTPS to a cloud API), a
//! database's protocol. Such a connection is relayed as bytes to its original destination when
//! that destination is one the configuration lets the app reach as it is
//! (`outbound.passthrough`). Any other destination must be a mesh workload: the bytes cross in a
//! tunnel of mutual TLS to its sidecar ([`crate::tls::connect_tunnel`]; the other end is
//! [`super::inbound_tcp`]), whose identity is checked as for HTTP. A destination that cannot prove one
//! gets the connection closed before a byte of the app's is sent: a mesh never falls back to
//! plaintext. Linkerd and Istio guess the protocol and fall back to TCP after a wait (Linkerd's
//! 10 s stalls are a standing complaint); here the first bytes decide at once, and protocols
//! where the server speaks first are named by port (`outbound.opaquePorts`).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{IpBlock, PinnedAddresses};
use crate::identity::SpiffeId;
use crate::telemetry::{RefusalCounter, TcpAccessRecord, Telemetry};
use crate::tls::{connect_tunnel, ConnectError, TlsStore};

/// How long a relay waits for its destination to accept (and a tunnel, for its handshake).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a tunnel may take to connect and prove the peer's identity, as an HTTP connection
/// to a peer sidecar: a destination without a sidecar that waits for its client to speak first
/// holds the app's connection this long before it is refused.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(3);
/// Each direction's buffer (a TLS record takes two reads): a relayed connection holds 16 KiB, so
/// the listener's 10,000 connections hold at most 160 MiB, and `limits.maxMemoryBytes` refuses
/// new ones before that.
const RELAY_BUFFER: usize = 8 * 1024;
/// How long a relayed connection may carry nothing before it is closed: an hour, as Envoy's TCP
/// proxy (Istio's sidecars) does, since a database pool keeps its connections idle for many
/// minutes between uses and HTTP's `limits.idleTimeout` would cut them under it.
pub(super) const OPAQUE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How soon a first line still undecided is looked at again: peeking leaves the bytes for
/// whichever path takes the connection, and shows nothing new until more arrive.
const PEEK_AGAIN: Duration = Duration::from_millis(10);

/// Peeks at a captured connection's first bytes until [`sort_first_words`] tells a request from a
/// text protocol's command (memcached's `get k`, Redis's inline `SET k v`): the same rule the
/// inbound side's opaque ports use. The bytes stay in the socket. `Ok(None)`: closed before a
/// byte; `seen`: how many bytes arrived, for a caller whose deadline ends the wait.
async fn peek_first_words(tcp: &TcpStream, seen: &mut usize) -> std::io::Result<Option<bool>> {
    let mut first = [0u8; FIRST_WORDS_MAX];
    loop {
        let n = tcp.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(request) = sort_first_words(&first[..n], n >= FIRST_WORDS_MAX) {
            return Ok(Some(request));
        }
        if n == *seen {
            tokio::time::sleep(PEEK_AGAIN).await;
        }
        *seen = n;
    }
}

/// The most of a connection's first bytes [`read_first_words`] reads to sort them.
pub const FIRST_WORDS_MAX: usize = 512;

/// Whether `bytes` (what arrived first on a port named opaque, `limit`: all that will be read)
/// may be an HTTP request, which must go through the pipeline even there; `None`: not yet known.
/// Lenient servers (Python's, Go's, hyper) take any method and split the line on any blank, so
/// only positive evidence makes a command: a whole first line with no `HTTP/` in it (any case),
/// that is not HTTP/0.9's `<METHOD> <target>` and no PROXY protocol header (memcached's
/// `get user:1`, Redis's inline `keys *` or `SET k v`); or, past the limit
/// with the line not yet whole, a memcached retrieval of many whole keys. Bytes that no line holds (a binary
/// protocol: a length first, a zero byte, RESP's `*2`) are relayed. Anything else is a request,
/// so neither splitting nor padding one sends it around the pipeline.
pub fn sort_first_words(bytes: &[u8], limit: bool) -> Option<bool> {
    // What lenient servers skip before and between the words: blanks, controls, NBSP.
    let blank = |b: u8| b.is_ascii_whitespace() || matches!(b, 0x0b | 0x1c..=0x1f | 0x85 | 0xa0);
    if bytes.starts_with(PROXY_V2_SIGNATURE) {
        return Some(true);
    }
    if !bytes.is_empty() && PROXY_V2_SIGNATURE.starts_with(bytes) {
        return limit.then_some(true);
    }
    let start = bytes.iter().position(|&b| !blank(b));
    let Some(start) = start else { return limit.then_some(true) };
    let rest = &bytes[start..];
    // A binary protocol's bytes in the first word (AMQP's `AMQP\0`, a length first): no method
    // has them, and no server takes one that does.
    let word_end = rest.iter().position(|&b| blank(b)).unwrap_or(rest.len());
    if !rest[..word_end].iter().all(|&b| is_tchar(b)) {
        return Some(false);
    }
    let line_end = rest.iter().position(|&b| b == b'\n');
    let line = &rest[..line_end.unwrap_or(rest.len())];
    if line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/")) {
        return Some(true);
    }
    let mut words = line.split(|&b| blank(b)).filter(|w| !w.is_empty());
    let first = words.next().unwrap_or_default();
    if first == b"PROXY" {
        return Some(true);
    }
    match line_end {
        // HTTP/0.9: an uppercase method and a target, nothing after (Python's server takes
        // `GET admin`, Tomcat methods other than GET).
        Some(_) => {
            let method = first.iter().all(u8::is_ascii_uppercase);
            Some(method && words.next().is_some() && words.next().is_none())
        }
        None if limit => {
            // A memcached retrieval of many keys fills the limit before its line ends; a request
            // line has at most two words before its version. The last word may be cut at the
            // limit (a version's `HTT`), so it does not count.
            let retrieval = [&b"get"[..], b"gets", b"gat", b"gats"].contains(&first);
            let cut = !bytes.last().is_some_and(|&b| blank(b));
            Some(!(retrieval && words.count().saturating_sub(usize::from(cut)) >= 2))
        }
        None => None,
    }
}

/// The PROXY protocol's version 2 signature, which a PROXY-aware HTTP server reads first.
const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads `io`'s first bytes, after those already `read`, until [`sort_first_words`] knows
/// whether they may be an HTTP request (at most [`FIRST_WORDS_MAX`], until `deadline`); returns
/// that and what was read, to be put back or passed on. A connection that stops short, or ends, is taken as HTTP: the pipeline's
/// own deadline and parser deal with it.
pub async fn read_first_words<R: AsyncRead + Unpin>(
    io: &mut R,
    deadline: tokio::time::Instant,
    mut read: Vec<u8>,
) -> std::io::Result<(bool, Vec<u8>)> {
    loop {
        if let Some(request) = sort_first_words(&read, read.len() >= FIRST_WORDS_MAX) {
            return Ok((request, read));
        }
        let mut chunk = [0u8; FIRST_WORDS_MAX];
        let room = FIRST_WORDS_MAX.saturating_sub(read.len());
        match tokio::time::timeout_at(deadline, io.read(&mut chunk[..room])).await {
            Ok(Ok(0)) | Err(_) => return Ok((true, read)),
            Ok(Ok(n)) => read.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The outbound listener's rule for connections that are not HTTP.
pub struct OpaqueTcp {
    passthrough: Vec<IpBlock>,
    opaque_ports: Vec<u16>,
    /// The workload's credentials, for tunnels to mesh destinations.
    tls: Arc<TlsStore>,
    /// Destinations whose identity is known: a tunnel there must be answered by exactly that
    /// identity.
    pinned: PinnedAddresses,
    /// Counts relayed connections, and logs each in the access log when it ends.
    telemetry: Arc<Telemetry>,
}

/// What became of a captured connection.
pub enum Sorted {
    /// HTTP, or not redirected (the app addressed the listener itself): served as HTTP.
    Http(TcpStream),
    /// Relayed or refused; nothing more to do.
    Done,
}

impl OpaqueTcp {
    pub fn new(
        passthrough: &[IpBlock],
        opaque_ports: &[u16],
        pinned: PinnedAddresses,
        tls: Arc<TlsStore>,
        telemetry: &Arc<Telemetry>,
    ) -> Self {
        OpaqueTcp {
            passthrough: passthrough.to_vec(),
            opaque_ports: opaque_ports.to_vec(),
            tls,
            pinned,
            telemetry: telemetry.clone(),
        }
    }

    /// `outbound.passthrough` as the refusal events give it.
    pub fn setting(&self) -> String {
        match self.passthrough.is_empty() {
            true => "none".to_string(),
            false => self.passthrough.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        }
    }

    fn allows(&self, destination: SocketAddr) -> bool {
        let ip = destination.ip().to_canonical();
        self.passthrough.iter().any(|b| b.contains(ip))
    }

    /// Serves `tcp` as bytes when it is not HTTP, and gives it back otherwise. `redirected_to` is
    /// its original destination when iptables redirected it ([`super::redirected_to`]); a
    /// connection addressed to the listener itself is HTTP. Waits at most `header_timeout` for a
    /// first byte (`late` counts a connection that sent none), and never when the destination's
    /// port is an opaque one.
    pub async fn sort(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        redirected_to: Option<SocketAddr>,
        header_timeout: Duration,
        late: &RefusalCounter,
        refused: &RefusalCounter,
    ) -> Sorted {
        let Some(destination) = redirected_to else {
            return Sorted::Http(tcp);
        };
        if !self.opaque_ports.contains(&destination.port()) {
            let mut seen = 0;
            match tokio::time::timeout(header_timeout, peek_first_words(&tcp, &mut seen)).await {
                Ok(Ok(Some(true))) => return Sorted::Http(tcp),
                Ok(Ok(Some(false))) => {}
                // Closed before a byte, or a socket error: nothing to serve.
                Ok(_) => return Sorted::Done,
                // A first line never finished: HTTP's head deadline, already past, answers it.
                Err(_) if seen > 0 => return Sorted::Http(tcp),
                Err(_) => {
                    late.refused(Some(peer.ip()));
                    return Sorted::Done;
                }
            }
        }
        let started = Instant::now();
        let log = |moved: &Moved, end: &'static str, principal: Option<&SpiffeId>| {
            let principal = principal.map(SpiffeId::as_str);
            self.telemetry.access_tcp(&moved.access("outbound", principal, peer, destination, started, end))
        };
        // A destination with an expected identity is always a mesh one, as for HTTP.
        let expected = self.pinned.at(destination);
        if expected.is_some() || !self.allows(destination) {
            let (tunnel, server) = match connect_tunnel(&self.tls, destination, expected, TUNNEL_TIMEOUT).await {
                Ok(connected) => connected,
                // A certificate refused (expired, of another CA, not a SPIFFE ID: perhaps someone
                // else answering at a mesh address), or another identity than the one expected: a
                // security event each, as for HTTP.
                Err(ConnectError::Refusal(reason, negotiated)) => {
                    let expected = expected.map(ToString::to_string);
                    let tls = negotiated.map(|n| (n.version, n.cipher, n.presented));
                    self.telemetry.outbound_tls_refused(destination, expected, reason, tls);
                    refused.refused(Some(peer.ip()));
                    return Sorted::Done;
                }
                // No mesh workload there (it answered with something other than TLS, an alert,
                // or a close), and not listed as outside the mesh: refused, the app's bytes
                // unsent. An app that retries such a destination makes one aggregated `not_http`
                // report a second, not an event each.
                Err(ConnectError::NoHandshake(reason)) => {
                    self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "failure"]).inc();
                    refused.refused(Some(peer.ip()));
                    tracing::debug!(%peer, %destination, %reason, "not HTTP, to a destination without a mesh identity outside outbound.passthrough: closed");
                    return Sorted::Done;
                }
                Err(ConnectError::HandshakeTimeout(_)) => {
                    // It took the connection and never answered the handshake: a server that
                    // waits for its client to speak first, without a sidecar.
                    self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "timeout"]).inc();
                    refused.refused(Some(peer.ip()));
                    tracing::debug!(%peer, %destination, "not HTTP, to a destination that did not answer mutual TLS, outside outbound.passthrough: closed");
                    return Sorted::Done;
                }
                Err(e) => {
                    tracing::debug!(%peer, %destination, error = %e, "opaque tunnel: destination unreachable");
                    log(&Moved::default(), "unreachable", None);
                    return Sorted::Done;
                }
            };
            self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "success"]).inc();
            self.telemetry.metrics.opaque_connections.inc();
            let moved = Moved::default();
            let end = Box::pin(relay(tcp, tunnel, OPAQUE_IDLE_TIMEOUT, &moved, std::future::pending())).await;
            log(&moved, end_label(end, peer, destination), Some(&server));
            return Sorted::Done;
        }
        let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, %destination, error = %e, "opaque relay: destination refused");
                log(&Moved::default(), "unreachable", None);
                return Sorted::Done;
            }
            Err(_) => {
                tracing::debug!(%peer, %destination, "opaque relay: destination did not accept in time");
                log(&Moved::default(), "unreachable", None);
                return Sorted::Done;
            }
        };
        let _ = upstream.set_nodelay(true);
        self.telemetry.metrics.opaque_connections.inc();
        let moved = Moved::default();
        // Boxed: two buffers of a TLS record each, for as long as the connection lives.
        let end = Box::pin(relay(tcp, upstream, OPAQUE_IDLE_TIMEOUT, &moved, std::future::pending())).await;
        log(&moved, end_label(end, peer, destination), None);
        Sorted::Done
    }
}

/// How a relay ended, as the access log says it (a failure logged at debug level).
pub(super) fn end_label(end: std::io::Result<RelayEnd>, peer: SocketAddr, destination: SocketAddr) -> &'static str {
    match end {
        Ok(RelayEnd::Closed) => "closed",
        Ok(RelayEnd::Idle) => "idle_timeout",
        Ok(RelayEnd::Stopped) => "denied",
        Ok(RelayEnd::Aborted) => "reset",
        Err(e) => {
            tracing::debug!(%peer, %destination, error = %e, "opaque relay ended");
            "error"
        }
    }
}

/// How a relay ended, short of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayEnd {
    /// Both sides closed their halves.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// Its `stop` came: a tunnel the policy now refuses.
    Stopped,
    /// One side went away abruptly (a TCP reset, or a TLS stream cut without its close_notify),
    /// and the other was aborted in turn, so that a stream cut off never looks complete.
    Aborted,
}

/// How one side of a relay is ended abruptly when the other was: a TCP connection with a reset
/// (what its peer sees of a server that crashed or reset); a TLS stream by dropping it without its
/// close_notify, which the sidecar at the far end reads as a truncation and passes on as a reset
/// to its own side. A plaintext stream pingora accepted ends with a close (no reset to be had
/// through its type).
pub(super) trait Abort {
    fn abort(&self);
}

impl Abort for TcpStream {
    fn abort(&self) {
        let _ = self.set_zero_linger();
    }
}

impl<S> Abort for tokio_rustls::client::TlsStream<S> {
    fn abort(&self) {}
}

impl<S> Abort for tokio_rustls::server::TlsStream<S> {
    fn abort(&self) {}
}

impl<S: Abort + ?Sized> Abort for Box<S> {
    fn abort(&self) {
        (**self).abort()
    }
}

impl Abort for pingora::protocols::l4::stream::Stream {
    fn abort(&self) {}
}

/// Whether an error reading or writing a side says its peer went away abruptly.
fn went_away(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// The bytes a relay passed on each way, as they move: what was moved before a relay was
/// dropped (a tunnel the policy closed) is still told.
#[derive(Debug, Default)]
pub(super) struct Moved {
    /// From the side that opened the connection to the other.
    sent: AtomicU64,
    received: AtomicU64,
    /// When a byte last moved either way, in milliseconds since the relay began.
    last: AtomicU64,
}

impl Moved {
    /// The access log's line for the relay that moved these bytes, begun at `started`.
    pub fn access<'a>(
        &self,
        direction: &'static str,
        principal: Option<&'a str>,
        source: SocketAddr,
        destination: SocketAddr,
        started: Instant,
        end: &'static str,
    ) -> TcpAccessRecord<'a> {
        TcpAccessRecord {
            direction,
            principal,
            source,
            destination,
            bytes_sent: self.sent(),
            bytes_received: self.received(),
            seconds: started.elapsed().as_secs_f64(),
            end,
        }
    }

    /// Counts bytes from the side that opened the connection passed on before the relay began.
    pub fn sent_before(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Copies both ways at once until each side has closed its half, nothing moves for `idle`, or
/// `stop` completes. The two directions run side by side, so a peer that sends while it reads
/// never waits on the other. A side that closes its half has that passed on (a shutdown of the
/// other's write; over TLS, its close_notify), so protocols that end a request with a half-close
/// still work. Ended by `idle` or `stop`, both sides are closed in good order (within a second),
/// so the far end of a tunnel sees it closed, not broken.
pub(super) async fn relay<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    moved: &Moved,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<RelayEnd>
where
    C: AsyncRead + AsyncWrite + Unpin + Abort,
    U: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let began = tokio::time::Instant::now();
    let quiet = async {
        loop {
            let last = Duration::from_millis(moved.last.load(Ordering::Relaxed));
            let until = began + last + idle;
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    let end = {
        let up = one_way(Side::Client, &mut client_read, &mut upstream_write, &moved.sent, &moved.last, began);
        let down = one_way(Side::Upstream, &mut upstream_read, &mut client_write, &moved.received, &moved.last, began);
        tokio::select! {
            both = async { tokio::try_join!(up, down) } => match both {
                Ok(_) => return Ok(RelayEnd::Closed),
                // A side that went away abruptly: the other is aborted, not closed, and dropped
                // without the graceful shutdown below (which would send a TLS close_notify).
                // Seen reading the side that went, or writing to it (a reset answers a write as
                // EPIPE or ECONNRESET): whichever direction notices first.
                Err(Failed(gone, e)) if went_away(&e) => {
                    match gone {
                        Side::Client => upstream_read.unsplit(upstream_write).abort(),
                        Side::Upstream => client_read.unsplit(client_write).abort(),
                    }
                    return Ok(RelayEnd::Aborted);
                }
                Err(Failed(_, e)) => return Err(e),
            },
            () = quiet => RelayEnd::Idle,
            () = stop => RelayEnd::Stopped,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tokio::join!(client_write.shutdown(), upstream_write.shutdown());
    })
    .await;
    Ok(end)
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// A direction of a relay failed, on this side: the one it read, or the one it wrote to.
struct Failed(Side, std::io::Error);

/// One direction of a relay, reading `side`: each read written on and flushed (a TLS stream
/// holds what it was given until then), until the reading side closes its half, which is then
/// passed on.
async fn one_way(
    side: Side,
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    count: &AtomicU64,
    last: &AtomicU64,
    began: tokio::time::Instant,
) -> Result<(), Failed> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let written = |e| Failed(side.other(), e);
    loop {
        let n = from.read(&mut buf).await.map_err(|e| Failed(side, e))?;
        last.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == 0 {
            // A peer that has closed both halves already has nothing to be told.
            return match to.shutdown().await {
                Err(e) if matches!(e.kind(), ErrorKind::NotConnected | ErrorKind::BrokenPipe) => Ok(()),
                done => done.map_err(written),
            };
        }
        to.write_all(&buf[..n]).await.map_err(written)?;
        to.flush().await.map_err(written)?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_http2_preface_are_http_on_the_outbound_side_too() {
        for line in [&b"GET / HTTP/1.1\r\n"[..], b"OPTIONS * HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nSM", b"GET /\r\n"] {
            assert_eq!(sort_first_words(line, false), Some(true), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn tls_databases_binary_and_text_protocols_are_not() {
        let cases: [&[u8]; 8] = [
            // A TLS ClientHello's record header.
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
            // PostgreSQL's SSLRequest: a big-endian length, then 80877103.
            &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            // Redis: RESP's array of two, and an inline command.
            b"*2\r\n$4\r\nPING\r\n",
            b"SET k v\r\n",
            // memcached's text protocol.
            b"get foo\r\n",
            // AMQP's protocol header.
            b"AMQP\x00\x00\x09\x01",
            // SSH's client banner.
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"set k 0 0 5\r\nhello\r\n",
        ];
        for bytes in cases {
            assert_eq!(sort_first_words(bytes, false), Some(false), "{bytes:?}");
        }
    }

    /// Both ends of a loopback connection; `buffer`: the sockets' buffer sizes, when small ones
    /// are wanted.
    async fn pair(buffer: Option<u32>) -> (TcpStream, TcpStream) {
        let socket = || {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            if let Some(size) = buffer {
                socket.set_send_buffer_size(size).unwrap();
                socket.set_recv_buffer_size(size).unwrap();
            }
            socket
        };
        let listening = socket();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(8).unwrap();
        let near = socket().connect(listener.local_addr().unwrap()).await.unwrap();
        (near, listener.accept().await.unwrap().0)
    }

    /// A relay between `captured` and `upstream` on its own task: how it ended, and the bytes it
    /// moved each way.
    fn spawn_relay(
        captured: TcpStream,
        upstream: TcpStream,
    ) -> tokio::task::JoinHandle<std::io::Result<(RelayEnd, u64, u64)>> {
        tokio::spawn(async move {
            let moved = Moved::default();
            relay(captured, upstream, OPAQUE_IDLE_TIMEOUT, &moved, std::future::pending())
                .await
                .map(|end| (end, moved.sent(), moved.received()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_carries_both_ways_and_ends_after_an_hour_of_nothing() {
        let (mut app, captured) = pair(None).await;
        let (upstream, mut destination) = pair(None).await;
        let relay = spawn_relay(captured, upstream);
        let mut buf = [0u8; 4];
        app.write_all(b"ping").await.unwrap();
        destination.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        destination.write_all(b"pong").await.unwrap();
        app.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // Nothing more moves: the clock (paused, so it jumps to the next timer) reaches the hour.
        let quiet_since = tokio::time::Instant::now();
        let (ended, sent, received) = relay.await.unwrap().unwrap();
        assert_eq!(ended, RelayEnd::Idle);
        assert_eq!((sent, received), (4, 4), "what the access log reports");
        assert!(quiet_since.elapsed() >= OPAQUE_IDLE_TIMEOUT, "{:?}", quiet_since.elapsed());
        // Both sides see the close.
        assert_eq!(app.read(&mut buf).await.unwrap(), 0);
        assert_eq!(destination.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reset_on_one_side_is_a_reset_on_the_other_not_a_clean_end() {
        for reset_by_destination in [true, false] {
            let (mut app, captured) = pair(None).await;
            let (upstream, mut destination) = pair(None).await;
            let relay = spawn_relay(captured, upstream);
            destination.write_all(b"part of an answer").await.unwrap();
            let mut buf = [0u8; 17];
            app.read_exact(&mut buf).await.unwrap();
            // The side that goes away resets its connection.
            let (gone, mut other) = match reset_by_destination {
                true => (destination, app),
                false => (app, destination),
            };
            gone.set_zero_linger().unwrap();
            drop(gone);
            let (ended, _, _) = relay.await.unwrap().unwrap();
            assert_eq!(ended, RelayEnd::Aborted);
            let seen = other.read(&mut [0u8; 16]).await;
            assert_eq!(
                seen.map_err(|e| e.kind()),
                Err(ErrorKind::ConnectionReset),
                "the reset passed on (destination reset: {reset_by_destination})"
            );
        }
    }

    #[tokio::test]
    async fn a_relay_carries_an_echo_of_a_bulk_stream_that_the_app_reads_as_it_sends() {
        // The destination echoes each piece before it reads the next; the app reads while it
        // sends. Direct, that flows. A relay that waits on one direction's write without reading
        // the other (as this one did before its directions ran side by side) stops for good: the
        // destination waits to write its echo, the relay to write the next piece.
        const BULK: usize = 8 << 20;
        // Small socket buffers, so that a relay that stops reading one way fills them at once.
        let (app, captured) = pair(Some(4096)).await;
        let (upstream, mut destination) = pair(Some(4096)).await;
        let relay = spawn_relay(captured, upstream);
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = destination.read(&mut buf).await.unwrap();
                if n == 0 {
                    destination.shutdown().await.unwrap();
                    return;
                }
                destination.write_all(&buf[..n]).await.unwrap();
            }
        });
        let (mut app_read, mut app_write) = app.into_split();
        let sending = async move {
            app_write.write_all(&vec![7u8; BULK]).await.unwrap();
            app_write.shutdown().await.unwrap();
        };
        let reading = async move {
            let mut got = Vec::new();
            app_read.read_to_end(&mut got).await.unwrap();
            got.len()
        };
        // A bound for a stall to fail on rather than hang; the flow itself takes well under a
        // second.
        let flowed = tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(sending, reading) }).await;
        let ((), echoed) = flowed.expect("the relay stalled");
        assert_eq!(echoed, BULK);
        echo.await.unwrap();
        let (ended, sent, received) = relay.await.unwrap().unwrap();
        assert_eq!((ended, sent, received), (RelayEnd::Closed, BULK as u64, BULK as u64));
    }

    #[test]
    fn what_a_server_takes_for_a_request_line_is_taken_for_one() {
        let requests: [&[u8]; 24] = [
            // HTTP/0.9 with another method (Tomcat takes it).
            b"DELETE /admin\r\n",
            // NEL, a blank to Python's Latin-1; HTTP/0.9 with a relative target, which Python serves.
            b"\x85GET /admin HTTP/1.1\r\n",
            b"GET\x85/admin\r\n",
            b"GET admin\r\n",
            // Lowercase, its version past the limit: two words are a request line's, not a get of many keys.
            b"get /admin?aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n",
            // Any method, of any length, as Go and hyper take it; any blank between the words, as
            // Python splits them.
            b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX /admin HTTP/1.1\r\n",
            b"GET\x0b/admin\x0bHTTP/1.1\r\n",
            b"\x0cGET /admin HTTP/1.1\r\n",
            b"GET\r/admin\rHTTP/1.1\r\n",
            // The PROXY protocol's version 2 signature.
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c",
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /x HTTP/1.0\n",
            // Empty lines and blanks first (RFC 9112 section 2.2), as nginx and hyper skip them.
            b"\r\nGET /admin HTTP/1.1\r\n",
            b"\n\n GET /admin HTTP/1.1\r\n",
            // A blank after the version; tabs between the words.
            b"GET admin HTTP/1.1 \r\n",
            b"GET\t/admin\tHTTP/1.1\r\n",
            // HTTP/0.9, absolute form, asterisk form, CONNECT, the PROXY protocol's header.
            b"GET /admin\r\n",
            b"GET http://app/admin HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"CONNECT app:443 HTTP/1.1\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nGET / HTTP/1.1\r\n",
            // Lowercase methods and versions.
            b"get /admin http/1.1\r\n",
            b"get admin http/1.1\r\n",
        ];
        for request in requests {
            assert_eq!(sort_first_words(request, false), Some(true), "{:?}", String::from_utf8_lossy(request));
        }
    }

    #[test]
    fn words_cut_short_wait_for_more_and_at_the_limit_are_http() {
        for cut in [&b""[..], b"\r\n", b"GE", b"GET", b"GET ", b"GET adm", b"\r\n\r\n\0"] {
            assert_eq!(sort_first_words(cut, false), None, "{:?}", String::from_utf8_lossy(cut));
            assert_eq!(sort_first_words(cut, true), Some(true), "{:?} at the limit", String::from_utf8_lossy(cut));
        }
        // Padding past the limit does not make a request a command.
        let padded: Vec<u8> = b"GET admin".iter().copied().chain(std::iter::repeat_n(b' ', 600)).collect();
        assert_eq!(sort_first_words(&padded[..FIRST_WORDS_MAX], true), Some(true));
        let long_target: Vec<u8> = b"get /admin?".iter().copied().chain(std::iter::repeat_n(b'a', 600)).collect();
        assert_eq!(sort_first_words(&long_target[..FIRST_WORDS_MAX], true), Some(true), "one word after get");
        // The version cut at the limit (`HTT`) is no second key.
        let cut_version: Vec<u8> =
            b"get /".iter().copied().chain(std::iter::repeat_n(b'a', 503)).chain(*b" HTTP/1.1\r\n").collect();
        assert_eq!(sort_first_words(&cut_version[..FIRST_WORDS_MAX], true), Some(true), "a version cut short");
        // A target that cannot be a request's, its line longer than the limit: memcached's get of
        // many keys.
        assert_eq!(sort_first_words(b"get k1 k2", false), None);
        let many_keys: Vec<u8> =
            b"get".iter().copied().chain((0..200).flat_map(|i| format!(" k{i}").into_bytes())).collect();
        assert_eq!(sort_first_words(&many_keys[..FIRST_WORDS_MAX], true), Some(false));
    }

    #[test]
    fn text_and_binary_protocols_are_no_requests() {
        let commands: [&[u8]; 11] = [
            b"get /index.html\r\n",
            b"delete /x\r\n",
            b"keys *\r\n",
            b"get https://cdn.example/a\r\n",
            b"get user:1\r\n",
            b"set k 0 0 5\r\nhello\r\n",
            b"ehlo client.example\r\n",
            b"SET k v\r\n",
            b"GET\r\n",
            b"PING\r\n",
            b"*2\r\n$4\r\nPING\r\n",
        ];
        for line in commands {
            assert_eq!(sort_first_words(line, false), Some(false), "{:?}", String::from_utf8_lossy(line));
        }
        // PostgreSQL's SSLRequest, MongoDB lengths (one blank, one printable), memcached's binary
        // magic, AMQP 0-9-1's and 1.0's headers (sent whole, then the client waits).
        let binaries: [&[u8]; 6] = [
            &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            &[0x0d, 0x01, 0, 0, 0xdd, 0x07],
            &[b'A', 0x01, 0, 0, 0xdd, 0x07],
            &[0x80, 0x00, 0x00, 0x03],
            b"AMQP\0\0\x09\x01",
            b"AMQP\x03\x01\0\0",
        ];
        for binary in binaries {
            assert_eq!(sort_first_words(binary, false), Some(false), "{binary:?}");
        }
    }

    #[tokio::test]
    async fn first_words_are_read_until_they_are_known_and_given_back() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair(None).await;
        client.write_all(b"\r\nGET").await.unwrap();
        let reading = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            read_first_words(&mut server, deadline, Vec::new()).await.unwrap()
        });
        tokio::task::yield_now().await;
        client.write_all(b" /admin HTTP/1.1\r\n").await.unwrap();
        let (request, read) = reading.await.unwrap();
        assert!(request);
        assert!(read.starts_with(b"\r\nGET /admin"), "{read:?}");
    }

    #[tokio::test]
    async fn a_first_line_in_two_pieces_is_peeked_at_again_and_its_bytes_stay() {
        let (mut client, server) = pair(None).await;
        client.write_all(b"get us").await.unwrap();
        let peeking = tokio::spawn(async move {
            let mut seen = 0;
            let sorted = peek_first_words(&server, &mut seen).await.unwrap();
            (sorted, server)
        });
        tokio::task::yield_now().await;
        client.write_all(b"er:1\r\n").await.unwrap();
        let (sorted, server) = peeking.await.unwrap();
        assert_eq!(sorted, Some(false), "memcached's get is relayed");
        let mut first = [0u8; 32];
        let n = server.peek(&mut first).await.unwrap();
        assert_eq!(&first[..n], b"get user:1\r\n", "nothing was taken from the socket");
    }
}
