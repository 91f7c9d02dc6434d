//! TCP to the app's ports that are not HTTP (`inbound.opaquePorts`): a mesh peer's tunnel (a TCP
//! connection another sidecar carries over mutual TLS for its app, [`super::opaque`]), told apart
//! from HTTP by its ALPN on the inbound port; and, while the workload is PERMISSIVE, a client's
//! plaintext without a sidecar (a database client not yet in the mesh). Only opaque ports take
//! them: the caller's sidecar decides what it tunnels, and raw bytes to an HTTP port would go
//! around the pipeline. The caller is judged by the policy as a connection
//! ([`PolicySnapshot::authorize_connection`]; plaintext has no principal), then the bytes go to
//! the app at the port the caller addressed, as HTTP requests do.
//!
//! [`PolicySnapshot::authorize_connection`]: crate::policy::PolicySnapshot::authorize_connection

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};

use super::opaque::{end_label, relay, Moved, CONNECT_TIMEOUT, OPAQUE_IDLE_TIMEOUT};
use crate::identity::SpiffeId;
use crate::policy::{ConnectionView, PolicyStore, Refusal};
use crate::telemetry::{DeniedConnection, SecurityEvent, Telemetry};
use crate::tls::TlsStore;
use tokio::sync::watch;

/// What an inbound listener needs to serve TCP to opaque ports.
pub struct InboundTcp {
    /// `inbound.app`: where the app listens ([`crate::config::app_target`]).
    pub app: SocketAddr,
    /// `inbound.opaquePorts`: the ports a tunnel may reach. Any other is HTTP's, whose requests
    /// must go through the pipeline, not around it as bytes.
    pub opaque_ports: Vec<u16>,
    pub tls: Arc<TlsStore>,
    pub policy: Arc<PolicyStore>,
    pub telemetry: Arc<Telemetry>,
    /// How long plaintext may carry nothing before it is closed: HTTP's `limits.idleTimeout`.
    /// A caller that proved no identity holds no slot for the hour a mesh peer's tunnel gets.
    pub plaintext_idle: Duration,
}

/// Whether a PERMISSIVE port's plaintext client had spoken when it was sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoke {
    /// Its first words are known not to be an HTTP request.
    Client,
    /// Nothing came within the wait for a client's first bytes: its server may speak first.
    Neither,
}

/// Why a PERMISSIVE port's plaintext that waited for its server is refused when its client
/// speaks first after all, with what may be an HTTP request.
pub const REQUEST_AFTER_SILENCE: &str =
    "an HTTP request after the 500 ms wait for a server that speaks first (an HTTP client must send its \
     request at once, or its app's port must not be in inbound.opaquePorts): only the HTTP pipeline takes requests";

/// Whether `header` is an HTTP/2 frame header for a SETTINGS frame (not an ACK) on stream 0:
/// what an HTTP/2 server with prior knowledge sends as soon as it accepts.
fn is_h2_settings(header: &[u8; 9]) -> bool {
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    header[3] == 0x04 && header[4] == 0 && header[5..9] == [0, 0, 0, 0] && length.is_multiple_of(6)
}

/// Where a connection's bytes go.
struct Reached {
    /// The port the caller addressed behind an iptables REDIRECT, else the app's, as for HTTP.
    port: u16,
    /// Where the bytes go: the same port unless `inbound.app` names one.
    app: SocketAddr,
    /// What the caller reached, as the events and the access log name it.
    destination: SocketAddr,
}

impl InboundTcp {
    fn reached(&self, digest: &SocketDigest) -> Reached {
        // The address the caller addressed behind an iptables REDIRECT, else the listener's own.
        let redirected = super::redirected_to(digest);
        let port = self.addressed_port(digest);
        let addressed = redirected.or_else(|| digest.local_addr().and_then(|l| l.as_inet()).copied());
        let app = crate::config::app_target(self.app, || super::addressed_pod_address(digest), port);
        Reached { port, app, destination: addressed.unwrap_or(app) }
    }

    /// The port a connection with this digest addressed, as the policy's `to.ports` and
    /// `spec.portLevelMtls` name it.
    pub(super) fn addressed_port(&self, digest: &SocketDigest) -> u16 {
        super::redirected_to(digest).map_or(self.app.port(), |a| a.port())
    }

    /// Whether a connection with this digest reaches one of the app's opaque ports: the port the
    /// bytes would reach decides, so with a fixed `inbound.app` port every connection lands
    /// there, whichever port it addressed.
    pub(super) fn reaches_opaque_port(&self, digest: &SocketDigest) -> bool {
        self.opaque_ports.contains(&self.reached(digest).app.port())
    }

