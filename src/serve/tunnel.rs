//! The inbound end of a tunnel: a TCP connection another sidecar carries over mutual TLS for its
//! app ([`super::opaque`]), told apart from HTTP by its ALPN on the inbound port. The caller's
//! identity is judged by the policy as a connection ([`PolicySnapshot::authorize_connection`]),
//! then the bytes go to the app at the port the caller addressed, as HTTP requests do.
//!
//! [`PolicySnapshot::authorize_connection`]: crate::policy::PolicySnapshot::authorize_connection

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;

use super::opaque::{end_label, relay, Moved, CONNECT_TIMEOUT, OPAQUE_IDLE_TIMEOUT};
use crate::policy::{ConnectionView, PolicyStore};
use crate::telemetry::{DeniedConnection, SecurityEvent, TcpAccessRecord, Telemetry};
use crate::tls::TlsStore;

/// What an inbound listener needs to serve tunnels.
pub struct InboundTunnels {
    /// `inbound.app`: where the app listens ([`crate::config::app_target`]).
    pub app: SocketAddr,
    pub tls: Arc<TlsStore>,
    pub policy: Arc<PolicyStore>,
    pub telemetry: Arc<Telemetry>,
}

impl InboundTunnels {
    /// Serves one tunnel on `stream` (its ClientHello already read and put back) until both
    /// sides close.
    pub(super) async fn serve(&self, stream: L4Stream, peer: SocketAddr) {
        let Some(digest) = stream.get_socket_digest() else { return };
        let handshakes = &self.telemetry.metrics.tls_handshakes;
        let state = self.tls.current();
        let accepted = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, crate::tls::accept_tunnel(&state, stream)).await;
        let (tls, caller) = match accepted {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(reason)) => {
                super::inbound_handshake_refused::<()>(&self.telemetry, peer, reason);
                return;
            }
            Err(_) => {
                handshakes.with_label_values(&["inbound", "timeout"]).inc();
                return;
            }
        };
        drop(state);
        handshakes.with_label_values(&["inbound", "success"]).inc();
        // The port the caller addressed behind an iptables REDIRECT, else the app's, as for HTTP;
        // the address likewise, else the listener's own.
        let redirected = super::redirected_to(&digest);
        let port = redirected.map_or(self.app.port(), |a| a.port());
        let addressed = redirected.or_else(|| digest.local_addr().and_then(|l| l.as_inet()).copied());
        let view = ConnectionView { principal: &caller, source_ip: Some(peer.ip().to_canonical()), port };
        let destination = crate::config::app_target(self.app, || addressed.map(|a| a.ip().to_canonical()), port);
        let denied = |by: (String, String), audit: bool| {
            self.telemetry.events.emit(SecurityEvent::ConnectionDenied(DeniedConnection {
                policy: by.0,
                rule: by.1,
                audit,
                principal: caller.to_string(),
                source: peer,
                destination: addressed.unwrap_or(destination),
            }))
        };
        let decided = self.policy.current().authorize_connection(&view, |by| {
            denied((by.policy.to_string(), by.rule.to_string()), true);
        });
        if let Err(refusal) = decided {
            tracing::debug!(%peer, %caller, port, reason = refusal.reason(), "tunnel refused by policy");
            denied(refusal.policy_and_rule(), false);
            // A close_notify: a caller that sent nothing yet (its server speaks first) sees the
            // tunnel closed, not broken.
            let mut tls = tls;
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, tokio::io::AsyncWriteExt::shutdown(&mut tls)).await;
            return;
        }
        let started = Instant::now();
        let log = |moved: Moved, end: &'static str| {
            self.telemetry.access_tcp(&TcpAccessRecord {
                direction: "inbound",
                principal: Some(caller.as_str()),
                source: peer,
                destination,
                bytes_sent: moved.sent,
                bytes_received: moved.received,
                seconds: started.elapsed().as_secs_f64(),
                end,
            })
        };
        let app = match crate::tls::connect_tcp(destination, CONNECT_TIMEOUT).await {
            Ok(app) => app,
            Err(e) => {
                tracing::debug!(%peer, %destination, error = %e, "tunnel: the app is unreachable");
                return log(Moved::default(), "unreachable");
            }
        };
        // A policy update that refuses this caller now closes the tunnel, as it would refuse
        // its next HTTP request: a DENY rule added for a database's clients takes effect on the
        // connections a pool keeps open for hours, as ztunnel re-checks its connections.
        let mut changes = self.policy.subscribe();
        let mut moved = Moved::default();
        let end = {
            // Boxed: two relay buffers and a TLS session, for as long as the connection lives.
            let relaying = Box::pin(relay(tls, app, OPAQUE_IDLE_TIMEOUT, &mut moved));
            let revoked = async {
                while changes.changed().await.is_ok() {
                    // Its AUDIT findings were reported when it opened.
                    if let Err(refusal) = self.policy.current().authorize_connection(&view, |_| {}) {
                        return refusal;
                    }
                }
                std::future::pending().await
            };
            tokio::select! {
                end = relaying => Ok(end),
                refusal = revoked => Err(refusal),
            }
        };
        match end {
            Ok(end) => log(moved, end_label(end, peer, destination)),
            Err(refusal) => {
                tracing::debug!(%peer, %caller, port, reason = refusal.reason(), "tunnel closed: the policy now refuses it");
                denied(refusal.policy_and_rule(), false);
                log(moved, "denied");
            }
        }
    }
}
