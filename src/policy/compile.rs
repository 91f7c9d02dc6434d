//! From documents to one immutable [`PolicySnapshot`] per update: the policies that select this
//! workload, with rules split into DENY and ALLOW lists, limits resolved, and every metric handle
//! looked up once, so a decision only reads.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};

use prometheus::{Histogram, IntCounter};

use super::decide::{DecidedBy, Limited, RequestView, Throttle};
use super::document::{
    Action, ConditionKey, Exclusion, LimitAction, LimitKey, Mode, OverLimit, RateLimit, Rule, SecurityPolicy, WafMode,
};
use super::load::Located;
use super::patterns::{PathPattern, Pattern};
use super::ratelimit::Buckets;
use super::Source;
use crate::authn::{Authenticator, AuthnOptions, AuthnRuntime, CacheLookups, ClaimPath, Reason};
use crate::config::IpBlock;
use crate::config::{ConfigError, MtlsMode, Workload};
use crate::identity::SpiffeId;
use crate::telemetry::Metrics;

/// Size limits in force (the smallest any selecting policy sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { max_uri_bytes: 8192, max_header_bytes: 65536, max_body_bytes: None }
    }
}

/// Which headers that conditions look at are present in a request: one bit per header name
/// (names past the 64th share the last bit, which then means "look it up"). A rule whose header
/// is absent fails without a header-map lookup.
#[derive(Default)]
struct HeaderBits {
    names: std::collections::HashMap<http::HeaderName, u64, std::hash::BuildHasherDefault<crate::telemetry::Fnv1a>>,
}

impl HeaderBits {
    fn bit(&mut self, name: &http::HeaderName) -> u64 {
        let next = (self.names.len() as u32).min(63);
        *self.names.entry(name.clone()).or_insert(1u64 << next)
    }

    /// The table is fixed at compile time and only looked up per request, so a caller choosing
    /// colliding header names can slow a lookup by a few compares, never grow it.
    fn present(&self, headers: &HeaderMap, authority: bool) -> u64 {
        if self.names.is_empty() {
            return 0;
        }
        let bits = headers.keys().filter_map(|k| self.names.get(k)).fold(0, |bits, b| bits | b);
        // An authority stands for a Host field (HTTP/2 carries it so).
        match self.names.get(&http::header::HOST) {
            Some(host) if authority && !headers.contains_key(http::header::HOST) => bits | host,
            _ => bits,
        }
    }
}

/// Everything a sidecar enforces, as one immutable value published at once: where it came
/// from, its version, the mTLS mode of the port, and the compiled policies.
pub struct PolicySnapshot {
    pub version: String,
    pub source: Source,
    /// The mode in force: the strictest `spec.mtls` among the selecting policies, else the
    /// sidecar's `inbound.mtls`.
    pub mtls: MtlsMode,
    /// The ports a selecting policy names in `spec.portLevelMtls`, each with its mode: the
    /// strictest of each policy's view of it (the policy's entry, else its `spec.mtls`), sorted
    /// by port. See [`Self::mtls_at`].
    pub port_mtls: Vec<(u16, MtlsMode)>,
    header_bits: HeaderBits,
    pub policies: Vec<CompiledPolicy>,
    pub limits: InputLimits,
    /// JWT authentication: every selecting policy's issuers, and whether a token is required.
    pub(super) authn: Option<SnapshotAuthn>,
    /// Each selecting policy's WAF (BLOCK or DETECT): a request must pass every one.
    pub(super) wafs: Vec<PolicyWaf>,
    /// The selecting documents, for `/config_dump`.
    pub documents: Vec<Located>,
}

pub(super) struct SnapshotAuthn {
    pub authenticator: Authenticator,
    /// Some selecting policy says `requireJwt`: the first that did, for the event.
    pub required_by: Option<Arc<str>>,
    /// The selecting policies that name issuers (`shop/orders-api`, comma-separated when
    /// several do): the event's policy for a token that failed verification.
    pub issuers_named_by: Arc<str>,
    /// `palisade_authn_failures_total`, per [`Reason::ALL`].
    failures: Vec<IntCounter>,
}

impl SnapshotAuthn {
    pub fn failed(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.failures[i].inc();
        }
    }
}

/// One policy's `inputValidation.waf`.
pub(super) struct PolicyWaf {
    pub policy: Arc<str>,
    pub block: bool,
    pub waf: crate::waf::Waf,
    exclusions: Vec<CompiledExclusion>,
    pub inspect_body_bytes: usize,
    pub over_limit: OverLimit,
    /// `palisade_waf_findings_total{detector, action}`, per detector (`Detector as usize`).
    findings: Vec<IntCounter>,
}

struct CompiledExclusion {
    paths: Vec<PathPattern>,
    parameters: Vec<String>,
    detectors: crate::waf::DetectorSet,
}

impl PolicyWaf {
    pub fn found(&self, detector: crate::waf::Detector) {
        self.findings[detector as usize].inc();
    }

    /// The exclusions that apply to a request for `path` (match form): detectors skipped for
    /// the whole request, and `params` filled with those skipped for single parameters.
    pub fn skips<'s>(&'s self, path: &str, params: &mut Vec<crate::waf::ParamSkip<'s>>) -> crate::waf::DetectorSet {
        let mut everywhere = crate::waf::DetectorSet::EMPTY;
        for e in &self.exclusions {
            if !(e.paths.is_empty() || e.paths.iter().any(|p| p.matches(path))) {
                continue;
            }
            if e.parameters.is_empty() {
                everywhere = everywhere.union(e.detectors);
            } else {
                params.extend(e.parameters.iter().map(|name| crate::waf::ParamSkip { name, detectors: e.detectors }));
            }
        }
        everywhere
    }
}