    /// Counts a connection in `palisade_inbound_tcp_connections_total`: by the app's port the
    /// bytes reach when it is one of the opaque ports, else `other` (so no caller can make a
    /// series per port it tries), without allocating.
    pub(super) fn count(&self, principal: Option<&SpiffeId>, app_port: u16, decision: &str) {
        use std::io::Write;
        let mut digits = [0u8; 5];
        let mut room = &mut digits[..];
        let port = match self.opaque_ports.contains(&app_port) && write!(room, "{app_port}").is_ok() {
            true => {
                let len = 5 - room.len();
                std::str::from_utf8(&digits[..len]).unwrap_or("other")
            }
            false => "other",
        };
        let principal = principal.map_or("", SpiffeId::as_str);
        self.telemetry.metrics.inbound_tcp_connections.with_label_values(&[principal, port, decision]).inc();
    }

    /// The app's port a connection with this digest reaches.
    pub(super) fn app_port(&self, digest: &SocketDigest) -> u16 {
        self.reached(digest).app.port()
    }

    /// Serves one tunnel on `stream` (whatever was read of its ClientHello put back) until both
    /// sides close; its handshake must be done by `deadline`.
    pub(super) async fn serve_tunnel(&self, stream: L4Stream, peer: SocketAddr, deadline: tokio::time::Instant) {
        let Some(digest) = stream.get_socket_digest() else { return };
        let handshakes = &self.telemetry.metrics.tls_handshakes;
        let state = self.tls.current();
        let accepted = tokio::time::timeout_at(deadline, crate::tls::accept_tunnel(&state, stream)).await;
        let (tls, caller) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(reason)) => {
                let listener = digest.local_addr().and_then(|a| a.as_inet()).copied();
                super::inbound_handshake_refused::<()>(&self.telemetry, peer, listener, reason);
                return;
            }
            Err(_) => {
                handshakes.with_label_values(&["inbound", "timeout"]).inc();
                return;
            }
        };
        drop(state);
        handshakes.with_label_values(&["inbound", "success"]).inc();
        self.judge_and_relay(tls, Some(&caller), peer, &digest, Spoke::Client).await
    }

    /// Serves a PERMISSIVE port's plaintext to an opaque port (whatever was read of it put back):
    /// judged without a principal, closed when the workload becomes STRICT.
    pub(super) async fn serve_plaintext(&self, stream: L4Stream, peer: SocketAddr, spoke: Spoke) {
        let Some(digest) = stream.get_socket_digest() else { return };
        self.judge_and_relay(stream, None, peer, &digest, spoke).await
    }

    async fn judge_and_relay<S>(
        &self,
        mut caller: S,
        principal: Option<&SpiffeId>,
        peer: SocketAddr,
        digest: &SocketDigest,
        spoke: Spoke,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + super::opaque::Abort,
    {
        let Reached { port, app, destination } = self.reached(digest);
        let view = ConnectionView { principal, source_ip: Some(peer.ip().to_canonical()), port };
        let denied = |by: (String, String), audit: bool| {
            self.telemetry.events.emit(SecurityEvent::ConnectionDenied(DeniedConnection {
                policy: by.0,
                rule: by.1,
                audit,
                principal: principal.map(ToString::to_string),
                source: peer,
                destination,
            }))
        };
        let refused = |why: (String, String), reason: &str| {
            tracing::debug!(%peer, caller = ?principal, port, reason, "TCP connection refused");
            denied(why, false);
        };
        // A close_notify (a FIN for plaintext): a caller that sent nothing yet (its server speaks
        // first) sees the connection closed, not broken.
        let close = |mut caller: S| async move {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, caller.shutdown()).await;
        };
        let counted = |decision: &str| self.count(principal, app.port(), decision);
        if !self.opaque_ports.contains(&app.port()) {
            counted("not_opaque");
            let why = ("-".to_string(), crate::telemetry::OPAQUE_PORTS_RULE.to_string());
            refused(why, "not one of inbound.opaquePorts: an HTTP port, whose requests go through the pipeline");
            return close(caller).await;
        }
        // Subscribed before the decision: an update made while the app is being reached is one
        // this connection sees.
        let mut changes = self.policy.subscribe();
        let decided = self.policy.current().authorize_connection(&view, |by| {
            denied((by.policy.to_string(), by.rule.to_string()), true);
        });
        if let Err(refusal) = decided {
            counted("deny");
            refused(refusal.policy_and_rule(), refusal.reason());
            return close(caller).await;
        }
        counted("allow");
        let started = Instant::now();
        let moved = Moved::default();
        let principal_name = principal.map(SpiffeId::as_str);
        let log = |end: &'static str| {
            let record = moved.access("inbound", principal_name, peer, destination, started, end);
            self.telemetry.access_tcp(&record)
        };
        let mut app = match crate::tls::connect_tcp(app, CONNECT_TIMEOUT).await {
            Ok(app) => app,
            Err(e) => {
                tracing::debug!(%peer, %app, error = %e, "inbound TCP: the app is unreachable");
                close(caller).await;
                return log("unreachable");
            }
        };
        let idle = if principal.is_some() { OPAQUE_IDLE_TIMEOUT } else { self.plaintext_idle };
        if spoke == Spoke::Neither {
            match self.first_speaker(&mut caller, &mut app, &view, &mut changes, idle).await {
                Ok(early) => moved.sent_before(early),
                Err(Stop::Refused(why)) => {
                    denied(why, false);
                    close(caller).await;
                    return log("denied");
                }
                Err(Stop::Ended(end)) => return log(end),
            }
        }
        // A policy update that refuses this caller now closes the connection, as it would refuse
        // its next HTTP request: a DENY rule added for a database's clients takes effect on the
        // connections a pool keeps open for hours, as ztunnel re-checks its connections; and
        // plaintext ends when the workload becomes STRICT.
        let revocation = std::sync::OnceLock::new();
        let revoked = async {
            let _ = revocation.set(self.refused_by_update(&mut changes, &view).await);
        };
        // Boxed: two relay buffers (and a TLS session), for as long as the connection lives.
        let end = Box::pin(relay(caller, app, idle, &moved, revoked)).await;
        if let Some(refusal) = revocation.get() {
            tracing::debug!(%peer, caller = ?principal, port, reason = refusal.reason(),
                "TCP connection closed: the policy now refuses it");
            denied(refusal.policy_and_rule(), false);
        }
        log(end_label(end, peer, destination));
    }
}

