//! JWKS parsing into keys ready to verify with ring, and the index a token's `kid` is looked up
//! in. A JWKS is parsed once per load; a token only pays for its own signature check.

use std::collections::HashMap;

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::alg::{Algorithm, KeyKind};
use super::{b64, json, AuthnError};

/// A JWKS is a handful of keys; more than this is a misconfiguration or an attack on memory.
pub const MAX_JWKS_KEYS: usize = 256;

/// A token without `kid` is tried against at most this many keys of its algorithm's type, so
/// one request costs a bounded number of signature checks.
pub const MAX_KEYS_WITHOUT_KID: usize = 4;

/// ring verifies RSA moduli of 2048 to 8192 bits; smaller keys are refused when loaded.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// One public key from a JWKS, decoded and checked.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`: when present, the only algorithm the key verifies.
    pub alg: Option<Algorithm>,
    material: Material,
}

#[derive(Debug)]
enum Material {
    /// Modulus and exponent without leading zero bytes. ring re-derives its Montgomery form per
    /// verification (0.17 has no public pre-parsed RSA key); what is kept is the decoded,
    /// size-checked bytes.
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// Uncompressed SEC1 point (0x04 || x || y), checked to be on the curve when loaded.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// The usable keys of one JWKS, indexed by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    by_kid: HashMap<String, Vec<usize>>,
    /// Keys left out, with why (encryption keys, unsupported curves, short RSA moduli...), for
    /// the log line a load writes.
    ignored: Vec<String>,
}

