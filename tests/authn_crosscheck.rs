//! Palisade's JWT verifier against tokens from an independent signer: PyJWT and
//! `cryptography` make the keys, the JWKS and every token (valid ones of each algorithm, a
//! Kubernetes service-account token, and each attack), so the verifier is not only tested
//! against tokens it made itself. `scripts/setup.sh --test` installs both Python packages.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use palisade::authn::{
    Authenticator, AuthnOptions, AuthnRuntime, ClaimPath, Clock, FromHeader, JwksSpec, ProviderSpec, SecretSpec,
};
use serde_json::Value;

struct Fixed(u64);

impl Clock for Fixed {
    fn since_epoch(&self) -> Duration {
        Duration::from_secs(self.0)
    }
}

fn provider(issuer: &str, audiences: &[&str]) -> ProviderSpec {
    ProviderSpec {
        issuer: issuer.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: None,
        hmac_secret: None,
        from_headers: vec![FromHeader { name: "authorization".into(), prefix: "Bearer ".into() }],
        from_params: None,
        forward_claims: vec![],
        forward_original_token: false,
        algorithms: None,
        clock_skew_seconds: None,
    }
}

/// Runs the generator into `dir` and returns its manifest.
fn generate(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/jwt_crosscheck.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs (scripts/setup.sh --test installs it with PyJWT and cryptography)");
    assert!(
        out.status.success(),
        "{} failed: {}\n(install: scripts/setup.sh --test)",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn pyjwt_tokens_get_the_expected_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = generate(dir.path());
    let now = manifest["now"].as_u64().unwrap();

    let mut main = provider(manifest["issuer"].as_str().unwrap(), &["orders"]);
    main.jwks = Some(JwksSpec { file: Some(dir.path().join("jwks.json")), ..Default::default() });
    let mut hmac = provider(manifest["hmac_issuer"].as_str().unwrap(), &["orders"]);
    hmac.hmac_secret = Some(SecretSpec { file: Some(dir.path().join("hmac.secret")), inline: None });
    let mut k8s = provider(manifest["k8s_issuer"].as_str().unwrap(), &["palisade"]);
    k8s.jwks = Some(JwksSpec { file: Some(dir.path().join("k8s-jwks.json")), ..Default::default() });

    let runtime = AuthnRuntime::new(Arc::new(Fixed(now)));
    let authn = Authenticator::from_specs(&runtime, &[main, hmac, k8s], AuthnOptions::default()).unwrap();

    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() > 50, "the generator wrote {} cases", cases.len());
    let mut wrong = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let token = case["token"].as_str().unwrap();
        let expect = case["expect"].as_str().unwrap();
        let got = match authn.verify_cached(token) {
            Ok(v) => {
                if let Some(p) = case["principal"].as_str() {
                    assert_eq!(v.principal(), p, "{name}");
                }
                "ok".to_string()
            }
            Err(f) => f.reason().label().to_string(),
        };
        if got != expect {
            let detail = authn.verify_cached(token).err().map(|f| f.to_string()).unwrap_or_default();
            wrong.push(format!("{name}: expected {expect}, got {got} ({detail})"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

#[test]
fn a_kubernetes_service_account_token_exposes_its_pod_and_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = generate(dir.path());
    let mut k8s = provider(manifest["k8s_issuer"].as_str().unwrap(), &["palisade"]);
    k8s.jwks = Some(JwksSpec { file: Some(dir.path().join("k8s-jwks.json")), ..Default::default() });
    let runtime = AuthnRuntime::new(Arc::new(Fixed(manifest["now"].as_u64().unwrap())));
    let authn = Authenticator::from_specs(&runtime, &[k8s], AuthnOptions::default()).unwrap();

    let case =
        manifest["cases"].as_array().unwrap().iter().find(|c| c["name"] == "kubernetes service-account token").unwrap();
    let v = authn.verify_cached(case["token"].as_str().unwrap()).unwrap();
    let claim = |p: &str| v.claims().text(&ClaimPath::parse(p).unwrap()).map(|c| c.into_owned());
    assert_eq!(v.subject(), Some("system:serviceaccount:shop:orders"));
    assert_eq!(claim("[kubernetes.io][namespace]").as_deref(), Some("shop"));
    assert_eq!(claim("[kubernetes.io][pod][name]").as_deref(), Some("orders-7d9f8-abcde"));
    assert_eq!(claim("[kubernetes.io][serviceaccount][name]").as_deref(), Some("orders"));
    assert!(claim("[kubernetes.io][pod][uid]").is_some());
    assert_eq!(claim("[aud]").as_deref(), Some("palisade"));
}
