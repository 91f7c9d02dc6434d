//! The inbound end of a tunnel: a TCP connection another sidecar carries over mutual TLS for its
//! app ([`super::opaque`]), told apart from HTTP by its ALPN on the inbound port. Only the app's
//! ports that are not HTTP take tunnels (`inbound.opaquePorts`): the caller's sidecar decides
//! what it tunnels, and raw bytes to an HTTP port would go around the pipeline. The caller's
//! identity is judged by the policy as a connection ([`PolicySnapshot::authorize_connection`]),
//! then the bytes go to the app at the port the caller addressed, as HTTP requests do.
//!
//! [`PolicySnapshot::authorize_connection`]: crate::policy::PolicySnapshot::authorize_connection

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;

use super::opaque::{end_label, relay, Moved, CONNECT_TIMEOUT, OPAQUE_IDLE_TIMEOUT};
use crate::policy::{ConnectionView, PolicyStore};
use crate::telemetry::{DeniedConnection, SecurityEvent, Telemetry};
use crate::tls::TlsStore;

/// What an inbound listener needs to serve tunnels.
pub struct InboundTunnels {
    /// `inbound.app`: where the app listens ([`crate::config::app_target`]).
    pub app: SocketAddr,
    /// `inbound.opaquePorts`: the ports a tunnel may reach. Any other is HTTP's, whose requests
    /// must go through the pipeline, not around it as bytes.
    pub opaque_ports: Vec<u16>,
    pub tls: Arc<TlsStore>,
    pub policy: Arc<PolicyStore>,
    pub telemetry: Arc<Telemetry>,
}

impl InboundTunnels {
    /// Serves one tunnel on `stream` (whatever was read of its ClientHello put back) until both
    /// sides close; its handshake must be done by `deadline`.
    pub(super) async fn serve(&self, stream: L4Stream, peer: SocketAddr, deadline: tokio::time::Instant) {
        let Some(digest) = stream.get_socket_digest() else { return };
        let handshakes = &self.telemetry.metrics.tls_handshakes;
        let state = self.tls.current();
        let accepted = tokio::time::timeout_at(deadline, crate::tls::accept_tunnel(&state, stream)).await;
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
        let app = crate::config::app_target(self.app, || addressed.map(|a| a.ip().to_canonical()), port);
        // What the caller reached, as the events and the access log name it (the bytes go to
        // `app`: the same port unless `inbound.app` names one).
        let destination = addressed.unwrap_or(app);
        let denied = |by: (String, String), audit: bool| {
            self.telemetry.events.emit(SecurityEvent::ConnectionDenied(DeniedConnection {
                policy: by.0,
                rule: by.1,
                audit,
                principal: caller.to_string(),
                source: peer,
                destination,
            }))
        };
        let refuse = |tls: TlsStream, why: (String, String), reason: &str| {
            tracing::debug!(%peer, %caller, port, reason, "tunnel refused");
            denied(why, false);
            async move {
                // A close_notify: a caller that sent nothing yet (its server speaks first) sees
                // the tunnel closed, not broken.
                let mut tls = tls;
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, tls.shutdown()).await;
            }
        };
        // The port the bytes would reach decides: with a fixed `inbound.app` port every tunnel
        // lands there, whichever port it addressed.
        if !self.opaque_ports.contains(&app.port()) {
            let why = ("-".to_string(), crate::telemetry::OPAQUE_PORTS_RULE.to_string());
            return refuse(
                tls,
                why,
                "not one of inbound.opaquePorts: an HTTP port, whose requests go through the pipeline",
            )
            .await;
        }
        // Subscribed before the decision: an update made while the app is being reached is one
        // this tunnel sees.
        let mut changes = self.policy.subscribe();
        let decided = self.policy.current().authorize_connection(&view, |by| {
            denied((by.policy.to_string(), by.rule.to_string()), true);
        });
        if let Err(refusal) = decided {
            return refuse(tls, refusal.policy_and_rule(), refusal.reason()).await;
        }
        let started = Instant::now();
        let moved = Moved::default();
        let log = |end: &'static str| {
            let record = moved.access("inbound", Some(caller.as_str()), peer, destination, started, end);
            self.telemetry.access_tcp(&record)
        };
        let app = match crate::tls::connect_tcp(app, CONNECT_TIMEOUT).await {
            Ok(app) => app,
            Err(e) => {
                tracing::debug!(%peer, %app, error = %e, "tunnel: the app is unreachable");
                return log("unreachable");
            }
        };
        // A policy update that refuses this caller now closes the tunnel, as it would refuse
        // its next HTTP request: a DENY rule added for a database's clients takes effect on the
        // connections a pool keeps open for hours, as ztunnel re-checks its connections.
        let revocation = std::sync::OnceLock::new();
        let revoked = async {
            while changes.changed().await.is_ok() {
                if let Err(refusal) = self.policy.current().recheck_connection(&view) {
                    let _ = revocation.set(refusal);
                    return;
                }
            }
            std::future::pending().await
        };
        // Boxed: two relay buffers and a TLS session, for as long as the connection lives.
        let end = Box::pin(relay(tls, app, OPAQUE_IDLE_TIMEOUT, &moved, revoked)).await;
        if let Some(refusal) = revocation.get() {
            tracing::debug!(%peer, %caller, port, reason = refusal.reason(), "tunnel closed: the policy now refuses it");
            denied(refusal.policy_and_rule(), false);
        }
        log(end_label(end, peer, destination));
    }
}

type TlsStream = tokio_rustls::server::TlsStream<L4Stream>;
