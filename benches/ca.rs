//! The workload CA's work per certificate on one core (issue 13): checking a certification
//! request and signing it, and checking a service-account token offline against the issuer's
//! JWKS. The end-to-end figure (TLS to the CA, gRPC, the control plane's single thread) is the
//! CA line of `cargo bench --bench control_fanout`. Run: `cargo bench --bench ca`.

use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use palisade::ca::{CaFiles, CaSigner, JwksTokens, TokenChecker};
use palisade::config::JwksSourceConfig;
use palisade::identity::{DevCa, DevTokenIssuer, SpiffeId, DEV_TOKEN_ISSUER};

fn csr(id: &SpiffeId) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn ca(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let files = DevCa::generate("cluster.local").unwrap().write(&dir.path().join("ca")).unwrap();
    let signer =
        CaSigner::load(&CaFiles { cert: files.cert, key: files.key, trust_bundle: None }, "cluster.local").unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
    let request = csr(&id);
    let ttl = Duration::from_secs(24 * 3600);
    c.bench_function("ca/sign a P-256 CSR (check request, sign, encode)", |b| {
        b.iter(|| signer.sign(black_box(&request), &id, ttl, SystemTime::now()).unwrap())
    });

    let issuer = DevTokenIssuer::generate().unwrap();
    let jwks = dir.path().join("issuer.jwks");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    let config = JwksSourceConfig { file: Some(jwks), issuer: DEV_TOKEN_ISSUER.into(), ..Default::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tokens = runtime.block_on(async { JwksTokens::new(&config, "palisade").unwrap() });
    let token = issuer.token("shop", "orders", "orders-1", 3600).unwrap();
    c.bench_function("ca/check a service-account token offline (ES256)", |b| {
        b.iter(|| runtime.block_on(tokens.check(black_box(&token))).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = ca
}
criterion_main!(benches);
