//! The `SecurityPolicy` resource as operators write it (SPEC section 4). Every value is checked
//! while it is read, so an error carries the line and field where it was found. What this
//! version cannot enforce is refused, loudly: a policy that silently does less than it says is
//! worse than none.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::patterns::{string_serde, PathPattern, Pattern};
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
use crate::config::{HumanDuration, MtlsMode};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<NotYet<JwtFeature>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: UniqueList<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_validation: Option<InputValidation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Pattern>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Pattern>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principals: Option<NotYet<JwtFeature>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    #[serde(default, deserialize_with = "non_empty", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
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
}

fn bracketed<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')
}

fn header_name(name: &str, whole: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{whole:?}: {name:?} is not a valid header name"))
}

const JWT_NOT_YET: &str = "needs JWT authentication, which is not yet available in this version";

impl std::str::FromStr for ConditionKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(name) = bracketed(s, "request.headers") {
            return header_name(name, s).map(ConditionKey::Header);
        }
        if bracketed(s, "request.auth.claims").is_some() {
            return Err(format!("{s:?} {JWT_NOT_YET}"));
        }
        Err(format!("expected request.headers[NAME] or request.auth.claims[NAME], got {s:?}"))
    }
}
impl std::fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionKey::Header(h) => write!(f, "request.headers[{h}]"),
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
}

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
        Ok(RateLimit { name: f.name, matches: f.matches, key: f.key, rate: f.rate, per: f.per, burst: f.burst })
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
            _ if bracketed(s, "request.auth.claims").is_some() => Err(format!("{s:?} {JWT_NOT_YET}")),
            _ => Err(format!(
                "unknown key kind {s:?}; expected source.principal, source.ip, request.headers[NAME], request.auth.claims[NAME] or global"
            )),
        }
    }
}
impl std::fmt::Display for LimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKey::SourcePrincipal => f.write_str("source.principal"),
            LimitKey::SourceIp => f.write_str("source.ip"),
            LimitKey::Header(h) => write!(f, "request.headers[{h}]"),
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uri_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<Waf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Waf {
    pub mode: WafOff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoia: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<serde_json::Value>,
}

/// The WAF's only mode in this version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafOff;

impl std::str::FromStr for WafOff {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "OFF" => Ok(WafOff),
            "BLOCK" | "DETECT" => {
                Err(format!("WAF mode {s} is not yet available in this version; use OFF or leave waf out"))
            }
            _ => Err(format!("expected BLOCK, DETECT or OFF, got {s:?}")),
        }
    }
}
impl std::fmt::Display for WafOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OFF")
    }
}
string_serde!(WafOff);

/// A feature this version cannot enforce; refusing the field beats ignoring it.
pub trait Feature {
    const WHAT: &'static str;
}

#[derive(Debug, Clone)]
pub struct JwtFeature;
impl Feature for JwtFeature {
    const WHAT: &'static str = "JWT authentication";
}

#[derive(Debug, Clone)]
pub struct NotYet<F>(std::marker::PhantomData<F>);

impl<'de, F: Feature> Deserialize<'de> for NotYet<F> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(format!("{} is not yet available in this version", F::WHAT)))
    }
}

impl<F> Serialize for NotYet<F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
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
