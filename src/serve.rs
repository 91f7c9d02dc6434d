//! Accepting connections: TLS (STRICT), TLS or plaintext sniffed by the first byte (PERMISSIVE),
//! or plaintext (outbound, admin); then handing each stream to a pingora app.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::MtlsMode;
use crate::policy::PolicyStore;
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::TlsStore;

/// A TLS ClientHello starts with a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections per listener; past it new ones are closed at once, so a flood of idle or
/// half-open connections cannot exhaust file descriptors or memory.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 16_384;

pub enum Transport {
    Plain,
    /// Mutual TLS; plaintext too while the policy in force says PERMISSIVE, without a
    /// principal. A policy's `mtls` takes effect for new connections at once, and a plaintext
    /// connection let in under PERMISSIVE is closed when the mode becomes STRICT, after the
    /// request it is serving (ztunnel re-checks live connections on a policy change too).
    Mesh {
        tls: Arc<TlsStore>,
        policy: Arc<PolicyStore>,
    },
    /// Server TLS without client certificates (the injection webhook, called by the API
    /// server).
    Tls(Acceptor),
}

/// Counts open connections so a drain can wait for them.
#[derive(Clone, Default)]
pub struct ConnectionTracker(Arc<(AtomicUsize, Notify)>);

pub struct ConnectionGuard(ConnectionTracker);

impl ConnectionTracker {
    pub fn open(&self) -> ConnectionGuard {
        self.0 .0.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.0 .0.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0 .0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0 .1.notify_waiters();
        }
    }
}

/// Accepts on `listener` until `shutdown` turns true, then drops the listener (new connections
/// are refused) and returns; connections already open finish on their own tasks.
pub async fn serve<A>(
    listener: TcpListener,
    transport: Transport,
    app: Arc<A>,
    telemetry: Arc<Telemetry>,
    tracker: ConnectionTracker,
    mut shutdown: watch::Receiver<bool>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let transport = Arc::new(transport);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS_PER_LISTENER, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let guard = tracker.open();
        let app = app.clone();
        let transport = transport.clone();
        let telemetry = telemetry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _slot = slot;
            let Some((stream, gate)) = handshake(tcp, peer, &transport, &telemetry).await else {
                return;
            };
            match (gate, &*transport) {
                (Some(gate), Transport::Mesh { policy, .. }) => {
                    serve_revocable(app, stream, gate, policy, shutdown).await;
                }
                _ => {
                    let mut next = app.process_new(stream, &shutdown).await;
                    while let Some(stream) = next {
                        next = app.process_new(stream, &shutdown).await;
                    }
                }
            }
        });
    }
    drop(listener);
    app.cleanup().await;
}

/// Serves a plaintext connection let in under PERMISSIVE. When the policy makes the workload
/// STRICT, it is told to stop: HTTP/2 with a GOAWAY after its streams, HTTP/1.1 after the
/// response in flight (or at once when idle between requests).
async fn serve_revocable<A: ServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    stream: Stream,
    gate: Arc<IdleGate>,
    policy: &PolicyStore,
    mut shutdown: watch::Receiver<bool>,
) {
    let (stop, stopping) = watch::channel(false);
    let serving = async {
        let mut next = app.process_new(stream, &stopping).await;
        while let Some(stream) = next {
            next = app.process_new(stream, &stopping).await;
        }
    };
    tokio::pin!(serving);
    let mut changes = policy.subscribe();
    let mut closing = false;
    loop {
        tokio::select! {
            () = &mut serving => return,
            _ = shutdown.wait_for(|s| *s), if !closing => {
                closing = true;
                stop.send_replace(true);
            }
            changed = changes.changed(), if !closing => {
                if changed.is_err() || policy.current().mtls == MtlsMode::STRICT {
                    tracing::debug!("the workload is STRICT now; closing a plaintext connection");
                    closing = true;
                    stop.send_replace(true);
                    gate.close();
                }
            }
        }
    }
}

async fn handshake(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    transport: &Transport,
    telemetry: &Telemetry,
) -> Option<(Stream, Option<Arc<IdleGate>>)> {
    let (store, plaintext_allowed) = match transport {
        Transport::Plain => return Some((Box::new(CoalescedWrites::new(l4_stream(tcp, peer), None)), None)),
        Transport::Mesh { tls, policy } => (tls, policy.current().mtls == MtlsMode::PERMISSIVE),
        Transport::Tls(acceptor) => {
            return match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(l4_stream(tcp, peer))).await {
                Ok(Ok(tls)) => Some((Box::new(tls), None)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    None
                }
                Err(_) => None,
            };
        }
    };
    if plaintext_allowed {
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
                let gate = Arc::new(IdleGate::default());
                let stream = CoalescedWrites::new(l4_stream(tcp, peer), Some(gate.clone()));
                return Some((Box::new(stream), Some(gate)));
            }
            Ok(Ok(1)) => {}
            _ => return None,
        }
    }
    let state = store.current();
    let handshakes = &telemetry.metrics.tls_handshakes;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, state.acceptor.tls_handshake(l4_stream(tcp, peer))).await {
        Ok(Ok(tls)) => {
            handshakes.with_label_values(&["inbound", "success"]).inc();
            Some((Box::new(tls), None))
        }
        Ok(Err(e)) => {
            handshakes.with_label_values(&["inbound", "failure"]).inc();
            let reason = handshake_failure_reason(&e);
            tracing::info!(%peer, %reason, "inbound TLS handshake refused");
            telemetry.events.emit(SecurityEvent::TlsFailure {
                direction: "inbound",
                peer: Some(peer),
                expected: None,
                reason,
            });
            None
        }
        Err(_) => {
            handshakes.with_label_values(&["inbound", "timeout"]).inc();
            None
        }
    }
}

