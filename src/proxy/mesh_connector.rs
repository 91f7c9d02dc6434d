//! Connections to other sidecars: TCP, then mutual TLS with the workload's current credentials
//! and the SPIFFE-aware verifier, then the server's identity checked against the expected one,
//! then HTTP/2; each connector keeps its own few connections and opens streams on them.
//!
//! pingora's rustls connector can only check DNS names, and its pools re-check every reused
//! connection's file descriptor against the peer address, which a TLS session held outside
//! pingora does not have. So the session lives here, and the `h2` client runs directly on it:
//! no socket pair, no relay task, no `getpeername` per request, and no request header copied
//! into a second form per request. This verifies the identity inside the handshake, so it
//! holds when the destination is a load-balanced virtual IP whose backends each have their own
//! certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use pingora::{Error, ErrorType, RetryType};

use crate::identity::SpiffeId;
use crate::telemetry::Telemetry;
use crate::tls::{connect, connect_http1, ConnectError, Negotiated, TlsStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connectors remembered for destinations that are not configured routes.
const MAX_DYNAMIC: usize = 4096;
/// Concurrent requests on one HTTP/2 connection to a peer sidecar.
const STREAMS_PER_CONNECTION: usize = 100;
/// A pooled connection whose peer vanished without a word (a node lost, a partition) is found
/// out by a PING left unanswered, instead of by the requests that would hang on it.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream's flow-control window: what the peer may send of an answer before the app has taken
/// it, and so what one answer the app is slow to read may hold of this sidecar's memory. Large
/// enough for a stream at full speed across nodes (512 KiB per round trip).
const STREAM_WINDOW: u32 = 512 * 1024;
/// The connection's window is every stream's at once: answers the app stops reading (each holding
/// its stream's window) must leave the rest of the connection to the other requests on it. With
/// one shared 8 MiB window for streams of 8 MiB, one stalled download stopped every request to
/// that peer until sendTimeout.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * STREAMS_PER_CONNECTION as u32;
/// Invites the peer to send large DATA frames.
const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// One pooled connection and the credential generation it was made with.
struct Pooled {
    generation: u64,
    connection: MeshConnection,
}

/// An HTTP/2 connection to a peer sidecar; its frames are read and written by its own task.
#[derive(Clone)]
struct MeshConnection {
    sender: SendRequest<Bytes>,
    state: Arc<ConnectionState>,
    /// The `destination` label of its requests: the SPIFFE ID the peer proved, interned.
    destination: &'static str,
}

struct ConnectionState {
    open_streams: AtomicUsize,
    /// This side's limit or the peer's, whichever is lower.
    max_streams: usize,
    /// The connection's task ended: closed by either side, or its PING went unanswered.
    closed: AtomicBool,
    /// Takes no new streams (the peer is going away, or a stream on it failed as if it were).
    shutting_down: AtomicBool,
    ping_timed_out: AtomicBool,
}

/// One request's stream, before it is sent.
pub struct MeshStream {
    sender: SendRequest<Bytes>,
    slot: StreamSlot,
    destination: &'static str,
}

impl ConnectionState {
    /// No new streams on this connection.
    fn mark_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}

/// A stream's place in its connection's count, given back when dropped.
struct StreamSlot(Arc<ConnectionState>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct MeshConnector {
    target: SocketAddr,
    expected: Option<SpiffeId>,
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
    /// Held only to pick a connection, never across an await.
    pool: Mutex<Vec<Pooled>>,
    /// One connection attempt at a time per destination, so a burst of first requests shares
    /// one new connection instead of opening one each; it holds when the last attempt failed,
    /// so the requests that waited for it share its failure instead of each trying in turn.
    connecting: tokio::sync::Mutex<Option<Failure>>,
}

/// A failed connection attempt, as the requests that waited for it see it.
struct Failure {
    at: Instant,
    etype: ErrorType,
    reason: String,
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector").field("target", &self.target).field("expected", &self.expected).finish()
    }
}

impl MeshConnector {
    pub fn new(target: SocketAddr, expected: Option<SpiffeId>, tls: Arc<TlsStore>, telemetry: Arc<Telemetry>) -> Self {
        MeshConnector {
            target,
            expected,
            tls,
            telemetry,
            pool: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    /// The identity the server must present, when it is known.
    pub fn expected(&self) -> Option<&SpiffeId> {
        self.expected.as_ref()
    }

    /// A new HTTP/2 stream to the destination, on a pooled connection when one has room, and
    /// whether that connection was reused. Connections made with older credentials (a rotated
    /// certificate or trust bundle) take no new streams; they close once their last stream ends.
    pub async fn open_stream(&self) -> pingora::Result<(MeshStream, bool)> {
        if let Some(stream) = self.pooled_stream().await? {
            return Ok((stream, true));
        }
        let waited_since = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        if let Some(stream) = self.pooled_stream().await? {
            return Ok((stream, true));
        }
        if let Some(failure) = last_failure.as_ref().filter(|f| f.at >= waited_since) {
            return Err(Error::explain(
                failure.etype.clone(),
                format!("{} (the attempt this request waited for)", failure.reason),
            ));
        }
        let generation = self.tls.generation();
        let connection = match self.connect().await {
            Ok(connection) => connection,
            Err(e) => {
                *last_failure = Some(Failure {
                    at: Instant::now(),
                    etype: e.etype().clone(),
                    reason: e
                        .context
                        .as_ref()
                        .map_or_else(|| e.etype().as_str().to_string(), |c| c.as_str().to_string()),
                });
                return Err(e);
            }
        };
        let stream = connection.open_stream().await?.ok_or_else(|| {
            Error::explain(ErrorType::H2Error, "new connection to the peer sidecar has no free stream")
        })?;
        self.pool.lock().expect("pool lock").push(Pooled { generation, connection });
        Ok((stream, false))
    }

    async fn pooled_stream(&self) -> pingora::Result<Option<MeshStream>> {
        loop {
            let candidate = {
                let generation = self.tls.generation();
                let mut pool = self.pool.lock().expect("pool lock");
                pool.retain(|p| p.generation == generation && p.connection.usable());
                pool.iter().find(|p| p.connection.has_room()).map(|p| p.connection.clone())
            };
            let Some(connection) = candidate else { return Ok(None) };
            match connection.open_stream().await {
                Ok(Some(stream)) => return Ok(Some(stream)),
                // Full after all, or going away: look again.
                Ok(None) => {
                    if connection.usable() {
                        return Ok(None);
                    }
                }
                Err(_) => connection.state.mark_shutdown(),
            }
        }
    }

    /// A connection of its own to the destination, speaking HTTP/1.1, for a request that
    /// upgrades it (see [`super::upgrade`]), and the `destination` label of the identity proved.
    pub async fn connect_http1(&self) -> pingora::Result<(TlsStream<TcpStream>, &'static str)> {
        let (tls, peer) =
            self.handshake(connect_http1(&self.tls, self.target, self.expected.as_ref(), CONNECT_TIMEOUT).await)?;
        Ok((tls, self.telemetry.requests.destinations.label_identity(peer.as_str())))
    }

    /// A handshake's outcome, counted, and reported when the peer was refused.
    fn handshake(
        &self,
        connected: Result<(TlsStream<TcpStream>, SpiffeId), ConnectError>,
    ) -> pingora::Result<(TlsStream<TcpStream>, SpiffeId)> {
        let connected = match connected {
            Ok(connected) => connected,
            Err(ConnectError::Refusal(reason, negotiated)) => return Err(self.refuse(reason, negotiated)),
            Err(ConnectError::NoHandshake(reason)) => return Err(self.refuse(reason, None)),
            Err(e) => return Err(super::connect_failure(&e)),
        };
        self.telemetry.metrics.tls_handshakes.with_label_values(&["outbound", "success"]).inc();
        Ok(connected)
    }

    async fn connect(&self) -> pingora::Result<MeshConnection> {
        let addr = self.target;
        let (tls, peer) = self.handshake(connect(&self.tls, addr, self.expected.as_ref(), CONNECT_TIMEOUT).await)?;
        let (sender, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_max_send_streams(STREAMS_PER_CONNECTION)
            // Only limits pushed streams, and push is off.
            .max_concurrent_streams(1)
            .max_frame_size(MAX_FRAME_SIZE)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| Error::because(ErrorType::HandshakeError, format!("HTTP/2 handshake with {addr}"), e))?;
        let max_streams = STREAMS_PER_CONNECTION.min(connection.max_concurrent_send_streams());
        if max_streams == 0 {
            return Error::e_explain(ErrorType::H2Error, format!("{addr} allows no HTTP/2 streams"));
        }
        let state = Arc::new(ConnectionState {
            open_streams: AtomicUsize::new(0),
            max_streams,
            closed: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            ping_timed_out: AtomicBool::new(false),
        });
        tokio::spawn(drive(connection, state.clone(), addr));
        let destination = self.telemetry.requests.destinations.label_identity(peer.as_str());
        Ok(MeshConnection { sender, state, destination })
    }

    fn refuse(&self, reason: String, negotiated: Option<Negotiated>) -> Box<Error> {
        let expected = self.expected.as_ref().map(|e| e.to_string());
        self.telemetry.outbound_tls_refused(
            self.target,
            expected,
            reason.clone(),
            negotiated.map(|n| (n.version, n.cipher, n.presented)),
        );
        Error::explain(ErrorType::TLSHandshakeFailure, reason)
    }
}

/// Reads and writes a connection's frames until it closes, or until its peer leaves a PING
/// unanswered.
async fn drive(
    mut connection: h2::client::Connection<TlsStream<TcpStream>, Bytes>,
    state: Arc<ConnectionState>,
    peer: SocketAddr,
) {
    let ping_pong = connection.ping_pong();
    tokio::select! {
        ended = &mut connection => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection to the peer sidecar ended");
            }
        }
        () = keep_alive(ping_pong) => {
            state.ping_timed_out.store(true, Ordering::Relaxed);
            tracing::warn!(%peer, "peer sidecar left a PING unanswered; closing the connection");
        }
    }
    state.closed.store(true, Ordering::Release);
}

/// Returns when a PING goes unanswered. The first one waits an interval, so it never races the
/// connection's first request.
async fn keep_alive(ping_pong: Option<h2::PingPong>) {
    let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // An error means the connection is ending: the connection's own future says how.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

impl MeshConnection {
    fn usable(&self) -> bool {
        !self.state.closed.load(Ordering::Acquire) && !self.state.shutting_down.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.state.open_streams.load(Ordering::Relaxed) < self.state.max_streams
    }

    /// A stream slot on this connection; `None` when it is full or going away.
    async fn open_stream(&self) -> pingora::Result<Option<MeshStream>> {
        // Checked and taken in one step, so concurrent requests cannot overfill the connection.
        if self.state.open_streams.fetch_add(1, Ordering::AcqRel) >= self.state.max_streams {
            self.state.open_streams.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        // From here the slot is given back on every path.
        let slot = StreamSlot(self.state.clone());
        let e = match self.sender.clone().ready().await {
            Ok(sender) => return Ok(Some(MeshStream { sender, slot, destination: self.destination })),
            Err(e) => e,
        };
        // Going away, or its socket already gone: another connection will do.
        if peer_going_away(&e) || e.get_io().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            self.state.mark_shutdown();
            return Ok(None);
        }
        Err(Error::because(ErrorType::H2Error, "opening a stream to the peer sidecar", e))
    }
}

/// The peer is closing the connection in good order (GOAWAY without an error): what it had not
/// begun to process may go on another connection.
fn peer_going_away(e: &h2::Error) -> bool {
    e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR)
}

/// The peer ended the stream in good order after its answer: a GOAWAY, or a reset without an
/// error (RFC 9113 §8.1, "stop sending the request body").
pub fn ended_in_good_order(e: &h2::Error) -> bool {
    (e.is_go_away() || e.is_reset()) && e.is_remote() && e.reason() == Some(Reason::NO_ERROR)
}

impl MeshStream {
    /// The `destination` label of this stream's request: the SPIFFE ID its peer proved.
    pub fn destination(&self) -> &'static str {
        self.destination
    }

    /// Sends the request header (already HTTP/2, see [`super::forward::to_h2`]); `end` when
    /// no body follows.
    pub fn send_request(
        &mut self,
        request: http::request::Parts,
        end: bool,
    ) -> pingora::Result<(ResponseFuture, SendStream<Bytes>)> {
        let request = http::Request::from_parts(request, ());
        self.sender
            .send_request(request, end)
            .map_err(|e| self.failure(e, ErrorType::H2Error, "sending the request to the peer sidecar", true))
    }

    /// This connection takes no new streams.
    pub fn mark_shutdown(&self) {
        self.slot.0.mark_shutdown();
    }

    /// The error for a stream that failed on this connection. Before the response header,
    /// failures that mean the peer did not process the request may be retried: a GOAWAY or a
    /// REFUSED_STREAM (RFC 9113 §8.7), or a reused connection found dead.
    pub fn failure(&self, e: h2::Error, etype: ErrorType, context: &'static str, before_header: bool) -> Box<Error> {
        let retry = if !before_header {
            RetryType::Decided(false)
        } else if peer_going_away(&e) || (e.is_reset() && e.is_remote() && e.reason() == Some(Reason::REFUSED_STREAM)) {
            RetryType::Decided(true)
        } else if e.get_io().is_some_and(|io| {
            io.raw_os_error().is_some()
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::TimedOut | std::io::ErrorKind::BrokenPipe
                )
        }) {
            RetryType::ReusedOnly
        } else {
            RetryType::Decided(false)
        };
        let context = if self.slot.0.ping_timed_out.load(Ordering::Relaxed) {
            "the peer sidecar stopped answering PINGs"
        } else {
            context
        };
        let mut e = Error::because(etype, context, e);
        e.retry = retry;
        e
    }
}