pub struct CompiledPolicy {
    pub name: Arc<str>,
    mode: Mode,
    deny: Vec<CompiledRule>,
    allow: Vec<CompiledRule>,
    default: Decision,
    pub rate_limits: Vec<Arc<CompiledLimit>>,
}

struct Decision {
    action: Action,
    rule: Arc<str>,
    counter: IntCounter,
}

struct CompiledRule {
    decision: Decision,
    /// Standard methods as bits (0: any method); the rare extension methods in `methods`.
    method_bits: u16,
    /// The bits of every header the conditions need: a quick reject when one is absent.
    when_bits: u64,
    principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    ip_blocks: Vec<IpBlock>,
    methods: Vec<Method>,
    paths: Vec<PathPattern>,
    ports: Vec<u16>,
    /// `<iss>/<sub>` of the verified JWT.
    request_principals: Vec<Pattern>,
    /// Header conditions, each with its bit in [`HeaderBits`].
    when: Vec<(http::HeaderName, u64, Vec<Pattern>)>,
    /// Claim conditions: the verified token's claim, any element of a list.
    claims: Vec<(ClaimPath, Vec<Pattern>)>,
    /// The issuers a path's claim segment takes a token of: those the rule's own policy names
    /// (empty: any). A `sub` is one issuer's name for a user: pooled with a partner's issuer,
    /// the partner's `alice` reached Alice's objects.
    claim_issuers: Box<[Arc<str>]>,
}

pub struct CompiledLimit {
    pub policy: Arc<str>,
    pub name: Arc<str>,
    spec: LimitSpec,
    buckets: Buckets,
    allowed: IntCounter,
    limited: IntCounter,
    /// `DELAY` limits: requests waiting for a token now, and their counters.
    throttle: Option<Throttling>,
    /// `RateLimit-Policy` for a 429, made once.
    pub policy_header: HeaderValue,
}

/// A `DELAY` limit's queue: its bound and what it counts.
struct Throttling {
    queue: WaitQueue,
    /// `palisade_ratelimit_decisions_total{result="delayed"}`.
    delayed: IntCounter,
    /// `palisade_ratelimit_delay_seconds`.
    delay: Histogram,
}

/// Requests that wait on one `DELAY` limit, whatever their keys: each key's own queue is bounded
/// by its bucket (`maxDelay` at the limit's rate), and this bounds them all together, so many keys
/// at once cannot hold an unbounded number of requests (and their connections) waiting.
pub(super) struct WaitQueue {
    waiting: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// Requests waiting on one limit at most (see [`WaitQueue`]).
pub const MAX_WAITING_PER_LIMIT: usize = 1024;

impl WaitQueue {
    pub(super) fn new(max: usize) -> Self {
        WaitQueue { waiting: std::sync::atomic::AtomicUsize::new(0), max }
    }

    /// Whether another request may wait. Checked before the token is reserved and counted
    /// after, so threads deciding at the same instant may overshoot by their number (at most
    /// `threads`), never more.
    pub(super) fn has_room(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed) < self.max
    }

