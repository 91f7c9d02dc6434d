//! The mutating admission webhook: AdmissionReview v1 in, AdmissionReview v1 out with the
//! JSON Patch that [`super::pod::plan`] makes (the one `palisade inject` applies to text).
//!
//! Which pods reach it is the MutatingWebhookConfiguration's business (namespaces or pods
//! labelled `palisade.dev/inject: enabled`); here each pod is checked for what no selector can
//! see: the opt-out annotation, host networking, an injection already done. Every decision is
//! logged with its reason and whether the webhook fails open or closed.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pod::{self, Decision};
use crate::config::{FailurePolicy, InjectSettings};

/// The largest review read: a pod is at most about 1.5 MB in etcd, and the review holds it once
/// (twice for an update, which is never sent here).
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

/// Review bytes all requests together may hold while their bodies arrive. The port asks no
/// certificate (the API server presents none), so any pod can reach it: 60 connections each
/// holding most of a 4 MiB body once took a control plane to 250 MB, past the chart's limit,
/// and with it the CA and every policy stream. A body waits for room until its deadline.
pub const REVIEW_BUDGET_BYTES: usize = 32 << 20;

/// A review's whole body must arrive within this of its head: the API server sends a pod at
/// once, and gives up itself after `timeoutSeconds` (at most 30 s, 10 s by default).
pub const REVIEW_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Large review bodies one source address may be sending at once: a pod that stalls bodies
/// holds at most this many of the budget's 4 MiB shares (32 connections of 4 MiB each would hold
/// it all).
const BODIES_PER_SOURCE: usize = 2;

/// A review over this is large. A pod's review is tens of KiB; one with a large ConfigMap-like
/// annotation may reach a few hundred.
const LARGE_REVIEW_BYTES: usize = 256 << 10;

/// Reviews decoded at once. Decoding a JSON body into a value takes up to ten times its size
/// (a 4 MiB array of numbers: about 45 MB), so they take turns; a real pod decodes in well
/// under a millisecond.
const DECODES_AT_ONCE: usize = 1;

