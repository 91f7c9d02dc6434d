//! OpenTelemetry traces: one span per request and direction, W3C `traceparent`/`tracestate`
//! extracted and injected (B3 accepted), parent-based ratio sampling, and OTLP export (gRPC or
//! HTTP/protobuf) from a task of its own.
//!
//! The SDK makes the spans; ended spans go into a bounded queue that the export task drains in
//! batches. A request never waits on the collector: when the queue is full the span is dropped
//! and counted (`palisade_trace_spans_dropped_total`).

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracer, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::otlp_tls::CollectorRoots;
use crate::config::OtlpProtocol;
pub use crate::config::{ParentRoot, Propagators, SamplerChoice, TraceSettings};

/// Ended spans waiting for export; past it spans are dropped (OTel's default queue size).
const QUEUE: usize = 2048;
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK's sampler for the configured choice.
fn sampler(settings: &TraceSettings) -> Sampler {
    match settings.sampler {
        SamplerChoice::ParentBased(r) => Sampler::ParentBased(Box::new(root_sampler(settings_root(r)))),
        _ => root_sampler(settings.sampler),
    }
}

/// What decides for a trace that starts here: the configured sampler, or a parent-based one's
/// root. A B3 caller that defers its decision is decided by it too.
fn root_sampler(choice: SamplerChoice) -> Sampler {
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerChoice::ParentBased(r) => root_sampler(settings_root(r)),
    }
}

fn settings_root(root: ParentRoot) -> SamplerChoice {
    match root {
        ParentRoot::AlwaysOn => SamplerChoice::AlwaysOn,
        ParentRoot::AlwaysOff => SamplerChoice::AlwaysOff,
        ParentRoot::Ratio(r) => SamplerChoice::Ratio(r),
    }
}

/// Hands ended spans to the export task without waiting; a full queue drops the span.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    dropped: IntCounter,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// The metrics the export path keeps.
#[derive(Clone)]
pub struct TraceCounters {
    pub exported: IntCounter,
    pub dropped: IntCounter,
}

pub struct Traces {
    settings: TraceSettings,
    tracer: SdkTracer,
    /// Kept alive: it owns the processor the tracer reports to.
    _provider: SdkTracerProvider,
    resource: Resource,
    queue: Mutex<Option<mpsc::Receiver<SpanData>>>,
    counters: TraceCounters,
    propagator: TraceContextPropagator,
    /// Decides for B3 callers that defer.
    root: Sampler,
}

impl Traces {
    pub fn new(settings: TraceSettings, counters: TraceCounters) -> Traces {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .with_attributes(settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor { queue: sender, dropped: counters.dropped.clone() })
            .with_sampler(sampler(&settings))
            .with_resource(resource.clone())
            .build();
        let tracer = provider.tracer("palisade");
        let root = root_sampler(settings.sampler);
        Traces {
            settings,
            tracer,
            _provider: provider,
            resource,
            queue: Mutex::new(Some(receiver)),
            counters,
            propagator: TraceContextPropagator::new(),
            root,
        }
    }

    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    /// Starts a span for a request, a child of the caller's context when it sent one.
    pub fn start(&self, name: &'static str, kind: SpanKind, headers: &HeaderMap) -> RequestSpan {
        let propagators = self.settings.propagators;
        let parent = match propagators.tracecontext && single_traceparent(headers).is_some() {
            true => self.propagator.extract(&Headers(headers)),
            false => Context::new(),
        };
        let parent = if parent.span().span_context().is_valid() {
            parent
        } else {
            match b3(headers, propagators) {
                Some(B3Parent { context, deferred: false }) => Context::new().with_remote_span_context(context),
                // B3 without a sampling state defers the decision to the receiver: the trace
                // goes on, sampled as if it started here.
                Some(B3Parent { context, deferred: true }) => {
                    let decision = self.root.should_sample(None, context.trace_id(), name, &kind, &[], &[]).decision;
                    let flags = if decision == SamplingDecision::RecordAndSample {
                        TraceFlags::SAMPLED
                    } else {
                        TraceFlags::default()
                    };
                    let context =
                        SpanContext::new(context.trace_id(), context.span_id(), flags, true, TraceState::default());
                    Context::new().with_remote_span_context(context)
                }
                // `b3: 0` or `X-B3-Sampled: 0` alone: the caller's "do not sample" without a
                // trace, followed: a new trace that is not sampled.
                // Only a sampler that follows its parent reads it so; others decide alone, and
                // a made-up parent would be one no backend ever receives.
                None if matches!(self.settings.sampler, SamplerChoice::ParentBased(_))
                    && b3_declines(headers, propagators) =>
                {
                    let ids = RandomIdGenerator::default();
                    let (trace, span) = (ids.new_trace_id(), ids.new_span_id());
                    let context = SpanContext::new(trace, span, TraceFlags::default(), true, TraceState::default());
                    Context::new().with_remote_span_context(context)
                }
                None => parent,
            }
        };
        let span =
            self.tracer.span_builder(Cow::Borrowed(name)).with_kind(kind).start_with_context(&self.tracer, &parent);
        RequestSpan { span, propagators }
    }

