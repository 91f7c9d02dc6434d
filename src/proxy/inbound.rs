//! Inbound: requests from other workloads (mutual TLS, or plaintext in PERMISSIVE mode) to the
//! local app. The policy decides (`PolicySnapshot::decide`, SPEC section 5's steps); a refusal
//! is answered here and never reaches the app.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use opentelemetry::trace::SpanKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::H1UpgradePolicy;
use pingora::{Error, ErrorType};

use super::app_pool::{self, AppPool, Body, BodyMode, ForWaf};
use super::record::{self, Outgoing, RequestCtx};
use super::respond::{self, fail, ErrorKind};
use super::{peer_identity, RequestId, ORIG_PROTO_HEADER, REQUEST_ID_HEADER, XFCC_HEADER};
use crate::authn::Verified;
use crate::config::{AppProtocol, UnderscoreHeaders};
use crate::policy::{
    Authenticated, BodyInspection, BodyPlan, GrpcCall, PolicySnapshot, PolicyStore, Refusal, RequestView,
};
use crate::telemetry::Telemetry;

/// An HTTP/2 app's stream flow-control window (see `upstream_peer`). What an answer a caller
/// stopped reading holds here, with the send buffer and the pieces between: 256 KiB made that
/// 0.62-0.73 MB per stalled gRPC stream, which the memory guard does not cut (outside tester
/// o3); 128 KiB makes it 0.5-0.58 MB for 8% less of one stream's bulk throughput
/// (docs/benchmarks.md), 64 KiB 0.4 MB for 20% less.
const APP_STREAM_WINDOW: u32 = 128 * 1024;
/// Every stream's window at once, so answers their callers stopped reading leave the rest of the
/// connection to the other requests on it.
const APP_CONNECTION_WINDOW: u32 = APP_STREAM_WINDOW * 128;

pub struct Inbound {
    app: AppAddress,
    app_protocol: AppProtocol,
    app_timeout: Option<Duration>,
    policy: Arc<PolicyStore>,
    telemetry: Arc<Telemetry>,
    inflight: Arc<super::Inflight>,
    caller_timeouts: super::CallerTimeouts,
    failures: super::respond::FailureLog,
    underscore_headers: UnderscoreHeaders,
}

pub struct InboundCtx {
    request: RequestCtx,
    app_h2: bool,
    /// Where this request goes: the app's address (its port the caller's when configured so).
    app: Option<SocketAddr>,
    body: BodyCount,
    /// A gRPC call whose messages a WAF reads as they stream ([`GrpcBody`]).
    grpc: Option<Box<GrpcBody>>,
    /// The app was tried once already ([`upstream_peer`](ProxyHttp::upstream_peer)).
    attempted: bool,
}

/// What stops a gRPC call whose message was refused: nothing more goes to the app, which sees its
/// call cancelled; the caller gets the refusal (`fail_to_proxy`), or its end in trailers once the
/// app has begun to answer. The caller's doing: pingora then stops the call instead of waiting on
/// the app's answer.
fn grpc_stopped(refusal: &Refusal) -> Box<Error> {
    ErrorKind::from_status(refusal.status()).fail("a gRPC message refused").into_down()
}

/// Step 6 on a gRPC call to an HTTP/2 app, a message at a time as its body streams
/// (`request_body_filter`; see [`GrpcCall`]), under the policy in force when it began.
struct GrpcBody {
    policy: Arc<PolicySnapshot>,
    call: GrpcCall,
}

/// The app, and its keep-alive connections: at one address, or (`inbound.app` with port 0) at
/// the port each caller addressed, as an injected sidecar reaches every port of its pod.
struct AppAddress {
    /// `inbound.app`: port 0 is the port the caller addressed ([`crate::config::app_target`]).
    app: SocketAddr,
    timeout: Option<Duration>,
    /// One pool per port, looked up without a lock; ports are few (a pod's own).
    pools: ArcSwap<Vec<(SocketAddr, Arc<AppPool>)>>,
}

/// More app ports than any pod has: past it, a caller probing ports cannot grow the table.
const MAX_APP_PORTS: usize = 256;

impl AppAddress {
    fn new(app: SocketAddr, timeout: Option<Duration>) -> Self {
        AppAddress { app, timeout, pools: ArcSwap::from_pointee(Vec::new()) }
    }

