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
    Injected,
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
        Ok(Some(Decision::Inject(ops))) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            let response = json!({
                "uid": request.uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
                "auditAnnotations": {"injection": "injected"},
            });
            (response, Decided::Injected)
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
        Decided::Injected => tracing::info!(target: "palisade::inject", %namespace, pod = %name, decision = "injected",
            failure_policy = failure_policy.describe(), "pod injected"),
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

/// The webhook's HTTP app: `POST /inject` and `GET /live`. TLS is the listener's business.
pub struct InjectWebhook {
    pub settings: Arc<InjectSettings>,
    pub failure_policy: FailurePolicy,
}

impl InjectWebhook {
    pub fn new(settings: InjectSettings, failure_policy: FailurePolicy) -> Self {
        tracing::info!(target: "palisade::inject", failure_policy = failure_policy.describe(), "injection webhook configured");
        InjectWebhook { settings: Arc::new(settings), failure_policy }
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

#[async_trait]
impl ServeHttp for InjectWebhook {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        use crate::admin::{reply, text};
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::POST, "/inject") => {
                let mut body = Vec::new();
                loop {
                    match session.read_request_body().await {
                        Ok(Some(chunk)) => {
                            body.extend_from_slice(&chunk);
                            if body.len() > MAX_REVIEW_BYTES {
                                return text(StatusCode::PAYLOAD_TOO_LARGE, "review too large");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")),
                    }
                }
                let settings = self.settings.clone();
                let policy = self.failure_policy;
                // Parsing and planning a large pod is CPU work: keep it off the listener's runtime.
                let outcome = tokio::task::spawn_blocking(move || decide(&body, &settings, policy)).await;
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
