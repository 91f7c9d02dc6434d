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
use crate::ca::{KubeApi, Refused, TokenChecker};
use crate::config::Workload;
use crate::proto::policy_discovery_server::PolicyDiscovery;
use crate::proto::{
    control_message, sidecar_message, ControlMessage, Hello, Policy, PolicySnapshot, Revision, SidecarMessage,
    TrustBundle,
};
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

/// Where a workload's labels come from: the API server, for the pod a verified token names; or,
/// when configured to, the labels the sidecar's Hello claims.
pub struct LabelSource {
    pub tokens: Option<Arc<dyn TokenChecker>>,
    pub api: Option<Arc<KubeApi>>,
    pub trust_hello: bool,
}

/// What [`PolicyService::trusted_labels`] settled on.
struct TrustedLabels {
    labels: BTreeMap<String, String>,
    /// `apiServer` or `hello`, as `/status` shows it.
    source: &'static str,
    /// The pod a verified token names.
    pod: Option<String>,
}

pub struct PolicyService {
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub labels: LabelSource,
    /// The mesh's roots, when the control plane runs the CA: sent on every stream.
    pub bundle: Option<watch::Receiver<Arc<Vec<Vec<u8>>>>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<ControlMetrics>,
    pub telemetry: Arc<Telemetry>,
    pub trust_domain: String,
    /// `policies.revisionHold`.
    pub revision_hold: Duration,
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
            detail: None,
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

    /// The labels that select this workload's policies, and where they came from. A token
    /// names the pod; the API server says what its labels are (a claim that differs is ignored
    /// and reported). Without a token, the Hello's claim only when the configuration trusts it.
    async fn trusted_labels(
        &self,
        peer: &Peer,
        hello: &Hello,
        claimed: &BTreeMap<String, String>,
    ) -> Result<TrustedLabels, Status> {
        let source = &self.labels;
        let (token, Some(tokens), Some(api)) = (hello.token.trim(), &source.tokens, &source.api) else {
            if source.trust_hello {
                return Ok(TrustedLabels { labels: claimed.clone(), source: "hello", pod: None });
            }
            let why = match source.api {
                // The sidecar may well have sent a token: there is nowhere to look its pod up.
                None => {
                    "the control plane cannot verify this workload's labels: it has no API server to read the pod \
                         from (in a cluster it uses its own; elsewhere set kubernetes, or policies.trustHelloLabels)"
                }
                Some(_) => {
                    "the control plane cannot verify this workload's labels: give the sidecar a service-account \
                            token (policy.tokenFile), or set policies.trustHelloLabels on the control plane"
                }
            };
            return Err(self.refuse(peer, "labels", why.into()));
        };
        if token.is_empty() {
            if source.trust_hello {
                return Ok(TrustedLabels { labels: claimed.clone(), source: "hello", pod: None });
            }
            return Err(self.refuse(
                peer,
                "labels",
                "no service-account token in the Hello: labels cannot be verified".into(),
            ));
        }
        let proven = tokens.check(token).await.map_err(|e| match e {
            // Busy (this plane's share of token checks, or the API server): nothing was refused,
            // and the sidecar retries with backoff.
            Refused::Unavailable(why) => {
                self.metrics.refused.with_label_values(&["unavailable"]).inc();
                tracing::debug!(identity = %peer.id, %why, "policy subscription put off: token check unavailable");
                Status::unavailable(why)
            }
            e => self.refuse(peer, "token", e.to_string()),
        })?;
        let (Some(ns), Some(sa)) = (peer.id.namespace(), peer.id.service_account()) else {
            return Err(self.refuse(peer, "identity", format!("{} is not a workload identity", peer.id)));
        };
        if proven.namespace != ns || proven.service_account != sa {
            return Err(self.refuse(
                peer,
                "token",
                format!(
                    "the token is for {}/{}, the certificate for {ns}/{sa}",
                    proven.namespace, proven.service_account
                ),
            ));
        }
        let Some((pod_name, pod_uid)) = &proven.pod else {
            return Err(self.refuse(peer, "token", "the token names no pod (use a projected, bound token)".into()));
        };
        let pod = api.pod(ns, pod_name).await.map_err(|e| {
            self.metrics.refused.with_label_values(&["labels"]).inc();
            tracing::warn!(identity = %peer.id, error = %e, "cannot read the pod's labels");
            Status::unavailable(format!("cannot read pod {ns}/{pod_name} from the API server: {e}"))
        })?;
        if pod.uid != *pod_uid || pod.service_account != sa {
            return Err(self.refuse(
                peer,
                "token",
                format!("pod {ns}/{pod_name} is not the token's (uid or service account differ)"),
            ));
        }
        if !claimed.is_empty() && *claimed != pod.labels {
            self.metrics.refused.with_label_values(&["labels_mismatch"]).inc();
            tracing::warn!(identity = %peer.id, pod = %pod_name, claimed = ?claimed, actual = ?pod.labels,
                "a sidecar claimed labels its pod does not have; the pod's are used");
            self.telemetry.events.emit(SecurityEvent::LabelsMismatch {
                identity: peer.id.to_string(),
                pod: format!("{ns}/{pod_name}"),
                claimed: format!("{claimed:?}"),
                actual: format!("{:?}", pod.labels),
            });
        }
        Ok(TrustedLabels { labels: pod.labels, source: "apiServer", pod: Some(pod_name.clone()) })
    }