    /// Where the app listens for a request that reached `addressed` at `addressed_port`
    /// ([`crate::config::app_target`]).
    fn address(&self, addressed: impl FnOnce() -> Option<SocketAddr>, addressed_port: u16) -> SocketAddr {
        crate::config::app_target(self.app, addressed, addressed_port)
    }

    fn pool(&self, address: SocketAddr) -> Option<Arc<AppPool>> {
        if let Some((_, pool)) = self.pools.load().iter().find(|(a, _)| *a == address) {
            return Some(pool.clone());
        }
        let mut made = None;
        self.pools.rcu(|pools| {
            let mut pools = Vec::clone(pools);
            if !pools.iter().any(|(a, _)| *a == address) && pools.len() < MAX_APP_PORTS {
                pools.push((address, Arc::new(AppPool::new(address, self.timeout))));
            }
            made = pools.iter().find(|(a, _)| *a == address).map(|(_, pool)| pool.clone());
            pools
        });
        made
    }
}

impl Inbound {
    pub fn new(
        app: SocketAddr,
        app_protocol: AppProtocol,
        app_timeout: Option<Duration>,
        policy: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let inflight = super::Inflight::unlimited();
        let caller_timeouts = super::CallerTimeouts::default_uncounted();
        Inbound {
            app: AppAddress::new(app, app_timeout),
            app_protocol,
            app_timeout,
            policy,
            telemetry,
            inflight,
            caller_timeouts,
            failures: super::respond::FailureLog::new("inbound"),
            underscore_headers: UnderscoreHeaders::Drop,
        }
    }

    /// What the app gets of request headers whose names hold `_` (`inbound.headersWithUnderscores`).
    pub fn underscore_headers(mut self, action: UnderscoreHeaders) -> Self {
        self.underscore_headers = action;
        self
    }

    /// Sheds requests past `inflight`'s limit (503).
    pub fn shedding(mut self, inflight: Arc<super::Inflight>) -> Self {
        self.inflight = inflight;
        self
    }

    /// Fails requests whose body stalls (408) or whose answer goes unread past their timeouts.
    pub fn caller_timeouts(mut self, caller_timeouts: super::CallerTimeouts) -> Self {
        self.caller_timeouts = caller_timeouts;
        self
    }

    /// The port the caller addressed: the original destination behind an iptables REDIRECT,
    /// else the app's port.
    fn destination_port(&self, session: &Session) -> u16 {
        let socket = session.digest().and_then(|d| d.socket_digest.as_ref());
        socket.and_then(|s| crate::serve::redirected_to(s)).map_or(self.app.app.port(), |original| original.port())
    }
}

impl Inbound {
    /// Answers a refusal (reported first when it is a security event); the request is done.
    async fn refuse(&self, session: &mut Session, ctx: &mut InboundCtx, refusal: Refusal) -> pingora::Result<bool> {
        self.report_refusal(session, &ctx.request, &refusal);
        respond::refuse(session, refusal, &mut ctx.request).await;
        Ok(true)
    }

    /// Reports a refusal: a security event for a decision, else as an invalid request.
    fn report_refusal(&self, session: &Session, request: &RequestCtx, refusal: &Refusal) {
        let path = session.req_header().uri.path();
        if refusal.is_security_event() {
            record::report(&self.telemetry, session, request, refusal, false, path);
        } else {
            record::report_invalid(&self.telemetry, session, request, refusal, path);
        }
    }

    /// Step 6 on the next piece of a gRPC call's body, `last` when it ends the body: what goes on
    /// now, or the refusal (reported) that stops the call. Serves pingora's path
    /// (`request_body_filter`) and the sidecar's own to an HTTP/1.1 app alike.
    fn grpc_piece(
        &self,
        session: &Session,
        request: &RequestCtx,
        grpc: &mut GrpcBody,
        piece: Bytes,
        last: bool,
    ) -> Result<Bytes, Refusal> {
        let on = match piece.is_empty() {
            true => Ok(piece),
            false => self.inspect_grpc(session, request, grpc, &piece),
        };
        let on = match (on, last) {
            // A body that was not gRPC after all: what was held of it goes on last.
            (Ok(on), true) => grpc.call.end().map(|held| match held {
                Some(held) if on.is_empty() => held,
                Some(held) => [on, held].concat().into(),
                None => on,
            }),
            (on, _) => on,
        };
        if let Err(refusal) = &on {
            self.report_refusal(session, request, refusal);
        }
        on
    }

