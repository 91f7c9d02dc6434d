//! Mutual TLS under tonic, server side: an accept loop that runs each handshake on its own task
//! and hands tonic the streams that passed, each carrying the client's SPIFFE ID. (The client
//! side is [`crate::channel::connector`].)

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::{spiffe_id_from_der, CertIdentity, SpiffeId};
use crate::tls::TlsStore;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a stream; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: SpiffeId,
    pub address: SocketAddr,
}

/// A TLS connection whose client proved a SPIFFE identity of the trust domain.
pub struct AuthenticatedStream {
    inner: TlsStream<TcpStream>,
    peer: Peer,
    /// Held for the connection's life: the listener's cap on open connections.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Open connections (handshaking or serving); past it new ones are closed at once, so a flood
/// of idle connections cannot exhaust file descriptors.
const MAX_CONNECTIONS: usize = 16_384;

impl Connected for AuthenticatedStream {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts until `stop`, handshaking each connection on its own task (a slow client never holds
/// up the others); refused handshakes are logged and counted by `on_refused`.
pub fn accept_mtls(
    listener: TcpListener,
    tls: Arc<TlsStore>,
    on_refused: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<AuthenticatedStream>> {
    let (sender, receiver) = mpsc::channel(64);
    let on_refused = Arc::new(on_refused);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|s| *s) => return,
            };
            let (tcp, address) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "control plane accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%address, limit = MAX_CONNECTIONS, "control plane connection limit reached; closing");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server_config.clone());
            let sender = sender.clone();
            let on_refused = on_refused.clone();
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let presented = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| spiffe_id_from_der(c));
                        if let Some(CertIdentity::Spiffe(id)) = presented {
                            let peer = Peer { id, address };
                            let _ = sender.send(Ok(AuthenticatedStream { inner: stream, peer, _slot: slot })).await;
                            return;
                        }
                        "no SPIFFE identity".to_string()
                    }
                    Ok(Err(e)) => crate::tls::refusal_reason(&e).unwrap_or_else(|| e.to_string()),
                    Err(_) => "handshake timed out".to_string(),
                };
                on_refused(address, reason);
            });
        }
    });
    receiver
}
