//! The `SecurityPolicy` resource as operators write it (SPEC section 4). Every value is checked
//! while it is read, so an error carries the line and field where it was found. What this
//! version cannot enforce is refused, loudly: a policy that silently does less than it says is
//! worse than none.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::patterns::{string_serde, PathPattern, Pattern, RulePath};
use crate::config::IpBlock;

/// A listed field must list something: an empty list would read as "anyone" in an ALLOW and as
/// "no one" in a DENY, and often comes from a template that rendered nothing. Leave the field out
/// to match anything.
fn non_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let items = Vec::<T>::deserialize(d)?;
    if items.is_empty() {
        return Err(serde::de::Error::custom("an empty list matches nothing; leave the field out to match anything"));
    }
    Ok(items)
}

/// `from.principals`: SPIFFE IDs, as the handshake gives them. An exact or prefix pattern must
/// start with `spiffe://`: Istio writes principals without the scheme
/// (`cluster.local/ns/shop/sa/frontend`), and such a pattern, taken as written, would never
/// match: a DENY that never fires. So would one no handshake can give (`spiffe://Cluster.Local/..`,
/// a trailing `/`, an empty segment, a blank).
fn spiffe_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pattern>, D::Error> {
    let patterns: Vec<Pattern> = non_empty(d)?;
    for (i, p) in patterns.iter().enumerate() {
        let fail =
            |why: String| serde::de::Error::custom(format!("[{i}] {:?} would match no caller: {why}", p.to_string()));
        // What an identity the pattern holds for looks like, to check it as the handshake would.
        let example = match p {
            Pattern::Any => continue,
            Pattern::Prefix(t) if "spiffe://".starts_with(&**t) => continue,
            Pattern::Exact(t) | Pattern::Prefix(t) if !t.starts_with("spiffe://") => {
                let tail = if matches!(p, Pattern::Prefix(_)) { "x" } else { "" };
                let istio = !t.to_ascii_lowercase().starts_with("spiffe")
                    && crate::identity::SpiffeId::parse(&format!("spiffe://{t}{tail}")).is_ok();
                return Err(fail(if istio {
                    format!("it is no SPIFFE ID; write spiffe://{t} (Istio leaves the scheme out)")
                } else {
                    "it is no SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<account>)".to_string()
                }));
            }
            Pattern::Exact(t) => t.to_string(),
            Pattern::Prefix(t) => format!("{t}x"),
            Pattern::Suffix(t) => format!("spiffe://x.y/z{t}"),
        };
        crate::identity::SpiffeId::parse(&example).map_err(|e| fail(e.reason.to_string()))?;
    }
    Ok(patterns)
}

/// `from.namespaces`: Kubernetes namespace names, which are lowercase DNS labels: `Shop` or
/// `spiffe://.../ns/other` would match no caller.
fn namespace_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pattern>, D::Error> {
    let patterns: Vec<Pattern> = non_empty(d)?;
    for (i, p) in patterns.iter().enumerate() {
        let example = match p {
            Pattern::Any => continue,
            Pattern::Exact(t) => t.to_string(),
            Pattern::Prefix(t) => format!("{t}x"),
            Pattern::Suffix(t) => format!("x{t}"),
        };
        if !crate::identity::is_namespace_name(&example) {
            return Err(serde::de::Error::custom(format!(
                "[{i}] {:?} would match no caller: a namespace is lowercase letters, digits and '-' (at most 63)",
                p.to_string()
            )));
        }
    }
    Ok(patterns)
}

/// A head limit within what the parser takes: a larger one would be silently the parser's, and 0
/// would refuse every request.
fn head_limit<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<Option<u64>, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 0 || n > max {
        return Err(serde::de::Error::custom(format!("must be 1 to {max} (the parser's own limit)")));
    }
    Ok(Some(n))
}

fn uri_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    head_limit(d, 8192)
}

fn header_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    head_limit(d, 65536)
}
use crate::config::{HumanDuration, MtlsMode};

/// `spec.portLevelMtls`, refusing a port named twice: `5432` and `05432` are one port, and
/// the YAML reader's duplicate-key check compares keys as written.
fn each_port_once<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Port, PortMtls>, D::Error> {
    struct Ports;
    impl<'de> serde::de::Visitor<'de> for Ports {
        type Value = BTreeMap<Port, PortMtls>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of ports to {mode: STRICT | PERMISSIVE}")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut ports = BTreeMap::new();
            while let Some((port, entry)) = map.next_entry::<Port, PortMtls>()? {
                if ports.insert(port, entry).is_some() {
                    return Err(serde::de::Error::custom(format!("port {port} is named twice")));
                }
            }
            Ok(ports)
        }
    }
    d.deserialize_map(Ports)
}