    /// Step 6 on the next piece of a gRPC call's body: the bytes that go on now (whole messages
    /// let through), or the refusal of one. DETECT findings are reported here.
    fn inspect_grpc(
        &self,
        session: &Session,
        request: &RequestCtx,
        grpc: &mut GrpcBody,
        chunk: &Bytes,
    ) -> Result<Bytes, Refusal> {
        let path = session.req_header().uri.path();
        let (mut notes, mut uninspected) = (Vec::new(), 0);
        let on = grpc.call.next(&grpc.policy, path, chunk, |note| notes.push(note), &mut uninspected);
        for note in notes {
            record::report_note(&self.telemetry, session, request, note, path);
        }
        self.telemetry.metrics.waf_uninspected.inc_by(uninspected);
        on
    }

    /// Step 6 on a body read whole; DETECT findings are reported here.
    fn inspect_body(
        &self,
        policy: &PolicySnapshot,
        plan: BodyPlan,
        session: &Session,
        ctx: &InboundCtx,
        body: &[u8],
    ) -> Option<Refusal> {
        let req = session.req_header();
        let mut notes = Vec::new();
        let content_type = req.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
        let verdict = policy.inspect_body(plan, req.uri.path(), content_type, body, |note| notes.push(note));
        for note in notes {
            record::report_note(&self.telemetry, session, &ctx.request, note, req.uri.path());
        }
        if verdict == Ok(BodyInspection::Uninspected) {
            self.telemetry.metrics.waf_uninspected.inc();
        }
        verdict.err()
    }
}

/// A request body's bytes so far against the policy's `maxBodyBytes`, counted as they arrive
/// wherever the body is read: a body of unannounced length fails (413) as it crosses the limit.
#[derive(Default)]
struct BodyCount {
    seen: u64,
    limit: Option<u64>,
}

impl BodyCount {
    /// The body crossed the limit: the 413 that follows is the policy's refusal, reported as a
    /// declared length over it is.
    fn exceeded(&self) -> bool {
        self.limit.is_some_and(|max| self.seen > max)
    }

    fn count(&mut self, len: usize) -> pingora::Result<()> {
        self.seen += len as u64;
        match self.limit {
            Some(max) if self.seen > max => {
                // The caller's doing: pingora then answers it and resets the app's stream
                // (an error of the app's side left an HTTP/2 app and its caller waiting).
                Err(ErrorKind::PayloadTooLarge.fail("body over maxBodyBytes").into_down())
            }
            _ => Ok(()),
        }
    }
}

/// The pod address the caller reached ([`crate::serve::addressed_pod_address`]).
fn addressed(session: &Session) -> Option<SocketAddr> {
    crate::serve::addressed_pod_address(session.digest()?.socket_digest.as_ref()?)
}

/// Removes the headers whose names hold `_`: to CGI, WSGI, Rack and PHP they are the dashed
/// headers the sidecar sets or judges, sent by the caller.
fn drop_underscored_headers(req: &mut pingora::http::RequestHeader) {
    let underscored = |name: &&HeaderName| name.as_str().contains('_');
    // Rare: looked for before anything is collected.
    if !req.headers.keys().any(|n| underscored(&n)) {
        return;
    }
    let names: Vec<HeaderName> = req.headers.keys().filter(underscored).cloned().collect();
    for name in &names {
        req.remove_header(name);
    }
}

/// What only this sidecar may tell the app: who the caller is (any `x-forwarded-client-cert`
/// from outside is dropped), the request id and the trace context.
fn add_sidecar_headers(session: &Session, upstream: &mut impl Outgoing, request: &RequestCtx) -> pingora::Result<()> {
    const XFCC: HeaderName = HeaderName::from_static(XFCC_HEADER);
    const ORIG_PROTO: HeaderName = HeaderName::from_static(ORIG_PROTO_HEADER);
    const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
    // Linkerd's proxy sets `l5d-client-id` to the caller's proven identity; an app moved from
    // Linkerd may still trust it, so a caller's own never reaches it.
    const LINKERD_CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");
    upstream.remove(&XFCC);
    upstream.remove(&ORIG_PROTO);
    upstream.remove(&LINKERD_CLIENT_ID);
    if let Some(peer) = peer_identity(session) {
        upstream.set(XFCC, peer.xfcc.clone())?;
    }
    // The claims of the caller's verified token.
    for (name, value) in request.token.as_ref().map_or(&[][..], Verified::forward_headers) {
        upstream.set(name.clone(), value.clone())?;
    }
    upstream.set(REQUEST_ID, request.id.header_value())?;
    record::propagate(upstream, request)
}