    pub(super) fn enter(&self) {
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn leave(&self) {
        self.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn len(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One request's place in a limit's [`WaitQueue`], given back when dropped (the wait is over, or
/// the request was refused or went away).
pub struct Waiting {
    limit: Arc<CompiledLimit>,
    pub wait: Duration,
    key: u64,
    served: bool,
}

impl Waiting {
    /// The wait is over and the request goes on: its wait is observed (a decision to delay is
    /// counted when it is made; the histogram holds only waits a request went through).
    pub(super) fn served(&mut self) {
        self.served = true;
        if let Some(t) = &self.limit.throttle {
            t.delay.observe(self.wait.as_secs_f64());
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(t) = &self.limit.throttle {
            t.queue.leave();
        }
        // Its request never went on: the token it held is the next caller's.
        if !self.served {
            self.limit.buckets.release(self.key);
        }
    }
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Waiting({}/{}, {:?})", self.limit.policy, self.limit.name, self.wait)
    }
}

/// The parts of a limit that decide whether its buckets can carry over a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitSpec {
    key: LimitKey,
    rate: u32,
    per: Duration,
    burst: u32,
    methods: Vec<Method>,
    paths: Vec<PathPattern>,
    /// How long a request may wait for a token (`DELAY`'s `maxDelay`; zero: `REJECT`).
    max_wait: Duration,
}

/// Whether `policy` applies to the workload: same namespace, and its labels carry every
/// `matchLabels` pair (no selector: every workload of the namespace).
pub fn selects(policy: &SecurityPolicy, workload: &Workload) -> bool {
    policy.metadata.namespace.0 == workload.namespace
        && policy
            .spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
}

impl PolicySnapshot {
    /// Compiles the policies that select `workload`. Rate-limit buckets of `previous` carry over
    /// when a limit is unchanged, so a reload does not hand every caller a fresh burst.
    /// Fails only when a JWT issuer's keys cannot be read (a JWKS file gone since the check).
    #[allow(clippy::too_many_arguments)]
    pub fn compile(
        version: String,
        source: Source,
        located: &[Located],
        workload: &Workload,
        default_mtls: MtlsMode,
        metrics: &Metrics,
        authn: &AuthnRuntime,
        previous: Option<&PolicySnapshot>,
    ) -> Result<PolicySnapshot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut providers = Vec::new();
        let mut required_by = None;
        let mut issuers_named_by: Vec<Arc<str>> = Vec::new();
        let mut wafs = Vec::new();
        let mut limits = InputLimits::default();
        let mut policies = Vec::new();
        let mut documents = Vec::new();
        let mut header_bits = HeaderBits::default();
        let selected: Vec<&Located> = located.iter().filter(|l| selects(&l.policy, workload)).collect();
        errors.extend(selected.iter().flat_map(|doc| super::conflicts_across_policies(doc, &selected)));
        for doc in selected {
            let p = &doc.policy;
            let name: Arc<str> = format!("{}/{}", p.metadata.namespace, p.metadata.name).into();
            if let Some(v) = &p.spec.input_validation {
                let min = |current: usize, new: Option<u64>| new.map_or(current, |n| current.min(n as usize));
                limits.max_uri_bytes = min(limits.max_uri_bytes, v.max_uri_bytes);
                limits.max_header_bytes = min(limits.max_header_bytes, v.max_header_bytes);
                if let Some(n) = v.max_body_bytes {
                    limits.max_body_bytes = Some(limits.max_body_bytes.map_or(n, |m| m.min(n)));
                }
            }
            let authz = p.spec.authorization.clone().unwrap_or_default();
            let mode_label = mode_label(authz.mode);
            let decision = |rule: &str, action: Action| Decision {
                action,
                rule: rule.into(),
                counter: metrics.authz_decisions.with_label_values(&[&name, rule, action_label(action), mode_label]),
            };
            let issuers: Box<[Arc<str>]> =
                p.spec.authentication.iter().flat_map(|a| &a.jwt).map(|j| Arc::from(j.issuer.as_str())).collect();
            let rules: Vec<CompiledRule> = authz
                .rules
                .iter()
                .map(|r| compile_rule(r, decision(&r.name.0, r.action), &mut header_bits, &issuers))
                .collect();
            let has_allow = rules.iter().any(|r| r.decision.action == Action::ALLOW);
            let default_action = authz.default.unwrap_or(if has_allow { Action::DENY } else { Action::ALLOW });
            let (deny, allow) = rules.into_iter().partition(|r| r.decision.action == Action::DENY);
            let rate_limits = p.spec.rate_limits.iter().map(|l| compile_limit(&name, l, metrics, previous)).collect();
            if let Some(a) = &p.spec.authentication {
                for (i, spec) in a.jwt.iter().enumerate() {
                    match authn.provider(spec) {
                        Ok(provider) => providers.push(provider),
                        Err(e) => errors.push(doc.error(&format!("spec.authentication.jwt[{i}]"), e)),
                    }
                }
                if !a.jwt.is_empty() {
                    issuers_named_by.push(name.clone());
                }
                if a.require_jwt && required_by.is_none() {
                    required_by = Some(name.clone());
                }
            }
            if let Some(w) = p.spec.input_validation.as_ref().and_then(|v| v.waf.as_ref()) {
                if w.mode != WafMode::OFF {
                    match compile_waf(&name, w, metrics) {
                        Ok(waf) => wafs.push(waf),
                        Err(e) => errors.push(doc.error("spec.inputValidation.waf", e)),
                    }
                }
            }
            policies.push(CompiledPolicy {
                name: name.clone(),
                mode: authz.mode,
                deny,
                allow,
                default: decision("default", default_action),
                rate_limits,
            });
            documents.push(doc.clone());
        }
        // The strictest `spec.mtls` of the selecting policies. A port one of them names takes
        // each policy's view of it (its entry for the port, else its own `spec.mtls`), the
        // strictest again, so a policy's port entry never loosens another policy's STRICT.
        let mtls = strictest(documents.iter().filter_map(|d| d.policy.spec.mtls)).unwrap_or(default_mtls);
        let ports: std::collections::BTreeSet<_> =
            documents.iter().flat_map(|d| d.policy.spec.port_level_mtls.keys().copied()).collect();
        let port_mtls = ports
            .into_iter()
            .map(|port| {
                let views = documents.iter().filter_map(|d| {
                    let spec = &d.policy.spec;
                    spec.port_level_mtls.get(&port).map(|e| e.mode).or(spec.mtls)
                });
                (port.0, strictest(views).unwrap_or(mtls))
            })
            .collect();
        if required_by.is_some() && providers.is_empty() {
            let doc = documents.iter().find(|d| d.policy.spec.authentication.as_ref().is_some_and(|a| a.require_jwt));
            if let Some(doc) = doc {
                errors.push(doc.error(
                    "spec.authentication.requireJwt",
                    "requires a token, but no policy selecting this workload names a JWT issuer",
                ));
            }
        }
        let authn = if providers.is_empty() {
            None
        } else {
            let options = AuthnOptions {
                cache_lookups: CacheLookups {
                    hits: metrics.authn_cache_lookups.with_label_values(&["hit"]),
                    misses: metrics.authn_cache_lookups.with_label_values(&["miss"]),
                },
                ..AuthnOptions::default()
            };
            match Authenticator::new(providers, options) {
                Ok(authenticator) => Some(SnapshotAuthn {
                    authenticator,
                    required_by,
                    issuers_named_by: issuers_named_by.join(",").into(),
                    failures: Reason::ALL
                        .iter()
                        .map(|r| metrics.authn_failures.with_label_values(&[r.label()]))
                        .collect(),
                }),
                Err(e) => {
                    errors.push(ConfigError::new(std::path::Path::new(""), "spec.authentication.jwt", e.to_string()));
                    None
                }
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PolicySnapshot { version, source, mtls, port_mtls, header_bits, policies, limits, authn, wafs, documents })
    }

    /// Step 4: every ENFORCE policy must allow; AUDIT policies are counted and reported to
    /// `audit`, never blocking. `path` is the normalised path in match form.
    pub(super) fn authorize(
        &self,
        req: &RequestView<'_>,
        path: &str,
        audit: impl FnMut(DecidedBy),
    ) -> Result<(), DecidedBy> {
        let facts = Facts {
            headers_present: self.header_bits.present(req.headers, req.authority.is_some()),
            method_bit: method_bit(req.method),
            namespace: std::cell::OnceCell::new(),
            principal: req.principal,
            path,
        };
        let peer = Peer { principal: req.principal, source_ip: req.source_ip, port: req.port };
        self.authorize_with(|policy| policy.decide(req, &peer, &facts), true, audit)
    }

    /// Step 4 for a TCP connection ([`super::decide::ConnectionView`]);
    /// `counted`: in `palisade_authz_decisions_total` (not when an open one is judged again).
    pub(super) fn authorize_connection_rules(
        &self,
        principal: Option<&SpiffeId>,
        source_ip: Option<IpAddr>,
        port: u16,
        counted: bool,
        audit: impl FnMut(DecidedBy),
    ) -> Result<(), DecidedBy> {
        let facts =
            Facts { headers_present: 0, method_bit: 0, namespace: std::cell::OnceCell::new(), principal, path: "" };
        let peer = Peer { principal, source_ip, port };
        self.authorize_with(|policy| policy.decide_connection(&peer, &facts), counted, audit)
    }

    /// Each policy's decision (`decide`), counted when `counted`; the first ENFORCE denial
    /// refuses.
    fn authorize_with<'s>(
        &'s self,
        decide: impl Fn(&'s CompiledPolicy) -> &'s Decision,
        counted: bool,
        mut audit: impl FnMut(DecidedBy),
    ) -> Result<(), DecidedBy> {
        let mut refused = None;
        for policy in &self.policies {
            let decision = decide(policy);
            if counted {
                decision.counter.inc();
            }
            if decision.action == Action::DENY {
                let denied = DecidedBy { policy: policy.name.clone(), rule: decision.rule.clone() };
                match policy.mode {
                    Mode::ENFORCE => {
                        refused.get_or_insert(denied);
                    }
                    Mode::AUDIT => audit(denied),
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Step 5: matching limits take a token each, those keyed per caller first (whichever
    /// policy holds them), then `global` ones, each group in policy order; the first refusal
    /// stops there, so a request a per-caller limit refuses spends no token of a global limit,
    /// even one a namespace-wide policy sorted first. `DELAY` limits may hand out a token that
    /// comes later: the request then waits for the longest such wait ([`Throttle`]) before it
    /// goes on.
    pub(super) fn rate_limit(&self, req: &RequestView<'_>, path: &str) -> Result<Option<Throttle>, Limited> {
        let mut throttle: Option<Throttle> = None;
        let limits = self.policies.iter().flat_map(|p| &p.rate_limits);
        let per_caller = limits.clone().filter(|l| !matches!(l.spec.key, LimitKey::Global));
        let global = limits.filter(|l| matches!(l.spec.key, LimitKey::Global));
        for limit in per_caller.chain(global) {
            match limit.take(req, path) {
                Ok(None) => {}
                Ok(Some(waiting)) => match &mut throttle {
                    None => throttle = Some(Throttle::new(waiting)),
                    Some(t) => t.also(waiting),
                },
                // Places already taken in queues are given back as `throttle` drops.
                Err(wait) => {
                    return Err(Limited {
                        by: DecidedBy { policy: limit.policy.clone(), rule: limit.name.clone() },
                        retry_after: wait,
                        policy_header: limit.policy_header.clone(),
                    })
                }
            }
        }
        Ok(throttle)
    }

    /// Drops idle rate-limit buckets; run periodically.
    pub fn forget_idle_buckets(&self) {
        for limit in self.policies.iter().flat_map(|p| &p.rate_limits) {
            let overflowed = limit.buckets.forget_idle();
            if overflowed > 0 {
                tracing::warn!(policy = %limit.policy, limit = %limit.name, max = super::ratelimit::MAX_KEYS,
                    overflowed, "rate-limit key table full: requests with new keys shared one overflow bucket");
            }
        }
    }

    pub fn rate_limit_keys(&self) -> usize {
        self.policies.iter().flat_map(|p| &p.rate_limits).map(|l| l.buckets.keys()).sum()
    }
}

impl PolicySnapshot {
    /// The mode of `port` (the port the caller addressed): its `spec.portLevelMtls` entry, else
    /// the workload's.
    pub fn mtls_at(&self, port: u16) -> MtlsMode {
        match self.port_mtls.binary_search_by_key(&port, |(p, _)| *p) {
            Ok(i) => self.port_mtls[i].1,
            Err(_) => self.mtls,
        }
    }

    /// Whether some port is PERMISSIVE: plaintext may be let in somewhere, so a connection's
    /// first byte must be looked at.
    pub fn plaintext_anywhere(&self) -> bool {
        self.mtls == MtlsMode::PERMISSIVE || self.port_mtls.iter().any(|(_, m)| *m == MtlsMode::PERMISSIVE)
    }

    /// Drops the per-policy series that `previous` counted into and this snapshot does not, so a
    /// policy, rule or limit removed by an update leaves nothing behind on `/metrics`. Series
    /// both count into stay, with their counts.
    pub(super) fn drop_series_left_by(&self, previous: &PolicySnapshot, metrics: &Metrics) {
        let kept: std::collections::HashSet<[&str; 4]> = self.authz_series().collect();
        for labels in previous.authz_series().filter(|l| !kept.contains(l)) {
            let _ = metrics.authz_decisions.remove_label_values(&labels);
        }
        let kept: std::collections::HashSet<[&str; 3]> = self.limit_series().collect();
        for labels in previous.limit_series().filter(|l| !kept.contains(l)) {
            let _ = metrics.ratelimit_decisions.remove_label_values(&labels);
        }
        let delaying = |s: &'_ PolicySnapshot| -> std::collections::HashSet<[Arc<str>; 2]> {
            let limits = s.policies.iter().flat_map(|p| &p.rate_limits);
            limits.filter(|l| l.throttle.is_some()).map(|l| [l.policy.clone(), l.name.clone()]).collect()
        };
        let kept = delaying(self);
        for [policy, limit] in delaying(previous).iter().filter(|l| !kept.contains(*l)) {
            let _ = metrics.ratelimit_delay.remove_label_values(&[policy, limit]);
        }
    }

    /// `palisade_authz_decisions_total`'s labels (policy, rule, decision, mode) of every rule
    /// and default.
    fn authz_series(&self) -> impl Iterator<Item = [&str; 4]> {
        self.policies.iter().flat_map(|p| {
            let mode = mode_label(p.mode);
            let rules = p.deny.iter().chain(&p.allow).map(|r| &r.decision);
            rules.chain(std::iter::once(&p.default)).map(move |d| [&*p.name, &*d.rule, action_label(d.action), mode])
        })
    }

    /// `palisade_ratelimit_decisions_total`'s labels (policy, limit, result) of every limit.
    fn limit_series(&self) -> impl Iterator<Item = [&str; 3]> {
        self.policies.iter().flat_map(|p| &p.rate_limits).flat_map(|l| {
            let results: &[&str] = if l.throttle.is_some() { &LIMIT_RESULTS } else { &LIMIT_RESULTS[..2] };
            results.iter().map(|result| [&*l.policy, &*l.name, *result])
        })
    }
}

/// `palisade_ratelimit_decisions_total`'s results; `delayed` only for `DELAY` limits.
const LIMIT_RESULTS: [&str; 3] = ["allowed", "limited", "delayed"];

fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::ENFORCE => "ENFORCE",
        Mode::AUDIT => "AUDIT",
    }
}

fn action_label(action: Action) -> &'static str {
    match action {
        Action::ALLOW => "allow",
        Action::DENY => "deny",
    }
}

impl CompiledPolicy {
    /// Every DENY rule before any ALLOW rule, then the default.
    fn decide(&self, req: &RequestView<'_>, peer: &Peer<'_>, facts: &Facts<'_>) -> &Decision {
        let rules = self.deny.iter().chain(&self.allow);
        rules.into_iter().find(|r| r.matches(req, peer, facts)).map_or(&self.default, |r| &r.decision)
    }

    /// [`Self::decide`] for a connection: only what a connection has can match. A rule that also
    /// names what only a request has (methods, paths, headers, a JWT's principal or claims) is
    /// taken as Istio takes it for TCP: an ALLOW rule never matches, and a DENY rule matches on
    /// its other fields alone, so a request-only condition can never widen what a connection gets.
    fn decide_connection(&self, peer: &Peer<'_>, facts: &Facts<'_>) -> &Decision {
        let deny = self.deny.iter().find(|r| r.matches_peer(peer, facts));
        let allow = || self.allow.iter().find(|r| !r.names_request_fields() && r.matches_peer(peer, facts));
        deny.or_else(allow).map_or(&self.default, |r| &r.decision)
    }
}

/// STRICT if any mode is, else PERMISSIVE if any is given; `None` for none.
fn strictest(modes: impl Iterator<Item = MtlsMode>) -> Option<MtlsMode> {
    modes.reduce(|a, b| if a == MtlsMode::STRICT { a } else { b })
}

/// One bit per standard method; extension methods get none and are compared by name.
fn method_bit(method: &Method) -> u16 {
    match *method {
        Method::GET => 1,
        Method::HEAD => 1 << 1,
        Method::POST => 1 << 2,
        Method::PUT => 1 << 3,
        Method::DELETE => 1 << 4,
        Method::PATCH => 1 << 5,
        Method::OPTIONS => 1 << 6,
        Method::CONNECT => 1 << 7,
        Method::TRACE => 1 << 8,
        _ => 0,
    }
}

/// What a request and a connection both have: who sent it, from where, to which port.
struct Peer<'a> {
    principal: Option<&'a SpiffeId>,
    source_ip: Option<IpAddr>,
    port: u16,
}

/// What every rule of a request's evaluation would otherwise work out again.
struct Facts<'a> {
    headers_present: u64,
    method_bit: u16,
    /// Read from the principal only when a rule asks.
    namespace: std::cell::OnceCell<Option<&'a str>>,
    principal: Option<&'a SpiffeId>,
    /// Normalised, in match form (no trailing slash).
    path: &'a str,
}

impl<'a> Facts<'a> {
    fn namespace(&self) -> Option<&'a str> {
        *self.namespace.get_or_init(|| self.principal.and_then(SpiffeId::namespace))
    }
}

/// A `when` condition or rate-limit key on a header a selecting policy's `forwardClaims` writes:
/// the sidecar writes it once the token is verified, after the policy has decided, so the
/// condition would judge whatever copy the caller sent (a forged `x-user-id: alice` beside
/// Mallory's token was let in, and the app got `mallory`). For one policy, against the policies
/// whose `forwardClaims` may write for the same workloads (`forwarding`, itself among them).
pub(super) fn judged_headers_written_by(doc: &Located, forwarding: &[&Located]) -> Vec<ConfigError> {
    let forwarded: Vec<(&str, &str)> = forwarding
        .iter()
        .filter_map(|d| d.policy.spec.authentication.as_ref())
        .flat_map(|a| &a.jwt)
        .flat_map(|p| &p.forward_claims)
        .map(|f| (f.header.as_str(), f.claim.as_str()))
        .collect();
    let mut errors = Vec::new();
    let mut judge = |field: String, key: &http::HeaderName| {
        if let Some((_, claim)) = forwarded.iter().find(|(h, _)| h.eq_ignore_ascii_case(key.as_str())) {
            let message = format!(
                "{key} is written by forwardClaims (claim {claim}) after the policy decides, so this would judge \
                 the caller's own copy; name the claim instead: request.auth.claims[{claim}]"
            );
            errors.push(doc.error(&field, message));
        }
    };
    let spec = &doc.policy.spec;
    for (i, rule) in spec.authorization.iter().flat_map(|a| a.rules.iter().enumerate()) {
        for (j, condition) in rule.when.iter().enumerate() {
            if let ConditionKey::Header(h) = &condition.key {
                judge(format!("spec.authorization.rules[{i}].when[{j}].key"), h);
            }
        }
    }
    for (i, limit) in spec.rate_limits.iter().enumerate() {
        if let LimitKey::Header(h) = &limit.key {
            judge(format!("spec.rateLimits[{i}].key"), h);
        }
    }
    errors
}

/// A JWT setup no sidecar could build, across the policies that may select one workload
/// (`together`, `doc` among them), found where `palisade check`, the control plane and the
/// sidecar report a policy's errors (file, line, field): a `forwardClaims` header that another
/// issuer reads tokens from (every caller's copy of a forwarded header is removed, so that
/// issuer's token would be gone before it is verified), and more token locations than a sidecar
/// keeps apart.
pub(crate) fn token_locations_in_conflict(doc: &Located, together: &[&Located]) -> Vec<ConfigError> {
    fn providers(d: &Located) -> &[crate::authn::ProviderSpec] {
        d.policy.spec.authentication.as_ref().map_or(&[][..], |a| &a.jwt[..])
    }
    let mut errors = Vec::new();
    for (i, provider) in providers(doc).iter().enumerate() {
        for (j, forward) in provider.forward_claims.iter().enumerate() {
            let reads_tokens = |p: &crate::authn::ProviderSpec| {
                !std::ptr::eq(p, provider)
                    && p.from_headers.iter().any(|h| h.name.eq_ignore_ascii_case(&forward.header))
            };
            let reader = together.iter().find_map(|d| providers(d).iter().find(|p| reads_tokens(p)).map(|p| (d, p)));
            if let Some((d, p)) = reader {
                let m = &d.policy.metadata;
                errors.push(doc.error(
                    &format!("spec.authentication.jwt[{i}]"),
                    format!(
                        "forwardClaims[{j}].header {}: issuer {} of policy {}/{} ({}) reads tokens from it, and a forwarded claim replaces every caller's copy, so that token would be gone before it is verified; forward the claim into another header",
                        forward.header, p.issuer, m.namespace, m.name, d.file.display()
                    ),
                ));
            }
        }
    }
    let mut locations: Vec<(String, String)> = Vec::new();
    for p in together.iter().flat_map(|d| providers(d)) {
        let headers = p.from_headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.prefix.to_ascii_lowercase()));
        // A query parameter is a place too: `?` cannot start a header's name.
        for location in headers.chain(p.token_params().into_iter().map(|name| (format!("?{name}"), String::new()))) {
            if !locations.contains(&location) {
                locations.push(location);
            }
        }
    }
    if !providers(doc).is_empty() && locations.len() > crate::authn::MAX_TOKEN_LOCATIONS {
        errors.push(doc.error(
            "spec.authentication.jwt",
            format!(
                "the issuers of the policies that may select the same workloads as this one read tokens from {} places (a header and prefix, or a query parameter); a sidecar keeps at most {} apart",
                locations.len(),
                crate::authn::MAX_TOKEN_LOCATIONS
            ),
        ));
    }
    errors
}

