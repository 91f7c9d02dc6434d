//! The decision (SPEC section 5): one pure function from what a request looks like to a verdict,
//! either allowed (with the path the app must see) or a typed [`Refusal`] that carries
//! everything the response, the metrics, the span and the security event need. The steps run in
//! the SPEC's order; JWT authentication and the WAF have their slots.
//!
//! Nothing here touches a socket or a session: the proxy builds a [`RequestView`], calls
//! [`PolicySnapshot::decide`], and answers a refusal with [`Refusal::status`],
//! [`Refusal::code`] and [`Refusal::headers`].

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method};

use super::compile::{PolicySnapshot, Waiting};
use super::document::OverLimit;
use super::normalize::{match_form, normalize};
use crate::authn::{Failure, Reason, Verified};
use crate::config::MtlsMode;
use crate::identity::SpiffeId;
use crate::telemetry::{DeniedRequest, RequestFacts};
use crate::waf::encoding::{self, Coding, Decoded};
use crate::waf::BodyReading;

/// What a decision looks at: the request as received, and who sent it.
pub struct RequestView<'a> {
    pub principal: Option<&'a SpiffeId>,
    /// Canonical: an IPv4 client of a dual-stack listener as IPv4, not `::ffff:a.b.c.d`.
    pub source_ip: Option<IpAddr>,
    /// The connection came without mutual TLS (a PERMISSIVE port's plaintext).
    pub plaintext: bool,
    pub method: &'a Method,
    /// The request target as it arrived, byte for byte.
    pub target: &'a [u8],
    /// The target's path as parsed (still percent-encoded).
    pub path: &'a str,
    /// The port the caller addressed.
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// The target's authority: HTTP/2's `:authority` (or an absolute-form target's), which
    /// stands for `Host` where no `Host` field came (see [`RequestView::one_header`]).
    pub authority: Option<&'a str>,
    /// Why the head is malformed past what the parser refuses, when it is (the proxy looks at
    /// the request as received, see `proxy::malformed_head`): `Content-Length` beside
    /// `Transfer-Encoding` on the wire (the parser keeps only one of them), more than one
    /// length, a coding other than one `chunked`, an HTTP/2 value with a leading or trailing blank.
    pub malformed_head: Option<Malformation>,
    /// What [`PolicySnapshot::authenticate`] made of the request's token.
    pub auth: Authenticated<'a>,
}

impl RequestView<'_> {
    /// A header's one value as conditions and rate-limit keys read it: `None` when absent, `Err`
    /// when sent more than once or not in visible ASCII (the app may read either value, or
    /// another). `host` is the authority when no `Host` field came, as over HTTP/2 from every
    /// peer sidecar, and is compared in [`host_form`](super::patterns::host_form).
    pub(crate) fn one_header(&self, name: &HeaderName) -> Option<Result<Cow<'_, str>, ()>> {
        self.one_value(name).map(|value| match value? {
            Value::Host(host) => Ok(host),
            Value::Bytes(bytes) => std::str::from_utf8(bytes)
                .ok()
                .filter(|s| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
                .map(Cow::Borrowed)
                .ok_or(()),
        })
    }

    /// [`RequestView::one_header`] as a rate-limit key reads it: any bytes make a key (`Zürich`);
    /// only a second value (or a host that is no text) does not.
    pub(crate) fn one_header_bytes(&self, name: &HeaderName) -> Option<Result<Cow<'_, [u8]>, ()>> {
        self.one_value(name).map(|value| match value? {
            Value::Host(Cow::Borrowed(host)) => Ok(Cow::Borrowed(host.as_bytes())),
            Value::Host(Cow::Owned(host)) => Ok(Cow::Owned(host.into_bytes())),
            Value::Bytes(bytes) => Ok(Cow::Borrowed(bytes)),
        })
    }

    /// The one value of a header: `Err` when sent more than once; `host` in [`host_form`]
    /// (super::patterns::host_form), from the authority when no Host field came.
    fn one_value(&self, name: &HeaderName) -> Option<Result<Value<'_>, ()>> {
        let host = name == http::header::HOST;
        let mut all = self.headers.get_all(name).iter();
        Some(match (all.next(), all.next()) {
            (Some(v), None) if host => v.to_str().map(|h| Value::Host(super::patterns::host_form(h))).map_err(|_| ()),
            (Some(v), None) => Ok(Value::Bytes(v.as_bytes())),
            (None, _) if host => Ok(Value::Host(super::patterns::host_form(self.authority?))),
            (None, _) => return None,
            _ => Err(()),
        })
    }
}

/// A header's one value: a host compared as routers compare it, or any other value's bytes.
enum Value<'a> {
    Host(Cow<'a, str>),
    Bytes(&'a [u8]),
}

/// What a decision on a TCP connection to one of the app's opaque ports looks at: who opened it,
/// from where, and the port it addressed. A mesh peer's tunnel ([`crate::tls::accept_tunnel`])
/// has the principal it proved; a PERMISSIVE port's plaintext has none.
pub struct ConnectionView<'a> {
    pub principal: Option<&'a SpiffeId>,
    /// Canonical, as [`RequestView::source_ip`].
    pub source_ip: Option<IpAddr>,
    pub port: u16,
}

/// The outcome of JWT authentication, made before the decision (it may wait for a JWKS).
#[derive(Debug, Clone, Copy)]
pub enum Authenticated<'a> {
    /// No token, or no issuer configured.
    Nobody,
    Token(&'a Verified),
    Failed(&'a Failure),
}

impl<'a> RequestView<'a> {
    /// The verified token, if any.
    pub fn token(&self) -> Option<&'a Verified> {
        match self.auth {
            Authenticated::Token(t) => Some(t),
            _ => None,
        }
    }
}

/// What a decision reports without refusing: an AUDIT policy's would-be denial, a DETECT WAF's
/// finding.
#[derive(Debug, Clone)]
pub enum Note {
    Audit(DecidedBy),
    Detected(WafFinding),
}

/// A WAF finding and the policy whose WAF made it.
#[derive(Debug, Clone, PartialEq)]
pub struct WafFinding {
    pub policy: Arc<str>,
    pub finding: crate::waf::Finding,
    pub blocked: bool,
}

/// A request whose body the WAF reads before it goes on: at most `limit` bytes of it (after
/// its content coding is undone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlan {
    pub limit: usize,
    /// A longer body with a declared length: refused (413), or passed on uninspected.
    pub reject_over_limit: bool,
    /// No WAF reads this type whole: the body's first bytes decide (see [`BodyPlan::reads`]):
    /// it is read if they show JSON, and otherwise streams as if no WAF read bodies.
    pub if_json: bool,
    /// A WAF reads this type whole unless it is a gRPC message: first bytes that are not a
    /// gRPC frame's have it read.
    unless_grpc_framed: bool,
    /// No type, or from paranoia 2 a type no WAF parses: read when the first bytes are text or
    /// JSON ([`BodyReading::IfText`]).
    unless_binary: bool,
    /// A bare protobuf message (`waf::is_protobuf`): binary, so one the WAF cannot read (longer
    /// than it reads, or in a coding it does not undo) goes on unread rather than refused,
    /// unless its first bytes show JSON (the label is the caller's to choose).
    protobuf: bool,
    coding: Coding,
}

impl BodyPlan {
    /// Whether what is done with this body waits on its first bytes: whether it is read at all
    /// (a type no WAF parses), or whether, longer than the WAF reads, it is refused (protobuf).
    /// A body that does not wait is judged by its declared length before any of it is read.
    pub fn waits_for_first_bytes(&self) -> bool {
        self.if_json || self.protobuf
    }

    /// Whether a body that begins with `prefix` and is longer than the WAF reads is refused (413)
    /// rather than passed on uninspected: under `bodyOverLimit: REJECT`, but for protobuf that
    /// does not start as JSON (a telemetry receiver drops what a 4xx answers).
    pub fn rejects_over_limit(&self, prefix: &[u8]) -> bool {
        self.reject_over_limit && !self.unreadable_binary(prefix)
    }

    /// Protobuf, by its label, that does not start as JSON: what the WAF cannot read of it goes
    /// on unread.
    fn unreadable_binary(&self, prefix: &[u8]) -> bool {
        // Inflated first when it can be; blanks alone so far count as JSON.
        self.protobuf && self.coding.json_like(prefix) == Some(false)
    }

    /// Whether a body that begins with `prefix` is the WAF's to read; `None` while `prefix`
    /// does not tell yet (blanks, half a gzip header).
    pub fn reads(&self, prefix: &[u8]) -> Option<bool> {
        if !self.if_json {
            return Some(true);
        }
        if self.unless_binary {
            return match self.coding {
                // JSON that a binary tail follows is read too: a decoder reads the first value.
                Coding::Identity => match crate::waf::json_like(prefix) {
                    Some(true) => Some(true),
                    _ => crate::waf::text_like(prefix),
                },
                // A coded body of such a type is rare; read, as before.
                _ => Some(true),
            };
        }
        // Under a gRPC label, a body that does not start as a gRPC frame is read whole.
        if self.unless_grpc_framed && prefix.first().is_some_and(|b| !crate::waf::grpc_frame_start(*b)) {
            return Some(true);
        }
        self.coding.json_like(prefix)
    }
}

/// What [`PolicySnapshot::inspect_body`] did with a body it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyInspection {
    Inspected,
    /// Not the WAF's after all (not JSON, of a type no WAF parses).
    NotRead,
    /// Over the limit (once its coding was undone) and passed on uninspected: counted.
    Uninspected,
}

/// Step 6 on a gRPC call, a message at a time as its body streams: each message is inspected
/// when whole, before a byte of it goes on. Read whole like other bodies, a streaming call
/// would wait on its client's last message, and its client on the answer to its first.
#[derive(Debug)]
pub struct GrpcCall {
    plan: BodyPlan,
    messages: crate::waf::GrpcMessages,
    /// `grpc-encoding`: how a message whose frame says so is compressed; `None` when more than
    /// one is named (grpc-core takes the last line, `Coding::of` the first it can undo).
    encoding: Option<Coding>,
    /// `application/grpc+json`: each message a JSON document.
    json_codec: bool,
    /// Not labelled gRPC, only framed like it so far (see [`GrpcCall::sniffed`]).
    sniffed: bool,
    /// A sniffed body that proved not to be gRPC: the rest goes on unread.
    not_grpc: bool,
    /// gRPC-Web's text form: the frames come in base64.
    text: Option<crate::waf::Base64Frames>,
}

impl GrpcCall {
    /// For a gRPC request of `headers` whose body the policy reads (`plan`).
    pub fn new(plan: BodyPlan, headers: &HeaderMap) -> Self {
        let content_type = headers.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
        let json_codec = crate::waf::json_codec(content_type);
        let connect = crate::waf::is_connect(content_type);
        let named = headers.get_all(if connect { "connect-content-encoding" } else { "grpc-encoding" });
        let several = named.iter().count() > 1 || named.iter().any(|v| v.as_bytes().contains(&b','));
        let encoding = (!several).then(|| Coding::of(named.iter().map(|v| v.as_bytes())));
        let messages = crate::waf::GrpcMessages::new(plan.limit);
        let text = crate::waf::grpc_web_text(content_type).then(crate::waf::Base64Frames::default);
        GrpcCall { messages, plan, encoding, json_codec, sniffed: false, not_grpc: false, text }
    }

    /// For a request to an HTTP/2 app under another label (`text/plain`, none the WAF parses)
    /// whose body starts like a gRPC frame: grpc-core's servers (Python, C++, Ruby) serve a call
    /// whatever its `content-type` says. Its messages are read as a gRPC call's, but what does
    /// not read as gRPC (a bad frame, a message over the limit or that does not inflate) is not
    /// refused: from there the body goes on unread, as such bodies did (a binary upload that
    /// happens to start with a 0 byte is not gRPC).
    pub fn sniffed(plan: BodyPlan, headers: &HeaderMap) -> Self {
        GrpcCall { sniffed: true, ..GrpcCall::new(plan, headers) }
    }

    /// Back to the body's start: the same body is to be read again from its first byte (sent
    /// again to the app).
    pub fn restart(&mut self) {
        self.messages = crate::waf::GrpcMessages::new(self.plan.limit);
        self.not_grpc = false;
        if let Some(text) = self.text.as_mut() {
            *text = crate::waf::Base64Frames::default();
        }
    }

    /// Takes the body's next piece: the bytes that go on now (whole messages `policy` let
    /// through, a message too long to read as it comes), or the refusal that stops the call.
    /// DETECT findings go to `note`; messages passed on unread are counted in `uninspected`.
    pub fn next(
        &mut self,
        policy: &PolicySnapshot,
        path: &str,
        chunk: &bytes::Bytes,
        mut note: impl FnMut(Note),
        uninspected: &mut u64,
    ) -> Result<bytes::Bytes, Refusal> {
        use crate::waf::GrpcPiece;
        let GrpcCall { plan, messages, encoding, json_codec, sniffed, not_grpc, text } = self;
        let decoded;
        let frames = match text {
            Some(text) => {
                decoded = bytes::Bytes::from(text.decode(chunk).map_err(|_| NOT_BASE64)?);
                &decoded
            }
            None => chunk,
        };
        let mut refused = None;
        let on = messages.push(frames, |piece| {
            if *not_grpc {
                return true;
            }
            // Refused whatever the label: grpc-core would inflate by the last line what the WAF
            // cannot read (it serves a call under any label).
            let strict = matches!(&piece, GrpcPiece::Message(m) if m.compressed && encoding.is_none());
            let verdict = match piece {
                GrpcPiece::Message(message) => {
                    policy.inspect_grpc_message(*plan, path, message, *encoding, *json_codec, &mut note)
                }
                GrpcPiece::TooLong(_) if plan.reject_over_limit => Err(Refusal::UninspectableBody),
                GrpcPiece::TooLong(_) => Ok(BodyInspection::Uninspected),
                GrpcPiece::Malformed => Err(Refusal::Malformed(Malformation::new(
                    "grpc-frame-flag",
                    "a gRPC message whose compression flag is neither 0 nor 1",
                ))),
            };
            match verdict {
                Ok(inspection) => {
                    *uninspected += u64::from(inspection == BodyInspection::Uninspected);
                    true
                }
                Err(refusal) if *sniffed && !strict && !matches!(refusal, Refusal::Blocked(_)) => {
                    *not_grpc = true;
                    *uninspected += 1;
                    true
                }
                Err(refusal) => {
                    refused = Some(refusal);
                    false
                }
            }
        });
        let on = on.map_err(|_| refused.expect("a stop says why"))?;
        // The text that carries what goes on, as the caller sent it.
        Ok(match text {
            Some(text) => text.release(on.len()).into(),
            None => on,
        })
    }

    /// At the end of the body: a refusal if it ended inside a message; for a sniffed body, what
    /// is held of one goes on (`Ok(Some)`).
    pub fn end(&mut self) -> Result<Option<bytes::Bytes>, Refusal> {
        if self.sniffed {
            let held = self.messages.take_held();
            return Ok((!held.is_empty()).then(|| bytes::Bytes::from(held)));
        }
        if let Some(text) = &self.text {
            text.end().map_err(|_| NOT_BASE64)?;
        }
        match self.messages.between_messages() {
            true => Ok(None),
            false => Err(Refusal::Malformed(Malformation::new(
                "grpc-message-cut",
                "a gRPC request body that ends inside a message",
            ))),
        }
    }
}

const NOT_BASE64: Refusal = Refusal::Malformed(Malformation::new(
    "grpc-web-text-not-base64",
    "a grpc-web-text request body that is not base64",
));

