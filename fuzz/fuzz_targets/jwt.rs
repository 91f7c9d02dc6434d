//! The JWT parser and verifier on arbitrary input: token structure, header and claims JSON,
//! base64url, header extraction, JWKS documents and claim names. Nothing may panic, and a token
//! the fuzzer makes up must never verify.
//!
//! Input: the first byte picks the entry point, the rest is its input.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade::authn::{
    check_token_structure, Authenticator, AuthnOptions, AuthnRuntime, ClaimPath, Clock, FromHeader, JwksSpec, KeySet,
    ProviderSpec, SecretSpec,
};

/// A fixed "now" inside the seed tokens' validity, so their claims checks run.
struct Fixed;

impl Clock for Fixed {
    fn since_epoch(&self) -> Duration {
        Duration::from_secs(1_700_000_000)
    }
}

const SECRET: &str = "fuzzing-secret-fuzzing-secret-fuzzing-secret-fuzzing-secret-0123";

fn jwks() -> String {
    let mut n = vec![0xc5u8; 256];
    n[255] |= 1;
    format!(
        r#"{{"keys":[
        {{"kty":"RSA","kid":"rsa","n":"{}","e":"AQAB"}},
        {{"kty":"EC","kid":"ec","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
        {{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}]}}"#,
        palisade::authn::base64url_encode(&n)
    )
}

fn authn() -> &'static Authenticator {
    static AUTHN: OnceLock<Authenticator> = OnceLock::new();
    AUTHN.get_or_init(|| {
        let spec = ProviderSpec {
            issuer: "fuzz".into(),
            audiences: vec!["aud".into()],
            jwks: Some(JwksSpec { inline: Some(jwks()), ..Default::default() }),
            hmac_secret: Some(SecretSpec { file: None, inline: Some(SECRET.into()) }),
            from_headers: vec![
                FromHeader { name: "authorization".into(), prefix: "Bearer ".into() },
                FromHeader { name: "x-token".into(), prefix: String::new() },
            ],
            forward_claims: vec![],
            forward_original_token: false,
            algorithms: None,
            clock_skew_seconds: None,
        };
        let runtime = AuthnRuntime::new(Arc::new(Fixed));
        Authenticator::from_specs(&runtime, &[spec], AuthnOptions::default()).expect("fuzz provider builds")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            let _ = KeySet::from_json(rest);
        }
        1 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = ClaimPath::parse(s);
            }
        }
        2 => {
            // Two header values, split at the first NUL: extraction with duplicates.
            let mut headers = HeaderMap::new();
            for (i, part) in rest.splitn(2, |&b| b == 0).enumerate() {
                if let Ok(v) = HeaderValue::from_bytes(part) {
                    headers.append(if i == 0 { "authorization" } else { "x-token" }, v);
                }
            }
            if let Ok(Some(found)) = authn().extract(&headers) {
                let _ = authn().verify_cached(found.token);
            }
        }
        _ => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = check_token_structure(token, 64 * 1024);
                if let Ok(v) = authn().verify_cached(token) {
                    // Only an HS256/384/512 token made with the fuzz secret can get here (the
                    // seeds are such tokens); its claims must then be usable.
                    let _ = v.principal();
                    let _ = v.forward_headers();
                }
            }
        }
    }
});