/// A connector per destination and expected identity.
type KnownConnectors = HashMap<(SocketAddr, Option<SpiffeId>), Arc<MeshConnector>>;

/// Connectors for destinations learned per request (original destination or authority),
/// made once per destination and identity.
pub struct Connectors {
    known: ArcSwap<KnownConnectors>,
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
}

impl Connectors {
    pub fn new(tls: Arc<TlsStore>, telemetry: Arc<Telemetry>) -> Self {
        Connectors { known: ArcSwap::from_pointee(HashMap::new()), tls, telemetry }
    }

    pub fn make(&self, target: SocketAddr, expected: Option<SpiffeId>) -> Arc<MeshConnector> {
        Arc::new(MeshConnector::new(target, expected, self.tls.clone(), self.telemetry.clone()))
    }

    pub fn get(&self, target: SocketAddr, expected: Option<&SpiffeId>) -> Arc<MeshConnector> {
        let key = (target, expected.cloned());
        if let Some(found) = self.known.load().get(&key) {
            return found.clone();
        }
        let made = self.make(target, expected.cloned());
        // A request racing this one may have added the destination first: keep its connector
        // (and so its connections), and hand that one out.
        let mut kept = made.clone();
        self.known.rcu(|known| {
            if let Some(existing) = known.get(&key) {
                kept = existing.clone();
                return Arc::clone(known);
            }
            let mut next = if known.len() >= MAX_DYNAMIC { HashMap::new() } else { HashMap::clone(known) };
            next.insert(key.clone(), made.clone());
            kept = made.clone();
            Arc::new(next)
        });
        kept
    }
}
