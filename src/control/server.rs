//! The policy stream, control-plane side: who may subscribe, what each sidecar is sent, and
//! what it answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::catalog::Catalog;
use super::metrics::ControlMetrics;
use super::status::{Registry, Session};
use super::transport::Peer;
use crate::config::WorkloadConfig;
use crate::proto::policy_discovery_server::PolicyDiscovery;
use crate::proto::{control_message, sidecar_message, ControlMessage, Hello, Policy, PolicySnapshot, SidecarMessage};
use crate::telemetry::{DeniedRequest, RequestFacts, SecurityEvent, Telemetry};

/// A sidecar that opened a stream must say who it is promptly.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_PATH: &str = "/palisade.control.v1.PolicyDiscovery/StreamPolicies";
/// Labels are for selection; a flood of them is not a workload.
const MAX_LABELS: usize = 64;
/// A pod name (a DNS subdomain).
const MAX_NODE: usize = 253;
/// Versions are 12 hex digits; anything much longer is not one of ours.
const MAX_VERSION: usize = 64;
/// What /status keeps of a NACK's reason.
const MAX_REASON: usize = 4096;
/// Streams per connection: a sidecar needs one (two while it reconnects).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Sidecars send Hellos, ACKs and NACKs: small messages.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// At most `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub struct PolicyService {
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<ControlMetrics>,
    pub telemetry: Arc<Telemetry>,
    pub trust_domain: String,
    /// Turns true at shutdown: every stream ends, so sidecars reconnect to another replica.
    pub stop: watch::Receiver<bool>,
}

impl PolicyService {
    fn refuse(&self, peer: &Peer, reason: &'static str, message: String) -> Status {
        self.metrics.refused.with_label_values(&[reason]).inc();
        tracing::warn!(identity = %peer.id, address = %peer.address, %message, "policy subscription refused");
        // The stream is an HTTP/2 POST: an HTTP Activity refused by the control plane's own rule.
        self.telemetry.events.emit(SecurityEvent::RequestDenied(DeniedRequest {
            status: 403,
            policy: "palisade-control".into(),
            rule: reason.into(),
            audit: false,
            request: RequestFacts {
                principal: Some(peer.id.to_string()),
                source: Some(peer.address),
                method: "POST".into(),
                path: STREAM_PATH.into(),
                ..Default::default()
            },
        }));
        Status::permission_denied(message)
    }

    /// The workload a Hello describes, if the certificate allows it.
    fn workload(&self, peer: &Peer, hello: &mut Hello) -> Result<WorkloadConfig, Status> {
        let (Some(namespace), Some(service_account)) = (peer.id.namespace(), peer.id.service_account()) else {
            return Err(self.refuse(
                peer,
                "identity",
                format!("{} is not a workload identity (spiffe://<td>/ns/<namespace>/sa/<account>)", peer.id),
            ));
        };
        if peer.id.trust_domain() != self.trust_domain {
            return Err(self.refuse(
                peer,
                "identity",
                format!("{} is not in trust domain {}", peer.id, self.trust_domain),
            ));
        }
        if hello.namespace != namespace {
            return Err(self.refuse(
                peer,
                "namespace",
                format!("{} may not subscribe as a workload of namespace {:?}", peer.id, hello.namespace),
            ));
        }
        // Kubernetes' own limits: a qualified key of up to 253 + 1 + 63 characters, values of up
        // to 63; what a stream holds for its whole life stays small.
        let too_long = hello.labels.iter().any(|(k, v)| k.len() > 317 || v.len() > 63);
        if hello.labels.len() > MAX_LABELS || too_long {
            return Err(self.refuse(
                peer,
                "labels",
                format!("more than {MAX_LABELS} labels, or a label over Kubernetes' length limits"),
            ));
        }
        if hello.node.len() > MAX_NODE || hello.version.len() > MAX_VERSION {
            return Err(self.refuse(peer, "hello", "node or version too long".to_string()));
        }
        Ok(WorkloadConfig {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            labels: std::mem::take(&mut hello.labels).into_iter().collect::<BTreeMap<_, _>>(),
            labels_file: None,
        })
    }
}

#[tonic::async_trait]
impl PolicyDiscovery for PolicyService {
    type StreamPoliciesStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn stream_policies(
        &self,
        request: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<Self::StreamPoliciesStream>, Status> {
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(SidecarMessage { kind: Some(sidecar_message::Kind::Hello(hello)) }))) => hello,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10 s")),
            _ => return Err(Status::invalid_argument("the first message of a stream must be a Hello")),
        };
        let mut hello = hello;
        let workload = self.workload(&peer, &mut hello)?;
        tracing::info!(identity = %peer.id, address = %peer.address, node = %hello.node, "sidecar subscribed");
        let session = self.registry.open(
            peer.id.to_string(),
            workload.namespace.clone(),
            workload.labels.clone(),
            std::mem::take(&mut hello.node),
            Some(peer.address),
        );
        let (sender, receiver) = mpsc::channel(2);
        let catalog = self.catalog.clone();
        let held = (!hello.version.is_empty()).then_some(hello.version);
        tokio::spawn(serve_stream(session, workload, held, inbound, sender, catalog, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Sends a snapshot whenever the set selecting this workload changes (and only then), and
/// records every answer, until either side goes away.
async fn serve_stream(
    session: Session,
    workload: WorkloadConfig,
    held: Option<String>,
    mut inbound: Streaming<SidecarMessage>,
    sender: mpsc::Sender<Result<ControlMessage, Status>>,
    mut catalog: watch::Receiver<Arc<Catalog>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sent = held.clone();
    let mut first = true;
    loop {
        let current = catalog.borrow_and_update().clone();
        let selection = current.select(&workload);
        session.evaluated(current.generation);
        if sent.as_deref() != Some(selection.version.as_str()) {
            let snapshot = PolicySnapshot {
                version: selection.version.clone(),
                policies: selection
                    .entries
                    .iter()
                    .map(|e| Policy { source: e.source.clone(), document: e.document.clone() })
                    .collect(),
            };
            let message = ControlMessage { kind: Some(control_message::Kind::Snapshot(snapshot)) };
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
            let since = if first { Instant::now() } else { current.made_at.unwrap_or_else(Instant::now) };
            session.pushed(&selection.version, since);
            sent = Some(selection.version);
        } else if first {
            session.resumed(&selection.version);
        }
        first = false;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = catalog.changed() => if changed.is_err() { return },
            message = inbound.message() => match message {
                Ok(Some(SidecarMessage { kind: Some(sidecar_message::Kind::Ack(ack)) })) => {
                    session.acked(bounded(&ack.version, MAX_VERSION))
                }
                Ok(Some(SidecarMessage { kind: Some(sidecar_message::Kind::Nack(nack)) })) => {
                    tracing::warn!(version = %nack.version, reason = %nack.reason, "a sidecar refused a snapshot");
                    session.nacked(bounded(&nack.version, MAX_VERSION), bounded(&nack.reason, MAX_REASON));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            },
        }
    }
}