fn compile_rule(rule: &Rule, decision: Decision, header_bits: &mut HeaderBits, issuers: &[Arc<str>]) -> CompiledRule {
    let from = rule.from.clone().unwrap_or_default();
    let to = rule.to.clone().unwrap_or_default();
    let methods: Vec<Method> = to.methods.into_iter().map(|m| m.0).collect();
    let mut method_bits = methods.iter().fold(0, |bits, m| bits | method_bit(m));
    // A DENY on GET covers HEAD: Express, Flask, Rails and Go route HEAD to the GET handler, whose
    // work and headers all happen (only the body is dropped). An ALLOW on GET allows GET only.
    if decision.action == Action::DENY && method_bits & method_bit(&Method::GET) != 0 {
        method_bits |= method_bit(&Method::HEAD);
    }
    let mut when = Vec::new();
    let mut claims = Vec::new();
    for c in &rule.when {
        match &c.key {
            ConditionKey::Header(h) if h == http::header::HOST => {
                let values = c.values.iter().map(Pattern::for_host).collect();
                when.push((h.clone(), header_bits.bit(h), values))
            }
            ConditionKey::Header(h) => when.push((h.clone(), header_bits.bit(h), c.values.clone())),
            ConditionKey::Claim(path) => claims.push((path.clone(), c.values.clone())),
        }
    }
    CompiledRule {
        decision,
        method_bits,
        when_bits: when.iter().fold(0, |bits, (_, bit, _)| bits | bit),
        principals: from.principals,
        namespaces: from.namespaces,
        ip_blocks: from.ip_blocks,
        // Only extension methods need comparing by name.
        methods: methods.into_iter().filter(|m| method_bit(m) == 0).collect(),
        paths: to.paths.into_iter().map(|p| p.0).collect(),
        ports: to.ports,
        request_principals: from.request_principals,
        when,
        claims,
        claim_issuers: issuers.into(),
    }
}