    /// Drains the queue into the exporter until the queue closes. Runs on the sidecar's
    /// runtime; the exporter is built here because tonic's needs one.
    pub async fn export(&self) {
        let Some(mut queue) = self.queue.lock().expect("queue lock").take() else { return };
        let mut exporter = match build_exporter(&self.settings) {
            Ok(exporter) => exporter,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the OTLP exporter; spans will be dropped");
                while let Some(_span) = queue.recv().await {
                    self.counters.dropped.inc();
                }
                return;
            }
        };
        exporter.set_resource(&self.resource);
        let mut batch = Vec::with_capacity(BATCH);
        // The first failure of an outage is a warning (a collector down, a certificate it
        // does not accept); the rest of it only counts.
        let mut failing = false;
        while let Some(first) = queue.recv().await {
            batch.push(first);
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let failure = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            match failure {
                None => {
                    self.counters.exported.inc_by(count);
                    if std::mem::take(&mut failing) {
                        tracing::info!(endpoint = %self.settings.endpoint, "trace export works again");
                    }
                }
                Some(error) => {
                    self.counters.dropped.inc_by(count);
                    if std::mem::replace(&mut failing, true) {
                        tracing::debug!(%error, spans = count, "trace export failed; spans dropped");
                    } else {
                        tracing::warn!(endpoint = %self.settings.endpoint, %error, spans = count,
                            "trace export failed; spans are dropped (and counted) until it works again");
                    }
                }
            }
        }
    }
}

fn build_exporter(settings: &TraceSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    // An https:// endpoint is verified against these CA certificates only (the configuration
    // found them: see `TraceSettings::tls_roots`).
    let roots = settings.tls_roots.as_deref().map(CollectorRoots::read).transpose()?;
    let built = match settings.protocol {
        OtlpProtocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT);
            match &roots {
                Some(roots) => builder.with_tls_config(roots.grpc()).build(),
                None => builder.build(),
            }
        }
        OtlpProtocol::HttpProtobuf => {
            // The whole URL, traces path included (`TraceSettings::resolve`).
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT);
            match &roots {
                Some(roots) => builder.with_http_client(roots.http_client(EXPORT_TIMEOUT)?).build(),
                None => builder.build(),
            }
        }
    };
    built.map_err(|e| e.to_string())
}

/// One request's span. Attributes are only built when the span is sampled.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    /// The formats to write for the next hop.
    propagators: Propagators,
}

/// What a finished request adds to its span.
pub struct SpanEnd<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub protocol: &'static str,
    /// `http`, or `https` for a request that came over TLS.
    pub scheme: &'static str,
    pub client: Option<std::net::SocketAddr>,
    pub server: Option<(&'a str, u16)>,
    pub decision: &'static str,
    pub policy: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub principal: &'a str,
    pub request_id: &'a str,
    /// A gRPC call's status, when the answer carried one.
    pub grpc_status: Option<u16>,
}

