//! Service-account tokens for development, made as a cluster's API server makes projected
//! tokens: ES256 with a `kid`, audience `palisade`, and the `kubernetes.io` claims naming the
//! namespace, service account and pod. For `palisade demo` and benchmarks, where there is no
//! API server; the CA checks them offline against [`DevTokenIssuer::jwks`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The issuer (`iss`) its tokens name, a cluster's default.
pub const DEV_TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct DevTokenIssuer {
    key: EcdsaKeyPair,
    kid: &'static str,
}

impl DevTokenIssuer {
    pub fn generate() -> Result<DevTokenIssuer, String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot make the token issuer's key".to_string())?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "cannot read the token issuer's key".to_string())?;
        Ok(DevTokenIssuer { key, kid: "dev-sa-issuer-1" })
    }

    /// The public key as a JWKS document, for `ca.tokens.jwks.file`.
    pub fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                                     "x": x, "y": y}]})
        .to_string()
    }

    /// A bound token for pod `pod` of `namespace`, run by `account`, valid for `seconds`.
    pub fn token(&self, namespace: &str, account: &str, pod: &str, seconds: u64) -> Result<String, String> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
        let claims = serde_json::json!({
            "iss": DEV_TOKEN_ISSUER, "aud": ["palisade"], "iat": now, "nbf": now, "exp": now + seconds,
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "kubernetes.io": {"namespace": namespace, "pod": {"name": pod, "uid": format!("{pod}-uid")},
                              "serviceaccount": {"name": account, "uid": format!("{account}-uid")}},
        });
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .map_err(|_| "cannot sign a token".to_string())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}
