//! Field types that check their value while it is parsed, so that errors carry a position.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `host:port` to listen on or connect to; the host must be an IP address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(ListenAddr)
            .map_err(|_| format!("expected an IP address and port such as 0.0.0.0:15006 or [::]:15006, got {s:?}"))
    }
}

impl ListenAddr {
    /// The listeners of one process that would take the same port: an address equal to
    /// another's, or either on every address, or one on 127.0.0.1 and one on ::1 (a process
    /// listening on one family's loopback or any-address takes the other family's too). Each pair is one
    /// mistake, said at the later field. `0` (a port the system picks) never clashes.
    pub fn clashes(listeners: &[(&str, SocketAddr)]) -> Vec<super::Invalid> {
        let mut invalid = Vec::new();
        for (i, (field, a)) in listeners.iter().enumerate() {
            for (earlier, b) in &listeners[..i] {
                let (x, y) = (a.ip(), b.ip());
                // 127.0.0.1 and ::1 are each listened on in both families; 127.0.0.2 is not.
                let both_families = |ip: IpAddr| {
                    ip.to_canonical() == IpAddr::from([127, 0, 0, 1])
                        || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                };
                let overlap = x.to_canonical() == y.to_canonical()
                    || x.is_unspecified()
                    || y.is_unspecified()
                    || (both_families(x) && both_families(y));
                if a.port() != 0 && a.port() == b.port() && overlap {
                    invalid.push(super::Invalid::field(
                        field,
                        format!(
                            "{a} takes port {} where {earlier} ({b}) listens: give each listener a port of its own",
                            a.port()
                        ),
                    ));
                }
            }
        }
        invalid
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A duration written as a number and a unit: `500ms`, `5s`, `10m`, `24h`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a duration such as 500ms, 5s, 10m or 24h, got {s:?}");
        let digits = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = s[..digits].parse().map_err(|_| bad())?;
        let secs = |unit: u64| n.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad);
        let d = match &s[digits..] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => secs(60)?,
            "h" => secs(3600)?,
            _ => return Err(bad()),
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            ms if ms % 3_600_000 == 0 && ms > 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 && ms > 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
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
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// `ip` in canonical form: an IPv4 client of a dual-stack socket as IPv4 (see
    /// `policy::RequestView`).
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
        let masked = match network {
            IpAddr::V4(v4) => IpAddr::V4(mask32(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask128(u128::from(v6), prefix).into()),
        };
        // `100.64.0.0/2` is 64.0.0.0/2: a mistyped prefix (or a file cut while it was written)
        // would quietly widen the block a thousandfold.
        if masked != network {
            return Err(format!(
                "{s:?} has bits set past its /{prefix} prefix: the block it names is {masked}/{prefix}; write that, \
                 or the prefix meant"
            ));
        }
        Ok(IpBlock { network: masked, prefix })
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
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

string_serde!(ListenAddr);
string_serde!(HumanDuration);
string_serde!(IpBlock);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(500));
        assert_eq!("24h".parse::<HumanDuration>().unwrap().0, Duration::from_secs(86400));
        assert_eq!("24h".parse::<HumanDuration>().unwrap().to_string(), "24h");
        assert_eq!("90s".parse::<HumanDuration>().unwrap().to_string(), "90s");
        for bad in ["", "5", "s", "5 s", "5d", "-1s", "99999999999999999h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addresses_must_be_ip_and_port() {
        assert!("0.0.0.0:15006".parse::<ListenAddr>().is_ok());
        assert!("[::1]:80".parse::<ListenAddr>().is_ok());
        let err = "localhost:80".parse::<ListenAddr>().unwrap_err();
        assert!(err.contains("0.0.0.0:15006"), "{err}");
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
        assert_eq!(host.to_string(), "127.0.0.1/32");
        // Bits past the prefix are a mistake, not a wider block: refused, naming the block meant.
        let widened = "100.64.0.0/2".parse::<IpBlock>().unwrap_err();
        assert!(widened.contains("64.0.0.0/2"), "{widened}");
        assert!("fd00::1/8".parse::<IpBlock>().is_err());
        assert_eq!("10.96.0.0/12".parse::<IpBlock>().unwrap().to_string(), "10.96.0.0/12");
        assert!(host.contains("127.0.0.1".parse().unwrap()) && !host.contains("127.0.0.2".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<IpBlock>().unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "x"] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad}");
        }
    }
}