impl RequestSpan {
    pub fn context(&self) -> &SpanContext {
        self.span.span_context()
    }

    /// Whether the span is sampled and will be exported: what only it needs is made then.
    pub fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    /// The trace-context formats this span is passed on in (see [`Propagators`]).
    pub fn propagators(&self) -> Propagators {
        self.propagators
    }

    /// The trace id as 32 hex digits, for events and logs.
    pub fn trace_id(&self) -> String {
        self.context().trace_id().to_string()
    }

    /// `traceparent` naming this span as the parent of the next hop; its sampled flag carries
    /// the decision, so every hop samples the same traces. Written without `fmt`: it is on
    /// every traced request.
    pub fn traceparent(&self) -> HeaderValue {
        let cx = self.context();
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut buf[3..35], &cx.trace_id().to_bytes());
        hex_into(&mut buf[36..52], &cx.span_id().to_bytes());
        hex_into(&mut buf[53..55], &[cx.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()]);
        unique_header_value(&buf)
    }

    /// This span as a single `b3` header: `{trace}-{span}-{0|1}`.
    pub fn b3_single(&self) -> HeaderValue {
        let cx = self.context();
        let mut buf = *b"00000000000000000000000000000000-0000000000000000-0";
        hex_into(&mut buf[..32], &cx.trace_id().to_bytes());
        hex_into(&mut buf[33..49], &cx.span_id().to_bytes());
        buf[50] = if cx.is_sampled() { b'1' } else { b'0' };
        let from = 32 - b3_trace_digits(&buf[..32]);
        unique_header_value(&buf[from..])
    }

    /// This span as `x-b3-traceid`, `x-b3-spanid` and `x-b3-sampled` values.
    pub fn b3_multi(&self) -> [HeaderValue; 3] {
        let cx = self.context();
        let (mut trace, mut span) = ([0u8; 32], [0u8; 16]);
        hex_into(&mut trace, &cx.trace_id().to_bytes());
        hex_into(&mut span, &cx.span_id().to_bytes());
        [
            unique_header_value(&trace[32 - b3_trace_digits(&trace)..]),
            unique_header_value(&span),
            HeaderValue::from_static(if cx.is_sampled() { "1" } else { "0" }),
        ]
    }

    /// `tracestate` to pass on, when the caller sent one.
    pub fn tracestate(&self) -> Option<HeaderValue> {
        let state = self.context().trace_state().header();
        (!state.is_empty()).then(|| HeaderValue::from_str(&state).ok()).flatten()
    }

    pub fn end(mut self, end: SpanEnd<'_>) {
        if self.span.is_recording() {
            let mut attributes = Vec::with_capacity(15);
            attributes.push(KeyValue::new("http.request.method", super::reported(end.method).into_owned()));
            let path = super::reported(end.path);
            // Server spans fail on 5xx, client spans on any 4xx or 5xx (semantic conventions).
            let client_span = end.server.is_some();
            // gRPC's own status, by its semantic conventions: a client span fails on any code
            // but OK, a server span on the codes that are the server's fault.
            let grpc_failed = end.grpc_status.is_some_and(|code| match client_span {
                true => code != 0,
                false => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
            });
            let failed = end.status >= 500 || end.status == 0 || (client_span && end.status >= 400) || grpc_failed;
            if end.status != 0 {
                attributes.push(KeyValue::new("http.response.status_code", end.status as i64));
            }
            if let Some(code) = end.grpc_status {
                attributes.push(KeyValue::new("rpc.system", "grpc"));
                attributes.push(KeyValue::new("rpc.grpc.status_code", code as i64));
            }
            if failed {
                // The status as text, or, with no answer at all, an identifier of that.
                attributes.push(match (end.status, end.grpc_status) {
                    (0, _) => KeyValue::new("error.type", "no_response"),
                    (200, Some(code)) => KeyValue::new("error.type", format!("grpc_{code}")),
                    (status, _) => KeyValue::new("error.type", status.to_string()),
                });
            }
            match end.server {
                // Required on client spans: the URL the app asked for, without its query (which
                // may hold a credential; url.path leaves it out too).
                Some((host, port)) => {
                    let default = (end.scheme == "http" && port == 80) || (end.scheme == "https" && port == 443);
                    let url = match default {
                        true => format!("{}://{host}{path}", end.scheme),
                        false => format!("{}://{host}:{port}{path}", end.scheme),
                    };
                    attributes.push(KeyValue::new("url.full", url));
                }
                None => attributes.push(KeyValue::new("url.scheme", end.scheme)),
            }
            attributes.push(KeyValue::new("url.path", path.into_owned()));
            attributes.push(KeyValue::new("network.protocol.name", "http"));
            attributes.push(KeyValue::new("network.protocol.version", end.protocol));
            if let Some(client) = end.client {
                attributes.push(KeyValue::new("client.address", client.ip().to_string()));
                attributes.push(KeyValue::new("client.port", client.port() as i64));
            }
            if let Some((host, port)) = end.server {
                attributes.push(KeyValue::new("server.address", host.to_string()));
                attributes.push(KeyValue::new("server.port", port as i64));
            }
            attributes.push(KeyValue::new("palisade.decision", end.decision));
            if let Some(policy) = end.policy {
                attributes.push(KeyValue::new("palisade.policy", policy.to_string()));
            }
            if let Some(rule) = end.rule {
                attributes.push(KeyValue::new("palisade.rule", rule.to_string()));
            }
            if !end.principal.is_empty() {
                attributes.push(KeyValue::new("palisade.peer.principal", end.principal.to_string()));
            }
            attributes.push(KeyValue::new("palisade.request_id", end.request_id.to_string()));
            self.span.set_attributes(attributes);
            if failed {
                self.span.set_status(Status::error(""));
            }
        }
        self.span.end();
    }
}

