//! The value patterns of a policy, checked when the policy is read so errors carry a position.

use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::normalize::{match_form, normalize};
use crate::authn::{ClaimPath, Claims};

/// `exact`, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl Pattern {
    /// The pattern for a host, as [`host_form`] writes hosts: in lower case, an exact name
    /// without its trailing dot.
    pub fn for_host(&self) -> Pattern {
        match self {
            Pattern::Any => Pattern::Any,
            Pattern::Exact(e) => Pattern::Exact(host_form(e).into_owned().into()),
            Pattern::Prefix(p) => Pattern::Prefix(p.to_ascii_lowercase().into()),
            Pattern::Suffix(s) => Pattern::Suffix(s.to_ascii_lowercase().into()),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => value == &**e,
            Pattern::Prefix(p) => value.starts_with(&**p),
            Pattern::Suffix(s) => value.ends_with(&**s),
        }
    }
}

/// A `Host` (or `:authority`) as routers compare it: in lower case, without the trailing dot of
/// a fully qualified name (`EVIL.shop.:80` is `evil.shop:80`). Borrowed when it is so already.
/// [`without_port`] gives its host alone.
pub fn host_form(value: &str) -> std::borrow::Cow<'_, str> {
    let (host, port) = match value.rfind(':') {
        // A colon inside an IPv6 literal's brackets is no port's.
        Some(i) if !value[i..].contains(']') => value.split_at(i),
        _ => (value, ""),
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() == host.len() && !value.bytes().any(|b| b.is_ascii_uppercase()) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned([name, port].concat().to_ascii_lowercase())
}

/// `host` of `host:port` (`[v6]` of `[v6]:port`); the whole when there is no port.
pub fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let stars = s.matches('*').count();
        let p = match s {
            "" => return Err("empty pattern; use \"*\" to match anything".into()),
            "*" => Pattern::Any,
            _ if stars == 1 && s.ends_with('*') => Pattern::Prefix(s[..s.len() - 1].into()),
            _ if stars == 1 && s.starts_with('*') => Pattern::Suffix(s[1..].into()),
            _ if stars == 0 => Pattern::Exact(s.into()),
            _ => return Err(format!("bad wildcard in {s:?}: one '*' is allowed, at the start or the end")),
        };
        Ok(p)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(e) => f.write_str(e),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// A path rule: exact, `prefix*`, or a template of whole segments (`/users/{*}/orders`,
/// `/files/{**}`, and in an authorization rule `/users/{request.auth.claims[sub]}/{**}`);
/// matched against the normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
    Template(Box<[Segment]>),
}

/// One segment of a [`PathPattern::Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    /// `{*}`: any one segment.
    One,
    /// `{**}`, last: whatever follows, nothing included.
    Rest,
    /// `{request.auth.claims[NAME]}`: one segment that is, once percent-decoded, a value of
    /// the caller's verified token's claim (object-level authorization: Alice's token reaches
    /// `/users/alice/...` and not `/users/bob/...`).
    Claim(ClaimPath),
}