/// A request the decision let through.
#[derive(Debug)]
pub struct Allowed<'a> {
    /// The normalised path: what the policy judged and what the app must be sent.
    pub path: Cow<'a, str>,
    /// `maxBodyBytes` in force: the proxy counts the body as it streams.
    pub max_body_bytes: Option<u64>,
    /// `DELAY` rate limits gave the request a token that comes later: it waits this long first.
    pub delay: Option<Throttle>,
}

/// A request throttled by `DELAY` limits: the tokens are taken, and the request must wait
/// [`Throttle::wait`] before it goes on. It holds its place in each limit's queue (counted
/// against the limit's bound) until dropped, so drop it when the wait is over.
#[derive(Debug)]
pub struct Throttle {
    /// The longest wait of the limits that delay it.
    pub wait: Duration,
    first: Waiting,
    /// More than one `DELAY` limit delays it (rare: no allocation otherwise).
    more: Vec<Waiting>,
}

impl Throttle {
    pub(super) fn new(first: Waiting) -> Self {
        Throttle { wait: first.wait, first, more: Vec::new() }
    }

    pub(super) fn also(&mut self, waiting: Waiting) {
        self.wait = self.wait.max(waiting.wait);
        self.more.push(waiting);
    }

    /// How many limits delay the request.
    pub fn limits(&self) -> usize {
        1 + self.more.len()
    }

    /// The wait is over and the request goes on: each limit observes its wait. Dropped without
    /// this (the caller left, or a later limit refused), each gives its token back.
    pub fn served(mut self) {
        self.first.served();
        self.more.iter_mut().for_each(Waiting::served);
    }

    /// The wait each limit imposed, in limit order.
    pub fn waits(&self) -> impl Iterator<Item = Duration> + '_ {
        std::iter::once(&self.first).chain(&self.more).map(|w| w.wait)
    }
}

/// Which policy and rule (or limit) decided; never told to the caller, always to the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedBy {
    pub policy: Arc<str>,
    pub rule: Arc<str>,
}

/// Why a request cannot be judged as written: `id` is the rule its security event names, stable
/// for a SIEM's rules to match (`path-double-encoded`, `grpc-message-cut`); `why` says it to a
/// person (the event's detail and the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformation {
    pub id: &'static str,
    pub why: &'static str,
}

impl Malformation {
    pub const fn new(id: &'static str, why: &'static str) -> Self {
        Malformation { id, why }
    }
}

/// Why a request is refused. Every refusal of the pipeline is one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Step 2: the request cannot be judged as written (framing, target form, path).
    Malformed(Malformation),
    UriTooLong,
    HeadersTooLarge,
    PayloadTooLarge,
    /// A body longer than a WAF reads (`inspectBodyBytes`) under `bodyOverLimit: REJECT`: 413,
    /// as it can be neither inspected nor passed on.
    UninspectableBody,
    /// Plaintext on a connection admitted under PERMISSIVE, after the mode became STRICT.
    MtlsRequired,
    /// Step 4: an ENFORCE policy denies (or an AUDIT one would, see [`PolicySnapshot::decide`]).
    Forbidden(DecidedBy),
    /// Step 4 before any policy was loaded, under `failMode: closed`: the built-in policy
    /// refuses, with 503 and `Retry-After`, as a sidecar that is not ready yet. A 403 said the
    /// caller may not, which clients neither retry nor tell from a real denial.
    NotReady(DecidedBy),
    /// Step 5: a rate limit is spent.
    RateLimited(Limited),
    /// Step 3: a token that does not verify, or none where one is required.
    Unauthenticated(Unauthenticated),
    /// Step 6: a WAF in BLOCK mode found an attack.
    Blocked(Box<WafFinding>),
}

/// A 401 and what it tells the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Unauthenticated {
    /// `None`: no token at all.
    pub reason: Option<Reason>,
    pub www_authenticate: HeaderValue,
    /// The policy that refused: whose `requireJwt` refused a request without a token, or, for a
    /// token that failed verification, the policies that name issuers.
    pub policy: Option<Arc<str>>,
    /// What exactly failed, for the operator's logs and events, never the caller: the caller's
    /// `error_description` says only what is wrong with its token ("the token's issuer is not
    /// accepted" for an issuer's token in a header that issuer does not read, which this names).
    pub detail: Option<std::borrow::Cow<'static, str>>,
}

impl Unauthenticated {
    /// The metric and event label of why: `missing` when no token came.
    pub fn reason_label(&self) -> &'static str {
        self.reason.map_or("missing", Reason::label)
    }

    /// The rule its events name (`jwt:expired`).
    pub fn rule(&self) -> &'static str {
        self.reason.map_or("jwt:missing", Reason::rule)
    }
}

/// The realm of `WWW-Authenticate`.
const REALM: &str = "palisade";