pub const API_VERSION: &str = "palisade.dev/v1alpha1";
pub const KIND: &str = "SecurityPolicy";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityPolicy {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersion;

impl std::str::FromStr for ApiVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        (s == API_VERSION).then_some(ApiVersion).ok_or_else(|| format!("expected {API_VERSION}, got {s:?}"))
    }
}
impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(API_VERSION)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind;

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        (s == KIND).then_some(Kind).ok_or_else(|| format!("expected {KIND}, got {s:?}"))
    }
}
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(KIND)
    }
}

/// A Kubernetes object name: lowercase letters, digits, '-' and '.', at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub String);

impl std::str::FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !s.starts_with('-')
            && !s.ends_with('-');
        ok.then(|| Name(s.to_string()))
            .ok_or_else(|| format!("expected a name of lowercase letters, digits, '-' and '.' (at most 63), got {s:?}"))
    }
}
impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

string_serde!(ApiVersion);
string_serde!(Kind);
string_serde!(Name);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: Name,
    pub namespace: Name,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    /// A mode for one port (the port the caller addressed, as `to.ports`), over `mtls` there:
    /// Istio's `portLevelMtls`, `{5432: {mode: PERMISSIVE}}`.
    #[serde(default, deserialize_with = "each_port_once", skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<Port, PortMtls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: UniqueList<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_validation: Option<InputValidation>,
}

/// A TCP port, 1 to 65535, as a number or a string of digits: a mapping key that went through
/// JSON or Helm's templates comes back quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl serde::de::Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number from 1 to 65535")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Port, E> {
                match u16::try_from(n) {
                    Ok(port @ 1..) => Ok(Port(port)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(n), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Port, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Port, E> {
                match text.parse::<u64>() {
                    Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) => self.visit_u64(n),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One port's entry in `spec.portLevelMtls`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMtls {
    pub mode: MtlsMode,
}

/// End-user authentication (SPEC section 4): the JWT issuers this workload accepts.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authentication {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<crate::authn::ProviderSpec>,
    /// A request without a token is refused (401); without this, it goes on unauthenticated
    /// and only rules that ask for a request principal or a claim fail for it.
    #[serde(default)]
    pub require_jwt: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, deserialize_with = "kubernetes_labels")]
    pub match_labels: BTreeMap<String, String>,
}

/// Labels as the API server takes them: a selector naming a key or value no pod can carry
/// (`app*`, an empty key) selects nothing, and a DENY written in it would protect nothing.
fn kubernetes_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::<String, String>::deserialize(d)?;
    for (key, value) in &labels {
        if let Err(why) = label_key(key) {
            return Err(serde::de::Error::custom(format!("label key {key:?} {why}: no pod can carry it")));
        }
        if !value.is_empty() && !label_name(value) {
            return Err(serde::de::Error::custom(format!(
                "label {key}: value {value:?} is not a Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', \
                 beginning and ending with a letter or digit, or empty): no pod can carry it"
            )));
        }
    }
    Ok(labels)
}

/// A label key: a name, after an optional DNS subdomain prefix and `/`.
fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    if let Some(prefix) = prefix {
        if !crate::identity::is_service_account_name(prefix) {
            return Err("has a prefix that is not a DNS subdomain (lower-case, such as example.com/)");
        }
    }
    if !label_name(name) {
        return Err("is not a Kubernetes label name (1-63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)");
    }
    Ok(())
}

fn label_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    #[default]
    ENFORCE,
    /// Decide, log and count, never block.
    AUDIT,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    ALLOW,
    DENY,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default)]
    pub mode: Mode,
    /// Without a value: DENY when the policy has ALLOW rules (an allow-list), else ALLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Action>,
    #[serde(default)]
    pub rules: UniqueList<Rule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub name: UniqueName,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<From>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<To>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    #[serde(default, deserialize_with = "spiffe_patterns", skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Pattern>,
    #[serde(default, deserialize_with = "namespace_patterns", skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Pattern>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    /// `<iss>/<sub>` of the request's verified JWT.
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<Pattern>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<RulePath>,
    #[serde(default, deserialize_with = "ports", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Ports a caller can address: 1 to 65535, at least one (0 matched no connection, so a DENY