/// What the webhook decided for one review.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// 200 with an AdmissionReview; 400 when the body is no AdmissionReview v1 at all.
    pub status: u16,
    pub body: Vec<u8>,
    pub decision: Decided,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// With what the operator should hear of ([`super::annotations::warnings`]).
    Injected(Vec<String>),
    Skipped(String),
    /// The pod could not be injected; the failure policy chose the answer.
    Failed(String),
    /// Not an AdmissionReview v1.
    Malformed(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// Answers one AdmissionReview (the body of `POST /inject`) with the AdmissionReview to send
/// back; a body that is no AdmissionReview v1 gets a short JSON error (served with 400).
pub fn review(body: &[u8], settings: &InjectSettings, failure_policy: FailurePolicy) -> Vec<u8> {
    decide(body, settings, failure_policy).body
}

/// As [`review`], with the HTTP status and the decision, for the server and its log.
pub fn decide(body: &[u8], settings: &InjectSettings, failure_policy: FailurePolicy) -> Outcome {
    let review: Review = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return malformed(format!("the body is not an AdmissionReview: {e}")),
    };
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return malformed(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {} {}",
            review.api_version, review.kind
        ));
    }
    let Some(request) = review.request else { return malformed("the AdmissionReview has no request".into()) };
    let is_pod = request.kind.as_ref().is_none_or(|k| k.group.is_empty() && k.kind == "Pod");
    let decision = if !is_pod || request.operation.as_deref().is_some_and(|o| o != "CREATE") {
        Ok(None)
    } else {
        match &request.object {
            Some(object) => pod::plan(object, "", request.namespace.as_deref(), settings).map(Some),
            None => Err(pod::PodError::Shape { field: "request.object".into(), message: "missing".into() }),
        }
    };
    let (response, decided) = match decision {
        Ok(Some(Decision::Inject { ops, warnings })) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            let mut response = json!({
                "uid": request.uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
                "auditAnnotations": {"injection": "injected"},
            });
            // kubectl prints these to whoever created the pod; a controller's pods have only the log.
            if !warnings.is_empty() {
                response["warnings"] = warnings.iter().map(|w| format!("palisade: {w}")).collect();
            }
            (response, Decided::Injected(warnings))
        }
        Ok(Some(Decision::Skip(why))) => {
            let why = why.to_string();
            (
                json!({"uid": request.uid, "allowed": true, "auditAnnotations": {"injection": format!("skipped: {why}")}}),
                Decided::Skipped(why),
            )
        }
        Ok(None) => {
            let why = match is_pod {
                true => format!("operation {} (only CREATE is injected)", request.operation.as_deref().unwrap_or("?")),
                false => "not a Pod".to_string(),
            };
            (json!({"uid": request.uid, "allowed": true}), Decided::Skipped(why))
        }
        Err(e) => {
            let why = format!("cannot inject: {e}");
            let response = match failure_policy {
                FailurePolicy::Fail => json!({
                    "uid": request.uid, "allowed": false,
                    "status": {"code": 422, "reason": "Invalid", "message": format!("palisade: {why}")},
                }),
                FailurePolicy::Ignore => json!({
                    "uid": request.uid, "allowed": true,
                    "warnings": [format!("palisade: {why}; the pod runs without a sidecar (failurePolicy Ignore)")],
                }),
            };
            (response, Decided::Failed(why))
        }
    };
    let name = request
        .name
        .or_else(|| {
            let meta = request.object.as_ref()?.get("metadata")?;
            meta.get("name").or_else(|| meta.get("generateName")).and_then(Value::as_str).map(str::to_string)
        })
        .unwrap_or_default();
    let namespace = request.namespace.unwrap_or_default();
    match &decided {
        Decided::Injected(warnings) => {
            tracing::info!(target: "palisade::inject", %namespace, pod = %name, decision = "injected",
            failure_policy = failure_policy.describe(), "pod injected");
            for warning in warnings {
                tracing::warn!(target: "palisade::inject", %namespace, pod = %name, %warning, "pod injected with a warning");
            }
        }
        Decided::Skipped(why) => {
            tracing::info!(target: "palisade::inject", %namespace, pod = %name, decision = "skipped",
            reason = %why, failure_policy = failure_policy.describe(), "pod not injected")
        }
        Decided::Failed(why) => {
            tracing::warn!(target: "palisade::inject", %namespace, pod = %name, decision = "failed",
            reason = %why, failure_policy = failure_policy.describe(),
            outcome = if failure_policy == FailurePolicy::Fail { "pod refused" } else { "pod admitted without a sidecar" },
            "pod could not be injected")
        }
        Decided::Malformed(_) => {}
    }
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
    Outcome { status: 200, body: serde_json::to_vec(&body).unwrap_or_default(), decision: decided }
}

fn malformed(why: String) -> Outcome {
    tracing::warn!(target: "palisade::inject", decision = "malformed", reason = %why, "request refused");
    let body = serde_json::to_vec(&json!({"error": "invalid_request", "message": why})).unwrap_or_default();
    Outcome { status: 400, body, decision: Decided::Malformed(why) }
}