/// The trace-context header names, made once: a name given as text is parsed on every lookup.
pub mod header_names {
    use http::HeaderName;

    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    pub const B3: HeaderName = HeaderName::from_static("b3");
    pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
    pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
    pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
    pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
}
use header_names::{B3, B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID, TRACEPARENT, TRACESTATE};

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // The W3C propagator asks for these two on every request.
        let value = match key {
            "traceparent" => self.0.get(TRACEPARENT),
            "tracestate" => self.0.get(TRACESTATE),
            other => self.0.get(other),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A caller's B3 context; `deferred` when it sent no sampling state (B3: the receiver decides).
struct B3Parent {
    context: SpanContext,
    deferred: bool,
}

/// How many of a trace id's 32 hex digits B3 writes: 16 for a 64-bit id (the upper half zero, as
/// a B3 caller's 16-digit id is read), which B3 passes on in the width it came in; else 32.
fn b3_trace_digits(hex: &[u8]) -> usize {
    if hex[..16].iter().all(|&d| d == b'0') {
        16
    } else {
        32
    }
}

/// The request's `traceparent` when it came exactly once: one sent twice names no one parent,
/// so it is none (a new trace starts here; with traces off, both are dropped before the app).
/// Version 00 is exactly 55 characters (W3C Trace Context 4.3: more after the flags is invalid
/// for it; only a later version may add fields), which OpenTelemetry's parser does not check.
pub(crate) fn single_traceparent(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    let first = all.next()?;
    let valid_length = !first.as_bytes().starts_with(b"00-") || first.len() == 55;
    (all.next().is_none() && valid_length).then_some(first)
}

/// A B3 "do not sample" with no trace to continue: `b3: 0`, or `X-B3-Sampled: 0` without ids.
fn b3_declines(headers: &HeaderMap, propagators: Propagators) -> bool {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    (propagators.b3 && text(B3) == Some("0"))
        || (propagators.b3multi && text(B3_TRACE_ID).is_none() && matches!(text(B3_SAMPLED), Some("0" | "false")))
}

/// A B3 parent (single `b3` header or the `x-b3-*` ones, as far as `propagators` read them), for
/// callers that do not speak W3C.
fn b3(headers: &HeaderMap, propagators: Propagators) -> Option<B3Parent> {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let single = propagators.b3.then(|| text(B3)).flatten();
    let (trace, span, sampled) = match single {
        Some(single) => {
            let mut parts = single.split('-');
            let (trace, span) = (parts.next()?, parts.next()?);
            (trace, span, parts.next())
        }
        None if propagators.b3multi => (text(B3_TRACE_ID)?, text(B3_SPAN_ID)?, text(B3_SAMPLED)),
        None => return None,
    };
    // 64-bit B3 trace ids are left-padded to W3C's 128 bits.
    let trace_id = match trace.len() {
        16 | 32 => TraceId::from_hex(trace).ok()?,
        _ => return None,
    };
    let span_id = (span.len() == 16).then(|| SpanId::from_hex(span).ok()).flatten()?;
    let (flags, deferred) = match sampled {
        Some("1" | "d" | "true") => (TraceFlags::SAMPLED, false),
        Some("0" | "false") => (TraceFlags::default(), false),
        _ => (TraceFlags::default(), true),
    };
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(B3Parent { context, deferred })
}

/// Lowercase hex of `bytes` into `out`, which is twice as long: trace context and request ids.
pub(crate) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// A header value that is new on every request (trace context, request ids), marked so HPACK
/// sends it as a literal that is never indexed: indexed, each one would enter the connection's
/// table on both sidecars (a copy per request) and push out the entries that do repeat, such as
/// `palisade-orig-proto` or a client's `user-agent`, which then cost a literal again.
pub(crate) fn unique_header_value(bytes: &[u8]) -> HeaderValue {
    let mut value = HeaderValue::from_bytes(bytes).expect("ids are valid header bytes");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_parents_are_accepted_in_both_forms() {
        let mut single = HeaderMap::new();
        single.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"));
        let cx = b3(&single, Propagators::DEFAULT).unwrap().context;
        assert_eq!(cx.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(cx.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(cx.is_sampled() && cx.is_remote());

        let mut multi = HeaderMap::new();
        multi.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        multi.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        multi.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let parent = b3(&multi, Propagators::DEFAULT).unwrap();
        assert_eq!(parent.context.trace_id().to_string(), "000000000000000064fe8b2a57d3eff7");
        assert!(!parent.context.is_sampled() && !parent.deferred, "0 is a decision");

        // No sampling state: the receiver decides (B3's "defer").
        multi.remove("x-b3-sampled");
        assert!(b3(&multi, Propagators::DEFAULT).unwrap().deferred);
        let mut deferring = HeaderMap::new();
        deferring.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"));
        assert!(b3(&deferring, Propagators::DEFAULT).unwrap().deferred);

        let mut bad = HeaderMap::new();
        bad.insert("b3", HeaderValue::from_static("zz-e457b5a2e4d86bd1-1"));
        assert!(b3(&bad, Propagators::DEFAULT).is_none());
    }

    #[test]
    fn a_span_continues_the_callers_trace_and_names_itself_as_the_next_parent() {
        let traces = traces_with(ParentRoot::AlwaysOff);
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        headers.insert("tracestate", HeaderValue::from_static("vendor=x"));
        let span = traces.start("GET", SpanKind::Server, &headers);
        let parent = span.traceparent();
        let parent = parent.to_str().unwrap();
        assert!(parent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{parent}");
        assert!(parent.ends_with("-01"), "a sampled parent makes a sampled child: {parent}");
        assert!(!parent.contains("b7ad6b7169203331"), "a new span id");
        assert_eq!(span.tracestate().unwrap(), "vendor=x");
        // The hand-written hex is what the ids' own formatting gives, in each propagator.
        let cx = span.context();
        let (trace, id) = (cx.trace_id().to_string(), cx.span_id().to_string());
        assert_eq!(parent, format!("00-{trace}-{id}-01"));
        assert_eq!(span.b3_single(), format!("{trace}-{id}-1").as_str());
        let [t, s, sampled] = span.b3_multi();
        assert_eq!((t.to_str().unwrap(), s.to_str().unwrap(), sampled.to_str().unwrap()), (&*trace, &*id, "1"));
        // New on every request: never entered in an HPACK table.
        assert!(span.traceparent().is_sensitive() && span.b3_single().is_sensitive());
        assert!(t.is_sensitive() && s.is_sensitive());

        // No parent: the root sampler (off here) decides, and the flag says so downstream.
        let root = traces.start("GET", SpanKind::Server, &HeaderMap::new());
        assert!(root.traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn a_64_bit_b3_trace_id_is_passed_on_in_16_digits() {
        let traces = traces_with(ParentRoot::AlwaysOff);
        let mut multi = HeaderMap::new();
        multi.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        multi.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        multi.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let span = traces.start("GET", SpanKind::Server, &multi);
        assert_eq!(span.b3_multi()[0], "64fe8b2a57d3eff7");
        assert!(span.b3_single().to_str().unwrap().starts_with("64fe8b2a57d3eff7-"), "{:?}", span.b3_single());
        // W3C has no short form: 32 digits there.
        assert!(span.traceparent().to_str().unwrap().starts_with("00-000000000000000064fe8b2a57d3eff7-"));
        let mut wide = HeaderMap::new();
        wide.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"));
        let span = traces.start("GET", SpanKind::Server, &wide);
        assert_eq!(span.b3_multi()[0], "80f198ee56343ba864fe8b2a57d3eff7");
    }

    #[test]
    fn a_b3_caller_that_defers_is_sampled_by_the_root_sampler_and_keeps_its_trace() {
        let with_root = traces_with;
        let b3 = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("b3", HeaderValue::from_static(value));
            h
        };
        let deferring = b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1");
        let denying = b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0");
        let on = with_root(ParentRoot::AlwaysOn);
        let parent = on.start("GET", SpanKind::Server, &deferring).traceparent();
        let parent = parent.to_str().unwrap();
        assert!(parent.starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-"), "the caller's trace goes on: {parent}");
        assert!(parent.ends_with("-01"), "deferred, and the root sampler samples: {parent}");
        let denied = on.start("GET", SpanKind::Server, &denying).traceparent();
        assert!(denied.to_str().unwrap().ends_with("-00"), "an explicit 0 is the caller's decision");
        let off = with_root(ParentRoot::AlwaysOff);
        assert!(off.start("GET", SpanKind::Server, &deferring).traceparent().to_str().unwrap().ends_with("-00"));

        // "Do not sample" with no trace (`b3: 0`, `X-B3-Sampled: 0` alone): a new trace, not
        // sampled although the root sampler samples.
        let mut multi_only_sampled = HeaderMap::new();
        multi_only_sampled.insert("x-b3-sampled", HeaderValue::from_static("0"));
        for headers in [b3("0"), multi_only_sampled] {
            let span = on.start("GET", SpanKind::Server, &headers);
            assert!(!span.context().is_sampled() && span.context().is_valid(), "{headers:?}");
            assert!(span.traceparent().to_str().unwrap().ends_with("-00"), "{headers:?}");
        }
        assert!(on.start("GET", SpanKind::Server, &HeaderMap::new()).context().is_sampled(), "without it: sampled");
    }

    /// Traces sampled by `root` when no caller decided, exported nowhere.
    fn traces_with(root: ParentRoot) -> Traces {
        let settings = TraceSettings {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: OtlpProtocol::Grpc,
            sampler: SamplerChoice::ParentBased(root),
            service_name: "t".into(),
            resource: vec![],
            propagators: Propagators::DEFAULT,
            tls_roots: None,
        };
        let counters =
            TraceCounters { exported: IntCounter::new("e", "e").unwrap(), dropped: IntCounter::new("d", "d").unwrap() };
        Traces::new(settings, counters)
    }

    #[test]
    fn a_version_00_traceparent_with_more_after_its_flags_is_no_parent() {
        let traces = traces_with(ParentRoot::AlwaysOff);
        let id = "0af7651916cd43dd8448eb211c80319c";
        for extra in ["-", "-x", "0"] {
            let mut headers = HeaderMap::new();
            let value = format!("00-{id}-b7ad6b7169203331-01{extra}");
            headers.insert("traceparent", HeaderValue::from_str(&value).unwrap());
            let span = traces.start("GET", SpanKind::Server, &headers);
            assert_ne!(span.trace_id().as_str(), id, "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_str(&format!("00-{id}-b7ad6b7169203331-01")).unwrap());
        assert_eq!(traces.start("GET", SpanKind::Server, &headers).trace_id().as_str(), id);
    }

    #[test]
    fn a_traceparent_sent_twice_is_no_parent() {
        let traces = traces_with(ParentRoot::AlwaysOff);
        let mut headers = HeaderMap::new();
        let first = "0af7651916cd43dd8448eb211c80319c";
        headers.append("traceparent", HeaderValue::from_str(&format!("00-{first}-b7ad6b7169203331-01")).unwrap());
        headers
            .append("traceparent", HeaderValue::from_static("00-11111111111111111111111111111111-2222222222222222-01"));
        let span = traces.start("GET", SpanKind::Server, &headers);
        assert!(!["11111111111111111111111111111111", first].contains(&span.trace_id().as_str()));
        assert!(!span.context().is_sampled(), "a new trace, decided by the root sampler (off)");
    }

    #[test]
    fn only_the_formats_in_use_are_read() {
        let counters =
            TraceCounters { exported: IntCounter::new("e", "e").unwrap(), dropped: IntCounter::new("d", "d").unwrap() };
        let traces = |propagators| {
            let settings = TraceSettings {
                endpoint: "http://127.0.0.1:9".into(),
                protocol: OtlpProtocol::Grpc,
                sampler: SamplerChoice::ParentBased(ParentRoot::AlwaysOff),
                service_name: "t".into(),
                resource: vec![],
                propagators,
                tls_roots: None,
            };
            Traces::new(settings, counters.clone())
        };
        let w3c = "0af7651916cd43dd8448eb211c80319c";
        let single = "80f198ee56343ba864fe8b2a57d3eff7";
        let multi = "000000000000000064fe8b2a57d3eff7";
        let mut all = HeaderMap::new();
        all.insert("traceparent", HeaderValue::from_str(&format!("00-{w3c}-b7ad6b7169203331-01")).unwrap());
        all.insert("b3", HeaderValue::from_str(&format!("{single}-e457b5a2e4d86bd1-1")).unwrap());
        all.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        all.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        all.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let only = |tracecontext, b3, b3multi| Propagators { tracecontext, b3, b3multi, b3_as_received: false };
        for (propagators, parent) in [
            (Propagators::DEFAULT, Some(w3c)),
            (only(false, true, true), Some(single)),
            (only(false, false, true), Some(multi)),
            (only(true, false, false), Some(w3c)),
            (Propagators::NONE, None),
        ] {
            let span = traces(propagators).start("GET", SpanKind::Server, &all);
            let trace = span.trace_id();
            match parent {
                Some(parent) => assert_eq!(trace, parent, "{propagators:?}"),
                // No parent read: a new trace, decided by the root sampler (off).
                None => assert!(![w3c, single, multi].contains(&trace.as_str()) && !span.context().is_sampled()),
            }
            assert_eq!(span.propagators(), propagators);
        }
        let mut b3_only = HeaderMap::new();
        b3_only.insert("b3", HeaderValue::from_str(&format!("{single}-e457b5a2e4d86bd1-1")).unwrap());
        let span = traces(only(true, false, true)).start("GET", SpanKind::Server, &b3_only);
        assert_ne!(span.trace_id(), single, "the single b3 header is not read unless b3 is in use");
    }
}