/// written with it never fired).
fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let ports: Vec<u16> = non_empty(d)?;
    match ports.contains(&0) {
        true => Err(serde::de::Error::custom("port 0 is no port a caller can address; ports are 1 to 65535")),
        false => Ok(ports),
    }
}

/// An HTTP method token, upper case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method(pub http::Method);

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("expected an upper-case HTTP method such as GET or POST, got {s:?}"));
        }
        http::Method::from_bytes(s.as_bytes()).map(Method).map_err(|e| e.to_string())
    }
}
impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}
string_serde!(Method);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: ConditionKey,
    #[serde(deserialize_with = "non_empty")]
    pub values: Vec<Pattern>,
}

/// What a `when` condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    Header(http::HeaderName),
    /// A claim of the verified JWT (a list claim matches when any element does).
    Claim(crate::authn::ClaimPath),
}

fn bracketed<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')
}

fn header_name(name: &str, whole: &str) -> Result<http::HeaderName, String> {
    let header = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{whole:?}: {name:?} is not a valid header name"))?;
    if crate::authn::SIDECAR_SET_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "{whole:?}: only the sidecar sets {header} for the app, after the policy has decided, so a \
             condition or key on it would judge whatever copy the caller sent; name the caller by \
             from.principals or from.namespaces (source.principal as a rate-limit key)"
        ));
    }
    Ok(header)
}

/// `request.auth.claims[a][b]`: the prefix is required in a policy.
fn claim_path(s: &str) -> Option<Result<crate::authn::ClaimPath, String>> {
    s.starts_with("request.auth.claims[").then(|| crate::authn::ClaimPath::parse(s).map_err(|e| e.to_string()))
}

impl std::str::FromStr for ConditionKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(name) = bracketed(s, "request.headers") {
            return header_name(name, s).map(ConditionKey::Header);
        }
        if let Some(claim) = claim_path(s) {
            return claim.map(ConditionKey::Claim);
        }
        Err(format!("expected request.headers[NAME] or request.auth.claims[NAME], got {s:?}"))
    }
}
impl std::fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionKey::Header(h) => write!(f, "request.headers[{h}]"),
            ConditionKey::Claim(c) => write!(f, "{c}"),
        }
    }
}
string_serde!(ConditionKey);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", try_from = "RateLimitFields")]
pub struct RateLimit {
    pub name: UniqueName,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<LimitMatch>,
    #[serde(default)]
    pub key: LimitKey,
    pub rate: NonZeroU32,
    #[serde(default = "one_second")]
    pub per: HumanDuration,
    /// Bucket size; the rate when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU32>,
    /// What a request over the limit gets: 429 at once, or a wait for a token first.
    #[serde(default, skip_serializing_if = "LimitAction::is_reject")]
    pub action: LimitAction,
    /// `DELAY` only: the longest a request waits for a token ([`DEFAULT_MAX_DELAY`] when not
    /// given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<MaxDelay>,
}

impl RateLimit {
    /// How long a request over this limit may wait for a token: zero under `REJECT`.
    pub fn max_wait(&self) -> std::time::Duration {
        match self.action {
            LimitAction::REJECT => std::time::Duration::ZERO,
            LimitAction::DELAY => self.max_delay.map_or(DEFAULT_MAX_DELAY, |d| d.0),
        }
    }
}

/// What a request over a limit gets (SPEC section 4 `rateLimits[].action`).
// The variants are spelled as the policy YAML spells them (serde names), like `Mode` and `Action`.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LimitAction {
    /// 429 at once.
    #[default]
    REJECT,
    /// Throttling: wait for a token up to `maxDelay`, then go on; 429 when the wait would be
    /// longer (the key's queue is full).
    DELAY,
}

impl LimitAction {
    fn is_reject(&self) -> bool {
        *self == LimitAction::REJECT
    }
}

/// `maxDelay` when a `DELAY` limit does not say (SPEC section 4's example).
pub const DEFAULT_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest `maxDelay`: a request held longer than this is better refused, and a client's
/// own timeout would end it anyway.
pub const MAX_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

/// `rateLimits[].maxDelay`: more than 0, at most [`MAX_MAX_DELAY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxDelay(pub std::time::Duration);

