//! Verified claims, the names policies use to read them, and the time checks.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::failure::{Failure, Reason};
use super::AuthnError;

/// Where "now" comes from, so tests can fix it. Used for `exp`/`nbf`/`iat` and for spacing
/// JWKS refreshes on unknown `kid`s.
pub trait Clock: Send + Sync + 'static {
    /// Time since the Unix epoch.
    fn since_epoch(&self) -> Duration;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn since_epoch(&self) -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}

/// A claim name as policies write it: `request.auth.claims[groups]`, or nested as Istio writes
/// it, `request.auth.claims[kubernetes.io][pod][name]`. Only the bracket form nests: a dot is
/// part of a name (`kubernetes.io`, `https://example.com/roles` are single claims), so a
/// dotted form would be ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimPath(Vec<String>);

/// The prefix a policy key has before the bracketed names.
const POLICY_PREFIX: &str = "request.auth.claims";

/// At most this many levels: claims nest little, and a bound keeps a lookup's cost fixed.
const MAX_DEPTH: usize = 8;

/// Claims whose string value is a list separated by blanks.
const SPACE_DELIMITED: [&str; 3] = ["scope", "scp", "permissions"];

/// Verified claims of one token.
#[derive(Debug, Clone)]
pub struct Claims(Map<String, Value>);

/// The time and audience rules of one provider.
#[derive(Debug, Clone)]
pub(crate) struct TimeRules {
    pub skew: Duration,
}

// === impl ClaimPath ===

impl ClaimPath {
    /// Parses `request.auth.claims[a][b]` or just `[a][b]`; names are non-empty and may hold
    /// any character but `[` and `]`.
    pub fn parse(key: &str) -> Result<ClaimPath, AuthnError> {
        let bad = |why: &str| AuthnError::ClaimPath(format!("{key:?}: {why}"));
        let mut rest = key.strip_prefix(POLICY_PREFIX).unwrap_or(key);
        if rest.is_empty() {
            return Err(bad("expected [NAME] after request.auth.claims"));
        }
        let mut names = Vec::new();
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[').ok_or_else(|| bad("expected ["))?;
            let end = inner.find(']').ok_or_else(|| bad("missing ]"))?;
            let name = &inner[..end];
            if name.is_empty() || name.contains('[') {
                return Err(bad("empty or bracketed claim name"));
            }
            names.push(name.to_string());
            rest = &inner[end + 1..];
        }
        if names.len() > MAX_DEPTH {
            return Err(bad("too deeply nested"));
        }
        Ok(ClaimPath(names))
    }

    /// A path from already separated names (`["kubernetes.io", "pod", "name"]`).
    pub fn from_names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Result<ClaimPath, AuthnError> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() || names.len() > MAX_DEPTH || names.iter().any(String::is_empty) {
            return Err(AuthnError::ClaimPath(format!("{names:?}: 1 to {MAX_DEPTH} non-empty names")));
        }
        Ok(ClaimPath(names))
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(POLICY_PREFIX)?;
        for n in &self.0 {
            write!(f, "[{n}]")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ClaimPath {
    type Err = AuthnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClaimPath::parse(s)
    }
}

// === impl Claims ===

impl Claims {
    pub(crate) fn new(map: Map<String, Value>) -> Self {
        Claims(map)
    }

    /// The raw claim, if present.
    pub fn get(&self, path: &ClaimPath) -> Option<&Value> {
        let (first, rest) = path.0.split_first()?;
        rest.iter().try_fold(self.0.get(first)?, |v, name| v.as_object()?.get(name))
    }