/// How a token's key lookup ended.
pub(crate) enum Lookup<'a> {
    Found(Vec<&'a Jwk>),
    /// No key has the token's `kid`, but keys without one fit the algorithm: tried, as Envoy
    /// does (an issuer may publish its keys without `kid` and sign with one); a token none of
    /// them verifies is still one of an unknown `kid`, for which a refresh may help.
    KidlessOnly(Vec<&'a Jwk>),
    /// No key has the `kid` (or, without `kid`, no key fits the algorithm): a refresh may help.
    Unknown,
    /// The `kid` exists but none of its keys may verify this algorithm: algorithm confusion,
    /// which no refresh fixes.
    WrongAlgorithm,
}

// === impl Jwk ===

impl Jwk {
    /// Whether this key may verify `alg`: the key type and curve must be the algorithm's, and a
    /// JWK that names its `alg` verifies only that one (so a key published for RS256 is not
    /// used for PS256, nor the reverse).
    pub fn fits(&self, alg: Algorithm) -> bool {
        let kind_fits = matches!(
            (&self.material, alg.key_kind()),
            (Material::Rsa(_), KeyKind::Rsa)
                | (Material::P256(_), KeyKind::P256)
                | (Material::P384(_), KeyKind::P384)
                | (Material::Ed25519(_), KeyKind::Ed25519)
        );
        kind_fits && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// Checks `signature` over `message`; the caller has checked [`Jwk::fits`].
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        let ok = match (&self.material, alg) {
            (Material::Rsa(k), _) => {
                let params = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                k.verify(params, message, sig)
            }
            (Material::P256(point), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, sig)
            }
            (Material::P384(point), Algorithm::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(message, sig)
            }
            (Material::Ed25519(key), Algorithm::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, key).verify(message, sig)
            }
            _ => return false,
        };
        ok.is_ok()
    }

    /// Reads one JWK; `Err` says why it cannot be used (the set then leaves it out).
    fn parse(obj: &Map<String, Value>) -> Result<Jwk, String> {
        let kid = match obj.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("kid is not a string".into()),
        };
        if let Some(u) = obj.get("use") {
            if u != "sig" {
                return Err(format!("use is {u}, not \"sig\""));
            }
        }
        if let Some(ops) = obj.get("key_ops") {
            let verify = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"));
            if !verify {
                return Err("key_ops does not include \"verify\"".into());
            }
        }
        let alg = match obj.get("alg") {
            None => None,
            Some(Value::String(name)) => match Algorithm::from_name(name) {
                Some(a) if !a.is_hmac() => Some(a),
                _ => return Err(format!("alg {name:?} is not a supported signature algorithm")),
            },
            Some(_) => return Err("alg is not a string".into()),
        };
        let kty = obj.get("kty").and_then(Value::as_str).ok_or("no kty")?;
        let material = match kty {
            "RSA" => {
                let n = trim_zeros(member(obj, "n")?);
                let e = trim_zeros(member(obj, "e")?);
                // A modulus of zero bytes (empty or all zeros) has no bit length to speak of.
                let bits = n.first().map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(format!("RSA modulus of {bits} bits (2048 to 8192 are accepted)"));
                }
                // ring's own bounds for a verifying exponent: odd, at least 3, at most 33 bits.
                if e.is_empty() || e.len() > 5 || e[e.len() - 1] & 1 == 0 || (e.len() == 1 && e[0] < 3) {
                    return Err("RSA exponent out of range".into());
                }
                Material::Rsa(RsaPublicKeyComponents { n, e })
            }
            "EC" => {
                let crv = obj.get("crv").and_then(Value::as_str).ok_or("EC key without crv")?;
                let (len, agreement) = match crv {
                    "P-256" => (32, &ring::agreement::ECDH_P256),
                    "P-384" => (48, &ring::agreement::ECDH_P384),
                    other => return Err(format!("EC curve {other:?} is not supported")),
                };
                let (x, y) = (member(obj, "x")?, member(obj, "y")?);
                // RFC 7518 section 6.2.1.2: coordinates are always the full field length.
                if x.len() != len || y.len() != len {
                    return Err(format!("{crv} coordinates must be {len} bytes"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                check_on_curve(agreement, &point).map_err(|()| format!("{crv} point is not on the curve"))?;
                if crv == "P-256" {
                    Material::P256(point)
                } else {
                    Material::P384(point)
                }
            }
            "OKP" => match obj.get("crv").and_then(Value::as_str) {
                Some("Ed25519") => {
                    let x = member(obj, "x")?;
                    if x.len() != 32 {
                        return Err("Ed25519 key must be 32 bytes".into());
                    }
                    Material::Ed25519(x)
                }
                other => return Err(format!("OKP curve {other:?} is not supported")),
            },
            // A shared secret in a JWKS would let anyone who can read the (usually public)
            // JWKS mint tokens: HS* keys come only from a provider's own secret.
            "oct" => return Err("symmetric keys are not taken from a JWKS".into()),
            other => return Err(format!("key type {other:?} is not supported")),
        };
        let jwk = Jwk { kid, alg, material };
        if let Some(a) = alg {
            if !jwk.fits(a) {
                return Err(format!("alg {a} does not fit key type {kty}"));
            }
        }
        Ok(jwk)
    }
}

// === impl KeySet ===

impl KeySet {
    /// Parses a JWKS document (RFC 7517 section 5). Keys that cannot be used are left out and
    /// listed in [`KeySet::ignored`]; a document with no usable key at all is an error, since a
    /// provider with it could never accept a token.
    /// A JWKS with at least one usable key: what a policy's own `jwks` must be.
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, AuthnError> {
        let set = Self::parse_json(bytes)?;
        if set.keys.is_empty() {
            let why = if set.ignored.is_empty() { "empty".to_string() } else { set.ignored.join("; ") };
            return Err(AuthnError::Jwks(format!("no usable key: {why}")));
        }
        Ok(set)
    }