impl std::str::FromStr for MaxDelay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d: HumanDuration = s.parse()?;
        if d.0.is_zero() || d.0 > MAX_MAX_DELAY {
            return Err(format!("maxDelay must be more than 0 and at most 60s, got {d}"));
        }
        Ok(MaxDelay(d.0))
    }
}
impl std::fmt::Display for MaxDelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        HumanDuration(self.0).fmt(f)
    }
}
string_serde!(MaxDelay);

/// What a limit may say: `per` from 1 ms to 7 days, and a bucket that empties or refills within
/// a century (the token arithmetic works in nanoseconds).
const MAX_PER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RateLimitFields {
    name: UniqueName,
    #[serde(default, rename = "match")]
    matches: Option<LimitMatch>,
    #[serde(default)]
    key: LimitKey,
    rate: NonZeroU32,
    #[serde(default = "one_second")]
    per: HumanDuration,
    #[serde(default)]
    burst: Option<NonZeroU32>,
    #[serde(default)]
    action: LimitAction,
    #[serde(default)]
    max_delay: Option<MaxDelay>,
}

impl TryFrom<RateLimitFields> for RateLimit {
    type Error = String;
    fn try_from(f: RateLimitFields) -> Result<Self, String> {
        if f.per.0 < std::time::Duration::from_millis(1) || f.per.0 > MAX_PER {
            return Err(format!("per must be between 1ms and 168h, got {}", f.per));
        }
        let period = f.per.0 / f.rate.get();
        let burst = f.burst.unwrap_or(f.rate).get();
        if period.is_zero() || period.as_secs_f64() * f64::from(burst) > 100.0 * 365.0 * 86400.0 {
            return Err(format!("rate {} per {} with burst {burst} is out of range", f.rate, f.per));
        }
        // `maxDelay` beside `REJECT` is accepted and has no effect: SPEC's own example writes both,
        // and switching a limit between the two actions should not need a second edit.
        Ok(RateLimit {
            name: f.name,
            matches: f.matches,
            key: f.key,
            rate: f.rate,
            per: f.per,
            burst: f.burst,
            action: f.action,
            max_delay: f.max_delay,
        })
    }
}

fn one_second() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitMatch {
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
}

/// Whose bucket a request takes its token from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LimitKey {
    SourcePrincipal,
    SourceIp,
    Header(http::HeaderName),
    /// A claim of the verified JWT (its text; requests without one share a bucket).
    Claim(crate::authn::ClaimPath),
    #[default]
    Global,
}

impl std::str::FromStr for LimitKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "source.principal" => Ok(LimitKey::SourcePrincipal),
            "source.ip" => Ok(LimitKey::SourceIp),
            "global" => Ok(LimitKey::Global),
            _ if bracketed(s, "request.headers").is_some() => {
                header_name(bracketed(s, "request.headers").unwrap_or_default(), s).map(LimitKey::Header)
            }
            _ => match claim_path(s) {
                Some(claim) => claim.map(LimitKey::Claim),
                None => Err(format!(
                "unknown key kind {s:?}; expected source.principal, source.ip, request.headers[NAME], request.auth.claims[NAME] or global"
                )),
            },
        }
    }
}
impl std::fmt::Display for LimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKey::SourcePrincipal => f.write_str("source.principal"),
            LimitKey::SourceIp => f.write_str("source.ip"),
            LimitKey::Header(h) => write!(f, "request.headers[{h}]"),
            LimitKey::Claim(c) => write!(f, "{c}"),
            LimitKey::Global => f.write_str("global"),
        }
    }
}
string_serde!(LimitKey);

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InputValidation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, deserialize_with = "header_limit", skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "uri_limit", skip_serializing_if = "Option::is_none")]
    pub max_uri_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<Waf>,
}

/// `inputValidation.waf` (SPEC section 4, step 6 of section 5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Waf {
    pub mode: WafMode,
    #[serde(default = "first_level")]
    pub paranoia: Paranoia,
    /// Every detector when not given.
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<DetectorName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<Exclusion>,
    /// How much of a body is read and inspected before the request goes on: 1 to 65536 bytes.
    #[serde(default = "full_inspection")]
    pub inspect_body_bytes: InspectBytes,
    /// A body of an inspected type that is longer: `REJECT` (413) or `PASS` uninspected
    /// (counted). A body without a declared length that runs past the limit is always refused,
    /// as it can be neither inspected nor passed on without buffering it whole.
    #[serde(default)]
    pub body_over_limit: OverLimit,
}

