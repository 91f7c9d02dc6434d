//! The value patterns of a policy, checked when the policy is read so errors carry a position.

use std::net::IpAddr;
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
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => value == &**e,
            Pattern::Prefix(p) => value.starts_with(&**p),
            Pattern::Suffix(s) => value.ends_with(&**s),
        }
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
    /// `path` is in match form (normalised, no trailing slash).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(e) => path == &**e,
            PathPattern::Prefix(p) => path.starts_with(&**p),
        }
    }
}

impl FromStr for PathPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must start with '/'"));
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

/// An IPv4 or IPv6 network in CIDR notation; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// `ip` in canonical form: an IPv4 client of a dual-stack socket as IPv4 (see `RequestView`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask32(u32::from(ip), self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask128(u128::from(ip), self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - prefix))
    }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - prefix))
    }
}

impl FromStr for IpBlock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected an IP address or CIDR block such as 10.0.0.0/8 or fd00::/8, got {s:?}");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        // Requests carry IPv4 clients of a dual-stack listener as IPv4, so an IPv4-mapped block
        // (::ffff:a.b.c.d/96+) is kept as the IPv4 block it means.
        let (network, prefix) = match network {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (network, prefix),
            },
            _ => (network, prefix),
        };
        let network = match network {
            IpAddr::V4(v4) => IpAddr::V4(mask32(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask128(u128::from(v6), prefix).into()),
        };
        Ok(IpBlock { network, prefix })
    }
}

impl std::fmt::Display for IpBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
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
string_serde!(IpBlock);

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
        assert!(prefix.matches("/orders/7") && !prefix.matches("/orders"));
        for bad in ["orders", "/a*b", "/*/x", "/%61dmin*", "/a//b*", "/a;b*"] {
            assert!(bad.parse::<PathPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_blocks() {
        let v4: IpBlock = "10.0.0.0/8".parse().unwrap();
        assert!(v4.contains("10.1.2.3".parse().unwrap()));
        assert!(!v4.contains("11.0.0.1".parse().unwrap()));
        let v6: IpBlock = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let mapped: IpBlock = "::ffff:127.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("127.0.0.5".parse().unwrap()), "IPv4-mapped blocks match IPv4 clients");
        let host: IpBlock = "127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()) && !host.contains("127.0.0.2".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<IpBlock>().unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "x"] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad}");
        }
    }
}