impl CompiledRule {
    /// A DENY rule's paths ignore ASCII case (backends that route `/ADMIN` to `/admin` are
    /// common); an ALLOW rule's do not, so ignoring case never lets more through.
    fn path_matches(&self, pattern: &PathPattern, path: &str, req: &RequestView<'_>) -> bool {
        let deny = self.decision.action == Action::DENY;
        // Only a template that names a claim looks at the token (every other path is matched
        // on every request). A DENY takes any issuer's: it never lets more through.
        let issued_here = |t: &&crate::authn::Verified| {
            deny || self.claim_issuers.is_empty() || self.claim_issuers.iter().any(|i| **i == *t.issuer())
        };
        let claims = match pattern.names_a_claim() {
            true => req.token().filter(issued_here).map(|t| t.claims()),
            false => None,
        };
        pattern.matches_for(path, deny, claims)
    }

    /// The fields a connection has too: port, principal, namespace, source address.
    fn matches_peer(&self, peer: &Peer<'_>, facts: &Facts<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&peer.port))
            && (self.principals.is_empty()
                || peer.principal.is_some_and(|id| self.principals.iter().any(|p| p.matches(id.as_str()))))
            && (self.namespaces.is_empty()
                || facts.namespace().is_some_and(|ns| self.namespaces.iter().any(|p| p.matches(ns))))
            && (self.ip_blocks.is_empty()
                || peer.source_ip.is_some_and(|ip| self.ip_blocks.iter().any(|b| b.contains(ip))))
    }