/// The verifier's own words when it refused the certificate, else pingora's description.
fn handshake_failure_reason(e: &pingora::Error) -> String {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(crate::tls::refusal_reason)
        .unwrap_or_else(|| e.to_string().trim().to_string())
}

/// Wraps a socket the way pingora's own listener does, so the session digest knows the peer,
/// the local address and, behind an iptables REDIRECT, the original destination.
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> L4Stream {
    let fd = tcp.as_raw_fd();
    let mut stream = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    stream.set_socket_digest(digest);
    stream
}

/// A plaintext connection whose small writes wait for a flush. pingora's own listener gives its
/// streams a write buffer, but only through a crate-private call; a stream made from a socket
/// here writes straight through, so an HTTP/1.1 answer left as a header and then a body — two
/// segments, two wake-ups of the app. pingora's HTTP/1.1 code flushes wherever the other side
/// must see the bytes now (1xx, bodies of unknown length, the end of a body), so only writes that
/// were going to be followed by more wait. (TLS streams need no such layer: rustls writes a whole
/// flight of HTTP/2 frames as one record.)
#[derive(Debug)]
struct CoalescedWrites {
    io: tokio::io::BufWriter<L4Stream>,
    /// Set on plaintext connections of a PERMISSIVE port: lets the connection be ended between
    /// two HTTP/1.1 requests.
    gate: Option<Arc<IdleGate>>,
    /// Whether the last bytes moved were read (a request is in flight) or written (its answer).
    last_read: bool,
    /// HTTP/2 (the connection preface came first): its requests interleave, so it is ended
    /// with a GOAWAY instead.
    h2: bool,
}

/// pingora's own listener's default: one Ethernet-sized segment.
const WRITE_BUFFER: usize = 1460;

/// Ends an HTTP/1.1 connection at its next idle moment: the next read after an answer is an end
/// of stream, so pingora closes the connection instead of waiting for another request.
#[derive(Debug, Default)]
pub struct IdleGate {
    closing: std::sync::atomic::AtomicBool,
    /// The reader parked on the socket, woken when the gate closes.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
}

impl IdleGate {
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(waker) = self.reader.lock().expect("gate lock").take() {
            waker.wake();
        }
    }
}

impl CoalescedWrites {
    fn new(stream: L4Stream, gate: Option<Arc<IdleGate>>) -> Self {
        CoalescedWrites {
            io: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, stream),
            gate,
            last_read: false,
            h2: false,
        }
    }

    /// Between requests on a connection whose gate closed.
    fn ended(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.closing.load(Ordering::Acquire)) && !self.last_read && !self.h2
    }
}

impl tokio::io::AsyncRead for CoalescedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.ended() {
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        match polled {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if !self.last_read && self.gate.is_some() && buf.filled()[before..].starts_with(b"PRI ") {
                    self.h2 = true;
                }
                self.last_read = true;
            }
            std::task::Poll::Pending => {
                if let Some(gate) = &self.gate {
                    *gate.reader.lock().expect("gate lock") = Some(cx.waker().clone());
                    // The gate may have closed between the first check and the registration.
                    if self.ended() {
                        return std::task::Poll::Ready(Ok(()));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CoalescedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last_read = false;
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last_read = false;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Shutdown for CoalescedWrites {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await {
            tracing::debug!(error = %e, "shutting down a connection");
        }
    }
}

impl pingora::protocols::UniqueID for CoalescedWrites {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.io.get_ref().id()
    }
}

impl pingora::protocols::Ssl for CoalescedWrites {}

#[async_trait::async_trait]
impl pingora::protocols::Peek for CoalescedWrites {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.io.get_mut().try_peek(buf).await
    }
}

impl pingora::protocols::GetTimingDigest for CoalescedWrites {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.io.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.io.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.io.get_ref().get_write_pending_time()
    }
}

impl pingora::protocols::GetProxyDigest for CoalescedWrites {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.io.get_ref().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.io.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for CoalescedWrites {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.io.get_ref().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.io.get_mut().set_socket_digest(digest)
    }
}
