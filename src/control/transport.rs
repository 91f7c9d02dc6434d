//! TLS under tonic, server side: an accept loop that runs each handshake on its own task and
//! hands tonic the streams that passed. The policy stream's listener is mutual TLS, each stream
//! carrying the client's SPIFFE ID ([`accept_mtls`]); the CA's asks no client certificate (its
//! callers have none yet and prove themselves with a token: [`accept_tls`]). The client side is
//! [`crate::channel::connector`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::{spiffe_id_from_der, CertIdentity, SpiffeId};
use crate::lifecycle::AsyncListener;
use crate::tls::TlsStore;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of a stream; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: SpiffeId,
    pub address: SocketAddr,
}

/// A TLS connection, with what is known of its client: a [`Peer`] (mutual TLS) or its address.
pub struct TlsConnection<I> {
    inner: TlsStream<TcpStream>,
    peer: I,
    /// Held for the connection's life: the listener's cap on open connections.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Open connections (handshaking or serving); past it new ones are closed at once, so a flood
/// of idle connections cannot exhaust file descriptors.
const MAX_CONNECTIONS: usize = 16_384;

impl<I: Clone + Send + Sync + 'static> Connected for TlsConnection<I> {
    type ConnectInfo = I;
    fn connect_info(&self) -> I {
        self.peer.clone()
    }
}

impl<I: Unpin> AsyncRead for TlsConnection<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for TlsConnection<I> {
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
/// up the others) and requiring a client certificate with a SPIFFE ID; refused handshakes are
/// logged and counted by `on_refused`.
pub fn accept_mtls(
    listener: AsyncListener,
    tls: Arc<TlsStore>,
    on_refused: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    stop: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<TlsConnection<Peer>>> {
    accept(listener, tls, |state| state.server_config.clone(), identify, on_refused, stop)
}

/// As [`accept_mtls`], asking no client certificate.
pub fn accept_tls(
    listener: AsyncListener,
    tls: Arc<TlsStore>,
    on_refused: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    stop: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<TlsConnection<Option<SocketAddr>>>> {
    accept(listener, tls, |state| state.server_config_open.clone(), |_, address| Ok(Some(address)), on_refused, stop)
}

fn identify(stream: &TlsStream<TcpStream>, address: SocketAddr) -> Result<Peer, String> {
    match stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| spiffe_id_from_der(c)) {
        Some(CertIdentity::Spiffe(id)) => Ok(Peer { id, address }),
        _ => Err("no SPIFFE identity".to_string()),
    }
}

fn accept<I: Send + 'static>(
    mut listener: AsyncListener,
    tls: Arc<TlsStore>,
    config: fn(&crate::tls::TlsState) -> Arc<rustls::ServerConfig>,
    identify: fn(&TlsStream<TcpStream>, SocketAddr) -> Result<I, String>,
    on_refused: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<TlsConnection<I>>> {
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
            let acceptor = tokio_rustls::TlsAcceptor::from(config(&tls.current()));
            let sender = sender.clone();
            let on_refused = on_refused.clone();
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => match identify(&stream, address) {
                        Ok(peer) => {
                            let _ = sender.send(Ok(TlsConnection { inner: stream, peer, _slot: slot })).await;
                            return;
                        }
                        Err(reason) => reason,
                    },
                    Ok(Err(e)) => crate::tls::refusal_reason(&e).unwrap_or_else(|| e.to_string()),
                    Err(_) => "handshake timed out".to_string(),
                };
                on_refused(address, reason);
            });
        }
    });
    receiver
}
