//! Signing JWTs with ring for the authn tests and the benchmark: one [`Signer`] per key, its
//! public JWK, and tokens with any header and claims. The RSA key is a fixture
//! (`jwt-test-rsa2048.pem`, test-only) because ring cannot generate RSA keys; the others are
//! made per run.
#![allow(dead_code)]

use palisade::authn::base64url_encode as b64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};

pub const TEST_RSA_PEM: &str = include_str!("jwt-test-rsa2048.pem");

type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

pub struct Signer {
    pub alg: &'static str,
    pub kid: String,
    /// The public key as a JWK (with `kid`, without `alg`).
    pub jwk: Value,
    sign: SignFn,
}

impl Signer {
    /// RS* and PS* with the fixture key.
    pub fn rsa(alg: &'static str, kid: &str) -> Signer {
        let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_RSA_PEM.as_bytes()).expect("fixture key");
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("RSA fixture");
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        let jwk = json!({"kty": "RSA", "kid": kid, "n": b64(&public.n), "e": b64(&public.e)});
        let padding: &'static dyn signature::RsaEncoding = match alg {
            "RS256" => &signature::RSA_PKCS1_SHA256,
            "RS384" => &signature::RSA_PKCS1_SHA384,
            "RS512" => &signature::RSA_PKCS1_SHA512,
            "PS256" => &signature::RSA_PSS_SHA256,
            "PS384" => &signature::RSA_PSS_SHA384,
            "PS512" => &signature::RSA_PSS_SHA512,
            other => panic!("not an RSA algorithm: {other}"),
        };
        let sign = Box::new(move |msg: &[u8]| {
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(padding, &SystemRandom::new(), msg, &mut sig).expect("RSA signs");
            sig
        });
        Signer { alg, kid: kid.into(), jwk, sign }
    }

    /// ES256 (P-256) or ES384 (P-384) with a fresh key.
    pub fn ec(alg: &'static str, kid: &str) -> Signer {
        let (signing, crv, len) = match alg {
            "ES256" => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            "ES384" => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
            other => panic!("not an EC algorithm: {other}"),
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk =
            json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])});
        let sign = Box::new(move |msg: &[u8]| pair.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec());
        Signer { alg, kid: kid.into(), jwk, sign }
    }

    pub fn ed25519(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
        let sign = Box::new(move |msg: &[u8]| pair.sign(msg).as_ref().to_vec());
        Signer { alg: "EdDSA", kid: kid.into(), jwk, sign }
    }

    /// HS* with `secret`; its "JWK" is not for a JWKS (HS keys come from `hmacSecret`).
    pub fn hmac(alg: &'static str, secret: &[u8]) -> Signer {
        let digest = match alg {
            "HS256" => ring::hmac::HMAC_SHA256,
            "HS384" => ring::hmac::HMAC_SHA384,
            "HS512" => ring::hmac::HMAC_SHA512,
            other => panic!("not an HMAC algorithm: {other}"),
        };
        let key = ring::hmac::Key::new(digest, secret);
        let sign = Box::new(move |msg: &[u8]| ring::hmac::sign(&key, msg).as_ref().to_vec());
        Signer { alg, kid: String::new(), jwk: Value::Null, sign }
    }

    /// Any algorithm by name, for loops over all of them.
    pub fn for_alg(alg: &'static str, kid: &str, secret: &[u8]) -> Signer {
        match alg {
            "ES256" | "ES384" => Signer::ec(alg, kid),
            "EdDSA" => Signer::ed25519(kid),
            a if a.starts_with("HS") => Signer::hmac(alg, secret),
            _ => Signer::rsa(alg, kid),
        }
    }

    /// A token with header `{"alg", "kid", "typ": "JWT"}` (no `kid` for HMAC signers).
    pub fn token(&self, claims: &Value) -> String {
        let header = if self.kid.is_empty() {
            json!({"alg": self.alg, "typ": "JWT"})
        } else {
            json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"})
        };
        self.token_with_header(&header, claims)
    }

    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        self.token_from_parts(&header.to_string(), &claims.to_string())
    }

    /// Signs exactly the given JSON texts (duplicate members and all).
    pub fn token_from_parts(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = (self.sign)(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// A JWKS document of the signers' public keys.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}