    /// The workload a Hello describes, if the certificate allows it.
    fn workload(&self, peer: &Peer, hello: &mut Hello) -> Result<Workload, Status> {
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
        Ok(Workload {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            labels: std::mem::take(&mut hello.labels).into_iter().collect::<BTreeMap<_, _>>(),
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
        // This replica cannot tell every policy yet (a refused file it never saw good): the
        // sidecar keeps what it has and retries, through the Service, to a replica that can.
        // Its /ready stays up: the CA and the webhook behind the same Service still serve.
        let unservable = self.catalog.borrow().unservable_because.clone();
        if let Some(why) = unservable {
            self.metrics.refused.with_label_values(&["unservable"]).inc();
            tracing::debug!(identity = %peer.id, %why, "policy subscription put off");
            return Err(Status::unavailable(why));
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(SidecarMessage { kind: Some(sidecar_message::Kind::Hello(hello)) }))) => hello,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10 s")),
            _ => return Err(Status::invalid_argument("the first message of a stream must be a Hello")),
        };
        let mut hello = hello;
        let mut workload = self.workload(&peer, &mut hello)?;
        let trusted = self.trusted_labels(&peer, &hello, &workload.labels).await?;
        workload.labels = trusted.labels;
        // A verified token names the pod; the Hello's node is only the sidecar's word.
        let node = trusted.pod.unwrap_or_else(|| std::mem::take(&mut hello.node));
        tracing::info!(identity = %peer.id, address = %peer.address, %node, "sidecar subscribed");
        let session = self.registry.open(
            peer.id.to_string(),
            workload.namespace.clone(),
            workload.labels.clone(),
            node,
            Some(peer.address),
            trusted.source,
        );
        let (sender, receiver) = mpsc::channel(2);
        let catalog = self.catalog.clone();
        let held = Held {
            version: (!hello.version.is_empty()).then_some(hello.version),
            revision: hello.revision,
            hold: self.revision_hold,
        };
        let bundle = self.bundle.clone();
        tokio::spawn(serve_stream(session, workload, held, inbound, sender, catalog, bundle, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// What the sidecar said it enforces when it opened the stream.
struct Held {
    version: Option<String>,
    revision: u64,
    /// How long a snapshot of an earlier revision is held back.
    hold: Duration,
}

/// Sends a snapshot whenever the set selecting this workload changes (and only then, and never
/// one of an earlier revision than the sidecar holds), the source's revision whenever it moves
/// past the sidecar's without a snapshot to carry it (a resumed stream, a revision that leaves
/// this set unchanged), the mesh's roots whenever they change, and records every answer, until
/// either side goes away.
#[allow(clippy::too_many_arguments)]
async fn serve_stream(
    session: Session,
    workload: Workload,
    held: Held,
    mut inbound: Streaming<SidecarMessage>,
    sender: mpsc::Sender<Result<ControlMessage, Status>>,
    mut catalog: watch::Receiver<Arc<Catalog>>,
    mut bundle: Option<watch::Receiver<Arc<Vec<Vec<u8>>>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sent = held.version.clone();
    // The latest revision the sidecar holds or was sent.
    let mut revision = held.revision;
    // Holding back a snapshot of an earlier revision than the sidecar's, since when.
    let mut waiting: Option<tokio::time::Instant> = None;
    let mut first = true;
    if let Some(bundle) = &mut bundle {
        let roots = bundle.borrow_and_update().to_vec();
        let message = ControlMessage { kind: Some(control_message::Kind::TrustBundle(TrustBundle { roots })) };
        if sender.send(Ok(message)).await.is_err() {
            return;
        }
    }
    loop {
        let current = catalog.borrow_and_update().clone();
        session.evaluated(current.generation);
        // Servable: a stream starts only on a servable catalog (see `stream_policies`), and a
        // catalog once servable stays so.
        let selection = current.select(&workload);
        let current_there = sent.as_deref() == Some(selection.version.as_str());
        let older = selection.revision != 0 && selection.revision < revision;
        // A revision this replica read and then went back from is a rollback, taken at once;
        // one it never read may be what it has yet to read.
        let rolled_back = older && revision <= current.highest_revision;
        let held_too_long = waiting.is_some_and(|since| since.elapsed() >= held.hold);
        if !current_there && older && !rolled_back && !held_too_long {
            session.ahead(sent.as_deref(), revision, selection.revision);
            waiting.get_or_insert_with(tokio::time::Instant::now);
        } else if !current_there {
            if rolled_back {
                tracing::info!(
                    held = revision,
                    mine = selection.revision,
                    "the policy revision went back to one this replica read before (a rollback); sending it"
                );
            } else if older {
                tracing::warn!(
                    held = revision,
                    mine = selection.revision,
                    "a sidecar's policy revision is still later than this replica's after policies.revisionHold: the revision was reset (a new install?); sending this one"
                );
            }
            // A snapshot without a revision leaves the sidecar's last known one, as it does there.
            if selection.revision != 0 {
                revision = selection.revision;
            }
            waiting = None;
            let snapshot = PolicySnapshot {
                revision: selection.revision,
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
        } else {
            // The sidecar holds this set already: nothing to apply, but it must learn the
            // revision this set is current at, or it would tell the next replica an older one
            // and a replica that has not read this revision could take it back. Not a push:
            // not counted, and not answered.
            if selection.revision > revision {
                revision = selection.revision;
                let note = Revision { version: selection.version.clone(), revision };
                let message = ControlMessage { kind: Some(control_message::Kind::Revision(note)) };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if first || waiting.is_some() {
                session.resumed(&selection.version);
                waiting = None;
            }
        }
        first = false;
        let roots_changed = async {
            match &mut bundle {
                Some(bundle) => bundle.changed().await.ok().map(|()| bundle.borrow_and_update().to_vec()),
                None => std::future::pending().await,
            }
        };
        let stopping = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        // While a snapshot is held back, the hold's end is a reason to look again.
        let hold_over = async {
            match waiting {
                Some(since) => tokio::time::sleep_until(since + held.hold).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stopping => return,
            () = hold_over => {}
            changed = catalog.changed() => if changed.is_err() { return },
            roots = roots_changed => {
                let Some(roots) = roots else { return };
                let message = ControlMessage { kind: Some(control_message::Kind::TrustBundle(TrustBundle { roots })) };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
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
