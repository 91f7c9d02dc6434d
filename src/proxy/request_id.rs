//! Request ids: kept from the caller when well-formed, otherwise made here. Held on the stack;
//! making one is a counter step and two integer mixes, no system call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

const MAX_LEN: usize = 64;

#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_LEN],
    len: u8,
}

static SEED: OnceLock<[u64; 2]> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> &'static [u64; 2] {
    SEED.get_or_init(|| {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system randomness");
        [
            u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        ]
    })
}

/// A bijection on u64, so distinct counters give distinct ids.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RequestId {
    /// No id yet; [`RequestId::or_generate`] gives one.
    pub const NONE: RequestId = RequestId { buf: [0; MAX_LEN], len: 0 };

    pub fn or_generate(self) -> Self {
        if self.len == 0 {
            Self::generate()
        } else {
            self
        }
    }

    /// 32 lowercase hex digits, unique within the process and not guessable from outside it.
    pub fn generate() -> Self {
        let [a, b] = *seed();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let value = ((splitmix64(n ^ a) as u128) << 64) | splitmix64(n.wrapping_add(b)) as u128;
        let mut id = RequestId { buf: [0; MAX_LEN], len: 32 };
        crate::telemetry::hex_into(&mut id.buf[..32], &value.to_be_bytes());
        id
    }

    /// Keeps a caller's id of up to 64 characters from `[A-Za-z0-9._-]`; anything else is
    /// replaced, so the id is always safe to log and to put in JSON.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        match value.map(HeaderValue::as_bytes) {
            Some(v)
                if !v.is_empty()
                    && v.len() <= MAX_LEN
                    && v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
            {
                let mut id = RequestId { buf: [0; MAX_LEN], len: v.len() as u8 };
                id.buf[..v.len()].copy_from_slice(v);
                id
            }
            _ => Self::generate(),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("ids are ASCII")
    }

    pub fn header_value(&self) -> HeaderValue {
        crate::telemetry::unique_header_value(&self.buf[..self.len as usize])
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_hex() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.header_value(), a.as_str());
        assert!(a.header_value().is_sensitive(), "new on every request: never entered in an HPACK table");
    }

    #[test]
    fn caller_ids_are_kept_only_when_safe() {
        let kept = RequestId::from_header(Some(&HeaderValue::from_static("abc-123_x.y")));
        assert_eq!(kept.as_str(), "abc-123_x.y");
        for bad in ["", "a b", "\"quote", &"x".repeat(65)] {
            let replaced = RequestId::from_header(Some(&HeaderValue::from_str(bad).unwrap()));
            assert_eq!(replaced.as_str().len(), 32, "{bad:?}");
        }
    }
}