    /// Whether the rule names anything only an HTTP request has.
    fn names_request_fields(&self) -> bool {
        self.method_bits != 0
            || !self.methods.is_empty()
            || !self.paths.is_empty()
            || !self.when.is_empty()
            || !self.request_principals.is_empty()
            || !self.claims.is_empty()
    }

    /// All listed fields must match; a list matches when any entry does. Cheapest checks first.
    fn matches(&self, req: &RequestView<'_>, peer: &Peer<'_>, facts: &Facts<'_>) -> bool {
        let any_method = self.method_bits == 0 && self.methods.is_empty();
        (any_method || self.method_bits & facts.method_bit != 0 || self.methods.contains(req.method))
            && facts.headers_present & self.when_bits == self.when_bits
            && (self.paths.is_empty() || self.paths.iter().any(|p| self.path_matches(p, facts.path, req)))
            && self.matches_peer(peer, facts)
            && self.when.iter().all(|(header, _, values)| {
                // One value, in visible ASCII, or the condition fails closed: it holds for a
                // DENY rule and not for an ALLOW rule, so a repeated header (the app may read
                // either value) can neither dodge a DENY nor satisfy an ALLOW.
                match req.one_header(header) {
                    // A host matches with its port or without it (`evil.shop` holds for
                    // `evil.shop:80`, as routers match hosts; `evil.shop:*` names the port).
                    Some(Ok(v)) if header == http::header::HOST => {
                        let host = super::patterns::without_port(&v);
                        values.iter().any(|p| p.matches(&v) || p.matches(host))
                    }
                    // A DENY also holds for one element of a list in one field: `x-debug: 0, 1`
                    // is `x-debug: 0` and `x-debug: 1` to RFC 9110 and to Node's and PHP's
                    // joined headers, which fails closed when sent as two fields.
                    Some(Ok(v)) => {
                        values.iter().any(|p| p.matches(&v))
                            || self.decision.action == Action::DENY
                                && v.contains(',')
                                && v.split(',').any(|element| values.iter().any(|p| p.matches(element.trim())))
                    }
                    None => false,
                    Some(Err(())) => self.decision.action == Action::DENY,
                }
            })
            && (self.request_principals.is_empty()
                || req.token().is_some_and(|t| self.request_principals.iter().any(|p| p.matches(t.principal()))))
            && self.claims.iter().all(|(path, values)| {
                req.token().is_some_and(|t| t.claims().matches(path, |v| values.iter().any(|p| p.matches(v))))
            })
    }
}

