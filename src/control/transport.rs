//! TLS under tonic, server side: an accept loop that runs each handshake on its own task and
//! hands tonic the streams that passed. The policy stream's listener is mutual TLS, each stream
//! carrying the client's SPIFFE ID ([`accept_mtls`]); the CA's asks no client certificate (its
//! callers have none yet and prove themselves with a token: [`accept_tls`]). The client side is
//! [`crate::channel::connector`].

use std::net::{IpAddr, SocketAddr};
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
use crate::serve::{PerSource, SourceSlot};
use crate::tls::TlsStore;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that has sent nothing for this long is closed. Both servers ping their HTTP/2
/// clients every 10 s and a live client answers; a client that never sent the preface (which
/// nothing pings), or stopped answering, holds its place no longer than this.
const READ_IDLE: Duration = Duration::from_secs(60);

/// Who is at the other end of a stream; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: SpiffeId,
    pub address: SocketAddr,
}

/// A TLS connection, with what is known of its client: a [`Peer`] (mutual TLS) or its address.
pub struct TlsConnection<I> {
    inner: ReadIdle<TlsStream<TcpStream>>,
    peer: I,
    /// Held for the connection's life: the listener's caps on open connections.
    _slot: Slot,
}

/// A stream whose reads fail once nothing was read from it for `limit`.
struct ReadIdle<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> ReadIdle<S> {
    fn new(inner: S, limit: Duration) -> Self {
        ReadIdle { inner, limit, deadline: Box::pin(tokio::time::sleep(limit)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadIdle<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let next = tokio::time::Instant::now() + self.limit;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match std::future::Future::poll(self.deadline.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "nothing read"))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

/// Open connections (handshaking or serving) of one listener, at most: past it new ones are
/// closed at once, so a flood of idle connections cannot exhaust file descriptors. A quarter of
/// the open-files limit (the control plane has up to four listeners), and never more than this.
const MAX_CONNECTIONS: usize = 16_384;

/// Open connections from one address, at most. A sidecar holds one policy stream and, now and
/// then, one connection to the CA; the CA's port asks no certificate, so without this one pod
/// could hold every connection the listener allows (about 25 KB of memory each) and no other
/// pod could get a certificate.
pub(crate) const MAX_CONNECTIONS_PER_SOURCE: usize = 32;

/// A listener's cap on connections: `open_files` is the process's limit.
fn connection_cap(open_files: u64) -> usize {
    let share = open_files.saturating_sub(256) / 4;
    usize::try_from(share).unwrap_or(usize::MAX).clamp(64, MAX_CONNECTIONS)
}

/// One connection's place: in the listener's total and in its source's count (until
/// [`Slot::leave_source`]).
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _source: Option<SourceSlot>,
}

impl Slot {
    /// A place for a connection from `source`, unless the listener or that source is full.
    fn take(
        slots: &Arc<tokio::sync::Semaphore>,
        sources: &Arc<PerSource>,
        source: IpAddr,
    ) -> Result<Slot, &'static str> {
        let permit = slots.clone().try_acquire_owned().map_err(|_| "connection limit reached")?;
        let source = sources.enter(source).ok_or("connection limit per source reached")?;
        Ok(Slot { _permit: permit, _source: Some(source) })
    }

    /// No longer counted against its source (it keeps its place in the listener's total).
    fn leave_source(&mut self) {
        self._source = None;
    }
}

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
        Pin::new(&mut self.inner.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.inner.is_write_vectored()
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
    // Counted per source only until the handshake proves an identity: a stranger cannot hold
    // every place with silent connections, and sidecars behind one address (a load balancer's
    // SNAT) are not held back once they are who they say.
    accept(listener, tls, |state| state.server_config.clone(), identify, Counted::WhileHandshaking, on_refused, stop)
}

/// As [`accept_mtls`], asking no client certificate.
pub fn accept_tls(
    listener: AsyncListener,
    tls: Arc<TlsStore>,
    on_refused: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    stop: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<TlsConnection<Option<SocketAddr>>>> {
    accept(
        listener,
        tls,
        |state| state.server_config_open.clone(),
        |_, address| Ok(Some(address)),
        Counted::ForLife,
        on_refused,
        stop,
    )
}

fn identify(stream: &TlsStream<TcpStream>, address: SocketAddr) -> Result<Peer, String> {
    match stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| spiffe_id_from_der(c)) {
        Some(CertIdentity::Spiffe(id)) => Ok(Peer { id, address }),
        _ => Err("no SPIFFE identity".to_string()),
    }
}

/// How long a connection counts against its source's [`MAX_CONNECTIONS_PER_SOURCE`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Until the handshake proves the client's identity.
    WhileHandshaking,
    /// For as long as it is open (a port that asks no certificate).
    ForLife,
}