/// The app sees the path the policy judged, at the authority the caller named (an HTTP/2
/// caller's only Host).
fn set_path(session: &mut Session, path: String) -> pingora::Result<()> {
    let bad = || Error::explain(ErrorType::HTTPStatus(400), "bad request target");
    let uri = &session.req_header().uri;
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = uri.scheme().cloned();
    parts.authority = uri.authority().cloned();
    parts.path_and_query = Some(target.parse().map_err(|_| bad())?);
    let uri = http::Uri::from_parts(parts).map_err(|_| bad())?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

/// A DELAY rate limit's wait, cut short when the caller leaves: a request whose caller has gone
/// must not reach the app when its wait ends (a client that timed out and retried would have it
/// run twice), nor hold its place in the queue and in `maxInflight` meanwhile. An HTTP/2 caller
/// leaving resets its stream; an HTTP/1.1 one closes its connection, which shows without reading
/// the request's body only when it has none (one with a body waits out its time, as before).
async fn wait_unless_the_caller_leaves(session: &mut Session, wait: Duration) -> pingora::Result<()> {
    let waited = tokio::time::sleep(wait);
    tokio::pin!(waited);
    let gone = || {
        Error::explain(ErrorType::ConnectionClosed, "the caller left while its request waited for a rate limit's token")
            .into_down()
    };
    let downstream = &mut session.downstream_session;
    if let Some(reset) = downstream.watch_h2_stream_close() {
        return tokio::select! {
            _ = &mut waited => Ok(()),
            _ = reset => Err(gone()),
        };
    }
    if downstream.is_body_empty() {
        tokio::select! {
            _ = &mut waited => return Ok(()),
            read = downstream.read_body_or_idle(true) => match read.map_err(|e| e.etype().clone()) {
                // Closed, reset, or half-closed (the caller shut its sending side): gone, as
                // nginx takes a half-close (its 499).
                Err(ErrorType::ConnectionClosed | ErrorType::ReadError) => return Err(gone()),
                // Bytes after the request (a pipelined one, whose first byte is now read and
                // lost): the pipelined request is not served, as pingora serves none that arrives
                // while an answer is awaited; the connection ends after this request.
                _ => downstream.set_keepalive(None),
            },
        }
    }
    waited.await;
    Ok(())
}

#[async_trait]
impl ProxyHttp for Inbound {
    type CTX = InboundCtx;

    /// None: pingora's default adds a response-compression module that stays disabled yet
    /// runs on every request; a sidecar forwards bodies as they are.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Bounded: see [`super::request_summary`].
    fn request_summary(&self, session: &Session, _ctx: &InboundCtx) -> String {
        super::request_summary(session)
    }

    /// The parser accepted the head: from here on, our phases answer (see [`super::parse_guard`]).
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut InboundCtx) -> pingora::Result<()> {
        super::parse_guard::request_started(session);
        Ok(())
    }

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx {
            request: RequestCtx::new(),
            app_h2: false,
            app: None,
            body: BodyCount::default(),
            grpc: None,
            attempted: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> pingora::Result<bool> {
        let trusted = peer_identity(session).is_some();
        record::start_span(&self.telemetry, SpanKind::Server, session, trusted, &mut ctx.request);
        self.caller_timeouts.start(session);
        if !respond::admit(session, &self.inflight, &mut ctx.request).await {
            return Ok(true);
        }
        super::trim_padded_values(session);
        let policy = self.policy.current();
        let port = self.destination_port(session);
        // Step 3's token check runs first, as it may wait for a JWKS refresh; the decision
        // judges its outcome in the SPEC's order.
        let auth = policy.authenticate(&session.req_header().headers, session.req_header().uri.query()).await;
        let mut notes = Vec::new();
        // The decision borrows the request; what it leaves is owned, so the session can be
        // written to afterwards.
        let verdict = {
            let req = session.req_header();
            // A request id from a meshed peer (its sidecar set it) is kept, so one id follows
            // the request end to end; a plaintext caller's is replaced, as Envoy does at the
            // edge: ids from outside are not trusted for correlation.
            let peer = peer_identity(session);
            ctx.request.id = match peer {
                Some(_) => RequestId::from_header(req.headers.get(REQUEST_ID_HEADER)),
                None => RequestId::generate(),
            };
            // The hop between sidecars is always HTTP/2; the header says whether the caller
            // spoke HTTP/1.1, which is then what the app gets.
            ctx.app_h2 = match self.app_protocol {
                AppProtocol::Auto => session.is_http2() && !req.headers.contains_key(ORIG_PROTO_HEADER),
                AppProtocol::Http1 => false,
                AppProtocol::Http2 => true,
            };
            let view = RequestView {
                principal: peer.map(|p| &p.id),
                source_ip: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical()),
                plaintext: session.digest().is_none_or(|d| d.ssl_digest.is_none()),
                method: &req.method,
                target: req.raw_path(),
                path: req.uri.path(),
                port,
                headers: &req.headers,
                authority: req.uri.authority().map(|a| a.as_str()),
                malformed_head: super::malformed_head(session),
                auth: match &auth {
                    Ok(Some(token)) => Authenticated::Token(token),
                    Ok(None) => Authenticated::Nobody,
                    Err(failure) => Authenticated::Failed(failure),
                },
            };
            policy.decide(&view, |note| notes.push(note)).map(|allowed| {
                let changed = match allowed.path {
                    Cow::Owned(path) => Some(path),
                    Cow::Borrowed(_) => None,
                };
                (changed, allowed.max_body_bytes, allowed.delay)
            })
        };
        // The verified token: its end user for the events below, its claims for the app.
        ctx.request.token = auth.ok().flatten();
        let path = |session: &Session| session.req_header().uri.path().to_string();
        for note in notes {
            record::report_note(&self.telemetry, session, &ctx.request, note, &path(session));
        }
        let (normalized, body_limit, delay) = match verdict {
            Ok(allowed) => allowed,
            Err(refusal) => return self.refuse(session, ctx, refusal).await,
        };
        // Throttled (a DELAY rate limit): the token is reserved; wait for it on this task's
        // timer (no thread blocked, no lock held), then go on. The place in the limits' queues
        // is given back when `delay` drops, after the wait or when the caller leaves (then
        // with its tokens, for the next callers).
        if let Some(delay) = delay {
            wait_unless_the_caller_leaves(session, delay.wait).await?;
            ctx.request.ratelimit_delay = Some(delay.wait);
            delay.served();
        }
        ctx.body.limit = body_limit;
        if let Some(path) = normalized {
            set_path(session, path)?;
        }
        // What only this sidecar may tell the app about the caller's token: what the caller
        // sent in its place goes now, the token's claims are set with the sidecar's headers.
        // The claims' headers, and the token's place that holds it (not an `Authorization:
        // Basic` beside a token in `x-jwt`), one at a time: read, then removed, nothing collected.
        for name in policy.forwarded_claim_headers() {
            session.req_header_mut().remove_header(name);
        }
        for (name, prefix) in ctx.request.token.iter().flat_map(|token| policy.token_places(token)) {
            if crate::authn::carries_token(&session.req_header().headers, name, prefix) {
                session.req_header_mut().remove_header(name);
            }
        }
        if self.underscore_headers == UnderscoreHeaders::Drop {
            drop_underscored_headers(session.req_header_mut());
        }
        // Step 6 on the body, when a WAF reads this type: read before anything is forwarded.
        let plan = if session.is_body_empty() {
            None
        } else {
            let headers = &session.req_header().headers;
            policy.body_plan(
                session.req_header().uri.path(),
                headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
                headers.get_all(CONTENT_ENCODING).iter().map(|v| v.as_bytes()),
            )
        };
        // A gRPC call to an HTTP/2 app, a gRPC-Web or Connect call to any: its messages are
        // read as they stream, not here.
        let streamed = |session: &Session| {
            let content_type = session.req_header().headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
            crate::policy::is_grpc(content_type) && (ctx.app_h2 || crate::policy::rpc_over_http1(content_type))
        };
        let plan = match plan.filter(|_| streamed(session)) {
            Some(plan) => {
                let call = GrpcCall::new(plan, &session.req_header().headers);
                ctx.grpc = Some(Box::new(GrpcBody { policy: Arc::clone(&policy), call }));
                None
            }
            None => plan,
        };
        let mut inspect = plan.is_some();
        // A body of a type the WAF parses is judged by its declared length at once; one of
        // another type, or protobuf, only once its first bytes show what it is (`read_for_waf`).
        if let Some(plan) = plan.filter(|plan| !plan.waits_for_first_bytes()) {
            if app_pool::declared_length(session.req_header()).is_some_and(|n| n > plan.limit as u64) {
                if plan.reject_over_limit {
                    return self.refuse(session, ctx, Refusal::UninspectableBody).await;
                }
                self.telemetry.metrics.waf_uninspected.inc();
                inspect = false;
            }
        }
        let app = self.app.address(|| addressed(session), port);
        ctx.app = Some(app);
        // An HTTP/1.1 upgrade (a WebSocket) to an HTTP/1.1 app is relayed here, each direction
        // on its own: pingora's relay of an upgraded connection writes to the app and reads it in
        // turn, and an app that echoes as it reads stalled it for good.
        if !ctx.app_h2 && super::upgrade::asked(session) {
            let mut request = super::upgrade::to_h1(session.req_header())?;
            add_sidecar_headers(session, &mut request, &ctx.request)?;
            let tcp = app_pool::connect(app).await?;
            super::upgrade::exchange(session, tcp, "the app", request, &self.caller_timeouts, self.app_timeout).await?;
            return Ok(true);
        }
        if let Some(mode) = AppPool::serves(session, ctx.app_h2) {
            let Some(pool) = self.app.pool(app) else {
                return Err(Error::explain(ErrorType::ConnectRefused, "more app ports than a pod has"));
            };
            let mut each;
            // A body of no declared length held whole: the app is told its length.
            let mut read_whole = None;
            // Held whole, or streamed after what was read of it (`Err`).
            let held: Result<Bytes, Bytes> = match (mode, plan.filter(|_| inspect)) {
                (BodyMode::Held, plan) => {
                    let body = app_pool::held_body(session, &self.caller_timeouts, |len| ctx.body.count(len)).await?;
                    if let Some(plan) = plan {
                        if let Some(refusal) = self.inspect_body(&policy, plan, session, ctx, &body) {
                            return self.refuse(session, ctx, refusal).await;
                        }
                    }
                    // A gRPC-Web or Connect call, here whole.
                    if let Some(grpc) = ctx.grpc.as_mut() {
                        if let Err(refusal) = self.grpc_piece(session, &ctx.request, grpc, body.clone(), true) {
                            respond::refuse(session, refusal, &mut ctx.request).await;
                            return Ok(true);
                        }
                    }
                    Ok(body)
                }
                // A body the WAF reads is read whole (up to what the WAF reads) before anything
                // is forwarded, then held: one longer than that cannot be inspected.
                (BodyMode::Streamed, Some(plan)) => {
                    let read =
                        app_pool::read_for_waf(session, &self.caller_timeouts, plan, |len| ctx.body.count(len)).await?;
                    match read {
                        ForWaf::Whole(body) => {
                            if let Some(refusal) = self.inspect_body(&policy, plan, session, ctx, &body) {
                                return self.refuse(session, ctx, refusal).await;
                            }
                            session.req_header_mut().remove_header(&http::header::EXPECT);
                            read_whole = Some(body.len());
                            Ok(body)
                        }
                        ForWaf::TooLong => return self.refuse(session, ctx, Refusal::UninspectableBody).await,
                        ForWaf::Uninspected(first) => {
                            self.telemetry.metrics.waf_uninspected.inc();
                            Err(first)
                        }
                        ForWaf::NotRead(first) => Err(first),
                    }
                }
                (BodyMode::Streamed, None) => Err(Bytes::new()),
            };
            let mut refused = None;
            let body = match held {
                Ok(body) => Body::Held(body),
                Err(first) => {
                    each = |session: &Session, piece: Bytes, last: bool| {
                        ctx.body.count(piece.len())?;
                        let Some(grpc) = ctx.grpc.as_mut() else { return Ok(piece) };
                        self.grpc_piece(session, &ctx.request, grpc, piece, last).map_err(|refusal| {
                            let e = grpc_stopped(&refusal);
                            refused = Some(refusal);
                            e
                        })
                    };
                    // What was read is held here and written again on a retry: nothing is lost.
                    Body::Streamed { started: false, first, each: &mut each }
                }
            };
            let forwarded = pool
                .forward(session, body, &self.caller_timeouts, |session: &Session| {
                    let mut request = app_pool::app_request(session)?;
                    if let Some(length) = read_whole {
                        request.headers.insert(CONTENT_LENGTH, length.into());
                    }
                    add_sidecar_headers(session, &mut request, &ctx.request)?;
                    Ok(request)
                })
                .await;
            if let Some(refusal) = refused {
                ctx.request.refusal = Some(refusal);
            }
            forwarded?;
            return Ok(true);
        }
        if let (true, Some(plan)) = (inspect, plan) {
            // pingora replays what was read here to the app (its retry buffer, 64 KiB); its
            // request body filter counts it against maxBodyBytes then.
            session.enable_retry_buffering();
            super::answer_expect_continue(session).await?;
            let refusal = match app_pool::read_for_waf(session, &self.caller_timeouts, plan, |_| Ok(())).await? {
                ForWaf::Whole(body) => self.inspect_body(&policy, plan, session, ctx, &body),
                ForWaf::Uninspected(_) => {
                    self.telemetry.metrics.waf_uninspected.inc();
                    None
                }
                // Framed like gRPC under another label, to an HTTP/2 app: grpc-core serves it
                // as a call, so its messages are read as one's as they stream.
                ForWaf::NotRead(first) if ctx.app_h2 && first.first().is_some_and(|&b| b <= 1) => {
                    let call = GrpcCall::sniffed(plan, &session.req_header().headers);
                    ctx.grpc = Some(Box::new(GrpcBody { policy: Arc::clone(&policy), call }));
                    None
                }
                ForWaf::NotRead(_) => None,
                ForWaf::TooLong => Some(Refusal::UninspectableBody),
            };
            // Neither inspected nor replayable: longer than the buffer pingora keeps.
            let refusal = refusal.or(session.retry_buffer_truncated().then_some(Refusal::UninspectableBody));
            if let Some(refusal) = refusal {
                return self.refuse(session, ctx, refusal).await;
            }
        } else if super::is_chunked_h1(session) {
            // pingora replays the piece read here to the app (its retry buffer).
            session.enable_retry_buffering();
            super::read_first_piece(session).await?;
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut InboundCtx,
    ) -> pingora::Result<()> {
        if let Some(chunk) = body.as_ref() {
            ctx.body.count(chunk.len())?;
        }
        let Some(grpc) = ctx.grpc.as_mut() else { return Ok(()) };
        let had_piece = body.is_some();
        match self.grpc_piece(session, &ctx.request, grpc, body.take().unwrap_or_default(), end_of_stream) {
            Ok(on) => {
                *body = (had_piece || !on.is_empty()).then_some(on);
                Ok(())
            }
            Err(refusal) => {
                let e = grpc_stopped(&refusal);
                ctx.request.refusal = Some(refusal);
                Err(e)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut InboundCtx) -> pingora::Result<Box<HttpPeer>> {
        // Asked again for a call the app refused unprocessed (`REFUSED_STREAM`), pingora sends
        // the body read so far again through `request_body_filter`: counted and read anew.
        if std::mem::replace(&mut ctx.attempted, true) {
            ctx.body.seen = 0;
            if let Some(grpc) = ctx.grpc.as_mut() {
                grpc.call.restart();
            }
        }
        let app = ctx.app.unwrap_or_else(|| self.app.address(|| addressed(session), self.app.app.port()));
        let mut peer = HttpPeer::new(app, false, String::new());
        // Upgrades to an HTTP/1.1 app are the sidecar's own (`upgrade::exchange`, with its checks
        // of the app's 101); a request that reaches pingora's path is not one (h2c on a second
        // `Upgrade` line), and goes to the app without its upgrade fields: pingora would send on
        // the first line's `websocket` and switch on any 101, opening a stream past the policy.
        peer.options.http_upstream_request_policy.h1_upgrade = H1UpgradePolicy::Deny;
        peer.options.connection_timeout = Some(app_pool::CONNECT_TIMEOUT);
        peer.options.read_timeout = self.app_timeout;
        if ctx.app_h2 {
            peer.options.alpn = ALPN::H2; // h2c with prior knowledge, as gRPC servers expect
            peer.group_key = 2;
            // What the app may send of an answer before its caller takes it, held here per
            // stream: pingora's 8 MiB default let 40 gRPC callers that stopped reading hold
            // 320 MB of this sidecar. The app is on this host, so a small window costs no speed.
            peer.options.h2_stream_window_size = Some(APP_STREAM_WINDOW);
            peer.options.h2_connection_window_size = Some(APP_CONNECTION_WINDOW);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut InboundCtx,
    ) -> pingora::Result<()> {
        // HTTP/1.0 may leave Host out; pingora sends the request on as HTTP/1.1, which must
        // have one (nginx answers 400 without it): the app's own address stands in. (HTTP/2
        // carries none either, but its :authority, which a Host here would replace.)
        if !session.is_http2() && !upstream.headers.contains_key(http::header::HOST) {
            if let Some(app) = ctx.app {
                upstream.insert_header(http::header::HOST, app.to_string())?;
            }
        }
        add_sidecar_headers(session, upstream, &ctx.request)
    }

    /// The app's answer as pingora's proxy phases forward it (the app pool writes its own).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut InboundCtx,
    ) -> pingora::Result<()> {
        // A gRPC call that failed before any message (trailers-only): its status is here.
        ctx.request.grpc_status = crate::policy::grpc_status(&upstream.headers);
        // The app's upgrades are the sidecar's own (`upgrade::exchange`); one here answers a
        // request that asked for none it may take (HTTP/1.0, h2c), and passed on it would leave
        // the caller waiting on a stream that never opens.
        if upstream.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "the app answered 101 to a request off the upgrade path (HTTP/1.0, or h2c asked)",
            )
            .into_up());
        }
        super::passed_answer(session, upstream);
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut InboundCtx,
    ) -> pingora::Result<Option<Bytes>> {
        ctx.request.grpc_status = crate::policy::grpc_status(trailers).or(ctx.request.grpc_status);
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut InboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The app is local: a refused connection will not succeed on a second try.
        e.set_retry(false);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut InboundCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A stream the HTTP/2 app refused before processing any of it (REFUSED_STREAM, or past
        // a GOAWAY's last stream) may go again whatever its method (RFC 9113 §8.7): pingora's
        // default sends idempotent methods only, and a POST got 502. Its body goes from the
        // retry buffer; one larger than the buffer goes nowhere twice.
        let unprocessed = e.root_cause().downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_remote()
                && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)))
        });
        if session.as_ref().retry_buffer_truncated() || !(unprocessed || session.req_header().method.is_idempotent()) {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut InboundCtx) -> FailToProxy {
        self.caller_timeouts.count(session, e);
        // Only the sidecar's own 400 for the caller's request: once the app's answer has
        // started, its status is the app's, and a later failure is no probe.
        // A refusal made as the body streamed (a gRPC message) was reported when it was made.
        // An app that does not speak HTTP/2 where `auto` chose it (an HTTP/2 caller without a
        // sidecar, curl over TLS): h2's frame error names nothing to change, so say what does.
        // Not a stream the app reset (REFUSED_STREAM, CANCEL): an HTTP/2 app does that.
        let h2_broke = matches!(e.etype(), ErrorType::H2Error | ErrorType::InvalidH2 | ErrorType::H2Downgrade)
            && !e.root_cause().downcast_ref::<h2::Error>().is_some_and(|h2| h2.is_reset() && h2.is_remote());
        let chosen_by_auto = self.app_protocol == AppProtocol::Auto;
        if ctx.app_h2 && chosen_by_auto && e.esource() == &pingora::ErrorSource::Upstream && h2_broke {
            static SAID: std::sync::Once = std::sync::Once::new();
            let protocol = self.app_protocol;
            SAID.call_once(|| {
                tracing::warn!(app_protocol = ?protocol, error = %e, "the app did not answer in HTTP/2, which this request was sent to it in (502): if it speaks HTTP/1.1 only, set inbound.appProtocol: http1 (said once)");
            });
        }
        let unanswered = session.response_written().is_none() && ctx.request.refusal.is_none();
        let answering = unanswered && e.esource() == &pingora::ErrorSource::Downstream;
        let answer = fail(session, e, &mut ctx.request).await;
        match answer.error_code {
            400 if answering => record::report_unreadable(&self.telemetry, session, &ctx.request, e),
            // A body of no declared length that crossed maxBodyBytes as it streamed.
            413 if unanswered && ctx.body.exceeded() => {
                self.report_refusal(session, &ctx.request, &Refusal::PayloadTooLarge)
            }
            _ => {}
        }
        answer
    }

    fn suppress_error_log(&self, session: &Session, _ctx: &InboundCtx, e: &Error) -> bool {
        self.failures.suppress(session, e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut InboundCtx) {
        ctx.request.failed_upstream = e.is_some_and(|e| e.esource() == &pingora::ErrorSource::Upstream);
        super::parse_guard::request_finished(session);
        let principal = peer_identity(session).map(|p| p.id.as_str()).unwrap_or("");
        // Inbound series name the caller; the destination is this workload, so it stays empty.
        record::finish(&self.telemetry, "inbound", session, principal, "", principal, &mut ctx.request);
    }
}