fn compile_limit(
    policy: &Arc<str>,
    limit: &RateLimit,
    metrics: &Metrics,
    previous: Option<&PolicySnapshot>,
) -> Arc<CompiledLimit> {
    let burst = limit.burst.unwrap_or(limit.rate);
    let matches = limit.matches.clone().unwrap_or_default();
    let spec = LimitSpec {
        key: limit.key.clone(),
        rate: limit.rate.get(),
        per: limit.per.0,
        burst: burst.get(),
        methods: matches.methods.into_iter().map(|m| m.0).collect(),
        paths: matches.paths,
        max_wait: limit.max_wait(),
    };
    let name: Arc<str> = limit.name.0.as_str().into();
    // Same policy, same limit, same numbers: keep the buckets (and the callers' spent tokens).
    let carried = previous.and_then(|prev| {
        prev.policies
            .iter()
            .filter(|p| p.name == *policy)
            .flat_map(|p| &p.rate_limits)
            .find(|l| l.name == name && l.spec == spec)
    });
    if let Some(old) = carried {
        return old.clone();
    }
    // The draft's window is whole seconds: scale the quota to the window when `per` is not.
    let per = limit.per.0.as_secs_f64();
    let window = per.ceil().max(1.0);
    let quota = (f64::from(spec.rate) * window / per).floor() as u64;
    let policy_header =
        HeaderValue::from_str(&format!("\"{name}\";q={quota};w={window}")).expect("names are header-safe");
    Arc::new(CompiledLimit {
        policy: policy.clone(),
        buckets: Buckets::new(limit.rate, limit.per.0, burst),
        allowed: metrics.ratelimit_decisions.with_label_values(&[policy, &name, "allowed"]),
        limited: metrics.ratelimit_decisions.with_label_values(&[policy, &name, "limited"]),
        throttle: (limit.action == LimitAction::DELAY).then(|| Throttling {
            queue: WaitQueue::new(MAX_WAITING_PER_LIMIT),
            delayed: metrics.ratelimit_decisions.with_label_values(&[policy, &name, "delayed"]),
            delay: metrics.ratelimit_delay.with_label_values(&[policy, &name]),
        }),
        name,
        spec,
        policy_header,
    })
}

