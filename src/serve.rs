//! Accepting connections: TLS (STRICT), TLS or plaintext sniffed by the first byte (PERMISSIVE),
//! or plaintext (outbound, admin); then handing each stream to a pingora app.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

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
    /// Mutual TLS; plaintext too while `plaintext_allowed` holds (PERMISSIVE), without a
    /// principal. The flag follows the policy in force, so a policy's `mtls` takes effect for
    /// new connections without a restart.
    Mesh {
        tls: Arc<TlsStore>,
        plaintext_allowed: Arc<std::sync::atomic::AtomicBool>,
    },
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
            let Some(stream) = handshake(tcp, peer, &transport, &telemetry).await else {
                return;
            };
            let mut next = app.process_new(stream, &shutdown).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        });
    }
    drop(listener);
    app.cleanup().await;
}

async fn handshake(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    transport: &Transport,
    telemetry: &Telemetry,
) -> Option<Stream> {
    let (store, plaintext_allowed) = match transport {
        Transport::Plain => return Some(Box::new(CoalescedWrites::new(l4_stream(tcp, peer)))),
        Transport::Mesh { tls, plaintext_allowed } => (tls, plaintext_allowed.load(Ordering::Relaxed)),
    };
    if plaintext_allowed {
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
                return Some(Box::new(CoalescedWrites::new(l4_stream(tcp, peer))))
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
            Some(Box::new(tls))
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
struct CoalescedWrites(tokio::io::BufWriter<L4Stream>);

/// pingora's own listener's default: one Ethernet-sized segment.
const WRITE_BUFFER: usize = 1460;

impl CoalescedWrites {
    fn new(stream: L4Stream) -> Self {
        CoalescedWrites(tokio::io::BufWriter::with_capacity(WRITE_BUFFER, stream))
    }
}

impl tokio::io::AsyncRead for CoalescedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CoalescedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Shutdown for CoalescedWrites {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut self.0).await {
            tracing::debug!(error = %e, "shutting down a connection");
        }
    }
}

impl pingora::protocols::UniqueID for CoalescedWrites {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.0.get_ref().id()
    }
}

impl pingora::protocols::Ssl for CoalescedWrites {}

#[async_trait::async_trait]
impl pingora::protocols::Peek for CoalescedWrites {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.0.get_mut().try_peek(buf).await
    }
}

impl pingora::protocols::GetTimingDigest for CoalescedWrites {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.0.get_ref().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.0.get_ref().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.0.get_ref().get_write_pending_time()
    }
}

impl pingora::protocols::GetProxyDigest for CoalescedWrites {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.0.get_ref().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.0.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for CoalescedWrites {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_ref().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest)
    }
}