fn accept<I: Send + 'static>(
    mut listener: AsyncListener,
    tls: Arc<TlsStore>,
    config: fn(&crate::tls::TlsState) -> Arc<rustls::ServerConfig>,
    identify: fn(&TlsStream<TcpStream>, SocketAddr) -> Result<I, String>,
    counted: Counted,
    on_refused: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> mpsc::Receiver<std::io::Result<TlsConnection<I>>> {
    let (sender, receiver) = mpsc::channel(64);
    let on_refused = Arc::new(on_refused);
    let cap = connection_cap(crate::lifecycle::raise_open_files_limit());
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let sources = PerSource::new(MAX_CONNECTIONS_PER_SOURCE);
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
            let slot = match Slot::take(&slots, &sources, address.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    // At debug: a flood would otherwise write a line per connection.
                    tracing::debug!(%address, limit = cap, per_source = MAX_CONNECTIONS_PER_SOURCE, "control plane {why}; closing");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config(&tls.current()));
            let sender = sender.clone();
            let on_refused = on_refused.clone();
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => match identify(&stream, address) {
                        Ok(peer) => {
                            let mut slot = slot;
                            if counted == Counted::WhileHandshaking {
                                slot.leave_source();
                            }
                            let inner = ReadIdle::new(stream, READ_IDLE);
                            let connection = TlsConnection { inner, peer, _slot: slot };
                            let _ = sender.send(Ok(connection)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_a_bounded_share_and_gets_it_back_when_it_closes() {
        let slots = Arc::new(tokio::sync::Semaphore::new(100));
        let sources = PerSource::new(MAX_CONNECTIONS_PER_SOURCE);
        let one: IpAddr = "10.1.0.7".parse().unwrap();
        let take = |source| Slot::take(&slots, &sources, source);
        let mut held: Vec<Slot> = (0..MAX_CONNECTIONS_PER_SOURCE).map(|_| take(one).unwrap()).collect();
        assert_eq!(take(one).err(), Some("connection limit per source reached"));
        // One that proved its identity no longer counts against its address, and only once.
        held[0].leave_source();
        let proven_room = take(one);
        assert!(proven_room.is_ok());
        held[0].leave_source();
        assert_eq!(take(one).err(), Some("connection limit per source reached"));
        drop(proven_room);
        let other = take("10.1.0.8".parse().unwrap());
        assert!(other.is_ok(), "another source is not held back");
        drop(held);
        let again = take(one);
        assert!(again.is_ok(), "places come back as connections close");
        drop(other);
        assert_eq!(sources.sources(), 1, "sources with none open are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_and_one_that_sends_is_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = ReadIdle::new(server, Duration::from_secs(60));
        let mut byte = [0u8; 1];
        // A byte before the limit: read, and the limit starts again from it.
        tokio::time::advance(Duration::from_secs(59)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(server.read(&mut byte).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        client.write_all(b"y").await.unwrap();
        assert_eq!(server.read(&mut byte).await.unwrap(), 1);
        // Then nothing: the read fails once the limit has passed.
        let read = tokio::spawn(async move { server.read(&mut byte).await });
        tokio::time::advance(Duration::from_secs(61)).await;
        let error = read.await.unwrap().expect_err("closed for idleness");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
    }

    #[test]
    fn the_listener_cap_is_a_share_of_the_open_files_limit() {
        assert_eq!(connection_cap(1024), 192);
        assert_eq!(connection_cap(1 << 20), MAX_CONNECTIONS);
        assert_eq!(connection_cap(100), 64, "never below a floor a handful of sidecars need");
    }
}