/// Certificates (DER) as PEM text, as a trust anchors file holds them.
fn pem_certificates(certificates: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut pem = String::new();
    for der in certificates {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

/// The webhook's HTTP app: `POST /inject` and `GET /live`. TLS is the listener's business.
pub struct InjectWebhook {
    /// Read again, with its trust anchors, when `identity.trustAnchorsFile` changes.
    settings: Arc<LiveSettings>,
    pub failure_policy: FailurePolicy,
    /// [`REVIEW_BUDGET_BYTES`], in KiB.
    budget: Arc<tokio::sync::Semaphore>,
    /// Bodies being read, per source address ([`BODIES_PER_SOURCE`]).
    bodies: Arc<crate::serve::PerSource>,
    decodes: Arc<tokio::sync::Semaphore>,
}

impl InjectWebhook {
    pub fn new(settings: InjectSettings, failure_policy: FailurePolicy) -> Self {
        tracing::info!(target: "palisade::inject", failure_policy = failure_policy.describe(), "injection webhook configured");
        InjectWebhook {
            settings: Arc::new(LiveSettings::new(settings)),
            failure_policy,
            budget: Arc::new(tokio::sync::Semaphore::new(REVIEW_BUDGET_BYTES >> 10)),
            bodies: crate::serve::PerSource::new(BODIES_PER_SOURCE),
            decodes: Arc::new(tokio::sync::Semaphore::new(DECODES_AT_ONCE)),
        }
    }

    /// Injects the roots the control plane's CA hands out ([`LiveSettings::follow_ca_roots`]).
    pub fn follow_ca_roots(&self, roots: tokio::sync::watch::Receiver<Arc<Vec<Vec<u8>>>>) {
        self.settings.follow_ca_roots(roots);
    }

    /// The review's body, within [`MAX_REVIEW_BYTES`] and [`REVIEW_BODY_DEADLINE`], with the
    /// part of [`REVIEW_BUDGET_BYTES`] it holds; else the answer to give.
    async fn read_review(
        &self,
        session: &mut ServerSession,
    ) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), Response<Vec<u8>>> {
        use crate::admin::text;
        let declared = session.req_header().headers.get(http::header::CONTENT_LENGTH);
        if declared.and_then(|v| v.to_str().ok()?.parse::<usize>().ok()).is_some_and(|n| n > MAX_REVIEW_BYTES) {
            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "review too large"));
        }
        let source = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        // A large body takes one of its source's places while it arrives; a pod's usual review
        // (tens of KiB, in one piece) takes none, so the API server's bursts are never refused.
        let mut sending = None;
        // Whether a body of `size` may go on arriving.
        let mut large = |size: usize| -> bool {
            if size <= LARGE_REVIEW_BYTES || sending.is_some() {
                return true;
            }
            match source.map(|ip| self.bodies.enter(ip)) {
                Some(None) => false,
                slot => {
                    sending = slot.flatten();
                    true
                }
            }
        };
        let too_many = || {
            text(
                StatusCode::TOO_MANY_REQUESTS,
                "this address is sending as many large reviews at once as it may; send one when another is done",
            )
        };
        if !large(declared.and_then(|v| v.to_str().ok()?.parse::<usize>().ok()).unwrap_or(0)) {
            return Err(too_many());
        }
        let read = async {
            let mut body = Vec::new();
            let mut held = self.budget.clone().acquire_many_owned(0).await.expect("never closed");
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_REVIEW_BYTES {
                            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "review too large"));
                        }
                        if !large(body.len() + chunk.len()) {
                            return Err(too_many());
                        }
                        // Room for what the body now holds, in whole KiB.
                        let needed = (body.len() + chunk.len()).div_ceil(1024) as u32;
                        let more = needed.saturating_sub(held.num_permits() as u32);
                        held.merge(self.budget.clone().acquire_many_owned(more).await.expect("never closed"));
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => return Ok((body, held)),
                    Err(e) => return Err(text(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}"))),
                }
            }
        };
        match tokio::time::timeout(REVIEW_BODY_DEADLINE, read).await {
            Ok(read) => read,
            Err(_) => Err(text(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the review's body did not arrive within {} s (or other reviews held the webhook's memory meanwhile); send it whole, at once",
                    REVIEW_BODY_DEADLINE.as_secs()
                ),
            )),
        }
    }

    /// The webhook of a control plane's `webhook` section: its files read (trust anchors) and
    /// its settings checked; every mistake as `(field, message)`, fields from `webhook.`.
    pub fn from_config(config: &crate::config::WebhookConfig) -> Result<Self, Vec<(String, String)>> {
        let field = |f: String| format!("webhook.sidecar.{f}");
        let settings = config.sidecar.clone().resolve_files().map_err(|(f, m)| vec![(field(f), m)])?;
        let invalid: Vec<(String, String)> = settings.check().into_iter().map(|(f, m)| (field(f), m)).collect();
        if !invalid.is_empty() {
            return Err(invalid);
        }
        Ok(Self::new(settings, config.failure_policy))
    }
}