    /// A well-formed JWKS, with or without a usable key: an issuer's answer. An empty one is what
    /// an issuer publishes to revoke its last key, so it is not an error to retry past.
    pub fn parse_json(bytes: &[u8]) -> Result<KeySet, AuthnError> {
        let doc = json::parse_object(bytes).map_err(|e| AuthnError::Jwks(format!("not a JWKS: {e}")))?;
        let keys = match doc.get("keys") {
            Some(Value::Array(keys)) => keys,
            _ => return Err(AuthnError::Jwks("no \"keys\" array".into())),
        };
        if keys.len() > MAX_JWKS_KEYS {
            return Err(AuthnError::Jwks(format!("{} keys (at most {MAX_JWKS_KEYS})", keys.len())));
        }
        let mut set = KeySet::default();
        for (i, key) in keys.iter().enumerate() {
            let parsed = match key {
                Value::Object(obj) => Jwk::parse(obj),
                _ => Err("not an object".into()),
            };
            match parsed {
                Ok(jwk) => set.push(jwk),
                Err(why) => {
                    let kid = key.get("kid").and_then(Value::as_str).unwrap_or("");
                    set.ignored.push(format!("key {i} (kid {kid:?}): {why}"));
                }
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    fn push(&mut self, jwk: Jwk) {
        if let Some(kid) = &jwk.kid {
            self.by_kid.entry(kid.clone()).or_default().push(self.keys.len());
        }
        self.keys.push(jwk);
    }

    /// The keys a token may be verified with. With a `kid`, the keys of that `kid` and the
    /// first few without one (never those of another `kid`, as Envoy's jwt_authn); without a
    /// `kid`, the first few keys that fit the algorithm.
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let kidless = self.keys.iter().filter(|k| k.kid.is_none() && k.fits(alg)).take(MAX_KEYS_WITHOUT_KID);
                let Some(indexes) = self.by_kid.get(kid) else {
                    let found: Vec<_> = kidless.collect();
                    return if found.is_empty() { Lookup::Unknown } else { Lookup::KidlessOnly(found) };
                };
                let found: Vec<_> =
                    indexes.iter().map(|&i| &self.keys[i]).filter(|k| k.fits(alg)).chain(kidless).collect();
                if found.is_empty() {
                    Lookup::WrongAlgorithm
                } else {
                    Lookup::Found(found)
                }
            }
            None => {
                let found: Vec<_> = self.keys.iter().filter(|k| k.fits(alg)).take(MAX_KEYS_WITHOUT_KID).collect();
                if found.is_empty() {
                    Lookup::Unknown
                } else {
                    Lookup::Found(found)
                }
            }
        }
    }
}

/// A JWK member holding base64url bytes.
fn member(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = obj.get(name).and_then(Value::as_str).ok_or_else(|| format!("no {name}"))?;
    b64::decode(text.as_bytes()).ok_or_else(|| format!("{name} is not base64url"))
}