    /// The claim's values as policies compare them: a string is one value, a list gives each
    /// of its string, number or boolean elements, numbers and booleans are their JSON text.
    /// The top-level `scope`, `scp` and `permissions` claims as strings are lists separated by
    /// blanks (RFC 8693 section 4.2; Entra ID's `scp`), as Istio's `spaceDelimitedClaims`
    /// reads them, so `claims[scope]` matches each scope. They are split at any whitespace, as
    /// an app's `split()` would split them: a DENY of one scope holds whatever separates it.
    /// Objects give nothing.
    pub fn values(&self, path: &ClaimPath) -> Vec<Cow<'_, str>> {
        let Some(v) = self.get(path) else { return Vec::new() };
        let delimited = matches!(&path.0[..], [name] if SPACE_DELIMITED.contains(&name.as_str()));
        let blank = |c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c);
        let mut out = Vec::new();
        match v {
            Value::String(s) if delimited => out.extend(s.split(blank).filter(|s| !s.is_empty()).map(Cow::Borrowed)),
            Value::Array(items) => out.extend(items.iter().filter_map(scalar)),
            other => out.extend(scalar(other)),
        }
        out
    }

    /// Whether any value of the claim satisfies `pred` (a policy's `when` on a claim).
    pub fn matches(&self, path: &ClaimPath, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.values(path).iter().any(|v| pred(v))
    }

    /// The claim as one text, for a rate-limit key or a forwarded header: a scalar is its
    /// text, a list its values joined by `,`; absent, empty or an object gives `None`.
    pub fn text(&self, path: &ClaimPath) -> Option<Cow<'_, str>> {
        match self.get(path)? {
            Value::Array(_) => {
                let values = self.values(path);
                if values.is_empty() {
                    None
                } else {
                    Some(Cow::Owned(values.join(",")))
                }
            }
            other => scalar(other),
        }
    }

    /// [`Claims::text`] for a forwarded header, `None` too when the app could not read the
    /// claim back from it: a list element holding a comma (`["dev,admin"]` would read as two
    /// groups), a value that begins or ends with a blank (HTTP drops those: `" admin"` would
    /// arrive as `admin`), or one holding a tab or a control or line-separating character of
    /// any script (`U+0085`, `U+2028`: a log or a parser may break the value there).
    pub fn header_text(&self, path: &ClaimPath) -> Option<Cow<'_, str>> {
        let text = self.text(path)?;
        let unbroken = |v: &str| !v.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'));
        let kept_whole = |v: &str| v.trim_matches([' ', '\t']).len() == v.len() && unbroken(v);
        let readable = match self.get(path)? {
            Value::Array(_) => self.values(path).iter().all(|v| !v.contains(',') && kept_whole(v)),
            _ => kept_whole(&text),
        };
        readable.then_some(text)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub(crate) fn str_claim(&self, name: &str) -> Result<Option<&str>, Failure> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Failure::new(Reason::Malformed, format!("{name} is not a string"))),
        }
    }

    /// `exp` (required), `nbf` and `iat`, each with `skew` of tolerance (RFC 7519 section 4.1).
    pub(crate) fn check_times(&self, now: Duration, rules: &TimeRules) -> Result<(), Failure> {
        let now = now.as_secs_f64();
        let skew = rules.skew.as_secs_f64();
        let exp = self.numeric_date("exp")?.ok_or_else(|| Failure::new(Reason::Malformed, "no exp claim"))?;
        if now >= exp + skew {
            return Err(Failure::new(Reason::Expired, format!("exp {exp} is before now {now:.0}")));
        }
        if let Some(nbf) = self.numeric_date("nbf")? {
            if now + skew < nbf {
                return Err(Failure::new(Reason::NotYetValid, format!("nbf {nbf} is after now {now:.0}")));
            }
        }
        if let Some(iat) = self.numeric_date("iat")? {
            if now + skew < iat {
                return Err(Failure::new(Reason::NotYetValid, format!("iat {iat} is in the future")));
            }
        }
        Ok(())
    }

    /// `aud` is a string or a list of strings (RFC 7519 section 4.1.3); any match is enough.
    pub(crate) fn check_audience(&self, accepted: &[String]) -> Result<(), Failure> {
        if accepted.is_empty() {
            return Ok(());
        }
        let found = match self.0.get("aud") {
            None => false,
            Some(Value::String(a)) => accepted.contains(a),
            Some(Value::Array(list)) => {
                let mut found = false;
                for a in list {
                    let a = a.as_str().ok_or_else(|| Failure::new(Reason::Malformed, "aud holds a non-string"))?;
                    found |= accepted.iter().any(|x| x == a);
                }
                found
            }
            Some(_) => return Err(Failure::new(Reason::Malformed, "aud is not a string or list")),
        };
        if found {
            Ok(())
        } else {
            Err(Failure::new(Reason::WrongAudience, "no accepted audience in aud"))
        }
    }

    fn numeric_date(&self, name: &'static str) -> Result<Option<f64>, Failure> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(Failure::new(Reason::Malformed, format!("{name} is out of range"))),
            },
            Some(_) => Err(Failure::new(Reason::Malformed, format!("{name} is not a number"))),
        }
    }
}