impl PathPattern {
    /// `path` is in match form (normalised, no trailing slash). A prefix that ends in `/`
    /// matches the path without it too: `/admin/` is `/admin` in match form, and `/admin/*`
    /// must hold for the `/admin/` an app routes as its own page.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_for(path, false, None)
    }

    /// As [`PathPattern::matches`], ASCII case ignored: how DENY rules match, since IIS,
    /// ASP.NET, Windows file systems and case-insensitive routers serve `/ADMIN` as `/admin`.
    pub fn matches_ignoring_case(&self, path: &str) -> bool {
        self.matches_for(path, true, None)
    }

    /// Whether a segment names a claim: only then does matching need the request's token.
    pub fn names_a_claim(&self) -> bool {
        matches!(self, PathPattern::Template(t) if t.iter().any(|s| matches!(s, Segment::Claim(_))))
    }

    /// [`PathPattern::matches`] for a request whose verified token has `claims`, which a
    /// template's claim segments compare with (without a token they match nothing).
    pub fn matches_for(&self, path: &str, ignore_case: bool, claims: Option<&Claims>) -> bool {
        let eq = |a: &str, b: &str| if ignore_case { a.eq_ignore_ascii_case(b) } else { a == b };
        match self {
            PathPattern::Exact(e) => eq(path, e),
            PathPattern::Prefix(p) => {
                path.get(..p.len()).is_some_and(|head| eq(head, p)) || Self::directory(p).is_some_and(|d| eq(d, path))
            }
            PathPattern::Template(template) => {
                let mut segments = path.split('/').skip(1).filter(|s| !s.is_empty());
                for expected in template.iter() {
                    let segment = match (expected, segments.next()) {
                        (Segment::Rest, _) => return true,
                        (_, None) => return false,
                        (_, Some(segment)) => segment,
                    };
                    let holds = match expected {
                        Segment::Literal(literal) => eq(segment, literal),
                        Segment::One | Segment::Rest => true,
                        Segment::Claim(name) => claims.is_some_and(|claims| {
                            percent_decoded(segment).is_some_and(|id| {
                                // A DENY (the loose reading) also holds for the number's other
                                // spellings: routers that parse `/t/03` or `/t/+3` serve object 3.
                                claims
                                    .matches(name, |value| eq(value, &id) || (ignore_case && same_integer(value, &id)))
                            })
                        }),
                    };
                    if !holds {
                        return false;
                    }
                }
                segments.next().is_none()
            }
        }
    }

    /// `/admin` of the prefix `/admin/`: the directory's own path in match form.
    fn directory(prefix: &str) -> Option<&str> {
        prefix.strip_suffix('/').filter(|d| !d.is_empty())
    }
}

/// Whether two decimal integers are one number however they are spelt: a sign, leading zeros
/// (`03`, `+3`, `-0`). Not fractions or exponents: ids are integers.
fn same_integer(a: &str, b: &str) -> bool {
    fn canonical(s: &str) -> Option<(bool, &str)> {
        let (negative, digits) = match s.as_bytes().first()? {
            b'+' => (false, &s[1..]),
            b'-' => (true, &s[1..]),
            _ => (false, s),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = digits.trim_start_matches('0');
        // zero has no sign
        Some(if digits.is_empty() { (false, "0") } else { (negative, digits) })
    }
    matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}

/// A segment of a normalised path as the app reads it: its remaining escapes decoded (`%40` is
/// `@`). Normalisation has refused encoded slashes and malformed UTF-8 already.
fn percent_decoded(segment: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(std::borrow::Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = super::normalize::hex(*bytes.get(i + 1)?)?;
            let lo = super::normalize::hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

/// A path of an authorization rule: a [`PathPattern`] whose template may name a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePath(pub PathPattern);

impl FromStr for RulePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PathPattern::parse(s, true).map(RulePath)
    }
}

impl std::fmt::Display for RulePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for PathPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PathPattern::parse(s, false)
    }
}