impl InboundTcp {
    /// The policy's first refusal of `view` after an update (pending while none refuses, and for
    /// good once the store is gone): what closes an open connection.
    async fn refused_by_update(&self, changes: &mut watch::Receiver<()>, view: &ConnectionView<'_>) -> Refusal {
        while changes.changed().await.is_ok() {
            if let Err(refusal) = self.policy.current().recheck_connection(view) {
                return refusal;
            }
        }
        std::future::pending().await
    }

    /// After the wait for a client's first bytes ran out: whoever speaks first. An app that
    /// greets (MySQL, SMTP) is what the wait was for. A client that speaks first after all is
    /// sorted as it would have been at once, so a request never reaches the app around the
    /// pipeline by waiting; of HTTP servers only HTTP/2's speaks first (its SETTINGS), to a client
    /// that would not have waited. The policy is watched meanwhile, as it is once bytes move.
    /// Returns how many of the client's bytes went on to the app.
    async fn first_speaker<S: AsyncRead + Unpin>(
        &self,
        caller: &mut S,
        app: &mut tokio::net::TcpStream,
        view: &ConnectionView<'_>,
        changes: &mut watch::Receiver<()>,
        idle: Duration,
    ) -> Result<usize, Stop> {
        let request = || Stop::Refused(("-".to_string(), REQUEST_AFTER_SILENCE.to_string()));
        let mut chunk = [0u8; super::opaque::FIRST_WORDS_MAX];
        let spoken = tokio::select! {
            ready = app.readable() => ready.map(|()| 0),
            read = caller.read(&mut chunk) => match read {
                Ok(0) => return Err(Stop::Ended("closed")),
                read => read,
            },
            () = tokio::time::sleep(idle) => return Err(Stop::Ended("idle_timeout")),
            refusal = self.refused_by_update(changes, view) => return Err(Stop::Refused(refusal.policy_and_rule())),
        };
        let n = spoken.map_err(|_| Stop::Ended("closed"))?;
        if n == 0 {
            let mut greeting = [0u8; 9];
            return match app.peek(&mut greeting).await {
                Ok(9) if is_h2_settings(&greeting) => Err(request()),
                _ => Ok(0),
            };
        }
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let early = match super::opaque::read_first_words(caller, deadline, chunk[..n].to_vec()).await {
            Ok((false, early)) => early,
            Ok((true, _)) => return Err(request()),
            Err(_) => return Err(Stop::Ended("error")),
        };
        // Judged again before a byte goes on: the sorting may have taken a while.
        if let Err(refusal) = self.policy.current().recheck_connection(view) {
            return Err(Stop::Refused(refusal.policy_and_rule()));
        }
        app.write_all(&early).await.map_err(|_| Stop::Ended("error"))?;
        Ok(early.len())
    }
}

/// Why [`InboundTcp::first_speaker`] ended a connection instead of relaying it.
enum Stop {
    /// Refused: the policy and rule (or `-` and the reason) its event names.
    Refused((String, String)),
    /// Ended by the client, the idle timeout or an error: the access log's `end`.
    Ended(&'static str),
}