fn scalar(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => Claims::new(m),
            _ => unreachable!(),
        }
    }

    fn path(s: &str) -> ClaimPath {
        ClaimPath::parse(s).unwrap()
    }

    #[test]
    fn paths_parse_in_istio_form() {
        assert_eq!(path("request.auth.claims[groups]").names(), ["groups"]);
        assert_eq!(path("request.auth.claims[kubernetes.io][pod][name]").names(), ["kubernetes.io", "pod", "name"]);
        assert_eq!(path("[https://example.com/roles]").names(), ["https://example.com/roles"]);
        assert_eq!(path("[a][b]").to_string(), "request.auth.claims[a][b]");
        for bad in ["request.auth.claims", "request.auth.claims.sub", "[]", "[a", "[a]b", "[a[b]]", "x[a]", ""] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad}");
        }
        assert!(ClaimPath::parse(&"[a]".repeat(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn values_cover_strings_lists_scalars_and_nesting() {
        let c = claims(json!({
            "sub": "alice", "groups": ["admin", "dev", 3, {"x": 1}], "n": 42, "ok": true,
            "scope": "orders:read  orders:write", "scp": "a b", "permissions": "read\tadmin\u{a0}x", "other": "a b",
            "kubernetes.io": {"namespace": "shop", "pod": {"name": "web-1"}},
        }));
        assert_eq!(c.values(&path("[sub]")), ["alice"]);
        assert_eq!(c.values(&path("[groups]")), ["admin", "dev", "3"]);
        assert_eq!(c.values(&path("[n]")), ["42"]);
        assert_eq!(c.values(&path("[ok]")), ["true"]);
        assert_eq!(c.values(&path("[scope]")), ["orders:read", "orders:write"]);
        assert_eq!(c.values(&path("[scp]")), ["a", "b"]);
        assert_eq!(c.values(&path("[permissions]")), ["read", "admin", "x"]);
        assert_eq!(c.values(&path("[other]")), ["a b"], "only the scope claims are lists in a string");
        assert_eq!(c.values(&path("[kubernetes.io][pod][name]")), ["web-1"]);
        assert!(c.values(&path("[kubernetes.io][pod]")).is_empty());
        assert!(c.values(&path("[missing][x]")).is_empty());
        assert!(c.matches(&path("[groups]"), |v| v == "dev"));
        assert_eq!(c.text(&path("[groups]")).as_deref(), Some("admin,dev,3"));
        assert_eq!(c.text(&path("[kubernetes.io][namespace]")).as_deref(), Some("shop"));
        assert_eq!(c.text(&path("[kubernetes.io]")), None);
    }

    #[test]
    fn a_claim_the_app_would_read_back_as_another_is_not_forwarded() {
        let c = claims(json!({
            "sub": " admin", "tab": "x\t", "groups": ["dev,admin"], "spaced": ["dev", " admin"],
            "plain": ["dev", "admin"], "name": "Ann Lee", "n": 7,
            "inner_tab": "dev\tadmin", "nel": "a\u{85}b", "line": ["a\u{2028}b"], "para": "a\u{2029}b",
        }));
        for name in ["[sub]", "[tab]", "[groups]", "[spaced]", "[inner_tab]", "[nel]", "[line]", "[para]"] {
            assert!(c.text(&path(name)).is_some(), "{name}: a rate-limit key still has it");
            assert_eq!(c.header_text(&path(name)), None, "{name}");
        }
        assert_eq!(c.header_text(&path("[plain]")).as_deref(), Some("dev,admin"));
        assert_eq!(c.header_text(&path("[name]")).as_deref(), Some("Ann Lee"));
        assert_eq!(c.header_text(&path("[n]")).as_deref(), Some("7"));
    }

    #[test]
    fn times_are_checked_with_skew() {
        let rules = TimeRules { skew: Duration::from_secs(60) };
        let at = |s: u64| Duration::from_secs(s);
        let c = claims(json!({"exp": 1000, "nbf": 500, "iat": 500}));
        assert!(c.check_times(at(700), &rules).is_ok());
        assert!(c.check_times(at(1059), &rules).is_ok());
        assert_eq!(c.check_times(at(1060), &rules).unwrap_err().reason, Reason::Expired);
        assert!(c.check_times(at(440), &rules).is_ok());
        assert_eq!(c.check_times(at(439), &rules).unwrap_err().reason, Reason::NotYetValid);
        let future_iat = claims(json!({"exp": 5000, "iat": 2000}));
        assert_eq!(future_iat.check_times(at(1000), &rules).unwrap_err().reason, Reason::NotYetValid);
        for bad in [json!({}), json!({"exp": "1000"}), json!({"exp": 1000, "nbf": null})] {
            if let Value::Object(m) = bad {
                assert_eq!(Claims::new(m).check_times(at(1), &rules).unwrap_err().reason, Reason::Malformed);
            }
        }
        assert!(claims(json!({"exp": 1000.5})).check_times(at(1000), &rules).is_ok());
    }

    #[test]
    fn audiences_any_of() {
        let accepted = vec!["orders".to_string(), "palisade".to_string()];
        assert!(claims(json!({"aud": "orders"})).check_audience(&accepted).is_ok());
        assert!(claims(json!({"aud": ["x", "palisade"]})).check_audience(&accepted).is_ok());
        assert!(claims(json!({})).check_audience(&[]).is_ok());
        for (v, r) in [
            (json!({"aud": "other"}), Reason::WrongAudience),
            (json!({"aud": []}), Reason::WrongAudience),
            (json!({}), Reason::WrongAudience),
            (json!({"aud": ["orders", 1]}), Reason::Malformed),
            (json!({"aud": {"orders": true}}), Reason::Malformed),
        ] {
            assert_eq!(claims(v).check_audience(&accepted).unwrap_err().reason, r);
        }
    }
}