/// A spent rate limit and what the 429 tells the caller about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub by: DecidedBy,
    pub retry_after: Duration,
    /// `RateLimit-Policy`, made once per limit.
    pub policy_header: HeaderValue,
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Refusal {
    /// A policy's decision on a well-formed request (a deny, a limit, a token, a WAF block): not a
    /// request the parser or a size limit refused, nor plaintext that the port's mode no longer
    /// admits. Only after such a decision may the caller's connection carry its next request.
    pub fn is_decision(&self) -> bool {
        matches!(
            self,
            Refusal::Forbidden(_)
                | Refusal::NotReady(_)
                | Refusal::RateLimited(_)
                | Refusal::Unauthenticated(_)
                | Refusal::Blocked(_)
        )
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::UriTooLong => 414,
            Refusal::HeadersTooLarge => 431,
            Refusal::PayloadTooLarge | Refusal::UninspectableBody => 413,
            Refusal::MtlsRequired | Refusal::Forbidden(_) | Refusal::Blocked(_) => 403,
            Refusal::RateLimited(_) => 429,
            Refusal::Unauthenticated(_) => 401,
            Refusal::NotReady(_) => 503,
        }
    }

    /// The `error` of the JSON body (SPEC section 5).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "invalid_request",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::PayloadTooLarge | Refusal::UninspectableBody => "payload_too_large",
            Refusal::MtlsRequired | Refusal::Forbidden(_) | Refusal::Blocked(_) => "forbidden",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::NotReady(_) => "unavailable",
        }
    }

    /// The `decision` label of `palisade_requests_total` and the span's `palisade.decision`.
    pub fn decision(&self) -> &'static str {
        match self {
            Refusal::Malformed(_)
            | Refusal::UriTooLong
            | Refusal::HeadersTooLarge
            | Refusal::PayloadTooLarge
            | Refusal::UninspectableBody => "invalid",
            Refusal::MtlsRequired | Refusal::Forbidden(_) | Refusal::NotReady(_) => "deny",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Blocked(_) => "waf",
        }
    }

    /// Which policy and rule decided, for the event, the span and the log.
    pub fn decided_by(&self) -> Option<&DecidedBy> {
        match self {
            Refusal::Forbidden(by) | Refusal::NotReady(by) | Refusal::RateLimited(Limited { by, .. }) => Some(by),
            _ => None,
        }
    }

    /// Whether it is reported as a decision of the policy (SPEC section 7: every deny and rate
    /// limit); requests refused as malformed or too large are reported apart, at most 10 a
    /// second each (`Telemetry::inbound_request_invalid`).
    pub fn is_security_event(&self) -> bool {
        matches!(
            self,
            Refusal::MtlsRequired
                | Refusal::Forbidden(_)
                | Refusal::NotReady(_)
                | Refusal::RateLimited(_)
                | Refusal::Unauthenticated(_)
                | Refusal::Blocked(_)
        )
    }

    /// What the log says; the caller only ever sees [`Refusal::code`].
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(m) => m.why,
            Refusal::UriTooLong => "request target over maxUriBytes",
            Refusal::HeadersTooLarge => "request headers over maxHeaderBytes",
            Refusal::PayloadTooLarge => "body over maxBodyBytes",
            Refusal::UninspectableBody => {
                "body longer than the WAF reads (waf.inspectBodyBytes), refused under bodyOverLimit: REJECT"
            }
            Refusal::MtlsRequired => "plaintext after its port became STRICT",
            Refusal::Forbidden(_) => "denied by policy",
            Refusal::NotReady(_) => "no policy loaded yet (failMode: closed)",
            Refusal::RateLimited(_) => "rate limited",
            Refusal::Unauthenticated(u) => u.reason.map_or("no token where one is required", Reason::description),
            Refusal::Blocked(_) => "blocked by input validation",
        }
    }

    /// The security event for this refusal of the request `facts` describe (`audit`: what an
    /// AUDIT policy would have refused).
    pub fn denied(&self, audit: bool, request: RequestFacts) -> DeniedRequest {
        let (policy, rule) = self.policy_and_rule();
        let detail = self.rule_id().map(|_| self.reason().to_string());
        DeniedRequest { status: self.status(), policy, rule, detail, audit, request }
    }

    /// The rule of a refusal no policy decided: a [`Malformation`]'s id, or the setting whose
    /// limit the request passed.
    fn rule_id(&self) -> Option<&'static str> {
        Some(match self {
            Refusal::Malformed(m) => m.id,
            Refusal::UriTooLong => "inputValidation.maxUriBytes",
            Refusal::HeadersTooLarge => "inputValidation.maxHeaderBytes",
            Refusal::PayloadTooLarge => "inputValidation.maxBodyBytes",
            Refusal::UninspectableBody => "waf.inspectBodyBytes",
            // Named by its sentence, as the TCP connection refused for the same reason is.
            _ => return None,
        })
    }

    /// The policy and the rule the event names: the deciding rule or limit, `jwt:<reason>` for
    /// a token, `waf:<detector>` for a WAF finding, else [`Refusal::rule_id`].
    pub fn policy_and_rule(&self) -> (String, String) {
        match (self.decided_by(), self) {
            (Some(by), _) => (by.policy.to_string(), by.rule.to_string()),
            (None, Refusal::Unauthenticated(u)) => (
                u.policy.as_deref().unwrap_or("-").to_string(),
                format!("jwt:{}", u.reason.map_or("missing", Reason::label)),
            ),
            (None, Refusal::Blocked(b)) => (b.policy.to_string(), format!("waf:{}", b.finding.detector.as_str())),
            (None, _) => ("-".to_string(), self.rule_id().unwrap_or_else(|| self.reason()).to_string()),
        }
    }

    /// The response headers that go with the status: `Retry-After` and the IETF RateLimit
    /// headers for a 429.
    pub fn headers(&self, mut add: impl FnMut(HeaderName, HeaderValue)) {
        if let Refusal::Unauthenticated(u) = self {
            add(WWW_AUTHENTICATE, u.www_authenticate.clone());
        }
        if let Refusal::NotReady(_) = self {
            add(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Refusal::RateLimited(limited) = self {
            // Whole seconds, rounded up: a client that waits this long gets a token.
            let wait = limited.retry_after;
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            add(RETRY_AFTER, HeaderValue::from(secs));
            add(RATELIMIT_POLICY, limited.policy_header.clone());
            let remaining = HeaderValue::from_str(&format!("\"{}\";r=0;t={secs}", limited.by.rule))
                .expect("limit names are header-safe");
            add(RATELIMIT, remaining);
        }
    }
}

/// Headers that frameworks read as the request's real method.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Headers that frameworks read as the request's real path: Symfony before 2.7.49 (CVE-2018-14773),
/// Zend Framework 1 and IIS's URL Rewrite route `GET /users/mallory` with `X-Original-URL:
/// /users/alice` to Alice's page, past a rule judged on the path.
const PATH_OVERRIDES: [HeaderName; 2] =
    [HeaderName::from_static("x-original-url"), HeaderName::from_static("x-rewrite-url")];

/// Whether `name` is one of `headers`, with `_` for `-` (CGI, WSGI, Rack and PHP read
/// `X_HTTP_Method_Override` as the same header: both are HTTP_X_HTTP_METHOD_OVERRIDE).
fn is_one_of(headers: &[HeaderName], name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    headers.iter().any(|o| {
        o.as_str().len() == name.len()
            && o.as_str().as_bytes().iter().zip(name).all(|(&a, &b)| a == b || (a == b'-' && b == b'_'))
    })
}

/// Whether a query string has a `_method` parameter in any spelling a framework reads as one
/// (` .method`, `_method%00x`, `_METHOD`: [`crate::query::is_named`]).
fn names_method_override(query: &[u8]) -> bool {
    crate::query::params(query).any(|(name, _)| crate::query::is_named(name, b"_method"))
}

impl PolicySnapshot {
    /// Decides a request, steps in SPEC section 5's order. `audit` hears of every denial an
    /// AUDIT policy would have made (decided, logged, counted, never enforced).
    pub fn decide<'a>(&self, view: &RequestView<'a>, mut note: impl FnMut(Note)) -> Result<Allowed<'a>, Refusal> {
        // 1. A connection let in as plaintext while the port was PERMISSIVE carries no
        //    identity; once the port is STRICT its requests are refused like a handshake.
        if view.plaintext && self.mtls_at(view.port) == MtlsMode::STRICT {
            return Err(Refusal::MtlsRequired);
        }
        // 2. HTTP parsing and limits.
        let path = self.check_request(view)?;
        // 3. JWT authentication (verified before the decision; judged here).
        self.check_authentication(view)?;
        // 4. Authorisation.
        // With no policy loaded yet, the only policy is `failMode: closed`'s, which denies all.
        let refused = if self.source == super::Source::None { Refusal::NotReady } else { Refusal::Forbidden };
        self.authorize(view, match_form(&path), |by| note(Note::Audit(by))).map_err(refused)?;
        // 5. Rate limits (a DELAY limit's wait is the proxy's, after the decision).
        let delay = self.rate_limit(view, match_form(&path)).map_err(Refusal::RateLimited)?;
        // 6. Input validation of the head; the body, when one is read, in `inspect_body`.
        self.inspect_head(view, &path, &mut note)?;
        Ok(Allowed { path, max_body_bytes: self.limits.max_body_bytes, delay })
    }

    /// Decides a TCP connection from a mesh peer: step 4 on what a connection has (see
    /// `CompiledPolicy::decide_connection` for rules that name request fields), after step 3's
    /// `requireJwt`, which no connection can meet. `audit` hears of an AUDIT policy's denials.
    /// Rate limits and the WAF count and read requests; a connection meets neither.
    pub fn authorize_connection(&self, view: &ConnectionView<'_>, audit: impl FnMut(DecidedBy)) -> Result<(), Refusal> {
        self.judge_connection(view, true, audit)
    }

    /// [`Self::authorize_connection`] for a connection already open, after a policy update: the
    /// same verdict, neither counted again nor reported under AUDIT again.
    pub fn recheck_connection(&self, view: &ConnectionView<'_>) -> Result<(), Refusal> {
        self.judge_connection(view, false, |_| {})
    }

    fn judge_connection(
        &self,
        view: &ConnectionView<'_>,
        counted: bool,
        audit: impl FnMut(DecidedBy),
    ) -> Result<(), Refusal> {
        // Step 1, as for a request: plaintext let in under PERMISSIVE, now STRICT.
        if view.principal.is_none() && self.mtls_at(view.port) == MtlsMode::STRICT {
            return Err(Refusal::MtlsRequired);
        }
        if let Some(authn) = &self.authn {
            if let Some(policy) = &authn.required_by {
                if counted {
                    authn.failed(Reason::Missing);
                }
                return Err(Refusal::Unauthenticated(Unauthenticated {
                    reason: None,
                    www_authenticate: crate::authn::www_authenticate(REALM, None),
                    policy: Some(policy.clone()),
                    detail: None,
                }));
            }
        }
        self.authorize_connection_rules(view.principal, view.source_ip, view.port, counted, audit)
            .map_err(Refusal::Forbidden)
    }

    /// Verifies the request's token, when the policies name issuers. Waits only when a token
    /// names a key a remote JWKS has not shown yet (a rate-limited refresh).
    pub async fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<Verified>, Failure> {
        match &self.authn {
            Some(authn) => authn.authenticator.authenticate(headers, query).await,
            None => Ok(None),
        }
    }

    fn check_authentication(&self, view: &RequestView<'_>) -> Result<(), Refusal> {
        let Some(authn) = &self.authn else { return Ok(()) };
        match view.auth {
            Authenticated::Token(_) => Ok(()),
            Authenticated::Failed(failure) => {
                authn.failed(failure.reason());
                Err(Refusal::Unauthenticated(Unauthenticated {
                    reason: Some(failure.reason()),
                    www_authenticate: failure.www_authenticate(REALM),
                    policy: Some(authn.issuers_named_by.clone()),
                    detail: Some(failure.detail.clone()),
                }))
            }
            Authenticated::Nobody => match &authn.required_by {
                Some(policy) => {
                    authn.failed(Reason::Missing);
                    Err(Refusal::Unauthenticated(Unauthenticated {
                        reason: None,
                        www_authenticate: crate::authn::www_authenticate(REALM, None),
                        policy: Some(policy.clone()),
                        detail: None,
                    }))
                }
                None => Ok(()),
            },
        }
    }

    /// The headers claims are forwarded in: a caller's own copies never reach the app.
    pub fn forwarded_claim_headers(&self) -> &[HeaderName] {
        self.authn.as_ref().map_or(&[][..], |authn| authn.authenticator.forwarded_headers())
    }

    /// The headers to clear of the request's verified token (see
    /// [`crate::authn::Authenticator::token_places`]).
    pub fn token_places<'a>(&'a self, verified: &'a Verified) -> impl Iterator<Item = (&'a HeaderName, &'a str)> {
        self.authn.iter().flat_map(move |authn| authn.authenticator.token_places(verified))
    }

    /// Step 6 on the head: the normalised path, the query, headers and cookies, by every WAF.
    fn inspect_head(&self, view: &RequestView<'_>, path: &str, note: &mut impl FnMut(Note)) -> Result<(), Refusal> {
        if self.wafs.is_empty() {
            return Ok(());
        }
        let query = view.target.iter().position(|&b| b == b'?').map(|at| &view.target[at + 1..]);
        // Raw bytes that are not UTF-8 (pingora passes them on as they are) leave the rest of the
        // query to be read: replaced, not a reason to skip it all.
        let query = query.map(String::from_utf8_lossy);
        let head = crate::waf::HeadView { path, query: query.as_deref(), headers: view.headers };
        self.each_waf(match_form(path), note, |waf, skips| waf.inspect_head(&head, skips))
    }

    /// Whether any WAF reads the body of a request for `path` of this type and
    /// `Content-Encoding`, and how much of it. A WAF whose every detector is excluded for the
    /// path reads none of it (an upload path exempted whole streams as without a WAF), and a
    /// body over the limit is refused only for a WAF that blocks: in DETECT it goes on,
    /// uninspected and counted.
    pub fn body_plan<'a>(
        &self,
        path: &str,
        content_type: Option<&[u8]>,
        content_encoding: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<BodyPlan> {
        let path = match_form(path);
        let (mut limit, mut reject_over_limit, mut if_json) = (None::<usize>, false, true);
        let (mut unless_grpc_framed, mut unless_binary) = (false, false);
        // Filled only by exclusions of single parameters on this path; one for every WAF.
        let mut params = Vec::new();
        for w in &self.wafs {
            params.clear();
            if w.waf.detectors().without(w.skips(path, &mut params)).is_empty() {
                continue;
            }
            limit = Some(limit.map_or(w.inspect_body_bytes, |l| l.min(w.inspect_body_bytes)));
            reject_over_limit |= w.block && w.over_limit == OverLimit::REJECT;
            match w.waf.reads_body(content_type) {
                BodyReading::Whole => if_json = false,
                BodyReading::UnlessGrpcFramed => unless_grpc_framed = true,
                BodyReading::IfText => unless_binary = true,
                BodyReading::IfJson => {}
            }
        }
        let coding = Coding::of(content_encoding);
        let protobuf = crate::waf::is_protobuf(content_type);
        let limit = limit?;
        Some(BodyPlan { limit, reject_over_limit, if_json, unless_grpc_framed, unless_binary, protobuf, coding })
    }

    /// Step 6 on a body read whole, as it came (at most [`BodyPlan::limit`] bytes, or the
    /// app pool's held size), for the request whose normalised path was `path`. Its content
    /// coding is undone first; over the limit after that, it is refused (413) or passed on.
    pub fn inspect_body(
        &self,
        plan: BodyPlan,
        path: &str,
        content_type: Option<&[u8]>,
        body: &[u8],
        mut note: impl FnMut(Note),
    ) -> Result<BodyInspection, Refusal> {
        if plan.reads(body) == Some(false) {
            return Ok(BodyInspection::NotRead);
        }
        let over_limit = || match plan.rejects_over_limit(body) {
            true => Err(Refusal::UninspectableBody),
            false => Ok(BodyInspection::Uninspected),
        };
        let path = match_form(path);
        let decoded;
        let body = match plan.coding {
            Coding::Gzip | Coding::Deflate | Coding::Brotli | Coding::Zstd => {
                // A gzip header's extra field, file name and comment are plain text to an app that parses the
                // body as it came (PHP's form parser does).
                for text in encoding::gzip_header_text(body) {
                    self.each_waf(path, &mut note, |waf, skips| waf.inspect_body(None, text, skips))?;
                }
                match encoding::decode(plan.coding, body, plan.limit, false) {
                    Decoded::Bytes(bytes) => {
                        decoded = bytes;
                        &decoded[..]
                    }
                    Decoded::TooLong => return over_limit(),
                    // Not of its coding, or not all of it: what an inflater made of it before
                    // that is read (as a type no WAF parses: it may be cut anywhere, or be bare
                    // deflate's garbage from text that was never compressed), then the bytes as
                    // they came (apps that never inflate parse those).
                    Decoded::Corrupt(partial) => {
                        if !partial.is_empty() {
                            self.each_waf(path, &mut note, |waf, skips| {
                                waf.inspect_body(Some(b"application/octet-stream"), &partial, skips)
                            })?;
                        }
                        if body.len() > plan.limit {
                            return over_limit();
                        }
                        body
                    }
                }
            }
            Coding::Identity | Coding::Other if body.len() > plan.limit => return over_limit(),
            // Prometheus's remote write (snappy): compressed protobuf, nothing to read as it came.
            Coding::Other if plan.unreadable_binary(body) => return Ok(BodyInspection::Uninspected),
            Coding::Identity | Coding::Other => body,
        };
        self.each_waf(path, &mut note, |waf, skips| waf.inspect_body(content_type, body, skips))?;
        Ok(BodyInspection::Inspected)
    }

    /// Step 6 on one whole message of a gRPC request for `path`, as it came (at most
    /// [`BodyPlan::limit`] bytes): undone from the call's `grpc-encoding` (`None`: more than one
    /// named) when its frame says it is compressed, then read as protobuf, or as JSON for gRPC's
    /// JSON codec (`json_codec`).
    fn inspect_grpc_message(
        &self,
        plan: BodyPlan,
        path: &str,
        message: crate::waf::GrpcMessage<'_>,
        encoding: Option<Coding>,
        json_codec: bool,
        mut note: impl FnMut(Note),
    ) -> Result<BodyInspection, Refusal> {
        let path = match_form(path);
        let over_limit = || match plan.reject_over_limit {
            true => Err(Refusal::UninspectableBody),
            false => Ok(BodyInspection::Uninspected),
        };
        let decoded;
        let payload = match (message.compressed, encoding) {
            (false, _) => message.payload,
            (true, None) => {
                return Err(Refusal::Malformed(Malformation::new(
                    "grpc-encoding-repeated",
                    "a compressed gRPC message under more than one grpc-encoding",
                )))
            }
            (true, Some(Coding::Identity)) => {
                return Err(Refusal::Malformed(Malformation::new(
                    "grpc-encoding-missing",
                    "a compressed gRPC message without grpc-encoding",
                )))
            }
            (true, Some(Coding::Other)) => return over_limit(),
            (true, Some(coding)) => match encoding::decode(coding, message.payload, plan.limit, false) {
                Decoded::Bytes(bytes) => {
                    decoded = bytes;
                    &decoded[..]
                }
                Decoded::TooLong => return over_limit(),
                // Not of the coding the call names: an app that inflates it another way would
                // read what the WAF cannot.
                Decoded::Corrupt(_) => {
                    return Err(Refusal::Malformed(Malformation::new(
                        "grpc-does-not-inflate",
                        "a compressed gRPC message that does not inflate as its grpc-encoding says",
                    )))
                }
            },
        };
        self.each_waf(path, &mut note, |waf, skips| waf.inspect_grpc_message(payload, json_codec, skips))?;
        Ok(BodyInspection::Inspected)
    }

    fn each_waf(
        &self,
        path: &str,
        note: &mut impl FnMut(Note),
        inspect: impl Fn(&crate::waf::Waf, &crate::waf::Skips<'_>) -> Option<crate::waf::Finding>,
    ) -> Result<(), Refusal> {
        let mut params = Vec::new();
        for w in &self.wafs {
            params.clear();
            let everywhere = w.skips(path, &mut params);
            let skips = crate::waf::Skips::new(everywhere, &params);
            let Some(finding) = inspect(&w.waf, &skips) else { continue };
            w.found(finding.detector);
            let found = WafFinding { policy: w.policy.clone(), finding, blocked: w.block };
            if w.block {
                return Err(Refusal::Blocked(Box::new(found)));
            }
            note(Note::Detected(found));
        }
        Ok(())
    }

    /// Step 2: what makes a request unjudgeable, then sizes, then the path's normal form.
    /// Declared bodies are refused here, before a byte is forwarded; chunked ones as they cross
    /// the limit (the proxy counts them).
    fn check_request<'a>(&self, view: &RequestView<'a>) -> Result<Cow<'a, str>, Refusal> {
        if let Some(why) = view.malformed_head {
            return Err(Refusal::Malformed(why));
        }
        // A method override makes Express, Rails, Laravel, ASP.NET and Spring handle the request
        // as another method than the one judged (a GET the policy allows, a DELETE to the app),
        // a path override another path. Refused rather than stripped: a client that relies on
        // one learns why it fails. Spelt with underscores too.
        // One pass over the names (every request makes it).
        for name in view.headers.keys() {
            if is_one_of(&METHOD_OVERRIDES, name) {
                return Err(Refusal::Malformed(Malformation::new("method-override-header", "method override header")));
            }
            if is_one_of(&PATH_OVERRIDES, name) {
                return Err(Refusal::Malformed(Malformation::new(
                    "path-override-header",
                    "path override header (x-original-url, x-rewrite-url)",
                )));
            }
        }
        // Content-Type is one value (RFC 9110): with two, the sidecar reads the body as the first
        // says and gunicorn as the last, so a form could pass as opaque text.
        let mut types = view.headers.get_all(http::header::CONTENT_TYPE).iter();
        if types.next().is_some() && types.next().is_some() {
            return Err(Refusal::Malformed(Malformation::new("content-type-repeated", "more than one content-type")));
        }
        // And as a query parameter (Express's methodOverride('_method'), Laravel).
        if view.target.iter().position(|&b| b == b'?').is_some_and(|at| names_method_override(&view.target[at + 1..])) {
            return Err(Refusal::Malformed(Malformation::new(
                "method-override-parameter",
                "method override parameter",
            )));
        }
        // Only origin-form targets ("/path?query"): anything else is forwarded as written while
        // its parsed path is "/", so the policy and the app would see different paths.
        if view.target.first() != Some(&b'/') {
            return Err(Refusal::Malformed(Malformation::new(
                "target-not-origin-form",
                "request target is not in origin form",
            )));
        }
        // Methods are case-sensitive; "delete" would dodge a rule on DELETE yet reach frameworks
        // that upper-case it.
        if view.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(Refusal::Malformed(Malformation::new("method-not-upper-case", "method is not upper case")));
        }
        let limits = &self.limits;
        if view.target.len() > limits.max_uri_bytes {
            return Err(Refusal::UriTooLong);
        }
        let header_bytes: usize = view.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        if header_bytes > limits.max_header_bytes {
            return Err(Refusal::HeadersTooLarge);
        }
        if let Some(max) = limits.max_body_bytes {
            let declared =
                view.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Err(Refusal::PayloadTooLarge);
            }
        }
        normalize(view.path).map_err(|e| Refusal::Malformed(Malformation::new(e.id(), e.reason())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Workload;
    use crate::policy::{parse_file, Source};
    use crate::telemetry::Metrics;
    use std::path::Path;

    fn snapshot(spec: &str) -> PolicySnapshot {
        snapshot_with(spec, MtlsMode::STRICT)
    }

    fn snapshot_with(spec: &str, default_mtls: MtlsMode) -> PolicySnapshot {
        snapshot_of(&[spec], default_mtls)
    }

    /// One policy per spec, named `p`, `p2`, `p3`...
    fn snapshot_of(specs: &[&str], default_mtls: MtlsMode) -> PolicySnapshot {
        let text: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let name = if i == 0 { "p".to_string() } else { format!("p{}", i + 1) };
                format!("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}")
            })
            .collect();
        let text = text.join("---\n");
        let (located, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let labels = [("app".to_string(), "orders".to_string())].into();
        let workload = Workload { namespace: "shop".into(), labels, ..Default::default() };
        let authn = crate::authn::AuthnRuntime::default();
        PolicySnapshot::compile(
            "v1".into(),
            Source::Files,
            &located,
            &workload,
            default_mtls,
            &Metrics::new(),
            &authn,
            None,
        )
        .unwrap()
    }

    /// A request as a test states it; `view` lends it out as the proxy would.
    struct Req {
        principal: Option<SpiffeId>,
        ip: Option<IpAddr>,
        plaintext: bool,
        method: Method,
        target: String,
        headers: HeaderMap,
        authority: Option<String>,
        port: u16,
        ambiguous: Option<Malformation>,
    }

    fn req(method: &str, target: &str) -> Req {
        Req {
            principal: Some(SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap()),
            ip: Some("10.1.2.3".parse().unwrap()),
            plaintext: false,
            method: Method::from_bytes(method.as_bytes()).unwrap(),
            target: target.to_string(),
            headers: HeaderMap::new(),
            authority: None,
            port: 8080,
            ambiguous: None,
        }
    }

    impl Req {
        fn from(mut self, id: &str) -> Self {
            self.principal = SpiffeId::parse(id).ok();
            self
        }
        fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers.append(name, HeaderValue::from_str(value).unwrap());
            self
        }
        fn decide(&self, snapshot: &PolicySnapshot) -> (Result<Option<String>, Refusal>, Vec<DecidedBy>) {
            let (verdict, notes) = self.decide_noting(snapshot);
            let audits = notes
                .into_iter()
                .filter_map(|n| match n {
                    Note::Audit(by) => Some(by),
                    Note::Detected(_) => None,
                })
                .collect();
            (verdict, audits)
        }

        /// The verdict (the normalised path when it changed) and everything noted.
        fn decide_noting(&self, snapshot: &PolicySnapshot) -> (Result<Option<String>, Refusal>, Vec<Note>) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let auth =
                runtime.block_on(snapshot.authenticate(&self.headers, self.target.split_once('?').map(|(_, q)| q)));
            let path = self.target.split('?').next().unwrap_or_default();
            let view = RequestView {
                principal: self.principal.as_ref(),
                source_ip: self.ip,
                plaintext: self.plaintext,
                method: &self.method,
                target: self.target.as_bytes(),
                path,
                port: self.port,
                headers: &self.headers,
                authority: self.authority.as_deref(),
                malformed_head: self.ambiguous,
                auth: match &auth {
                    Ok(Some(t)) => Authenticated::Token(t),
                    Ok(None) => Authenticated::Nobody,
                    Err(f) => Authenticated::Failed(f),
                },
            };
            let mut notes = Vec::new();
            let verdict = snapshot.decide(&view, |n| notes.push(n)).map(|a| match a.path {
                Cow::Owned(p) => Some(p),
                Cow::Borrowed(_) => None,
            });
            (verdict, notes)
        }
    }

    fn by(policy: &str, rule: &str) -> DecidedBy {
        DecidedBy { policy: policy.into(), rule: rule.into() }
    }

    fn headers_of(refusal: &Refusal) -> Vec<(String, String)> {
        let mut out = Vec::new();
        refusal.headers(|n, v| out.push((n.to_string(), v.to_str().unwrap().to_string())));
        out
    }

    const RULES: &str = "  authorization:\n    default: DENY\n    rules:\n      - {name: reads, action: ALLOW, from: {namespaces: [shop]}, to: {methods: [GET], paths: [\"/orders*\"]}}\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin*\"]}}\n      - {name: tenant, action: ALLOW, when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}\n  rateLimits:\n    - {name: tight, match: {paths: [\"/orders/limited\"]}, key: global, rate: 1, per: 60s, burst: 1}\n  inputValidation: {maxUriBytes: 64, maxHeaderBytes: 200, maxBodyBytes: 10}\n";

    /// A case: what it is, the request, then status, code, decision label and decider.
    type Case<'a> = (&'a str, Req, u16, &'a str, &'a str, Option<DecidedBy>);

    #[test]
    fn every_refusal_kind_has_its_status_code_headers_and_decider() {
        let s = snapshot(RULES);
        let limited_first = req("GET", "/orders/limited").decide(&s).0;
        assert_eq!(limited_first, Ok(None), "the first request takes the only token");
        let long = format!("/orders/{}", "a".repeat(64));
        let cases: Vec<Case<'_>> = vec![
            (
                "CL beside TE",
                Req {
                    ambiguous: Some(Malformation::new("content-length-and-transfer-encoding", "CL and TE")),
                    ..req("GET", "/orders")
                },
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            ("absolute form", req("GET", "http://x/orders"), 400, "invalid_request", "invalid", None),
            ("lower-case method", req("get", "/orders"), 400, "invalid_request", "invalid", None),
            ("path above the root", req("GET", "/../etc/passwd"), 400, "invalid_request", "invalid", None),
            ("encoded slash", req("GET", "/orders%2f1"), 400, "invalid_request", "invalid", None),
            ("trailing dot", req("GET", "/admin."), 400, "invalid_request", "invalid", None),
            ("double encoding", req("GET", "/%2561dmin"), 400, "invalid_request", "invalid", None),
            ("fullwidth letter", req("GET", "/%EF%BD%81dmin"), 400, "invalid_request", "invalid", None),
            (
                "method override",
                req("GET", "/orders").header("x-http-method-override", "DELETE"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "path override",
                req("GET", "/orders").header("x-original-url", "/admin"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "path override, underscored",
                req("GET", "/orders").header("X_Rewrite_Url", "/admin"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "x-http-method",
                req("GET", "/orders").header("x-http-method", "DELETE"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "x-method-override",
                req("GET", "/orders").header("X-Method-Override", "PUT"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "an override spelt with underscores (CGI, WSGI, Rack read it as the same)",
                req("POST", "/orders/1").header("x_http_method_override", "DELETE"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            ("an override parameter", req("POST", "/orders/1?_method=DELETE"), 400, "invalid_request", "invalid", None),
            (
                "two content types (read as the first here, as the last by gunicorn)",
                req("POST", "/orders")
                    .header("content-type", "text/plain")
                    .header("content-type", "application/x-www-form-urlencoded"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "an override parameter, encoded, after another",
                req("POST", "/orders/1?a=1&%5Fmethod=DELETE"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "an override parameter with other letters encoded (Node and PHP decode every one)",
                req("POST", "/orders/1?_m%65tho%64=DELETE"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            (
                "an override parameter as PHP reads it: leading blanks dropped, a dot for the underscore",
                req("POST", "/orders/1?x=1;%20+.method=DELETE"),
                400,
                "invalid_request",
                "invalid",
                None,
            ),
            ("upper-case deny", req("GET", "/ADMIN"), 403, "forbidden", "deny", Some(by("shop/p", "no-admin"))),
            (
                "mixed-case deny prefix",
                req("GET", "/AdMiN/users"),
                403,
                "forbidden",
                "deny",
                Some(by("shop/p", "no-admin")),
            ),
            ("uri over the limit", req("GET", &long), 414, "uri_too_long", "invalid", None),
            (
                "headers over the limit",
                req("GET", "/orders").header("x-big", &"b".repeat(200)),
                431,
                "headers_too_large",
                "invalid",
                None,
            ),
            (
                "declared body over the limit",
                req("POST", "/orders").header("content-length", "11"),
                413,
                "payload_too_large",
                "invalid",
                None,
            ),
            (
                "plaintext under STRICT",
                Req { plaintext: true, principal: None, ..req("GET", "/orders") },
                403,
                "forbidden",
                "deny",
                None,
            ),
            ("a DENY rule", req("GET", "/admin/users"), 403, "forbidden", "deny", Some(by("shop/p", "no-admin"))),
            (
                "ALLOW stays case-sensitive",
                req("GET", "/ORDERS"),
                403,
                "forbidden",
                "deny",
                Some(by("shop/p", "default")),
            ),
            ("the default", req("DELETE", "/orders/1"), 403, "forbidden", "deny", Some(by("shop/p", "default"))),
            (
                "a spent limit",
                req("GET", "/orders/limited"),
                429,
                "rate_limited",
                "rate_limited",
                Some(by("shop/p", "tight")),
            ),
        ];
        for (what, request, status, code, decision, decided_by) in cases {
            let refusal = request.decide(&s).0.expect_err(what);
            assert_eq!(
                (refusal.status(), refusal.code(), refusal.decision(), refusal.decided_by().cloned()),
                (status, code, decision, decided_by),
                "{what}: {refusal:?}"
            );
            assert_eq!(refusal.is_security_event(), status == 403 || status == 429, "{what}");
            let headers = headers_of(&refusal);
            if status == 429 {
                assert_eq!(headers[0], ("retry-after".into(), "60".into()), "{what}");
                assert_eq!(headers[1], ("ratelimit-policy".into(), "\"tight\";q=1;w=60".into()), "{what}");
                assert_eq!(headers[2], ("ratelimit".into(), "\"tight\";r=0;t=60".into()), "{what}");
            } else {
                assert!(headers.is_empty(), "{what}: {headers:?}");
            }
        }
    }

    #[test]
    fn the_event_of_a_refusal_names_what_refused_the_request_in_both_formats() {
        use crate::config::EventFormat;
        use crate::telemetry::SecurityEvent;
        let s = snapshot(RULES);
        let facts = RequestFacts {
            principal: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
            source: Some("10.1.2.3:4567".parse().unwrap()),
            destination: Some("10.1.2.4:15006".parse().unwrap()),
            method: "GET".into(),
            path: "/admin/users".into(),
            request_id: "req-1".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            request_principal: None,
            normalized_path: None,
        };
        let refusal = req("GET", "/admin/users").decide(&s).0.unwrap_err();
        let event = SecurityEvent::RequestDenied(refusal.denied(false, facts.clone()));
        let ocsf = event.render(EventFormat::Ocsf);
        assert_eq!(ocsf["class_uid"], 4002);
        assert_eq!(ocsf["activity_id"], 3, "GET");
        assert_eq!((ocsf["action_id"].clone(), ocsf["disposition_id"].clone()), (2.into(), 2.into()));
        assert_eq!(ocsf["firewall_rule"]["uid"], "shop/p/no-admin");
        assert_eq!(ocsf["firewall_rule"]["name"], "no-admin");
        assert_eq!(ocsf["http_response"]["code"], 403);
        assert_eq!(ocsf["http_request"]["url"]["path"], "/admin/users");
        assert_eq!(ocsf["http_request"]["uid"], "req-1");
        assert_eq!(ocsf["src_endpoint"]["ip"], "10.1.2.3");
        assert_eq!(ocsf["dst_endpoint"]["port"], 15006);
        assert_eq!(ocsf["actor"]["user"]["uid"], "spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(ocsf["metadata"]["correlation_uid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        let ecs = event.render(EventFormat::Ecs);
        assert_eq!(ecs["rule"]["id"], "shop/p/no-admin");
        assert_eq!(ecs["event"]["outcome"], "failure");
        assert_eq!(ecs["http"]["response"]["status_code"], 403);

        // A 429 names its limit; an audit is an allowed request that would have been denied.
        let _ = req("GET", "/orders/limited").decide(&s);
        let limited = req("GET", "/orders/limited").decide(&s).0.unwrap_err().denied(false, facts.clone());
        assert_eq!((limited.status, limited.rule.as_str()), (429, "tight"));
        let audited = Refusal::Forbidden(by("shop/p", "no-admin")).denied(true, facts.clone());
        let ocsf = SecurityEvent::RequestDenied(audited).render(EventFormat::Ocsf);
        assert_eq!((ocsf["action_id"].clone(), ocsf["disposition_id"].clone()), (1.into(), 1.into()));
        // Refusals no rule made name a stable id in the rule's place, and say why beside it.
        let plain = Refusal::MtlsRequired.denied(false, facts.clone());
        assert_eq!((plain.policy.as_str(), plain.rule.as_str()), ("-", "plaintext after its port became STRICT"));
        let double = super::super::normalize::PathError::DoubleEncoded;
        let path = Refusal::Malformed(Malformation::new(double.id(), double.reason()));
        let ocsf = SecurityEvent::RequestDenied(path.denied(false, facts)).render(EventFormat::Ocsf);
        assert_eq!(ocsf["firewall_rule"]["uid"], "-/path-double-encoded");
        assert_eq!(ocsf["status_detail"], "path is double percent-encoded");
        assert!(ocsf["message"].as_str().unwrap().ends_with("(400): path is double percent-encoded"), "{ocsf}");
    }

    #[test]
    fn allowed_requests_carry_the_normalised_path_and_the_body_limit() {
        let s = snapshot(RULES);
        let (verdict, _) = req("GET", "/public/..//orders/./7").decide(&s);
        assert_eq!(verdict, Ok(Some("/orders/7".to_string())));
        assert_eq!(req("GET", "/orders/7").decide(&s).0, Ok(None), "an already normal path is not copied");
        let view_limits = req("GET", "/orders");
        let path = view_limits.target.clone();
        let view = RequestView {
            principal: view_limits.principal.as_ref(),
            source_ip: None,
            plaintext: false,
            method: &view_limits.method,
            target: path.as_bytes(),
            path: &path,
            port: 8080,
            headers: &view_limits.headers,
            authority: None,
            malformed_head: None,
            auth: Authenticated::Nobody,
        };
        assert_eq!(s.decide(&view, |_| {}).unwrap().max_body_bytes, Some(10));
    }

    #[test]
    fn authorisation_table() {
        let s = snapshot(RULES);
        let other_ns = "spiffe://cluster.local/ns/web/sa/ui";
        let table: Vec<(&str, Req, Result<(), &str>)> = vec![
            ("ALLOW matches namespace, method and path", req("GET", "/orders/1"), Ok(())),
            ("another namespace falls to the default", req("GET", "/orders/1").from(other_ns), Err("default")),
            ("DENY wins over a matching ALLOW", req("GET", "/admin").header("x-tenant", "acme"), Err("no-admin")),
            ("a header condition allows", req("POST", "/x").from(other_ns).header("x-tenant", "acme"), Ok(())),
            ("a header value that differs does not", req("POST", "/x").header("x-tenant", "evil"), Err("default")),
            (
                "a repeated header never satisfies an ALLOW",
                req("POST", "/x").header("x-tenant", "acme").header("x-tenant", "acme"),
                Err("default"),
            ),
            ("no principal matches no namespace", Req { principal: None, ..req("GET", "/orders") }, Err("default")),
            ("paths are judged normalised", req("GET", "/orders/../admin"), Err("no-admin")),
            ("DENY paths ignore case", req("GET", "/ADMIN"), Err("no-admin")),
            ("ALLOW paths do not", req("GET", "/ORDERS"), Err("default")),
        ];
        for (what, request, expected) in table {
            let got = request.decide(&s).0.map(|_| ()).map_err(|r| r.decided_by().map(|b| b.rule.to_string()));
            assert_eq!(got, expected.map_err(|rule| Some(rule.to_string())), "{what}");
        }
    }

    #[test]
    fn a_deny_or_a_limit_on_get_covers_head_and_limit_paths_ignore_case() {
        let s = snapshot("  authorization:\n    default: ALLOW\n    rules:\n      - {name: no-export, action: DENY, to: {methods: [GET], paths: [\"/admin/export\"]}}\n      - {name: reads, action: ALLOW, to: {methods: [GET], paths: [\"/open\"]}}\n  rateLimits:\n    - {name: login, match: {methods: [GET], paths: [\"/login\"]}, key: global, rate: 1, per: 60s, burst: 1}\n");
        let denied_by = |r: Req| r.decide(&s).0.err().and_then(|e| e.decided_by().map(|b| b.rule.to_string()));
        assert_eq!(denied_by(req("GET", "/admin/export")), Some("no-export".into()));
        assert_eq!(denied_by(req("HEAD", "/admin/export")), Some("no-export".into()), "HEAD runs the GET handler");
        assert_eq!(denied_by(req("POST", "/admin/export")), None, "other methods are not GET");
        let limited = |r: &Req| matches!(throttle_of(&s, r), Err(Refusal::RateLimited(_)));
        assert!(!limited(&req("GET", "/login")));
        assert!(limited(&req("HEAD", "/login")), "HEAD counts against a limit on GET");
        assert!(limited(&req("GET", "/LOGIN")), "/LOGIN is /login to a case-insensitive app");
        assert!(!limited(&req("POST", "/login")), "a limit on GET only");
    }

    #[test]
    fn a_method_override_parameter_is_found_however_its_name_is_written() {
        for query in [
            "_method=PUT",
            "a=1&%5f%6d%65thod=x",
            "+_method=x",
            "%2Emethod=x",
            "_method",
            "_method%00=x",
            "_method%00junk=x",
        ] {
            assert!(names_method_override(query.as_bytes()), "{query}");
        }
        for query in ["_methods=x", "method=x", "q=_method", "a_method=1", "_meth%6F=x", "_method%3D=x", "", "%5F"] {
            assert!(!names_method_override(query.as_bytes()), "{query}");
        }
    }

    #[test]
    fn host_conditions_read_the_authority_of_http2_and_compare_hosts_as_routers_do() {
        let s = snapshot("  authorization:\n    default: ALLOW\n    rules:\n      - {name: no-evil, action: DENY, when: [{key: \"request.headers[host]\", values: [Evil.Shop, \"evil.shop:*\"]}]}\n      - {name: only-allow, action: DENY, to: {paths: [\"/byhost*\"]}, when: [{key: \"request.headers[host]\", values: [\"*.evil\"]}]}\n  rateLimits:\n    - {name: per-host, key: \"request.headers[host]\", rate: 1, per: 60s, burst: 1}\n");
        let denied_by = |r: Req| r.decide(&s).0.err().and_then(|e| e.decided_by().map(|b| b.rule.to_string()));
        let h2 = |authority: &str| Req { authority: Some(authority.into()), ..req("GET", "/x") };
        // HTTP/2 (every request from a peer sidecar) has no Host field: its :authority is the host.
        for authority in ["evil.shop", "evil.shop:8080", "EVIL.SHOP", "evil.shop.", "Evil.Shop.:80"] {
            assert_eq!(denied_by(h2(authority)), Some("no-evil".into()), "{authority}");
        }
        for host in ["evil.shop", "EVIL.shop", "evil.shop.", "evil.shop.:80"] {
            assert_eq!(denied_by(req("GET", "/x").header("host", host)), Some("no-evil".into()), "{host}");
        }
        for other in ["good.shop", "evil.shop.example", "[::1]:80", "evil.shopx", "good.shop:80"] {
            assert_eq!(denied_by(h2(other)), None, "{other}");
        }
        // A Host field, when one came, is what is read (the proxy refuses one that disagrees).
        assert_eq!(
            denied_by(Req { authority: Some("good.shop".into()), ..req("GET", "/x").header("host", "evil.shop") }),
            Some("no-evil".into())
        );
        // A pattern without a port holds for the host at any port; its trailing dot is no matter.
        let bare = snapshot("  authorization:\n    default: ALLOW\n    rules:\n      - {name: no-evil, action: DENY, when: [{key: \"request.headers[host]\", values: [evil.shop.]}]}\n");
        for host in ["evil.shop:9000", "EVIL.SHOP", "evil.shop.:80"] {
            assert!(req("GET", "/x").header("host", host).decide(&bare).0.is_err(), "{host}");
        }
        // A host-keyed limit counts one host however it is written.
        let limited = |r: &Req| matches!(throttle_of(&s, r), Err(Refusal::RateLimited(_)));
        assert!(!limited(&h2("api.shop")));
        assert!(limited(&req("GET", "/x").header("host", "API.shop.")));
    }

    #[test]
    fn a_header_key_outside_visible_ascii_is_a_key_of_its_own() {
        let s = snapshot("  rateLimits:\n    - {name: per-tenant, key: \"request.headers[x-tenant]\", rate: 1, per: 60s, burst: 1}\n");
        let tenant = |v: &[u8]| {
            let mut r = req("GET", "/x");
            r.headers.append("x-tenant", HeaderValue::from_bytes(v).unwrap());
            r
        };
        let limited = |r: &Req| matches!(throttle_of(&s, r), Err(Refusal::RateLimited(_)));
        assert!(!limited(&tenant("Zürich".as_bytes())));
        assert!(limited(&tenant("Zürich".as_bytes())));
        assert!(!limited(&tenant("Genève".as_bytes())), "another tenant's bucket");
        assert!(!limited(&req("GET", "/x")), "the keyless bucket is not theirs");
    }

    #[test]
    fn a_source_ip_limit_keys_each_ipv6_address_on_its_own() {
        let s = snapshot("  rateLimits:\n    - {name: per-ip, key: source.ip, rate: 1, per: 60s, burst: 1}\n");
        let from = |ip: &str| Req { ip: Some(ip.parse().unwrap()), ..req("GET", "/orders") };
        let limited = |r: &Req| matches!(throttle_of(&s, r), Err(Refusal::RateLimited(_)));
        assert!(!limited(&from("fd00:10:244:1::5")));
        assert!(limited(&from("fd00:10:244:1::5")));
        // Another pod on the same node shares the /64, not the bucket.
        assert!(!limited(&from("fd00:10:244:1::6")));
        assert!(!limited(&from("10.0.0.7")));
        assert!(limited(&from("10.0.0.7")));
    }

    #[test]
    fn audit_policies_report_what_they_would_deny_and_never_refuse() {
        let s = snapshot("  authorization:\n    mode: AUDIT\n    rules:\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin*\"]}}\n");
        let (verdict, audits) = req("GET", "/admin").decide(&s);
        assert!(verdict.is_ok());
        assert_eq!(audits, [by("shop/p", "no-admin")]);
        let (_, audits) = req("GET", "/orders").decide(&s);
        assert!(audits.is_empty());
    }

    #[test]
    fn the_mode_in_force_is_the_strictest_policy_else_the_sidecars_own() {
        assert_eq!(snapshot_with("  mtls: PERMISSIVE\n", MtlsMode::STRICT).mtls, MtlsMode::PERMISSIVE);
        assert_eq!(snapshot_with("  authorization: {}\n", MtlsMode::PERMISSIVE).mtls, MtlsMode::PERMISSIVE);
        assert_eq!(snapshot_with("  mtls: STRICT\n", MtlsMode::PERMISSIVE).mtls, MtlsMode::STRICT);
        let permissive = snapshot_with("  mtls: PERMISSIVE\n", MtlsMode::STRICT);
        let plain = Req { plaintext: true, principal: None, ..req("GET", "/orders") };
        assert!(plain.decide(&permissive).0.is_ok());
    }

    #[test]
    fn a_port_level_mode_overrides_the_workloads_on_its_port_and_the_strictest_entry_wins() {
        use MtlsMode::{PERMISSIVE, STRICT};
        let plain = |port: u16| Req { plaintext: true, principal: None, port, ..req("GET", "/orders") };
        let connection = |s: &PolicySnapshot, port: u16| {
            s.authorize_connection(&ConnectionView { principal: None, source_ip: None, port }, |_| {})
        };
        // A STRICT workload with one PERMISSIVE port (a database's, while its clients move in).
        let s = snapshot_with(
            "  selector: {matchLabels: {app: orders}}\n  mtls: STRICT\n  portLevelMtls: {5432: {mode: PERMISSIVE}, 9090: {mode: STRICT}}\n",
            STRICT,
        );
        assert_eq!((s.mtls_at(5432), s.mtls_at(8080), s.mtls_at(9090)), (PERMISSIVE, STRICT, STRICT));
        assert!(s.plaintext_anywhere());
        assert!(plain(5432).decide(&s).0.is_ok());
        assert_eq!(plain(8080).decide(&s).0, Err(Refusal::MtlsRequired));
        assert_eq!((connection(&s, 5432), connection(&s, 8080)), (Ok(()), Err(Refusal::MtlsRequired)));
        // A PERMISSIVE workload with one STRICT port.
        let s = snapshot_with(
            "  selector: {matchLabels: {app: orders}}\n  mtls: PERMISSIVE\n  portLevelMtls: {8080: {mode: STRICT}}\n",
            STRICT,
        );
        assert_eq!((s.mtls_at(8080), s.mtls_at(5432)), (STRICT, PERMISSIVE));
        assert_eq!(plain(8080).decide(&s).0, Err(Refusal::MtlsRequired));
        // Where two policies name the same port, the stricter entry holds, either way round.
        let loose = "  selector: {matchLabels: {app: orders}}\n  portLevelMtls: {5432: {mode: PERMISSIVE}, 6379: {mode: PERMISSIVE}}\n";
        let strict = "  selector: {matchLabels: {app: orders}}\n  portLevelMtls: {5432: {mode: STRICT}}\n";
        for specs in [[loose, strict], [strict, loose]] {
            let s = snapshot_of(&specs, STRICT);
            assert_eq!((s.mtls_at(5432), s.mtls_at(6379), s.mtls_at(80)), (STRICT, PERMISSIVE, STRICT), "{specs:?}");
        }
        // A key that went through JSON or Helm's templates comes quoted.
        let quoted = snapshot_with(
            "  selector: {matchLabels: {app: orders}}\n  portLevelMtls: {\"5432\": {mode: PERMISSIVE}}\n",
            STRICT,
        );
        assert_eq!(quoted.mtls_at(5432), PERMISSIVE);
        // One policy's STRICT is not loosened by another's port entry; the same policy's is.
        let workload_strict = "  mtls: STRICT\n";
        let opens_a_port = "  selector: {matchLabels: {app: orders}}\n  portLevelMtls: {5432: {mode: PERMISSIVE}}\n";
        let s = snapshot_of(&[workload_strict, opens_a_port], PERMISSIVE);
        assert_eq!(s.mtls_at(5432), STRICT, "another policy's STRICT holds on the port");
        let s = snapshot_of(&["  selector: {matchLabels: {app: orders}}\n  mtls: STRICT\n  portLevelMtls: {5432: {mode: PERMISSIVE}}\n", opens_a_port], STRICT);
        assert_eq!(s.mtls_at(5432), PERMISSIVE, "the STRICT policy opened it itself");
        // None at all: nothing is PERMISSIVE, and no port's first byte need be looked at.
        assert!(!snapshot_with("  mtls: STRICT\n", STRICT).plaintext_anywhere());
    }

    #[test]
    fn a_bad_port_level_entry_is_refused_with_its_line_and_field() {
        let head = "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {app: orders}}\n  portLevelMtls:\n";
        for (entry, words) in [
            ("    0: {mode: PERMISSIVE}\n", "a port number from 1 to 65535"),
            ("    70000: {mode: PERMISSIVE}\n", "a port number from 1 to 65535"),
            ("    \"54x\": {mode: PERMISSIVE}\n", "a port number from 1 to 65535"),
            ("    5432: {mode: LOOSE}\n", "PERMISSIVE"),
            ("    5432: PERMISSIVE\n", "mapping"),
            ("    5432: {mode: STRICT}\n    05432: {mode: PERMISSIVE}\n", "port 5432 is named twice"),
            ("    5432: {mode: PERMISSIVE, level: 2}\n", "level"),
        ] {
            let (_, errors) = parse_file(Path::new("p.yaml"), &format!("{head}{entry}"));
            assert_eq!(errors.len(), 1, "{entry}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.line, Some(7), "{entry}: {e}");
            assert!(e.field.starts_with("spec.portLevelMtls"), "{entry}: {e}");
            assert!(e.message.contains(words), "{entry}: {e}");
        }
        // Without a selector, as Istio: a port means one thing only among the workloads picked.
        let unselected = "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  portLevelMtls: {5432: {mode: PERMISSIVE}}\n";
        let (policies, errors) = parse_file(Path::new("p.yaml"), unselected);
        assert!(policies.is_empty());
        let fields: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(fields, [("spec.portLevelMtls", Some(5))], "{errors:?}");
        assert!(errors[0].message.contains("spec.selector"), "{}", errors[0]);
    }

    // === JWT and the WAF as steps of the decision ===

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

    /// An HS256 token of `claims`, signed with `secret`.
    fn hs256(claims: &str, secret: &str) -> String {
        use crate::authn::base64url_encode as b64;
        let input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(claims.as_bytes()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        format!("{input}.{}", b64(ring::hmac::sign(&key, input.as_bytes()).as_ref()))
    }

    fn claims(sub: &str, extra: &str) -> String {
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        format!(r#"{{"iss":"https://auth.example","sub":"{sub}","aud":"orders","exp":{exp}{extra}}}"#)
    }

    fn bearer(r: Req, token: &str) -> Req {
        r.header("authorization", &format!("Bearer {token}"))
    }

    fn jwt_policy(rules: &str, require: bool) -> PolicySnapshot {
        snapshot(&format!(
            "  authentication:\n    requireJwt: {require}\n    jwt:\n      - issuer: https://auth.example\n        audiences: [orders]\n        hmacSecret: {{inline: \"{SECRET}\"}}\n        forwardClaims: [{{claim: sub, header: x-user}}]\n{rules}"
        ))
    }

    fn unauthenticated(r: Result<Option<String>, Refusal>) -> Unauthenticated {
        match r {
            Err(Refusal::Unauthenticated(u)) => u,
            other => panic!("expected a 401, got {other:?}"),
        }
    }

    #[test]
    fn tokens_that_do_not_verify_are_refused_with_401_and_say_why() {
        let s = jwt_policy("", false);
        let good = hs256(&claims("alice", ""), SECRET);
        assert!(bearer(req("GET", "/orders"), &good).decide(&s).0.is_ok(), "a valid token");
        assert!(req("GET", "/orders").decide(&s).0.is_ok(), "no token, not required");

        let forged = hs256(&claims("alice", ""), "another-secret-another-secret-another-secret!!");
        let expired = hs256(r#"{"iss":"https://auth.example","sub":"a","aud":"orders","exp":1000}"#, SECRET);
        let other_aud = hs256(&claims("a", "").replace("\"orders\"", "\"billing\""), SECRET);
        let other_iss = hs256(&claims("a", "").replace("auth.example", "evil.example"), SECRET);
        let none = format!(
            "{}.{}.",
            crate::authn::base64url_encode(br#"{"alg":"none"}"#),
            crate::authn::base64url_encode(claims("a", "").as_bytes())
        );
        for (what, token) in [
            ("a forged signature", forged.as_str()),
            ("an expired token", &expired),
            ("another audience", &other_aud),
            ("another issuer", &other_iss),
            ("alg none", &none),
            ("not a JWT", "abc"),
        ] {
            let refusal = unauthenticated(bearer(req("GET", "/orders"), token).decide(&s).0);
            assert!(refusal.reason.is_some(), "{what}");
            let challenge = refusal.www_authenticate.to_str().unwrap();
            assert!(challenge.starts_with("Bearer realm=\"palisade\""), "{what}: {challenge}");
            assert!(challenge.contains("error="), "{what}: {challenge}");
            let r = Refusal::Unauthenticated(refusal);
            assert_eq!((r.status(), r.code()), (401, "unauthenticated"), "{what}");
            assert!(headers_of(&r).iter().any(|(n, _)| n == "www-authenticate"), "{what}");
        }
    }

    #[test]
    fn require_jwt_refuses_a_request_without_a_token_and_names_the_policy() {
        let s = jwt_policy("", true);
        let refusal = unauthenticated(req("GET", "/orders").decide(&s).0);
        assert_eq!(refusal.reason, None);
        assert_eq!(refusal.reason_label(), "missing");
        // RFC 6750 3.1: no error code when the request carried no token at all.
        assert_eq!(refusal.www_authenticate, "Bearer realm=\"palisade\"");
        assert_eq!(refusal.policy.as_deref(), Some("shop/p"));
        assert!(bearer(req("GET", "/orders"), &hs256(&claims("a", ""), SECRET)).decide(&s).0.is_ok());
    }

    #[test]
    fn a_deny_on_a_header_value_holds_for_it_in_a_list_and_an_allow_does_not() {
        let s = snapshot("  authorization:\n    default: DENY\n    rules:\n      - {name: no-debug, action: DENY, when: [{key: \"request.headers[x-debug]\", values: [\"1\"]}]}\n      - {name: acme, action: ALLOW, when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}\n");
        let by = |r: Req| r.decide(&s).0.map(|_| ()).map_err(|e| e.decided_by().map(|b| b.rule.to_string()));
        let acme = || req("GET", "/").header("x-tenant", "acme");
        assert_eq!(by(acme()), Ok(()));
        assert_eq!(by(acme().header("x-debug", "1")), Err(Some("no-debug".into())));
        // The same list in two fields, and in one: both refused.
        assert_eq!(by(acme().header("x-debug", "0").header("x-debug", "1")), Err(Some("no-debug".into())));
        assert_eq!(by(acme().header("x-debug", "0, 1")), Err(Some("no-debug".into())));
        assert_eq!(by(acme().header("x-debug", "1,0")), Err(Some("no-debug".into())));
        assert_eq!(by(acme().header("x-debug", "0, 10")), Ok(()), "elements are matched whole");
        // An ALLOW is not met by one element of a list.
        assert_eq!(by(req("GET", "/").header("x-tenant", "acme, evil")), Err(Some("default".into())));
    }

    #[test]
    fn a_per_caller_limit_refuses_before_a_global_one_of_an_earlier_policy_takes_a_token() {
        // The namespace-wide global limit is in the first policy, the per-tenant one in the second.
        let global = "  rateLimits:\n    - {name: everyone, key: global, rate: 3, per: 3600s, burst: 3}\n";
        let per_tenant =
            "  rateLimits:\n    - {name: per-tenant, key: \"request.headers[x-tenant]\", rate: 1, per: 3600s, burst: 1}\n";
        let s = snapshot_of(&[global, per_tenant], MtlsMode::STRICT);
        let by = |r: Req| r.decide(&s).0.map(|_| ()).map_err(|e| e.decided_by().map(|b| b.rule.to_string()));
        assert_eq!(by(req("GET", "/").header("x-tenant", "abuser")), Ok(()));
        for _ in 0..5 {
            assert_eq!(by(req("GET", "/").header("x-tenant", "abuser")), Err(Some("per-tenant".into())));
        }
        // The abuser's refusals spent none of everyone's tokens: two more tenants get in.
        assert_eq!(by(req("GET", "/").header("x-tenant", "b")), Ok(()));
        assert_eq!(by(req("GET", "/").header("x-tenant", "c")), Ok(()));
        assert_eq!(by(req("GET", "/").header("x-tenant", "d")), Err(Some("everyone".into())));
    }

    #[test]
    fn request_principals_and_claims_decide_and_key_rate_limits() {
        let rules = "  authorization:\n    default: DENY\n    rules:\n      - {name: users, action: ALLOW, from: {requestPrincipals: [\"https://auth.example/alice\"]}, to: {paths: [\"/orders*\"]}}\n      - {name: any-user-limited, action: ALLOW, from: {requestPrincipals: [\"*\"]}, to: {paths: [\"/orders/limited\"]}}\n      - {name: admins, action: ALLOW, to: {paths: [\"/admin*\"]}, when: [{key: \"request.auth.claims[groups]\", values: [admin]}]}\n  rateLimits:\n    - {name: per-user, match: {paths: [\"/orders/limited\"]}, key: \"request.auth.claims[sub]\", rate: 1, per: 60s, burst: 1}\n";
        let s = jwt_policy(rules, false);
        let alice = hs256(&claims("alice", r#","groups":["staff"]"#), SECRET);
        let bob = hs256(&claims("bob", r#","groups":["staff","admin"]"#), SECRET);
        let rule = |r: Req| r.decide(&s).0.map(|_| ()).map_err(|e| e.decided_by().map(|b| b.rule.to_string()));
        assert_eq!(rule(bearer(req("GET", "/orders/1"), &alice)), Ok(()));
        assert_eq!(rule(bearer(req("GET", "/orders/1"), &bob)), Err(Some("default".into())), "another principal");
        assert_eq!(rule(req("GET", "/orders/1")), Err(Some("default".into())), "no token, no principal");
        assert_eq!(rule(bearer(req("GET", "/admin/x"), &bob)), Ok(()), "a claim in an array");
        assert_eq!(rule(bearer(req("GET", "/admin/x"), &alice)), Err(Some("default".into())));
        // A header that claims what a token would say is not a token.
        assert_eq!(rule(req("GET", "/admin/x").header("x-groups", "admin")), Err(Some("default".into())));

        // One bucket per subject: alice's second request is limited, bob's first is not.
        assert!(bearer(req("GET", "/orders/limited"), &alice).decide(&s).0.is_ok());
        let second = bearer(req("GET", "/orders/limited"), &alice).decide(&s).0;
        assert!(matches!(second, Err(Refusal::RateLimited(_))), "{second:?}");
        assert!(bearer(req("GET", "/orders/limited"), &bob).decide(&s).0.is_ok(), "bob has his own bucket");
    }

    #[test]
    fn a_path_that_names_a_claim_lets_each_caller_reach_only_its_own_objects() {
        let rules = "  authorization:\n    default: DENY\n    rules:\n      - {name: own-account, action: ALLOW, to: {methods: [GET, PUT], paths: [\"/users/{request.auth.claims[sub]}/{**}\"]}}\n      - {name: reviews, action: ALLOW, to: {methods: [GET], paths: [\"/items/{*}/reviews\"]}}\n      - {name: no-self-promotion, action: DENY, to: {paths: [\"/users/{request.auth.claims[sub]}/roles\"]}}\n";
        let s = jwt_policy(rules, false);
        let alice = hs256(&claims("alice", ""), SECRET);
        let mallory = hs256(&claims("mallory", ""), SECRET);
        let rule = |r: Req| r.decide(&s).0.map(|_| ()).map_err(|e| e.decided_by().map(|b| b.rule.to_string()));
        let denied = Err(Some("default".to_string()));
        assert_eq!(rule(bearer(req("GET", "/users/alice"), &alice)), Ok(()));
        assert_eq!(rule(bearer(req("PUT", "/users/alice/address"), &alice)), Ok(()));
        assert_eq!(rule(bearer(req("GET", "/users/%61lice/orders/7"), &alice)), Ok(()), "as the app decodes it");
        // Another's objects, by any spelling that reaches them.
        assert_eq!(rule(bearer(req("GET", "/users/alice/orders/7"), &mallory)), denied);
        assert_eq!(rule(bearer(req("GET", "/users/mallory/../alice/orders"), &mallory)), denied);
        assert_eq!(rule(bearer(req("GET", "/users//alice/orders"), &mallory)), denied);
        assert_eq!(rule(req("GET", "/users/alice/orders")), denied, "no token, no claim");
        assert_eq!(rule(req("GET", "/users/alice/orders").header("x-user", "alice")), denied, "a header is no claim");
        assert_eq!(rule(bearer(req("DELETE", "/users/alice"), &alice)), denied, "the methods still hold");
        // A DENY on the caller's own object, in any case.
        assert_eq!(rule(bearer(req("PUT", "/users/alice/roles"), &alice)), Err(Some("no-self-promotion".into())));
        assert_eq!(rule(bearer(req("PUT", "/users/ALICE/Roles"), &alice)), Err(Some("no-self-promotion".into())));
        // One segment of any value.
        assert_eq!(rule(req("GET", "/items/42/reviews")), Ok(()));
        assert_eq!(rule(req("GET", "/items/42/7/reviews")), denied);
        assert_eq!(rule(req("GET", "/items/reviews")), denied);
    }

    /// A `sub` is one issuer's name for a user: a partner issuer pooled in from another policy
    /// has its own `alice`, who must not reach Alice's objects through a rule of the policy that
    /// names Alice's issuer. A DENY takes any issuer's, and never lets more through.
    #[test]
    fn a_claim_segment_takes_the_token_of_an_issuer_its_own_policy_names() {
        let own = format!("  authentication:\n    jwt:\n      - issuer: https://auth.example\n        audiences: [orders]\n        hmacSecret: {{inline: \"{SECRET}\"}}\n  authorization:\n    default: DENY\n    rules:\n      - {{name: own-account, action: ALLOW, to: {{paths: [\"/users/{{request.auth.claims[sub]}}/{{**}}\"]}}}}\n      - {{name: no-roles, action: DENY, to: {{paths: [\"/users/{{request.auth.claims[sub]}}/roles\"]}}}}\n");
        let partner = format!("  authentication:\n    jwt:\n      - issuer: https://partner.example\n        hmacSecret: {{inline: \"{SECRET}\"}}\n");
        let s = snapshot_of(&[&own, &partner], MtlsMode::PERMISSIVE);
        let rule = |r: Req| r.decide(&s).0.map(|_| ()).map_err(|e| e.decided_by().map(|b| b.rule.to_string()));
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let alice = hs256(&claims("alice", ""), SECRET);
        let partners_alice =
            hs256(&format!(r#"{{"iss":"https://partner.example","sub":"alice","exp":{exp}}}"#), SECRET);
        assert_eq!(rule(bearer(req("GET", "/users/alice/orders"), &alice)), Ok(()));
        assert_eq!(rule(bearer(req("GET", "/users/alice/orders"), &partners_alice)), Err(Some("default".into())));
        assert_eq!(rule(bearer(req("PUT", "/users/alice/roles"), &partners_alice)), Err(Some("no-roles".into())));
    }

    #[test]
    fn forwarded_claims_replace_what_the_caller_sent_and_the_token_is_removed() {
        let s = jwt_policy("", false);
        let token = hs256(&claims("alice", ""), SECRET);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let verified = runtime.block_on(s.authenticate(&h, None)).unwrap().expect("verified");
        h.insert("x-jwt-other", "unrelated".parse().unwrap());
        // What the inbound proxy removes: the claims' headers, and the token's place that holds it.
        let removed_with = |token: Option<&Verified>, h: &HeaderMap| -> Vec<String> {
            let places = token.into_iter().flat_map(|t| s.token_places(t));
            s.forwarded_claim_headers()
                .iter()
                .chain(places.filter(|(n, p)| crate::authn::carries_token(h, n, p)).map(|(n, _)| n))
                .map(|n| n.to_string())
                .collect()
        };
        let removed = removed_with(Some(&verified), &h);
        let added: Vec<(String, HeaderValue)> =
            verified.forward_headers().iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        assert!(removed.contains(&"x-user".to_string()), "a caller's own x-user is removed: {removed:?}");
        assert!(removed.contains(&"authorization".to_string()), "the token does not reach the app: {removed:?}");
        assert_eq!(added, [("x-user".to_string(), HeaderValue::from_static("alice"))]);
        // Without a token the caller's copy is still removed.
        let removed = removed_with(None, &h);
        assert_eq!(removed, ["x-user"]);
    }

    fn waf_policy(waf: &str) -> PolicySnapshot {
        snapshot(&format!("  inputValidation:\n    waf: {waf}\n"))
    }

    /// A bare protobuf body the WAF cannot read (longer than it reads, or in a coding it does
    /// not undo: Prometheus's remote write is snappy) goes on unread and counted, as an upload
    /// does, where a JSON one is refused under REJECT: a telemetry receiver drops what a 4xx
    /// answers.
    #[test]
    fn protobuf_bodies_the_waf_cannot_read_go_on_unread_rather_than_refused() {
        let s = waf_policy("{mode: BLOCK, bodyOverLimit: REJECT, inspectBodyBytes: 1024}");
        let json = s.body_plan("/v1/traces", Some(b"application/json"), []).expect("read");
        assert!(json.rejects_over_limit(b"{"));
        let proto = s.body_plan("/v1/traces", Some(b"application/x-protobuf"), []).expect("read");
        let mut big = Vec::new();
        while big.len() < 4096 {
            big.extend_from_slice(b"\x0a\x08order 42");
        }
        assert!(!proto.rejects_over_limit(&big));
        let verdict = s.inspect_body(proto, "/v1/traces", Some(b"application/x-protobuf"), &big, |_| {});
        assert_eq!(verdict, Ok(BodyInspection::Uninspected));
        let snappy = s.body_plan("/api/v1/write", Some(b"application/x-protobuf"), [&b"snappy"[..]]).expect("read");
        let compressed = b"\xff\x06\x00\x00sNaPpY\x01\x0b\x00\x00\x0a\x08order 42";
        let verdict = s.inspect_body(snappy, "/api/v1/write", Some(b"application/x-protobuf"), compressed, |_| {});
        assert_eq!(verdict, Ok(BodyInspection::Uninspected), "snappy: not undone, counted");
        // One it can read is read; JSON under the label is held to JSON's rules whatever its
        // coding says, or a caller's label and a made-up coding would carry an attack past.
        let attack = br#" {"q":"1' UNION SELECT password FROM users --"}"#;
        for coding in [&[][..], &[&b"snappy"[..]], &[&b"foo"[..]]] {
            let plan = s.body_plan("/api/v1/write", Some(b"application/x-protobuf"), coding.iter().copied()).unwrap();
            let verdict = s.inspect_body(plan, "/api/v1/write", Some(b"application/x-protobuf"), attack, |_| {});
            assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{coding:?}: {verdict:?}");
        }
        let mut long_json = attack[..attack.len() - 2].to_vec();
        long_json.extend(std::iter::repeat_n(b'x', 4096));
        long_json.extend_from_slice(b"\"}");
        let verdict = s.inspect_body(proto, "/api/v1/write", Some(b"application/x-protobuf"), &long_json, |_| {});
        assert_eq!(verdict, Err(Refusal::UninspectableBody), "JSON over the limit: 413");
        // Judged so whatever comes first: blanks (undecided: JSON), or gzip (inflated first).
        assert!(proto.rejects_over_limit(b"    "));
        let gzipped = s.body_plan("/v1/traces", Some(b"application/x-protobuf"), [&b"gzip"[..]]).unwrap();
        let verdict = s.inspect_body(gzipped, "/v1/traces", Some(b"application/x-protobuf"), &gzip(&long_json), |_| {});
        assert_eq!(verdict, Err(Refusal::UninspectableBody), "gzip JSON over the limit: 413");
        let binary = gzip(&big);
        let verdict = s.inspect_body(gzipped, "/v1/traces", Some(b"application/x-protobuf"), &binary, |_| {});
        assert_eq!(verdict, Ok(BodyInspection::Uninspected), "gzip protobuf over the limit");
    }

    #[test]
    fn a_query_with_a_byte_that_is_not_utf8_is_still_read() {
        // pingora passes raw bytes 0x80-0xFF in a target on to an HTTP/1.1 app as they are; the
        // query was skipped whole when it was not UTF-8.
        let block = waf_policy("{mode: BLOCK}");
        let base = req("GET", "/search");
        let target: &[u8] = b"/search?q=1%27%20OR%20%271%27%3D%271&x=\xff";
        let view = RequestView {
            principal: base.principal.as_ref(),
            source_ip: None,
            plaintext: false,
            method: &base.method,
            target,
            path: "/search",
            port: 8080,
            headers: &base.headers,
            authority: None,
            malformed_head: None,
            auth: Authenticated::Nobody,
        };
        assert!(matches!(block.decide(&view, |_| {}), Err(Refusal::Blocked(_))));
    }

    #[test]
    fn the_waf_blocks_in_block_mode_notes_in_detect_mode_and_keeps_to_its_exclusions() {
        let attack = "/search?q=1%27%20OR%20%271%27%3D%271";
        let block = waf_policy(
            "{mode: BLOCK, exclusions: [{paths: [\"/reports*\"], parameters: [filter], detectors: [sqli]}]}",
        );
        match req("GET", attack).decide(&block).0 {
            Err(r @ Refusal::Blocked(_)) => {
                assert_eq!((r.status(), r.code(), r.decision()), (403, "forbidden", "waf"));
                let Refusal::Blocked(found) = &r else { unreachable!() };
                assert_eq!(found.finding.detector.as_str(), "sqli");
                assert!(found.blocked);
                // The refusal's reason never names the detector (the 403 body says only "forbidden").
                assert!(!r.reason().contains("sql"), "{}", r.reason());
            }
            other => panic!("expected a WAF block, got {other:?}"),
        }
        assert!(req("GET", "/search?q=shoes").decide(&block).0.is_ok(), "benign");
        assert!(req("GET", "/reports/1?filter=1%27%20OR%20%271%27%3D%271").decide(&block).0.is_ok(), "excluded");
        assert!(req("GET", "/reports/1?other=1%27%20OR%20%271%27%3D%271").decide(&block).0.is_err(), "another param");
        assert!(
            req("GET", "/reports/1?filter=%3Cscript%3Ealert(1)%3C/script%3E").decide(&block).0.is_err(),
            "another detector"
        );

        let detect = waf_policy("{mode: DETECT}");
        let (verdict, notes) = req("GET", attack).decide_noting(&detect);
        assert!(verdict.is_ok());
        assert!(
            matches!(notes.as_slice(), [Note::Detected(f)] if !f.blocked && f.finding.detector.as_str() == "sqli"),
            "{notes:?}"
        );
        let off = waf_policy("{mode: OFF}");
        let (verdict, notes) = req("GET", attack).decide_noting(&off);
        assert!(verdict.is_ok() && notes.is_empty());
    }

    /// A body with no type (`curl -T`, `requests.put(data=bytes)`) is read as a form when it
    /// starts as text; at paranoia 1 a binary one streams unread, as a binary type's does (it
    /// was read as a form and refused by the protocol detector, and over the limit refused 413).
    #[test]
    fn a_body_with_no_type_is_read_when_it_is_text_and_streams_when_it_is_binary() {
        let at = |pl: u8| waf_policy(&format!("{{mode: BLOCK, paranoia: {pl}}}"));
        let plan = at(1).body_plan("/up", None, []).unwrap();
        assert_eq!(plan.reads(b""), None);
        assert_eq!(plan.reads(b"name=alice&comment=hello"), Some(true));
        assert_eq!(plan.reads("{\"q\": \"caf\u{e9}\"}\n".as_bytes()), Some(true));
        assert_eq!(plan.reads(b"\x89PNG\r\n\x1a\n\0\0"), Some(false));
        assert_eq!(plan.reads(b"PK\x03\x04\x14\0"), Some(false));
        assert_eq!(plan.reads(&[0xde, 0xad, 0xbe, 0xef, b'a']), Some(false), "not UTF-8");
        let verdict = at(1).inspect_body(plan, "/up", None, b"\0\x01\x02\x03\x04 binary\0\0", |_| {});
        assert_eq!(verdict, Ok(BodyInspection::NotRead));
        // A stray NUL does not make text binary: Rack parses such a body as a form all the same.
        let verdict = at(1).inspect_body(plan, "/up", None, b"\0q=1' OR '1'='1", |_| {});
        assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{verdict:?}");
        let attack = b"q=1%27%20UNION%20SELECT%20password%20FROM%20users--";
        assert!(matches!(at(1).inspect_body(plan, "/up", None, attack, |_| {}), Err(Refusal::Blocked(_))));
        // From paranoia 2 too, and so for a body of a type no WAF parses, however long: read
        // whole, every image over inspectBodyBytes had been 413.
        for ct in [None, Some(&b"image/png"[..]), Some(b"application/octet-stream")] {
            let plan = at(2).body_plan("/up", ct, []).unwrap();
            assert_eq!(plan.reads(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0"), Some(false), "{ct:?}");
            assert_eq!(plan.reads(b"x' UNION SELECT 1 --"), Some(true), "{ct:?}");
            assert_eq!(plan.reads(b"{\"id\": \"1\"}\0\0\0\0\0\0\0\0\0\0\0\0\0\0"), Some(true), "JSON, then binary");
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A gRPC call's compressed messages are read inflated as the call's one `grpc-encoding`
    /// says; a call that names more than one (grpc-core reads the last line, another reader the
    /// first), or a message that does not inflate as named, is refused rather than read as
    /// nothing.
    #[test]
    fn a_grpc_calls_compressed_messages_are_read_inflated_under_one_encoding_only() {
        let s = waf_policy("{mode: BLOCK}");
        let plan = s.body_plan("/t.S/Unary", Some(b"application/grpc"), []).expect("read");
        let mut message = vec![0x0a, 32];
        message.extend_from_slice(b"1' OR '1'='1' UNION SELECT 1 --  ");
        let compressed = gzip(&message);
        let framed = |compressed: bool, payload: &[u8]| {
            let mut f = vec![u8::from(compressed)];
            f.extend((payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            bytes::Bytes::from(f)
        };
        let call = |encodings: &[&'static str], body: bytes::Bytes| {
            let mut headers = HeaderMap::new();
            for e in encodings {
                headers.append("grpc-encoding", HeaderValue::from_static(e));
            }
            GrpcCall::new(plan, &headers).next(&s, "/t.S/Unary", &body, |_| {}, &mut 0)
        };
        assert!(matches!(call(&[], framed(false, &message)), Err(Refusal::Blocked(_))));
        assert!(matches!(call(&["gzip"], framed(true, &compressed)), Err(Refusal::Blocked(_))));
        for twice in [&["deflate", "gzip"][..], &["gzip", "deflate"], &["deflate, gzip"]] {
            let refused = call(twice, framed(true, &compressed));
            assert!(
                matches!(refused, Err(Refusal::Malformed(m)) if m.why.contains("more than one")),
                "{twice:?}: {refused:?}"
            );
        }
        // Under another label, read because it is framed like gRPC, the same.
        let mut headers = HeaderMap::new();
        headers.append("grpc-encoding", HeaderValue::from_static("deflate"));
        headers.append("grpc-encoding", HeaderValue::from_static("gzip"));
        let sniffed =
            GrpcCall::sniffed(plan, &headers).next(&s, "/t.S/Unary", &framed(true, &compressed), |_| {}, &mut 0);
        assert!(matches!(sniffed, Err(Refusal::Malformed(m)) if m.why.contains("more than one")), "{sniffed:?}");
        let refused = call(&["deflate"], framed(true, &compressed));
        assert!(matches!(refused, Err(Refusal::Malformed(m)) if m.why.contains("does not inflate")), "{refused:?}");
        // An ordinary compressed message goes on whole.
        let mut ok = vec![0x0a, 6];
        ok.extend_from_slice(b"orders");
        let gzip_ok = gzip(&ok);
        assert_eq!(call(&["gzip"], framed(true, &gzip_ok)), Ok(framed(true, &gzip_ok)));
    }

    /// gRPC-Web's text form and Connect's streaming calls are read as gRPC calls are: their
    /// messages found (in base64, or compressed as Connect's own header says), an attack refused,
    /// text that is not base64 refused, and an ordinary call passed on as it was sent.
    #[test]
    fn grpc_web_text_and_connect_calls_are_read_a_message_at_a_time() {
        use base64::Engine as _;
        let s = waf_policy("{mode: BLOCK}");
        let framed = |flag: u8, payload: &[u8]| {
            let mut f = vec![flag];
            f.extend((payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let string_field = |text: &[u8]| [&[0x0a, text.len() as u8][..], text].concat();
        let attack = string_field(b"1' OR '1'='1' UNION SELECT password FROM users --");
        let ordinary = string_field(b"orders");
        let call = |content_type: &'static str, extra: Option<(&'static str, &'static str)>, body: Vec<u8>| {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static(content_type));
            if let Some((name, value)) = extra {
                headers.insert(name, HeaderValue::from_static(value));
            }
            let plan = s.body_plan("/t.S/Call", Some(content_type.as_bytes()), []).expect("read");
            let mut call = GrpcCall::new(plan, &headers);
            let on = call.next(&s, "/t.S/Call", &bytes::Bytes::from(body), |_| {}, &mut 0)?;
            call.end().map(|_| on)
        };
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes();
        for ct in ["application/grpc-web-text", "application/grpc-web-text+proto"] {
            assert!(matches!(call(ct, None, b64(&framed(0, &attack))), Err(Refusal::Blocked(_))), "{ct}");
            let text = b64(&framed(0, &ordinary));
            assert_eq!(call(ct, None, text.clone()).unwrap(), text, "{ct}");
            let refused = call(ct, None, framed(0, &attack));
            assert!(matches!(refused, Err(Refusal::Malformed(m)) if m.why.contains("base64")), "{refused:?}");
        }
        // Connect names its compression in `connect-content-encoding`; `grpc-encoding` is not its.
        let gzipped = framed(1, &gzip(&attack));
        let connect = Some(("connect-content-encoding", "gzip"));
        assert!(matches!(call("application/connect+proto", connect, gzipped.clone()), Err(Refusal::Blocked(_))));
        let refused = call("application/connect+proto", Some(("grpc-encoding", "gzip")), gzipped);
        assert!(matches!(refused, Err(Refusal::Malformed(_))), "{refused:?}");
        let json = framed(0, br#"{"name": "1' OR '1'='1' UNION SELECT password FROM users --"}"#);
        for ct in ["application/connect+json", "application/grpc-web+json", "Application/Connect+JSON; charset=utf-8"] {
            assert!(matches!(call(ct, None, json.clone()), Err(Refusal::Blocked(_))), "{ct}");
        }
        let ordinary_call = framed(0, &ordinary);
        assert_eq!(call("application/connect+proto", None, ordinary_call.clone()).unwrap(), ordinary_call);
    }

    #[test]
    fn bodies_are_read_only_when_a_waf_wants_them_and_judged_by_type() {
        let none = snapshot("  authorization: {}\n");
        assert_eq!(none.body_plan("/orders", Some(b"application/json"), []), None, "no WAF: the body streams");
        let s = waf_policy("{mode: BLOCK, inspectBodyBytes: 1024, bodyOverLimit: PASS}");
        let plan = s.body_plan("/orders", Some(b"application/json"), []).expect("JSON bodies are read");
        assert_eq!((plan.limit, plan.reject_over_limit, plan.if_json), (1024, false, false));
        let plan = s.body_plan("/orders", Some(b"text/plain"), []).expect("other types are read when they are JSON");
        assert_eq!((plan.limit, plan.if_json), (1024, true));
        let inspect = |s: &PolicySnapshot, ct: &[u8], coding: Option<&[u8]>, body: &[u8]| {
            let plan = s.body_plan("/orders", Some(ct), coding).unwrap();
            s.inspect_body(plan, "/orders", Some(ct), body, |_| {})
        };
        // JSON sent as text/plain, as a cross-site form can and as most JSON parsers take it.
        let sqli = br#"{"q":"1' UNION SELECT password FROM users--"}"#;
        for ct in [&b"text/plain"[..], b"application/octet-stream", b"application/x-anything"] {
            let verdict = inspect(&s, ct, None, sqli);
            assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{verdict:?}");
        }
        assert_eq!(inspect(&s, b"text/plain", None, b"' or 1=1 --"), Ok(BodyInspection::NotRead));
        let json = br#"{"items":[{"note":"<script>alert(document.cookie)</script>"}]}"#;
        let verdict = inspect(&s, b"application/json", None, json);
        assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{verdict:?}");
        let form = b"name=alice&comment=1%27%20UNION%20SELECT%20password%20FROM%20users--";
        let verdict = inspect(&s, b"application/x-www-form-urlencoded", None, form);
        assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{verdict:?}");
        assert_eq!(inspect(&s, b"application/json", None, br#"{"name":"O'Brien"}"#), Ok(BodyInspection::Inspected));
        // A gzip body is inspected as the app that inflates it reads it.
        let mut br = Vec::new();
        brotli::BrotliCompress(&mut &sqli[..], &mut br, &Default::default()).unwrap();
        let zstd = zstd::stream::encode_all(&sqli[..], 3).unwrap();
        for ct in [&b"application/json"[..], b"text/plain"] {
            for (coding, body) in [(&b"gzip"[..], gzip(sqli)), (b"br", br.clone()), (b"zstd", zstd.clone())] {
                let verdict = inspect(&s, ct, Some(coding), &body);
                assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{coding:?}: {verdict:?}");
            }
        }
        // Past the limit once inflated: passed on uninspected here (PASS), refused under REJECT.
        let bomb = gzip(format!(r#"{{"pad":"{}"}}"#, " ".repeat(4096)).as_bytes());
        assert_eq!(inspect(&s, b"application/json", Some(b"gzip"), &bomb), Ok(BodyInspection::Uninspected));
        let strict = waf_policy("{mode: BLOCK, inspectBodyBytes: 1024}");
        assert_eq!(inspect(&strict, b"application/json", Some(b"gzip"), &bomb), Err(Refusal::UninspectableBody));
        assert_eq!(inspect(&strict, b"text/plain", Some(b"gzip"), &gzip(&[b'x'; 4096])), Ok(BodyInspection::NotRead));
        // Said to be gzip and not, or not all of it: read as it came and as far as it inflates
        // (apps that never inflate parse the first; Node's and Go's inflaters give the second).
        let trailed = [gzip(sqli), vec![0]].concat();
        for (coding, body) in [(&b"gzip"[..], &sqli[..]), (b"br", sqli), (b"gzip", &trailed), (b"deflate", sqli)] {
            let verdict = inspect(&s, b"text/plain", Some(coding), body);
            assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{coding:?}: {verdict:?}");
        }
        // JSON said to be deflate and not: bare deflate's garbage from it is no protocol finding.
        let benign = br#"{"name":"O'Brien","qty":2}"#;
        assert_eq!(inspect(&s, b"application/json", Some(b"deflate"), benign), Ok(BodyInspection::Inspected));
        // A form whose gzip header names a file: the name is what PHP's form parser reads.
        let mut named = flate2::GzBuilder::new()
            .filename("x&id=1' UNION SELECT password FROM users--")
            .write(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut named, b"a=1").unwrap();
        let named = named.finish().unwrap();
        let verdict = inspect(&s, b"application/x-www-form-urlencoded", Some(b"gzip"), &named);
        assert!(matches!(verdict, Err(Refusal::Blocked(_))), "{verdict:?}");
        for name in ["orders-2024 (final).csv", "report_ü.json", "C:\\Users\\ann\\data 100%.txt"] {
            let mut file = flate2::GzBuilder::new().filename(name).write(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut file, b"a=1").unwrap();
            let file = file.finish().unwrap();
            let verdict = inspect(&s, b"application/x-www-form-urlencoded", Some(b"gzip"), &file);
            assert_eq!(verdict, Ok(BodyInspection::Inspected), "{name}");
        }
        let reject = waf_policy("{mode: BLOCK}");
        let plan = reject.body_plan("/orders", Some(b"application/json"), []).unwrap();
        assert_eq!((plan.limit, plan.reject_over_limit), (65536, true), "the defaults");
        // DETECT refuses nothing: a body over the limit goes on uninspected.
        let detect = waf_policy("{mode: DETECT}");
        let plan = detect.body_plan("/orders", Some(b"application/json"), []).unwrap();
        assert_eq!((plan.limit, plan.reject_over_limit), (65536, false), "DETECT");
        // A path every detector is excluded for: its body is not read; other paths' are, and a
        // path excluded for some detectors or parameters only is still read.
        let exempt = waf_policy(
            "{mode: BLOCK, exclusions: [{paths: [\"/upload/*\"], detectors: [sqli, xss, path_traversal, command_injection, protocol]}, {paths: [\"/search\"], detectors: [sqli]}, {paths: [\"/q\"], parameters: [q], detectors: [sqli, xss, path_traversal, command_injection, protocol]}]}",
        );
        assert_eq!(exempt.body_plan("/upload/photo", Some(b"multipart/form-data; boundary=b"), []), None);
        assert_eq!(exempt.body_plan("/upload/../upload/x", Some(b"application/json"), []), None);
        for path in ["/orders", "/search", "/q", "/uploads"] {
            assert!(exempt.body_plan(path, Some(b"application/json"), []).is_some(), "{path}");
        }
        // The five above were every detector when the docs told users to write them; they still
        // lift `code_injection` and `ssrf`, added since. Naming all six does the same; four do not.
        let six = waf_policy(
            "{mode: BLOCK, exclusions: [{paths: [\"/upload/*\"], detectors: [sqli, xss, path_traversal, command_injection, protocol, code_injection]}, {paths: [\"/four/*\"], detectors: [sqli, xss, path_traversal, command_injection, code_injection]}]}",
        );
        assert_eq!(six.body_plan("/upload/photo", Some(b"multipart/form-data; boundary=b"), []), None);
        assert!(six.body_plan("/four/x", Some(b"application/json"), []).is_some());
    }

    // === Throttling (DELAY limits) ===

    /// The verdict's throttle, for a request the decision let through.
    fn throttle_of(s: &PolicySnapshot, r: &Req) -> Result<Option<Throttle>, Refusal> {
        let path = r.target.split('?').next().unwrap_or_default().to_string();
        let view = RequestView {
            principal: r.principal.as_ref(),
            source_ip: r.ip,
            plaintext: false,
            method: &r.method,
            target: r.target.as_bytes(),
            path: &path,
            port: r.port,
            headers: &r.headers,
            authority: r.authority.as_deref(),
            malformed_head: None,
            auth: Authenticated::Nobody,
        };
        s.decide(&view, |_| {}).map(|a| a.delay)
    }

    fn waiting(s: &PolicySnapshot) -> usize {
        s.policies.iter().flat_map(|p| &p.rate_limits).map(|l| l.waiting()).sum()
    }

    #[test]
    fn a_delay_limit_holds_a_request_back_for_the_next_token_then_refuses_past_max_delay() {
        // One token a minute, waits of up to a minute: the second request waits for the next token
        // (a minute, less the nanoseconds this test took), the third would wait two: 429.
        let s = snapshot("  rateLimits:\n    - {name: slow, key: global, rate: 1, per: 60s, burst: 1, action: DELAY, maxDelay: 60s}\n");
        assert!(throttle_of(&s, &req("GET", "/a")).unwrap().is_none(), "the burst: at once");
        let delayed = throttle_of(&s, &req("GET", "/a")).unwrap().expect("throttled");
        assert!(delayed.wait > Duration::from_secs(59) && delayed.wait <= Duration::from_secs(60), "{delayed:?}");
        assert_eq!((delayed.limits(), waiting(&s)), (1, 1), "one request waits on the limit");
        let refused = throttle_of(&s, &req("GET", "/a")).expect_err("the queue holds one minute's worth");
        assert_eq!((refused.status(), refused.code(), refused.decision()), (429, "rate_limited", "rate_limited"));
        // Retry-After says when a retry would be let into the queue: a minute on.
        assert_eq!(headers_of(&refused)[0], ("retry-after".into(), "60".into()));
        drop(delayed);
        assert_eq!(waiting(&s), 0, "the place is given back once the wait is over");
    }

    #[test]
    fn a_header_key_sent_twice_counts_against_the_keyless_bucket_not_a_fresh_one() {
        let s = snapshot(
            "  rateLimits:\n    - {name: per-key, key: \"request.headers[x-key]\", rate: 1, per: 60s, burst: 1}\n",
        );
        let limited = |r: &Req| matches!(throttle_of(&s, r), Err(Refusal::RateLimited(_)));
        let real = req("GET", "/").header("x-key", "K");
        assert!(!limited(&real));
        assert!(limited(&real), "K is at its limit");
        // A fresh value beside the real one (the app may read either): not a fresh bucket.
        let twice = |fresh: &str| req("GET", "/").header("x-key", fresh).header("x-key", "K");
        assert!(!limited(&twice("r1")), "the keyless bucket's one token");
        assert!(limited(&twice("r2")), "a second fresh value is no new key");
        assert!(limited(&req("GET", "/")), "the same bucket as a request without the header");
        assert!(!limited(&req("GET", "/").header("x-key", "other")), "one other value is its own key");
    }

    #[test]
    fn several_keys_waiting_at_once_are_bounded_per_limit() {
        // Every key may queue one request (a minute's wait at one a minute); past
        // MAX_WAITING_PER_LIMIT waiting in all, the next over-limit request is refused even though
        // its own key's queue is empty.
        let s = snapshot("  rateLimits:\n    - {name: per-key, key: \"request.headers[x-key]\", rate: 1, per: 60s, burst: 1, action: DELAY, maxDelay: 60s}\n");
        let max = super::super::compile::MAX_WAITING_PER_LIMIT;
        let mut held = Vec::new();
        for i in 0..max {
            let r = req("GET", "/").header("x-key", &format!("k{i}"));
            assert!(throttle_of(&s, &r).unwrap().is_none());
            held.push(throttle_of(&s, &r).unwrap().expect("waits"));
        }
        assert_eq!(waiting(&s), max);
        let r = req("GET", "/").header("x-key", "one-more");
        assert!(throttle_of(&s, &r).unwrap().is_none(), "a token free now is still handed out");
        assert!(matches!(throttle_of(&s, &r), Err(Refusal::RateLimited(_))), "no room to wait");
        held.truncate(max - 1);
        assert!(throttle_of(&s, &r).unwrap().is_some(), "room again: it waits");
    }

    #[test]
    fn the_longest_wait_of_several_delay_limits_is_the_requests_and_a_later_refusal_frees_the_places() {
        let s = snapshot("  rateLimits:\n    - {name: a, key: global, rate: 1, per: 10s, burst: 1, action: DELAY, maxDelay: 20s}\n    - {name: b, key: global, rate: 1, per: 30s, burst: 1, action: DELAY, maxDelay: 60s}\n    - {name: c, match: {paths: [\"/c\"]}, key: global, rate: 1, per: 60s, burst: 1}\n");
        assert!(throttle_of(&s, &req("GET", "/c")).unwrap().is_none());
        // a would wait ~10 s, b ~30 s; c is spent: 429, and the places a and b gave the request in
        // their queues are given back at once, with their tokens: the request never went on.
        let refused = throttle_of(&s, &req("GET", "/c")).expect_err("c refuses");
        assert_eq!(refused.decided_by().map(|b| &*b.rule), Some("c"));
        assert_eq!(waiting(&s), 0);
        let both = throttle_of(&s, &req("GET", "/x")).unwrap().expect("throttled by a and b");
        assert_eq!(both.limits(), 2);
        let waits: Vec<Duration> = both.waits().collect();
        assert!(waits[0] > Duration::from_secs(9) && waits[0] <= Duration::from_secs(10), "{waits:?}");
        assert!(waits[1] > Duration::from_secs(29) && both.wait == waits[1], "{both:?}");
    }

    #[test]
    fn max_delay_is_checked_where_it_is_written() {
        use crate::policy::parse_file;
        let head = "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  rateLimits:\n";
        for (limit, field, words) in [
            ("{name: r, rate: 1, action: DELAY, maxDelay: 0s}", "spec.rateLimits[0].maxDelay", "more than 0"),
            ("{name: r, rate: 1, action: DELAY, maxDelay: 61s}", "spec.rateLimits[0].maxDelay", "at most 60s"),
            ("{name: r, rate: 1, action: DELAY, maxDelay: soon}", "spec.rateLimits[0].maxDelay", ""),
            ("{name: r, rate: 1, action: WAIT}", "spec.rateLimits[0].action", "DELAY"),
        ] {
            let (_, errors) = parse_file(Path::new("p.yaml"), &format!("{head}    - {limit}\n"));
            assert_eq!(errors.len(), 1, "{limit}: {errors:?}");
            let e = &errors[0];
            assert_eq!((e.line, e.field.as_str()), (Some(6), field), "{limit}: {e}");
            assert!(e.message.contains(words), "{limit}: {e}");
        }
        let (policies, errors) =
            parse_file(Path::new("p.yaml"), &format!("{head}    - {{name: r, rate: 1, action: DELAY}}\n"));
        assert!(errors.is_empty(), "{errors:?}");
        let limit = &policies[0].policy.spec.rate_limits[0];
        assert_eq!(limit.max_wait(), Duration::from_millis(500), "SPEC's 500ms when not given");
        // SPEC section 4's example: REJECT with a maxDelay, which a REJECT limit does not use.
        for limit in ["{name: r, rate: 1, maxDelay: 500ms}", "{name: r, rate: 1, action: REJECT, maxDelay: 500ms}"] {
            let (policies, errors) = parse_file(Path::new("p.yaml"), &format!("{head}    - {limit}\n"));
            assert!(errors.is_empty(), "{limit}: {errors:?}");
            assert_eq!(policies[0].policy.spec.rate_limits[0].max_wait(), Duration::ZERO, "{limit}: answers at once");
        }
    }

    /// A connection from `id` to `port`, and the AUDIT denials it was told of.
    fn connect(snapshot: &PolicySnapshot, id: &str, port: u16) -> (Result<(), Refusal>, Vec<DecidedBy>) {
        let principal = SpiffeId::parse(id).unwrap();
        let view = ConnectionView { principal: Some(&principal), source_ip: Some("10.1.2.3".parse().unwrap()), port };
        let mut audits = Vec::new();
        let verdict = snapshot.authorize_connection(&view, |by| audits.push(by));
        (verdict, audits)
    }

    const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const BATCH: &str = "spiffe://cluster.local/ns/batch/sa/job";

    fn connection_rules(mode: &str) -> PolicySnapshot {
        snapshot(&format!(
            "  authorization:\n    mode: {mode}\n    default: DENY\n    rules:\n      - {{name: db, action: ALLOW, from: {{principals: [\"{ORDERS}\", \"{BATCH}\"]}}, to: {{ports: [5432]}}}}\n      - {{name: reads, action: ALLOW, from: {{principals: [\"{FRONTEND}\"]}}, to: {{methods: [GET]}}}}\n      - {{name: no-batch-admin, action: DENY, from: {{namespaces: [batch]}}, to: {{paths: [\"/admin*\"]}}}}\n"
        ))
    }

    #[test]
    fn a_connection_is_refused_where_only_request_fields_would_allow_it() {
        let s = connection_rules("ENFORCE");
        let forbidden = |verdict: Result<(), Refusal>| match verdict {
            Err(Refusal::Forbidden(by)) => by.rule.to_string(),
            other => panic!("expected a denial, got {other:?}"),
        };
        // `reads` allows the frontend's GETs; a connection has no method, so it matches nothing.
        assert_eq!(forbidden(connect(&s, FRONTEND, 5432).0), "default");
        assert_eq!(req("GET", "/orders").decide(&s).0, Ok(None), "the same caller's GET is allowed");
        // `db` names the port: another port is not covered.
        assert_eq!(forbidden(connect(&s, ORDERS, 6379).0), "default");
        // A DENY rule's request fields are dropped for a connection, so it denies more, never less:
        // batch may not reach /admin, and so may not open a connection at all.
        assert_eq!(forbidden(connect(&s, BATCH, 5432).0), "no-batch-admin");
        let (verdict, _) = connect(&s, ORDERS, 5432);
        assert_eq!(verdict, Ok(()), "the principal on its port");
        // An open connection judged again after an update gets the same verdicts.
        let recheck = |id: &str, port: u16| {
            let principal = SpiffeId::parse(id).unwrap();
            s.recheck_connection(&ConnectionView { principal: Some(&principal), source_ip: None, port })
        };
        assert_eq!(recheck(ORDERS, 5432), Ok(()));
        assert!(matches!(recheck(BATCH, 5432), Err(Refusal::Forbidden(by)) if &*by.rule == "no-batch-admin"));
        assert!(matches!(recheck(FRONTEND, 5432), Err(Refusal::Forbidden(_))));
    }

    #[test]
    fn plaintext_connections_have_no_principal_and_end_with_permissive() {
        let plaintext = |s: &PolicySnapshot, port: u16| {
            let view = ConnectionView { principal: None, source_ip: Some("10.1.2.3".parse().unwrap()), port };
            (s.authorize_connection(&view, |_| {}), s.recheck_connection(&view))
        };
        let under = |mode: MtlsMode, spec: &str| snapshot_with(&format!("  mtls: {mode:?}\n{spec}"), mode);
        let open = under(MtlsMode::PERMISSIVE, "  authorization: {default: ALLOW}\n");
        assert_eq!(plaintext(&open, 5432), (Ok(()), Ok(())));
        // A rule that names principals never matches a caller without one.
        let rules = "  authorization:\n    default: DENY\n    rules:\n      - {name: db, action: ALLOW, from: {principals: [\"spiffe://cluster.local/*\"]}, to: {ports: [5432]}}\n      - {name: office, action: ALLOW, from: {ipBlocks: [10.1.0.0/16]}, to: {ports: [6379]}}\n";
        let s = under(MtlsMode::PERMISSIVE, rules);
        assert!(matches!(plaintext(&s, 5432).0, Err(Refusal::Forbidden(by)) if &*by.rule == "default"));
        assert_eq!(plaintext(&s, 6379).0, Ok(()), "allowed by its source address");
        // STRICT: refused before any rule, when it arrives and when an open one is judged again.
        let strict = under(MtlsMode::STRICT, "  authorization: {default: ALLOW}\n");
        assert_eq!(plaintext(&strict, 5432), (Err(Refusal::MtlsRequired), Err(Refusal::MtlsRequired)));
        let principal = SpiffeId::parse(ORDERS).unwrap();
        let tunnel = ConnectionView { principal: Some(&principal), source_ip: None, port: 5432 };
        assert_eq!(strict.recheck_connection(&tunnel), Ok(()), "a tunnel is mutual TLS");
    }

    #[test]
    fn an_audit_policy_reports_the_connection_it_would_refuse() {
        let s = connection_rules("AUDIT");
        let (verdict, audits) = connect(&s, FRONTEND, 5432);
        assert_eq!(verdict, Ok(()));
        assert_eq!(audits.iter().map(|by| &*by.rule).collect::<Vec<_>>(), ["default"]);
        assert!(connect(&s, ORDERS, 5432).1.is_empty());
    }

    #[test]
    fn a_policy_that_requires_a_jwt_refuses_every_connection() {
        let s = jwt_policy("", true);
        match connect(&s, ORDERS, 5432).0 {
            Err(Refusal::Unauthenticated(u)) => assert_eq!(u.policy.as_deref(), Some("shop/p")),
            other => panic!("expected a refusal for the missing token, got {other:?}"),
        }
        let optional = jwt_policy("", false);
        assert_eq!(connect(&optional, ORDERS, 5432).0, Ok(()), "no rules, a token not required");
    }

    #[test]
    fn a_refused_path_says_which_form_it_took() {
        let s = snapshot("  authorization: {default: ALLOW}\n");
        for (target, why) in [
            ("/a;jsessionid=1", "path holds ';' or '\\'"),
            ("/report.", "path segment ends in a dot or a space, or starts with a space"),
            ("/%2561", "path is double percent-encoded"),
            ("/a%2Fb", "path holds an encoded '/' or '\\'"),
        ] {
            let refusal = req("GET", target).decide(&s).0.unwrap_err();
            assert_eq!(refusal.reason(), why, "{target}");
        }
    }
}