// The variants are spelled as the policy YAML spells them (serde names), like `Mode` and `Action`.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WafMode {
    /// A finding refuses the request (403).
    BLOCK,
    /// A finding is reported (event and metric); the request goes on.
    DETECT,
    OFF,
}

#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OverLimit {
    #[default]
    REJECT,
    PASS,
}

/// 1..=4, as in the OWASP Core Rule Set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paranoia(pub u8);

impl std::str::FromStr for Paranoia {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<u8>() {
            Ok(n @ 1..=4) => Ok(Paranoia(n)),
            _ => Err(format!("paranoia is 1, 2, 3 or 4, got {s:?}")),
        }
    }
}
impl std::fmt::Display for Paranoia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Paranoia {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}
impl<'de> Deserialize<'de> for Paranoia {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        n.to_string().parse().map_err(serde::de::Error::custom)
    }
}

fn first_level() -> Paranoia {
    Paranoia(1)
}

/// The most a body read before forwarding can hold: pingora replays at most 64 KiB.
pub const MAX_INSPECT_BYTES: u32 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectBytes(pub u32);

impl Serialize for InspectBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}
impl<'de> Deserialize<'de> for InspectBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n == 0 || n > u64::from(MAX_INSPECT_BYTES) {
            return Err(serde::de::Error::custom(format!(
                "inspectBodyBytes is 1 to {MAX_INSPECT_BYTES} (what can be held and replayed), got {n}"
            )));
        }
        Ok(InspectBytes(n as u32))
    }
}

fn full_inspection() -> InspectBytes {
    InspectBytes(MAX_INSPECT_BYTES)
}

/// A detector by its policy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorName(pub crate::waf::Detector);

impl std::str::FromStr for DetectorName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::waf::Detector::parse(s).map(DetectorName).ok_or_else(|| {
            // Named from the list itself, so a detector added later is offered too.
            let names: Vec<&str> = crate::waf::Detector::ALL.iter().map(|d| d.as_str()).collect();
            format!("unknown detector {s:?}; expected one of {}", names.join(", "))
        })
    }
}
impl std::fmt::Display for DetectorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}
string_serde!(DetectorName);

/// Detectors not run on some requests, or on some of their parameters: for a search box that
/// takes SQL-looking text, say. Without `paths`, every path; without `parameters`, the whole
/// request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exclusion {
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    /// Query, form, JSON or multipart parameter names, cookie names, or header names (headers
    /// without regard to case).
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    #[serde(deserialize_with = "non_empty")]
    pub detectors: Vec<DetectorName>,
}

thread_local! {
    /// Names seen so far in the list being read; see [`UniqueList`].
    static NAMES_IN_LIST: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// A rule or limit name, unique within its list. The check runs as the name is read, so a
/// duplicate is reported at its own line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueName(pub String);

impl<'de> Deserialize<'de> for UniqueName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name: Name = Name::deserialize(d)?;
        // Metrics, events and spans say `rule="default"` for the policy's default decision: a
        // rule of that name could not be told from it.
        if name.0 == "default" {
            return Err(serde::de::Error::custom(
                "\"default\" names the policy's default decision in metrics, events and spans; give the rule another name",
            ));
        }
        let fresh = NAMES_IN_LIST.with(|names| names.borrow_mut().insert(name.0.clone()));
        if !fresh {
            return Err(serde::de::Error::custom(format!(
                "duplicate name {:?}; names must be unique in this list",
                name.0
            )));
        }
        Ok(UniqueName(name.0))
    }
}

impl Serialize for UniqueName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A list whose elements' [`UniqueName`]s must differ.
#[derive(Debug, Clone)]
pub struct UniqueList<T>(pub Vec<T>);

impl<T> Default for UniqueList<T> {
    fn default() -> Self {
        UniqueList(Vec::new())
    }
}

impl<T> std::ops::Deref for UniqueList<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let outer = NAMES_IN_LIST.with(|names| std::mem::take(&mut *names.borrow_mut()));
        let items = Vec::<T>::deserialize(d);
        NAMES_IN_LIST.with(|names| *names.borrow_mut() = outer);
        items.map(UniqueList)
    }
}

impl<T: Serialize> Serialize for UniqueList<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}