/// The webhook's settings, with the trust anchors `identity.trustAnchorsFile` holds now: a
/// rotation's new root goes into every pod made from then on (a sidecar checks the control plane
/// with what its pod was given), without a restart of the webhook.
pub(super) struct LiveSettings {
    settings: arc_swap::ArcSwap<InjectSettings>,
    /// Why the file's anchors were last refused: said once, not at every pod.
    refused: std::sync::Mutex<Option<String>>,
    /// The roots the control plane's CA hands out (DER), when it runs one: what pods get.
    ca_roots: std::sync::OnceLock<tokio::sync::watch::Receiver<Arc<Vec<Vec<u8>>>>>,
}

impl LiveSettings {
    pub(super) fn new(settings: InjectSettings) -> Self {
        LiveSettings {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            refused: Default::default(),
            ca_roots: Default::default(),
        }
    }

    /// Pods get the roots the CA hands out, its trust bundle in force, rather than what the
    /// anchors file says: the CA checks a new bundle (it must hold the root the CA chains to) and
    /// keeps the last good one, and injected pods must trust the control plane it signs for.
    pub(super) fn follow_ca_roots(&self, roots: tokio::sync::watch::Receiver<Arc<Vec<Vec<u8>>>>) {
        let _ = self.ca_roots.set(roots);
    }

    /// The settings for the review at hand: with the CA's roots followed, those; else the file is
    /// read at each review (a review is a pod's creation, and the file a few certificates); one
    /// that cannot be read, or holds anchors that are refused, leaves the last good ones in
    /// force, with a warning when that changes.
    pub(super) fn current(&self) -> Arc<InjectSettings> {
        let now = self.settings.load_full();
        if let Some(roots) = self.ca_roots.get() {
            let pem = pem_certificates(&roots.borrow());
            if now.identity.trust_anchors.as_ref() == Some(&pem) {
                return now;
            }
            let mut next = (*now).clone();
            next.identity.trust_anchors = Some(pem);
            tracing::info!(target: "palisade::inject", "the CA's trust bundle changed; pods injected from now on get it");
            let next = Arc::new(next);
            self.settings.store(next.clone());
            return next;
        }
        let Some(path) = &now.identity.trust_anchors_file else { return now };
        let pem = match crate::yaml::read_file(path, 1 << 20) {
            Ok(pem) if now.identity.trust_anchors.as_ref() == Some(&pem) => {
                self.refuse(None);
                return now;
            }
            Ok(pem) => pem,
            Err(e) => {
                self.refuse(Some(format!("{}: {e}", path.display())));
                return now;
            }
        };
        let mut next = (*now).clone();
        next.identity.trust_anchors = Some(pem);
        if let Some((field, why)) = next.check().first() {
            self.refuse(Some(format!("{}: {field}: {why}", path.display())));
            return now;
        }
        self.refuse(None);
        tracing::info!(target: "palisade::inject", file = %path.display(), "the trust anchors changed; pods injected from now on get them");
        let next = Arc::new(next);
        self.settings.store(next.clone());
        next
    }

    fn refuse(&self, why: Option<String>) {
        let mut refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *refused != why {
            if let Some(why) = &why {
                tracing::warn!(target: "palisade::inject", "the trust anchors could not be taken again ({why}); the last ones read stay in force");
            }
            *refused = why;
        }
    }
}

#[async_trait]
impl ServeHttp for InjectWebhook {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        use crate::admin::{reply, text};
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::POST, "/inject") => {
                let (body, held) = match self.read_review(session).await {
                    Ok(read) => read,
                    Err(answer) => return answer,
                };
                let settings = self.settings.clone();
                let policy = self.failure_policy;
                let turn = self.decodes.clone().acquire_owned().await.expect("never closed");
                // Parsing and planning a large pod is CPU work: keep it off the listener's runtime.
                let outcome = tokio::task::spawn_blocking(move || {
                    let outcome = decide(&body, &settings.current(), policy);
                    drop((body, held, turn));
                    outcome
                })
                .await;
                match outcome {
                    Ok(o) => {
                        reply(StatusCode::from_u16(o.status).unwrap_or(StatusCode::OK), "application/json", o.body)
                    }
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "the review failed"),
                }
            }
            (Method::GET, "/live") => text(StatusCode::OK, "live"),
            (_, "/inject" | "/live") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => text(StatusCode::NOT_FOUND, "not found; POST /inject"),
        }
    }
}
