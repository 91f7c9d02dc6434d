//! JWT verification per algorithm with keys parsed once (issue 14's "cache of verified keys"):
//! what a request pays for its token, from the header value to a verified principal. Also the
//! parts that are not the signature (parsing alone, a refusal before any key is touched) and a
//! JWKS load. Run: `cargo bench --bench jwt`.

#[path = "../tests/support/jwt.rs"]
mod jwt;

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use jwt::{jwks, Signer};
use palisade::authn::{
    check_token_structure, Authenticator, AuthnOptions, AuthnRuntime, ClaimPath, Clock, JwksSpec, KeySet, ProviderSpec,
    SecretSpec, DEFAULT_MAX_TOKEN_BYTES,
};
use serde_json::json;

const ISS: &str = "https://auth.example.com";
const NOW: u64 = 1_750_000_000;
const SECRET: &str = "a shared secret of sixty-four bytes, enough for HS512 as well..!";
const ALGS: [&str; 12] =
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"];

struct Fixed;

impl Clock for Fixed {
    fn since_epoch(&self) -> Duration {
        Duration::from_secs(NOW)
    }
}

/// A typical access token's claims (about 300 bytes of JSON).
fn claims() -> serde_json::Value {
    json!({
        "iss": ISS, "sub": "5f1c0a3e-9b7d-4c2e-8a61-3d9e0b7f2c14", "aud": ["orders", "payments"],
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 3600, "jti": "b2c1d7e0-4a9f-4f3e-9c1a-7e2d5b8f6a30",
        "scope": "orders:read orders:write", "groups": ["dev", "ops"], "email": "alice@example.com",
    })
}

fn setup() -> (Authenticator, Vec<(&'static str, String)>, String) {
    let signers: Vec<Signer> =
        ALGS.iter().map(|alg| Signer::for_alg(alg, &format!("kid-{alg}"), SECRET.as_bytes())).collect();
    let public: Vec<&Signer> = signers.iter().filter(|s| !s.alg.starts_with("HS")).collect();
    let set = jwks(&public);
    let spec = ProviderSpec {
        issuer: ISS.into(),
        audiences: vec!["orders".into()],
        jwks: Some(JwksSpec { inline: Some(set.clone()), ..Default::default() }),
        hmac_secret: Some(SecretSpec { file: None, inline: Some(SECRET.into()) }),
        from_headers: vec![palisade::authn::FromHeader { name: "authorization".into(), prefix: "Bearer ".into() }],
        from_params: None,
        forward_claims: vec![],
        forward_original_token: false,
        algorithms: None,
        clock_skew_seconds: None,
    };
    let authn =
        Authenticator::from_specs(&AuthnRuntime::new(Arc::new(Fixed)), &[spec], AuthnOptions::default()).unwrap();
    let tokens = signers.iter().map(|s| (s.alg, s.token(&claims()))).collect();
    (authn, tokens, set)
}

fn verification(c: &mut Criterion) {
    let (authn, tokens, _) = setup();
    let mut group = c.benchmark_group("jwt/verify");
    for (alg, token) in &tokens {
        authn.verify_cached(token).unwrap_or_else(|f| panic!("{alg}: {f}"));
        group.bench_with_input(BenchmarkId::from_parameter(alg), token, |b, t| {
            b.iter(|| black_box(authn.verify_cached(black_box(t)).is_ok()))
        });
    }
    group.finish();

    // The request step as the pipeline calls it: extraction from the headers, verification,
    // and one claim lookup for a policy.
    let (_, es256) = tokens.iter().find(|(a, _)| *a == "ES256").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {es256}")).unwrap());
    let scope = ClaimPath::parse("request.auth.claims[scope]").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    c.bench_function("jwt/request ES256 (extract, verify, claim match)", |b| {
        b.iter(|| {
            let v = rt.block_on(authn.authenticate(black_box(&headers), None)).unwrap().unwrap();
            black_box(v.claims().matches(&scope, |s| s == "orders:write"))
        })
    });
}

fn without_keys(c: &mut Criterion) {
    let (authn, tokens, set) = setup();
    let (_, rs256) = tokens.iter().find(|(a, _)| *a == "RS256").unwrap();
    c.bench_function("jwt/parse only (structure, header, claims JSON)", |b| {
        b.iter(|| black_box(check_token_structure(black_box(rs256), DEFAULT_MAX_TOKEN_BYTES).is_ok()))
    });
    let (_, rest) = rs256.split_once('.').unwrap();
    let none = format!("{}.{}", palisade::authn::base64url_encode(br#"{"alg":"none"}"#), rest);
    c.bench_function("jwt/refuse alg none", |b| b.iter(|| black_box(authn.verify_cached(black_box(&none)).is_err())));
    c.bench_function("jwt/JWKS load (9 keys, incl. EC point checks)", |b| {
        b.iter(|| black_box(KeySet::from_json(black_box(set.as_bytes())).unwrap().len()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = verification, without_keys
}
criterion_main!(benches);
