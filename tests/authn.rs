//! JWT authentication through the public API: every algorithm, the attacks, header extraction
//! and forwarded claims, and JWKS URIs served by a real HTTP(S) server on 127.0.0.1 (rotation,
//! an issuer that goes down, refresh on unknown `kid` and its rate limit). Time is a manual
//! clock: nothing here sleeps.

#[path = "support/jwt.rs"]
mod jwt;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jwt::{jwks, Signer};
use palisade::authn::{
    www_authenticate, Authenticator, AuthnOptions, AuthnRuntime, ClaimPath, Clock, JwksSpec, ProviderSpec, Reason,
    SecretSpec,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const ISS: &str = "https://auth.example.com";
const NOW: u64 = 1_750_000_000;
const SECRET: &[u8] = b"a shared secret of sixty-four bytes, enough for HS512 as well..!";

/// A clock the test moves by hand.
struct ManualClock(AtomicU64);

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(NOW)))
    }

    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn since_epoch(&self) -> Duration {
        Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "orders", "iat": NOW - 5, "exp": NOW + 600, "groups": ["dev", "ops"]})
}

/// The provider as SPEC section 4 writes it, with `jwks` filled in by the test.
fn spec(jwks: JwksSpec) -> ProviderSpec {
    let mut spec: ProviderSpec = palisade::config::parse_yaml(
        std::path::Path::new("provider.yaml"),
        &format!(
            r#"
issuer: {ISS}
audiences: [orders]
jwks: {{inline: "{{}}"}}
fromHeaders: [{{name: Authorization, prefix: "Bearer "}}]
forwardClaims: [{{claim: sub, header: x-user-id}}, {{claim: "[groups]", header: x-groups}}]
"#
        ),
    )
    .unwrap();
    spec.jwks = Some(jwks);
    spec
}

fn inline(text: String) -> JwksSpec {
    JwksSpec { inline: Some(text), ..Default::default() }
}

fn uri(uri: String) -> JwksSpec {
    JwksSpec { uri: Some(uri), ..Default::default() }
}