impl PathPattern {
    /// `claims`: whether a template may name a claim (only an authorization rule has a token to
    /// compare with when it matches).
    fn parse(s: &str, claims: bool) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must start with '/'"));
        }
        // The path matched never holds the query or a fragment: a rule on them never fires.
        if let Some(c) = s.chars().find(|c| matches!(c, '?' | '#')) {
            return Err(format!(
                "path {s:?} holds {c:?}: rules match the path alone, never the query or a fragment, so this one would match no request"
            ));
        }
        if s.contains(['{', '}']) {
            return Self::template(s, claims);
        }
        let (base, prefix) = match s.find('*') {
            None => (s, false),
            Some(i) if i == s.len() - 1 => (&s[..i], true),
            Some(_) => {
                return Err(format!("bad wildcard in path {s:?}: only a trailing '*' (prefix match) is allowed"))
            }
        };
        if prefix {
            // Requests are matched in normalised form; a prefix written otherwise could never match.
            match normalize(base) {
                Ok(std::borrow::Cow::Borrowed(_)) => return Ok(PathPattern::Prefix(base.into())),
                _ => {
                    return Err(format!(
                        "prefix {s:?} must be written in normalised form (no '//', '.', '..', escapes, ';' or '\\')"
                    ))
                }
            }
        }
        let normalized = normalize(base).map_err(|e| format!("path {s:?}: {e}"))?;
        Ok(PathPattern::Exact(match_form(&normalized).into()))
    }

    fn template(s: &str, claims: bool) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("path template {s:?}: {why}"));
        let written: Vec<&str> = s[1..].split('/').collect();
        let mut template = Vec::with_capacity(written.len());
        for (i, segment) in written.iter().enumerate() {
            let last = i + 1 == written.len();
            let parsed = match *segment {
                "{*}" => Segment::One,
                "{**}" if last => Segment::Rest,
                "{**}" => return bad("'{**}' (the rest of the path) must be its last segment"),
                "" if last && i > 0 => continue, // a trailing slash: `/users/{*}/` is `/users/{*}`
                _ if segment.starts_with('{') && segment.ends_with('}') => {
                    let name = &segment[1..segment.len() - 1];
                    if !name.starts_with("request.auth.claims[") {
                        return bad(&format!(
                            "{segment:?} is not a segment it knows: '{{*}}' (one segment), '{{**}}' (the rest) or '{{request.auth.claims[NAME]}}'"
                        ));
                    }
                    if !claims {
                        return bad(
                            "a claim segment belongs in an authorization rule's paths, which judge a verified token",
                        );
                    }
                    Segment::Claim(name.parse().map_err(|e| format!("path template {s:?}: {e}"))?)
                }
                _ if segment.contains(['{', '}', '*']) => {
                    return bad(&format!(
                        "{segment:?}: '{{*}}', '{{**}}' and claims stand for whole segments, between slashes"
                    ))
                }
                literal => {
                    let whole = format!("/{literal}");
                    if !matches!(normalize(&whole), Ok(std::borrow::Cow::Borrowed(n)) if n == whole && !literal.is_empty())
                        || matches!(literal, "." | "..")
                    {
                        return bad(&format!(
                            "segment {literal:?} must be written in normalised form (no '//', '.', '..', escapes, ';' or '\\')"
                        ));
                    }
                    Segment::Literal(literal.into())
                }
            };
            template.push(parsed);
        }
        Ok(PathPattern::Template(template.into()))
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(e) => f.write_str(e),
            PathPattern::Prefix(p) => write!(f, "{p}*"),
            PathPattern::Template(template) => {
                for segment in template.iter() {
                    match segment {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::One => f.write_str("/{*}")?,
                        Segment::Rest => f.write_str("/{**}")?,
                        Segment::Claim(name) => write!(f, "/{{{name}}}")?,
                    }
                }
                if template.is_empty() {
                    f.write_str("/")?;
                }
                Ok(())
            }
        }
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
pub(crate) use string_serde;

