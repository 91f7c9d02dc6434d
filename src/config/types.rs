//! Field types that check their value while it is parsed, so that errors carry a position.

use std::fmt;
use std::net::SocketAddr;
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
}