fn authenticator(specs: &[ProviderSpec], clock: Arc<ManualClock>) -> Authenticator {
    Authenticator::from_specs(&AuthnRuntime::new(clock), specs, AuthnOptions::default()).unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

fn reason(authn: &Authenticator, token: &str) -> Reason {
    authn.verify_cached(token).unwrap_err().reason()
}

// --- signatures and attacks ---

#[test]
fn every_algorithm_is_accepted() {
    let signers: Vec<Signer> = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
        .iter()
        .enumerate()
        .map(|(i, alg)| Signer::for_alg(alg, &format!("k{i}"), SECRET))
        .collect();
    let mut spec = spec(inline(jwks(&signers.iter().collect::<Vec<_>>())));
    spec.hmac_secret = Some(SecretSpec { file: None, inline: Some(String::from_utf8(SECRET.to_vec()).unwrap()) });
    let authn = authenticator(&[spec], ManualClock::new());
    let hmac = ["HS256", "HS384", "HS512"].map(|alg| Signer::hmac(alg, SECRET));
    for s in signers.iter().chain(&hmac) {
        let v = authn.verify_cached(&s.token(&claims())).unwrap_or_else(|f| panic!("{}: {f}", s.alg));
        assert_eq!(v.principal(), format!("{ISS}/alice"), "{}", s.alg);
    }
}

#[test]
fn a_key_published_without_a_kid_verifies_a_token_that_names_one_and_no_other_kid_is_borrowed() {
    // An issuer whose JWKS leaves out `kid` while its tokens carry one: tried, as Envoy does
    // (its tokens had been refused as of an unknown key). A key of another kid is never tried.
    let mut kidless = Signer::rsa("RS256", "rotating-1");
    kidless.jwk.as_object_mut().unwrap().remove("kid");
    let named = Signer::ec("ES256", "ec");
    let authn = authenticator(&[spec(inline(jwks(&[&kidless, &named])))], ManualClock::new());
    let v = authn.verify_cached(&kidless.token(&claims())).expect("the kid-less key verifies it");
    assert_eq!(v.principal(), format!("{ISS}/alice"));
    // A forgery naming that kid, signed by a key of the same type nobody published: still a
    // token of an unknown key (a refresh may find it), not one the kid-less key verifies.
    let mut kidless_ec = Signer::ec("ES256", "x");
    kidless_ec.jwk.as_object_mut().unwrap().remove("kid");
    let authn_ec = authenticator(&[spec(inline(jwks(&[&kidless_ec])))], ManualClock::new());
    assert!(authn_ec
        .verify_cached(&kidless_ec.token_with_header(&json!({"alg": "ES256", "kid": "k"}), &claims()))
        .is_ok());
    let stranger = Signer::ec("ES256", "k");
    assert_eq!(reason(&authn_ec, &stranger.token(&claims())), Reason::UnknownKey);
    // A token naming the EC key's kid but signed by the kid-less RSA key's holder as RS256 is
    // tried against the EC key (wrong algorithm) and the kid-less one: the kid-less one may sign.
    let t = kidless.token_with_header(&json!({"alg": "RS256", "kid": "ec"}), &claims());
    assert!(authn.verify_cached(&t).is_ok());
    // Another kid's key is never tried for a token of a kid it does not hold.
    let t = named.token_with_header(&json!({"alg": "ES256", "kid": "other"}), &claims());
    assert_eq!(reason(&authn, &t), Reason::UnknownKey, "the key of kid ec is not borrowed for kid other");
}

#[test]
fn attacks_are_refused_with_their_reason() {
    let rsa = Signer::rsa("RS256", "rsa");
    let ec = Signer::ec("ES256", "ec");
    let mut pinned = Signer::rsa("PS256", "pinned");
    pinned.jwk["alg"] = json!("RS256");
    let authn = authenticator(&[spec(inline(jwks(&[&rsa, &ec, &pinned])))], ManualClock::new());

    // HS256 "verified" with the RSA public key as secret, in each form a confused verifier
    // might use: the JWKS text, the JWK, the raw modulus.
    let n = rsa.jwk["n"].as_str().unwrap().to_string();
    for secret in [jwks(&[&rsa]), rsa.jwk.to_string(), n] {
        let forged = Signer::hmac("HS256", secret.as_bytes());
        let t = forged.token_with_header(&json!({"alg": "HS256", "kid": "rsa"}), &claims());
        assert_eq!(reason(&authn, &t), Reason::UnsupportedAlg);
    }
    let none = format!(
        "{}.{}.",
        palisade::authn::base64url_encode(br#"{"alg":"none"}"#),
        palisade::authn::base64url_encode(claims().to_string().as_bytes())
    );
    let attacker = Signer::ec("ES256", "ec");
    let dup = r#"{"iss":"https://auth.example.com","sub":"alice","sub":"root","aud":"orders","exp":1750000600}"#;
    let cases = [
        ("alg none", none, Reason::UnsupportedAlg),
        ("PS256 under an RS256-pinned key", pinned.token(&claims()), Reason::UnsupportedAlg),
        (
            "ES256 under an RSA kid",
            attacker.token_with_header(&json!({"alg": "ES256", "kid": "rsa"}), &claims()),
            Reason::UnsupportedAlg,
        ),
        ("another EC key", attacker.token(&claims()), Reason::BadSignature),
        (
            "embedded jwk",
            attacker.token_with_header(&json!({"alg": "ES256", "kid": "evil", "jwk": attacker.jwk}), &claims()),
            Reason::UnknownKey,
        ),
        (
            "jku",
            attacker.token_with_header(&json!({"alg": "ES256", "kid": "ec", "jku": "http://127.0.0.1/"}), &claims()),
            Reason::BadSignature,
        ),
        (
            "crit",
            rsa.token_with_header(&json!({"alg": "RS256", "kid": "rsa", "crit": ["x"], "x": 1}), &claims()),
            Reason::CritUnsupported,
        ),
        ("duplicate claim", rsa.token_from_parts(r#"{"alg":"RS256","kid":"rsa"}"#, dup), Reason::Malformed),
        ("too large", rsa.token(&json!({"iss": ISS, "exp": NOW + 1, "pad": "x".repeat(9000)})), Reason::TooLarge),
        ("expired", rsa.token(&json!({"iss": ISS, "aud": "orders", "exp": NOW - 61})), Reason::Expired),
        (
            "not yet valid",
            rsa.token(&json!({"iss": ISS, "aud": "orders", "exp": NOW + 900, "nbf": NOW + 61})),
            Reason::NotYetValid,
        ),
        (
            "wrong issuer",
            rsa.token(&json!({"iss": "https://evil", "aud": "orders", "exp": NOW + 1})),
            Reason::WrongIssuer,
        ),
        ("wrong audience", rsa.token(&json!({"iss": ISS, "aud": ["payments"], "exp": NOW + 1})), Reason::WrongAudience),
        ("unknown kid", rsa.token_with_header(&json!({"alg": "RS256", "kid": "gone"}), &claims()), Reason::UnknownKey),
    ];
    for (name, token, want) in cases {
        assert_eq!(reason(&authn, &token), want, "{name}");
    }
}

#[test]
fn the_size_limit_is_configurable() {
    let rsa = Signer::rsa("RS256", "rsa");
    let specs = [spec(inline(jwks(&[&rsa])))];
    let t = rsa.token(&json!({"iss": ISS, "aud": "orders", "exp": NOW + 1, "pad": "x".repeat(9000)}));
    let runtime = AuthnRuntime::new(ManualClock::new());
    let big = Authenticator::from_specs(
        &runtime,
        &specs,
        AuthnOptions { max_token_bytes: 16 * 1024, ..AuthnOptions::default() },
    )
    .unwrap();
    assert!(big.verify_cached(&t).is_ok());
    let small =
        Authenticator::from_specs(&runtime, &specs, AuthnOptions { max_token_bytes: 512, ..AuthnOptions::default() })
            .unwrap();
    assert_eq!(reason(&small, &rsa.token(&claims())), Reason::TooLarge);
}

#[test]
fn hs_is_refused_unless_the_issuer_has_a_secret() {
    let rsa = Signer::rsa("RS256", "rsa");
    let authn = authenticator(&[spec(inline(jwks(&[&rsa])))], ManualClock::new());
    assert_eq!(reason(&authn, &Signer::hmac("HS256", SECRET).token(&claims())), Reason::UnsupportedAlg);
}

// --- the request path ---

#[tokio::test]
async fn a_request_with_one_token_gets_a_principal_claims_and_forwarded_headers() {
    let rsa = Signer::rsa("RS256", "rsa");
    let authn = authenticator(&[spec(inline(jwks(&[&rsa])))], ManualClock::new());
    assert_eq!(authn.forwarded_headers(), [HeaderName::from_static("x-user-id"), HeaderName::from_static("x-groups")]);

    let v = authn.authenticate(&bearer(&rsa.token(&claims())), None).await.unwrap().unwrap();
    assert_eq!(v.principal(), "https://auth.example.com/alice");
    let groups = ClaimPath::parse("request.auth.claims[groups]").unwrap();
    assert!(v.claims().matches(&groups, |g| g == "ops"));
    assert_eq!(
        v.forward_headers(),
        [
            (HeaderName::from_static("x-user-id"), HeaderValue::from_static("alice")),
            (HeaderName::from_static("x-groups"), HeaderValue::from_static("dev,ops")),
        ]
    );
    let places: Vec<(HeaderName, String)> = authn.token_places(&v).map(|(n, p)| (n.clone(), p.to_string())).collect();
    assert_eq!(places, [(HeaderName::from_static("authorization"), "Bearer ".to_string())]);

    // The token's place is removed where it holds the token: a token in `x-jwt` leaves an
    // `Authorization: Basic` beside it to the app (Envoy removes only the token's header).
    let mut two_places = spec(inline(jwks(&[&rsa])));
    two_places.from_headers.push(palisade::authn::FromHeader { name: "x-jwt".into(), prefix: String::new() });
    let authn = authenticator(&[two_places], ManualClock::new());
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Basic YWxpY2U6cHc="));
    headers.insert("x-jwt", HeaderValue::from_str(&rsa.token(&claims())).unwrap());
    let v = authn.authenticate(&headers, None).await.unwrap().expect("the token in x-jwt");
    let removed: Vec<&HeaderName> = authn
        .token_places(&v)
        .filter(|(n, p)| palisade::authn::carries_token(&headers, n, p))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(removed, [&HeaderName::from_static("x-jwt")]);
}

#[tokio::test]
async fn missing_and_multiple_tokens() {
    let rsa = Signer::rsa("RS256", "rsa");
    let authn = authenticator(&[spec(inline(jwks(&[&rsa])))], ManualClock::new());
    assert!(authn.authenticate(&HeaderMap::new(), None).await.unwrap().is_none());
    assert_eq!(www_authenticate("palisade", None), "Bearer realm=\"palisade\"");

    let mut two = bearer(&rsa.token(&claims()));
    two.append("authorization", HeaderValue::from_str(&format!("Bearer {}", rsa.token(&json!({"iss": ISS})))).unwrap());
    let f = authn.authenticate(&two, None).await.unwrap_err();
    assert_eq!(f.reason(), Reason::MultipleTokens);
    assert_eq!(f.status(), StatusCode::UNAUTHORIZED);

    let f = authn.authenticate(&bearer("not.a.token"), None).await.unwrap_err();
    assert_eq!(
        f.www_authenticate("palisade"),
        "Bearer realm=\"palisade\", error=\"invalid_token\", error_description=\"the token is malformed\""
    );
}

#[test]
fn several_providers_are_chosen_by_issuer() {
    let a = Signer::ec("ES256", "a");
    let b = Signer::ed25519("b");
    let mut spec_b = spec(inline(jwks(&[&b])));
    spec_b.issuer = "https://other.example.com".into();
    let authn = authenticator(&[spec(inline(jwks(&[&a]))), spec_b], ManualClock::new());
    assert!(authn.verify_cached(&a.token(&claims())).is_ok());
    let mut other = claims();
    other["iss"] = json!("https://other.example.com");
    assert_eq!(authn.verify_cached(&b.token(&other)).unwrap().issuer(), "https://other.example.com");
    // b's key under a's issuer: the issuer decides the keys, and a's set has no kid "b".
    assert_eq!(reason(&authn, &b.token(&claims())), Reason::UnknownKey);
}

// --- the cache of verified tokens ---

/// Swaps the claims of `token` for `claims`, keeping its header and signature.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], palisade::authn::base64url_encode(claims.to_string().as_bytes()), parts[2])
}

#[test]
fn forged_tokens_are_refused_while_the_real_one_is_cached() {
    let key = Signer::rsa("RS256", "k1");
    let authn = authenticator(&[spec(inline(jwks(&[&key])))], ManualClock::new());
    let good = key.token(&claims());
    assert!(authn.verify_cached(&good).is_ok());
    assert!(authn.verify_cached(&good).is_ok());
    assert_eq!(authn.cache_counts(), (1, 1), "the second verification is the cache's");

    // The cached token's signature on other claims, and the cached token with its signature's
    // last character changed: both share the cached token's slot, neither is it.
    let mut admin = claims();
    admin["sub"] = json!("admin");
    assert_eq!(reason(&authn, &with_claims(&good, &admin)), Reason::BadSignature);
    let last = good.chars().last().unwrap();
    let tampered = format!("{}{}", &good[..good.len() - 1], if last == 'A' { 'Q' } else { 'A' });
    assert_ne!(reason(&authn, &tampered), Reason::Expired, "not taken for the cached token");
    assert!(authn.verify_cached(&tampered).is_err());
    // A prefix of the cached token, and the cached token with a byte added.
    assert!(authn.verify_cached(&good[..good.len() - 1]).is_err());
    assert!(authn.verify_cached(&format!("{good}A")).is_err());
    assert_eq!(authn.cache_counts().0, 1, "no forged token was a hit");
    // The real one still is.
    assert_eq!(authn.verify_cached(&good).unwrap().principal(), format!("{ISS}/alice"));
    assert_eq!(authn.cache_counts().0, 2);
}

#[test]
fn a_cached_token_is_refused_once_it_expires_or_before_it_may_be_used() {
    let key = Signer::ec("ES256", "k1");
    let clock = ManualClock::new();
    let authn = authenticator(&[spec(inline(jwks(&[&key])))], clock.clone());
    let token = key.token(&claims());
    assert!(authn.verify_cached(&token).is_ok());
    // exp is NOW + 600, with 60 s of skew allowed.
    clock.advance(659);
    assert!(authn.verify_cached(&token).is_ok());
    clock.advance(1);
    assert_eq!(reason(&authn, &token), Reason::Expired);
    assert_eq!(reason(&authn, &token), Reason::Expired);
    assert_eq!(authn.cache_counts(), (3, 1), "the cached result was rechecked, not trusted");

    // nbf in the future: refused until it comes, then the same token is accepted.
    let clock = ManualClock::new();
    let authn = authenticator(&[spec(inline(jwks(&[&key])))], clock.clone());
    let mut later = claims();
    later["nbf"] = json!(NOW + 120);
    let token = key.token(&later);
    assert_eq!(reason(&authn, &token), Reason::NotYetValid);
    clock.advance(61);
    assert!(authn.verify_cached(&token).is_ok());
    assert!(authn.verify_cached(&token).is_ok());
    assert_eq!(authn.cache_counts(), (1, 2), "a refusal is never cached");
}

#[tokio::test]
async fn a_token_in_a_header_its_issuer_does_not_read_is_refused_after_it_was_cached() {
    let (a, b) = (Signer::ec("ES256", "a"), Signer::ed25519("b"));
    let mut spec_b = spec(inline(jwks(&[&b])));
    spec_b.issuer = "https://other.example.com".into();
    spec_b.from_headers = vec![palisade::authn::FromHeader { name: "x-jwt".into(), prefix: String::new() }];
    let authn = authenticator(&[spec(inline(jwks(&[&a]))), spec_b], ManualClock::new());
    let token = a.token(&claims());
    assert!(authn.authenticate(&bearer(&token), None).await.unwrap().is_some());
    assert!(authn.authenticate(&bearer(&token), None).await.unwrap().is_some());
    assert_eq!(authn.cache_counts(), (1, 1));

    // The same token where only the other issuer's provider looks.
    let mut elsewhere = HeaderMap::new();
    elsewhere.insert("x-jwt", HeaderValue::from_str(&token).unwrap());
    assert_eq!(authn.authenticate(&elsewhere, None).await.unwrap_err().reason(), Reason::WrongIssuer);
    assert_eq!(authn.cache_counts().0, 1);
}

// --- JWKS from a URI, served for real on 127.0.0.1 ---

/// An HTTP(S) server for one JWKS document that can be changed or taken down.
struct JwksServer {
    addr: SocketAddr,
    https: bool,
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
    /// The `Authorization` header of the last request.
    auth: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(Some(body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let https = tls.is_some();
        let auth = Arc::new(Mutex::new(None));
        let (b, h, a) = (body.clone(), hits.clone(), auth.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (b, h, a, tls) = (b.clone(), h.clone(), a.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        *a.lock().unwrap() =
                            req.headers().get("authorization").map(|v| v.to_str().unwrap_or("").to_string());
                        let current = b.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(match current {
                                Some(text) => Response::new(Full::new(Bytes::from(text))),
                                None => Response::builder().status(503).body(Full::new(Bytes::new())).unwrap(),
                            })
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        JwksServer { addr, https, body, hits, auth, task }
    }

    fn uri(&self) -> String {
        format!("{}://127.0.0.1:{}/.well-known/jwks.json", if self.https { "https" } else { "http" }, self.addr.port())
    }

    fn serve(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn remote_authn(server: &JwksServer, clock: Arc<ManualClock>) -> Authenticator {
    let authn = authenticator(&[spec(uri(server.uri()))], clock);
    authn.providers().next().unwrap().remote_jwks().unwrap().wait_for_attempts(1).await;
    authn
}

#[tokio::test]
async fn rotation_adds_the_new_key_and_drops_the_old_one() {
    let (old, new) = (Signer::rsa("RS256", "2026-01"), Signer::ec("ES256", "2026-02"));
    let server = JwksServer::start(jwks(&[&old]), None).await;
    let clock = ManualClock::new();
    let authn = remote_authn(&server, clock.clone()).await;
    assert!(authn.verify(&old.token(&claims())).await.is_ok());
    assert_eq!(server.hits(), 1);

    // The issuer publishes the new key next to the old one; the first token signed with it
    // names an unknown kid, which refreshes the set (the last fetch was long enough ago).
    server.serve(Some(jwks(&[&old, &new])));
    clock.advance(31);
    assert!(authn.verify(&new.token(&claims())).await.is_ok());
    assert_eq!(server.hits(), 2);
    assert_eq!(authn.cache_counts(), (0, 2), "a refresh and the retry after it are one lookup");

    // The old key is retired; the next refresh drops it.
    server.serve(Some(jwks(&[&new])));
    clock.advance(31);
    let unknown = new.token_with_header(&json!({"alg": "ES256", "kid": "2026-03"}), &claims());
    assert_eq!(authn.verify(&unknown).await.unwrap_err().reason(), Reason::UnknownKey);
    assert_eq!(server.hits(), 3);
    // The old key's token was verified (and cached) above; with its key gone it is refused.
    assert_eq!(authn.verify(&old.token(&claims())).await.unwrap_err().reason(), Reason::UnknownKey);
    assert!(authn.verify(&new.token(&claims())).await.is_ok());
}

#[tokio::test]
async fn a_jwks_uri_that_is_down_does_not_stop_cached_keys() {
    let key = Signer::ed25519("k1");
    let server = JwksServer::start(jwks(&[&key]), None).await;
    let clock = ManualClock::new();
    let authn = remote_authn(&server, clock.clone()).await;
    let remote = authn.providers().next().unwrap().remote_jwks().unwrap().clone();

    // The server answers 503: a refresh fails, the cached key still verifies.
    server.serve(None);
    clock.advance(31);
    let unknown = key.token_with_header(&json!({"alg": "EdDSA", "kid": "k2"}), &claims());
    assert_eq!(authn.verify(&unknown).await.unwrap_err().reason(), Reason::UnknownKey);
    assert_eq!(server.hits(), 2);
    assert!(remote.last_error().unwrap().contains("503"), "{:?}", remote.last_error());
    assert!(authn.verify(&key.token(&claims())).await.is_ok());

    // The server is gone altogether (connection refused): the same.
    server.task.abort();
    let _ = (&mut { server.task }).await;
    clock.advance(31);
    assert_eq!(authn.verify(&unknown).await.unwrap_err().reason(), Reason::UnknownKey);
    assert!(remote.last_error().unwrap().contains("connect"), "{:?}", remote.last_error());
    assert!(authn.verify(&key.token(&claims())).await.is_ok());
    assert!(remote.keys().is_some());
}

#[tokio::test]
async fn unknown_kids_refresh_once_and_a_flood_is_rate_limited() {
    let key = Signer::ec("ES384", "k1");
    let server = JwksServer::start(jwks(&[&key]), None).await;
    let clock = ManualClock::new();
    let authn = Arc::new(remote_authn(&server, clock.clone()).await);

    // Right after the initial fetch, unknown kids are refused without a fetch.
    let forged = |i: usize| key.token_with_header(&json!({"alg": "ES384", "kid": format!("unknown-{i}")}), &claims());
    assert_eq!(authn.verify(&forged(0)).await.unwrap_err().reason(), Reason::UnknownKey);
    assert_eq!(server.hits(), 1);

    // Once the interval has passed, one unknown kid makes one fetch...
    clock.advance(30);
    assert_eq!(authn.verify(&forged(1)).await.unwrap_err().reason(), Reason::UnknownKey);
    assert_eq!(server.hits(), 2);

    // ...and a flood of 500 concurrent ones makes at most one more per interval.
    clock.advance(30);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let (authn, token) = (authn.clone(), forged(100 + i));
            tokio::spawn(async move { authn.verify(&token).await.unwrap_err().reason() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Reason::UnknownKey);
    }
    assert_eq!(server.hits(), 3);
    for i in 0..100 {
        let _ = authn.verify(&forged(1000 + i)).await;
    }
    assert_eq!(server.hits(), 3);
    // A kid-less token of a known type is not an unknown key: no fetch either.
    assert!(authn.verify(&key.token_with_header(&json!({"alg": "ES384"}), &claims())).await.is_ok());
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn recompiled_policies_share_one_remote_jwks() {
    let key = Signer::rsa("PS384", "k1");
    let server = JwksServer::start(jwks(&[&key]), None).await;
    let runtime = AuthnRuntime::new(ManualClock::new());
    let specs = [spec(uri(server.uri()))];
    let first = Authenticator::from_specs(&runtime, &specs, AuthnOptions::default()).unwrap();
    first.providers().next().unwrap().remote_jwks().unwrap().wait_for_attempts(1).await;
    let second = Authenticator::from_specs(&runtime, &specs, AuthnOptions::default()).unwrap();
    drop(first);
    assert!(second.verify(&key.token(&claims())).await.is_ok());
    assert_eq!(server.hits(), 1);
}

// --- HTTPS ---

/// A CA and a server certificate for 127.0.0.1; returns the acceptor and the CA file.
fn test_tls(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_file)
}

#[tokio::test]
async fn https_jwks_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca_file) = test_tls(dir.path());
    let key = Signer::rsa("RS512", "k1");
    let server = JwksServer::start(jwks(&[&key]), Some(acceptor)).await;

    let trusted = JwksSpec { uri: Some(server.uri()), ca_file: Some(ca_file), ..Default::default() };
    let authn = authenticator(&[spec(trusted)], ManualClock::new());
    authn.providers().next().unwrap().remote_jwks().unwrap().wait_for_attempts(1).await;
    assert!(authn.verify(&key.token(&claims())).await.is_ok());

    // Another CA: the handshake fails, so no keys and every token is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = test_tls(other_dir.path());
    let untrusted = JwksSpec { uri: Some(server.uri()), ca_file: Some(other_ca), ..Default::default() };
    let authn = authenticator(&[spec(untrusted)], ManualClock::new());
    let remote = authn.providers().next().unwrap().remote_jwks().unwrap().clone();
    remote.wait_for_attempts(1).await;
    assert!(remote.keys().is_none());
    assert!(remote.last_error().unwrap().contains("TLS"), "{:?}", remote.last_error());
    assert_eq!(authn.verify_cached(&key.token(&claims())).unwrap_err().reason(), Reason::UnknownKey);
}

#[test]
fn plain_http_jwks_is_refused_off_loopback() {
    let runtime = AuthnRuntime::new(ManualClock::new());
    let err = Authenticator::from_specs(
        &runtime,
        &[spec(uri("http://auth.example.com/jwks".into()))],
        AuthnOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test]
async fn a_bearer_token_file_is_sent_with_each_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sa-token-1\n").unwrap();
    let key = Signer::ed25519("k1");
    let server = JwksServer::start(jwks(&[&key]), None).await;
    let clock = ManualClock::new();
    let jwks_spec =
        JwksSpec { uri: Some(server.uri()), bearer_token_file: Some(token_file.clone()), ..Default::default() };
    let authn = authenticator(&[spec(jwks_spec)], clock.clone());
    authn.providers().next().unwrap().remote_jwks().unwrap().wait_for_attempts(1).await;
    assert_eq!(server.auth.lock().unwrap().as_deref(), Some("Bearer sa-token-1"));

    // The kubelet rotated the token: the next fetch reads the new one.
    std::fs::write(&token_file, "sa-token-2").unwrap();
    clock.advance(31);
    let _ = authn.verify(&key.token_with_header(&json!({"alg": "EdDSA", "kid": "k2"}), &claims())).await;
    assert_eq!(server.auth.lock().unwrap().as_deref(), Some("Bearer sa-token-2"));
}

#[test]
fn checking_a_policy_fetches_and_starts_nothing() {
    // No tokio runtime here: a check must not need one.
    let runtime = AuthnRuntime::default();
    assert!(runtime.check(&spec(uri("http://127.0.0.1:9/jwks".into()))).is_ok());
    // A key file not on the checking host is in the sidecar's pod: a warning that names it.
    let missing = JwksSpec { file: Some("/nonexistent/jwks.json".into()), ..Default::default() };
    let warnings = runtime.check(&spec(missing)).unwrap();
    assert!(warnings.iter().any(|w| w.contains("/nonexistent/jwks.json")), "{warnings:?}");
    let no_ca = JwksSpec {
        uri: Some("https://a.example/j".into()),
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    assert!(runtime.check(&spec(no_ca)).is_err());
    assert!(runtime.provider(&spec(uri("http://127.0.0.1:9/jwks".into()))).is_err(), "building needs a runtime");
}