impl CompiledLimit {
    /// Takes a token of this limit's bucket for the request, when the limit applies: `Ok(None)`
    /// at once, `Ok(Some(waiting))` one that comes within `maxDelay` (a `DELAY` limit whose queue
    /// has room), else `Err` with how long until a retry would be let in.
    fn take(self: &Arc<Self>, req: &RequestView<'_>, path: &str) -> Result<Option<Waiting>, Duration> {
        let spec = &self.spec;
        // Matched as a DENY is, and for the same reasons: a limit on GET counts HEAD (the same
        // handler serves it), and paths ignore case (`/LOGIN` is `/login` to IIS and ASP.NET).
        let head_as_get = *req.method == Method::HEAD && spec.methods.contains(&Method::GET);
        if !(spec.methods.is_empty() || spec.methods.contains(req.method) || head_as_get)
            || !(spec.paths.is_empty() || spec.paths.iter().any(|p| p.matches_ignoring_case(path)))
        {
            return Ok(None);
        }
        // Callers without the key's attribute (no principal, no header) share one bucket.
        let key = match &spec.key {
            LimitKey::Global => 0,
            LimitKey::SourcePrincipal => self.buckets.key_of(req.principal.map_or(&[][..], |p| p.as_str().as_bytes())),
            LimitKey::SourceIp => match req.source_ip {
                Some(IpAddr::V4(ip)) => self.buckets.key_of(&ip.octets()),
                // Per address, not per /64: a Kubernetes node's pods share one /64.
                Some(IpAddr::V6(ip)) => self.buckets.key_of(&ip.octets()),
                None => 0,
            },
            LimitKey::Header(h) => {
                // One value, or the keyless bucket: sent twice, a caller could mint a fresh key
                // per request with the value its app reads beside it (as `when` fails closed).
                match req.one_header_bytes(h) {
                    Some(Ok(value)) => self.buckets.key_of(&value),
                    _ => self.buckets.key_of(&[]),
                }
            }
            LimitKey::Claim(path) => match req.token().and_then(|t| t.claims().text(path)) {
                Some(text) => self.buckets.key_of(text.as_bytes()),
                None => self.buckets.key_of(&[]),
            },
        };
        // A full queue takes no more waiters: only a token free now will do.
        let max_wait = match &self.throttle {
            Some(t) if t.queue.has_room() => spec.max_wait,
            _ => Duration::ZERO,
        };
        match self.buckets.reserve(key, max_wait) {
            Ok(Duration::ZERO) => {
                self.allowed.inc();
                Ok(None)
            }
            Ok(wait) => {
                let t = self.throttle.as_ref().expect("only DELAY limits wait");
                t.queue.enter();
                t.delayed.inc();
                Ok(Some(Waiting { limit: self.clone(), wait, key, served: false }))
            }
            Err(wait) => {
                self.limited.inc();
                // DELAY: a retry is let in (to wait) once the queue has room again.
                Err(wait.saturating_sub(max_wait))
            }
        }
    }

    /// Requests waiting on this limit now.
    pub fn waiting(&self) -> usize {
        self.throttle.as_ref().map_or(0, |t| t.queue.len())
    }
}

fn compile_waf(policy: &Arc<str>, w: &super::document::Waf, metrics: &Metrics) -> Result<PolicyWaf, String> {
    use crate::waf::{Detector, DetectorSet, Waf, WafSettings};
    let detectors = if w.detectors.is_empty() {
        DetectorSet::of(&Detector::ALL)
    } else {
        w.detectors.iter().fold(DetectorSet::EMPTY, |set, d| set.with(d.0))
    };
    let waf = Waf::new(WafSettings { paranoia: w.paranoia.0, detectors }).map_err(|e| e.to_string())?;
    let block = w.mode == WafMode::BLOCK;
    let action = if block { "blocked" } else { "detected" };
    let exclusions = w
        .exclusions
        .iter()
        .map(|e: &Exclusion| CompiledExclusion {
            paths: e.paths.clone(),
            parameters: e.parameters.clone(),
            detectors: e.detectors.iter().fold(DetectorSet::EMPTY, |set, d| set.with(d.0)).as_exclusion(),
        })
        .collect();
    Ok(PolicyWaf {
        policy: policy.clone(),
        block,
        waf,
        exclusions,
        inspect_body_bytes: w.inspect_body_bytes.0 as usize,
        over_limit: w.body_over_limit,
        findings: Detector::ALL.iter().map(|d| metrics.waf_findings.with_label_values(&[d.as_str(), action])).collect(),
    })
}
