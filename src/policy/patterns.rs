//! The value patterns of a policy, checked when the policy is read so errors carry a position.

use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::normalize::{match_form, normalize};

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

/// A path rule: exact, or `prefix*`; matched against the normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl PathPattern {
    /// `path` is in match form (normalised, no trailing slash). A prefix that ends in `/`
    /// matches the path without it too: `/admin/` is `/admin` in match form, and `/admin/*`
    /// must hold for the `/admin/` an app routes as its own page.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(e) => path == &**e,
            PathPattern::Prefix(p) => path.starts_with(&**p) || Self::directory(p) == Some(path),
        }
    }

    /// As [`PathPattern::matches`], ASCII case ignored: how DENY rules match, since IIS,
    /// ASP.NET, Windows file systems and case-insensitive routers serve `/ADMIN` as `/admin`.
    pub fn matches_ignoring_case(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(e) => path.eq_ignore_ascii_case(e),
            PathPattern::Prefix(p) => {
                path.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p))
                    || Self::directory(p).is_some_and(|d| d.eq_ignore_ascii_case(path))
            }
        }
    }

    /// `/admin` of the prefix `/admin/`: the directory's own path in match form.
    fn directory(prefix: &str) -> Option<&str> {
        prefix.strip_suffix('/').filter(|d| !d.is_empty())
    }
}

impl FromStr for PathPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must start with '/'"));
        }
        // The path matched never holds the query or a fragment: a rule on them never fires.
        if let Some(c) = s.chars().find(|c| matches!(c, '?' | '#')) {
            return Err(format!(
                "path {s:?} holds {c:?}: rules match the path alone, never the query or a fragment, so this one would match no request"
            ));
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
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Exact(e) => f.write_str(e),
            PathPattern::Prefix(p) => write!(f, "{p}*"),
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
}