/// Some issuers pad `n` with a zero byte (a DER habit); ring wants the minimal encoding.
fn trim_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// ring checks an ECDSA key's point on every verification; checking it once here too means a
/// bad key is reported when the JWKS loads instead of as bad signatures later. ring exposes the
/// check only through key agreement, so a throwaway ECDH is run against the point.
fn check_on_curve(alg: &'static ring::agreement::Algorithm, point: &[u8]) -> Result<(), ()> {
    let rng = ring::rand::SystemRandom::new();
    let ours = ring::agreement::EphemeralPrivateKey::generate(alg, &rng).map_err(|_| ())?;
    let theirs = ring::agreement::UnparsedPublicKey::new(alg, point);
    ring::agreement::agree_ephemeral(ours, &theirs, |_| ()).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real P-256 point (RFC 7515 appendix A.3).
    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn rsa_n(bits: usize) -> String {
        let mut n = vec![0xc5u8; bits / 8];
        let last = n.len() - 1;
        n[last] |= 1;
        b64::encode(&n)
    }

    fn set(keys: Value) -> Result<KeySet, AuthnError> {
        KeySet::from_json(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn loads_each_key_type() {
        let s = set(serde_json::json!([
            {"kty": "RSA", "kid": "r", "n": rsa_n(2048), "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": P256_X, "y": P256_Y, "use": "sig"},
            {"kty": "OKP", "kid": "o", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]))
        .unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.ignored().is_empty(), "{:?}", s.ignored());
        assert!(matches!(s.lookup(Some("r"), Algorithm::PS512), Lookup::Found(_)));
        assert!(matches!(s.lookup(Some("e"), Algorithm::ES256), Lookup::Found(_)));
        assert!(matches!(s.lookup(Some("o"), Algorithm::EdDSA), Lookup::Found(_)));
    }

    #[test]
    fn a_kid_of_another_key_type_is_algorithm_confusion() {
        let s = set(serde_json::json!([{"kty": "RSA", "kid": "r", "n": rsa_n(2048), "e": "AQAB", "alg": "RS256"}]))
            .unwrap();
        assert!(matches!(s.lookup(Some("r"), Algorithm::ES256), Lookup::WrongAlgorithm));
        assert!(matches!(s.lookup(Some("r"), Algorithm::HS256), Lookup::WrongAlgorithm));
        // The JWK pins RS256: PS256 with the same RSA key is refused.
        assert!(matches!(s.lookup(Some("r"), Algorithm::PS256), Lookup::WrongAlgorithm));
        assert!(matches!(s.lookup(Some("x"), Algorithm::RS256), Lookup::Unknown));
    }

    #[test]
    fn leaves_out_keys_it_cannot_use_and_says_why() {
        let s = set(serde_json::json!([
            {"kty": "RSA", "kid": "ok", "n": rsa_n(2048), "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": rsa_n(1024), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "n": rsa_n(2048), "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "oaep", "n": rsa_n(2048), "e": "AQAB", "alg": "RSA-OAEP"},
            {"kty": "RSA", "kid": "even", "n": rsa_n(2048), "e": "AAI"},
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": P256_X, "y": P256_Y},
            {"kty": "EC", "kid": "short-x", "crv": "P-256", "x": "AAAA", "y": P256_Y},
            {"kty": "EC", "kid": "off-curve", "crv": "P-256", "x": P256_X, "y": P256_X},
            {"kty": "EC", "kid": "wrong-alg", "crv": "P-256", "x": P256_X, "y": P256_Y, "alg": "ES384"},
            {"kty": "OKP", "kid": "ed448", "crv": "Ed448", "x": "AAAA"},
            {"kty": "RSA", "kid": "pad", "n": rsa_n(2048) + "=", "e": "AQAB"},
            {"kty": "RSA", "kid": "ops", "n": rsa_n(2048), "e": "AQAB", "key_ops": ["encrypt"]},
            {"kty": "RSA", "kid": "empty-n", "n": "", "e": "AQAB"},
            {"kty": "RSA", "kid": "zero-n", "n": "AAAA", "e": "AQAB"},
            {"kty": "RSA", "kid": "empty-e", "n": rsa_n(2048), "e": ""},
            "not an object",
        ]))
        .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.ignored().len(), 16, "{:#?}", s.ignored());
    }

    #[test]
    fn a_leading_zero_in_the_modulus_is_tolerated() {
        let mut n = vec![0u8];
        n.extend(b64::decode(rsa_n(2048).as_bytes()).unwrap());
        let s = set(serde_json::json!([{"kty": "RSA", "n": b64::encode(&n), "e": "AQAB"}])).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        assert!(set(serde_json::json!([])).is_err());
        assert!(set(serde_json::json!([{"kty": "oct", "k": "c2VjcmV0"}])).is_err());
        assert!(KeySet::from_json(b"{\"keys\": {}}").is_err());
        assert!(KeySet::from_json(b"{\"keys\": [], \"keys\": []}").is_err());
        let many: Vec<_> = (0..=MAX_JWKS_KEYS).map(|_| serde_json::json!({"kty": "oct"})).collect();
        assert!(set(Value::Array(many)).is_err());
    }

    #[test]
    fn without_kid_tries_a_bounded_number_of_keys() {
        let keys: Vec<_> = (0..10)
            .map(|i| serde_json::json!({"kty": "RSA", "kid": i.to_string(), "n": rsa_n(2048), "e": "AQAB"}))
            .collect();
        let s = set(Value::Array(keys)).unwrap();
        match s.lookup(None, Algorithm::RS256) {
            Lookup::Found(k) => assert_eq!(k.len(), MAX_KEYS_WITHOUT_KID),
            _ => panic!("expected keys"),
        }
        assert!(matches!(s.lookup(None, Algorithm::ES256), Lookup::Unknown));
    }
}
