//! Tokens verified recently. A client sends the same token with every request until it
//! expires, and checking its signature each time (an RSA verification re-derives the key's
//! Montgomery form, then the claims are parsed) is most of what authentication costs. As
//! Envoy's `jwt_cache_config`, a bounded cache keyed on the whole token keeps what a
//! successful verification proved; a hit rechecks what can change since: the time claims
//! against now, and that the key set which verified the token is still the one in force.
//! Failures are never cached: a forged token costs a full verification every time, and
//! never displaces a good one.
//!
//! The cache belongs to one [`Authenticator`](super::Authenticator), built per policy
//! snapshot: a policy update starts with an empty one.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::authenticator::{CacheLookups, Verified};
use super::failure::Failure;
use super::jwks::KeysUsed;

/// Tokens kept. A token lives in the slot its keyed hash names and a new token evicts the one
/// there: no lock, no list to maintain, and memory bounded by this many tokens (each at most
/// `maxTokenBytes`) with their claims. Envoy's default is 100.
const VERIFIED_CACHE_SLOTS: usize = 128;

/// The slot is chosen from the token's last bytes: the signature, which no one can choose for
/// a token that verifies (a forged one only ever misses).
const HASHED_TAIL: usize = 32;

pub(crate) struct VerifiedCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    hasher: RandomState,
    lookups: CacheLookups,
}

struct Entry {
    token: Box<[u8]>,
    /// The header locations the token was found in: a hit needs the same, as which providers
    /// may read a token depends on where it was.
    mask: u64,
    keys: KeysUsed,
    verified: Verified,
}

impl VerifiedCache {
    pub(crate) fn new(lookups: CacheLookups) -> VerifiedCache {
        VerifiedCache {
            slots: (0..VERIFIED_CACHE_SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            hasher: RandomState::new(),
            lookups,
        }
    }

    /// `None`: verify in full. `Some(Err)`: the token verified before and has expired since
    /// (the same answer a full verification would give).
    pub(crate) fn get(&self, token: &str, mask: u64) -> Option<Result<Verified, Failure>> {
        let slot = self.slot(token).load();
        let found = slot.as_ref().filter(|e| {
            e.mask == mask && same_bytes(&e.token, token.as_bytes()) && e.verified.provider().keys_in_force(&e.keys)
        });
        let Some(entry) = found else {
            self.lookups.misses.inc();
            return None;
        };
        self.lookups.hits.inc();
        Some(entry.verified.provider().check_times(entry.verified.claims()).map(|()| entry.verified.clone()))
    }

    pub(crate) fn insert(&self, token: &str, mask: u64, keys: KeysUsed, verified: &Verified) {
        let entry = Entry { token: token.as_bytes().into(), mask, keys, verified: verified.clone() };
        self.slot(token).store(Some(Arc::new(entry)));
    }

    /// Lookups that found a verified token, and lookups that did not.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.lookups.hits.get(), self.lookups.misses.get())
    }

    fn slot(&self, token: &str) -> &ArcSwapOption<Entry> {
        let bytes = token.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(HASHED_TAIL)..];
        let at = self.hasher.hash_one(tail) as usize % self.slots.len();
        &self.slots[at]
    }
}

/// Compares in time that depends on the length only, so how long a miss takes tells nothing
/// about how much of a cached token a guess got right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn same_bytes_is_equality() {
        assert!(same_bytes(b"", b""));
        assert!(same_bytes(b"abc.def.ghi", b"abc.def.ghi"));
        assert!(!same_bytes(b"abc.def.ghi", b"abc.def.ghj"));
        assert!(!same_bytes(b"abc.def.ghi", b"bbc.def.ghi"));
        assert!(!same_bytes(b"abc", b"abcd"));
    }
}