string_serde!(Pattern);
string_serde!(PathPattern);
string_serde!(RulePath);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p: Pattern = "spiffe://cluster.local/ns/shop/*".parse().unwrap();
        assert!(p.matches("spiffe://cluster.local/ns/shop/sa/a"));
        assert!(!p.matches("spiffe://cluster.local/ns/other/sa/a"));
        assert!("*/sa/admin".parse::<Pattern>().unwrap().matches("spiffe://x/ns/y/sa/admin"));
        for bad in ["", "a*b", "**", "*a*"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        let exact: PathPattern = "/orders/".parse().unwrap();
        assert!(exact.matches("/orders"));
        let prefix: PathPattern = "/orders/*".parse().unwrap();
        assert!(prefix.matches("/orders/7") && prefix.matches("/orders") && !prefix.matches("/ordersx"));
        assert!(prefix.matches_ignoring_case("/ORDERS") && !prefix.matches_ignoring_case("/ORDERSX"));
        let root: PathPattern = "/*".parse().unwrap();
        assert!(root.matches("/") && root.matches("/x"));
        for bad in ["orders", "/a*b", "/*/x", "/%61dmin*", "/a//b*", "/a;b*"] {
            assert!(bad.parse::<PathPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_match_whole_segments() {
        let one: PathPattern = "/users/{*}/orders".parse().unwrap();
        assert!(one.matches("/users/7/orders") && one.matches("/users/alice%40x.com/orders"));
        for not in ["/users/orders", "/users/7/8/orders", "/users/7/orders/1", "/users/7", "/Users/7/orders"] {
            assert!(!one.matches(not), "{not}");
        }
        assert!(one.matches_ignoring_case("/USERS/7/Orders"));
        let rest: PathPattern = "/files/{**}".parse().unwrap();
        assert!(rest.matches("/files") && rest.matches("/files/a") && rest.matches("/files/a/b/c"));
        assert!(!rest.matches("/filesx") && !rest.matches("/"));
        assert!("/{**}".parse::<PathPattern>().unwrap().matches("/"));
        assert_eq!(
            "/users/{*}/orders/".parse::<PathPattern>().unwrap(),
            one,
            "a trailing slash is the path without it"
        );
        assert_eq!(one.to_string(), "/users/{*}/orders");
        for bad in [
            "/{**}/a",
            "/a/{x}",
            "/a/b{*}",
            "/a/{*}x",
            "/a/./{*}",
            "/a/../{*}",
            "/a/%61/{*}",
            "/a//{*}",
            "/a;b/{*}",
            "/{*}/b*",
        ] {
            assert!(bad.parse::<PathPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_claim_segment_is_the_verified_tokens_claim_and_only_in_a_rule() {
        assert!("/users/{request.auth.claims[sub]}".parse::<PathPattern>().is_err(), "not outside a rule");
        let own = "/users/{request.auth.claims[sub]}/{**}".parse::<RulePath>().unwrap().0;
        assert_eq!(own.to_string(), "/users/{request.auth.claims[sub]}/{**}");
        let claims = |json: serde_json::Value| Claims::new(json.as_object().unwrap().clone());
        let alice = claims(serde_json::json!({"sub": "alice@example.com", "tenants": ["a", "b"]}));
        let yes = |path: &str, claims: &Claims| own.matches_for(path, false, Some(claims));
        assert!(yes("/users/alice@example.com", &alice) && yes("/users/alice%40example.com/orders/1", &alice));
        assert!(!yes("/users/bob@example.com/orders", &alice) && !yes("/users/ALICE@example.com", &alice));
        assert!(!own.matches_for("/users/alice@example.com", false, None), "no token, no match");
        assert!(own.matches_for("/users/ALICE@example.com", true, Some(&alice)), "a DENY ignores case");
        // An array claim: any of its values.
        let tenant = "/t/{request.auth.claims[tenants]}/{*}".parse::<RulePath>().unwrap().0;
        assert!(
            tenant.matches_for("/t/b/x", false, Some(&alice)) && !tenant.matches_for("/t/c/x", false, Some(&alice))
        );
    }

    /// Routers that parse an id serve `/t/03` and `/t/+3` as object 3: a DENY on 3 holds for
    /// them; an ALLOW keeps to the spelling the token has.
    #[test]
    fn a_deny_on_a_numeric_claim_holds_for_the_numbers_other_spellings() {
        let claims = Claims::new(serde_json::json!({"blocked": [3, "-7"], "zero": 0}).as_object().unwrap().clone());
        let blocked = "/t/{request.auth.claims[blocked]}".parse::<RulePath>().unwrap().0;
        let deny = |path: &str| blocked.matches_for(path, true, Some(&claims));
        for path in ["/t/3", "/t/03", "/t/+3", "/t/%2B3", "/t/0003", "/t/-7", "/t/-07"] {
            assert!(deny(path), "{path}");
        }
        for path in ["/t/30", "/t/3.0", "/t/3e0", "/t/7", "/t/+7", "/t/0x3", "/t/", "/t/+", "/t/-", "/t/%203"] {
            assert!(!deny(path), "{path}");
        }
        assert!(!blocked.matches_for("/t/03", false, Some(&claims)), "an ALLOW: the token's spelling only");
        assert!(blocked.matches_for("/t/3", false, Some(&claims)));
        let zero = "/t/{request.auth.claims[zero]}".parse::<RulePath>().unwrap().0;
        assert!(["/t/0", "/t/00", "/t/-0", "/t/+0"].iter().all(|p| zero.matches_for(p, true, Some(&claims))));
    }
}
