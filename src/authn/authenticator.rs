//! The request-side entry: find the one token in a request, pick its provider by `iss`, verify.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;

use super::cache::VerifiedCache;
use super::claims::Claims;
use super::failure::{Failure, Reason};
use super::provider::{AuthnRuntime, Provider, ProviderSpec};
use super::token::{self, DEFAULT_MAX_TOKEN_BYTES};
use super::AuthnError;

/// At most this many distinct header locations over all providers (a bit each in a mask).
pub const MAX_TOKEN_LOCATIONS: usize = 64;

/// Settings that apply before a provider is known.
#[derive(Debug, Clone)]
pub struct AuthnOptions {
    /// Tokens longer than this are refused undecoded (`too_large`).
    pub max_token_bytes: usize,
    /// Where the cache of verified tokens counts its lookups: a sidecar's metrics, or by
    /// default counters of its own (read with [`Authenticator::cache_counts`]).
    pub cache_lookups: CacheLookups,
}

/// Counters of the cache of verified tokens: lookups that found the token, and the rest.
#[derive(Debug, Clone)]
pub struct CacheLookups {
    pub hits: IntCounter,
    pub misses: IntCounter,
}

impl Default for AuthnOptions {
    fn default() -> Self {
        AuthnOptions { max_token_bytes: DEFAULT_MAX_TOKEN_BYTES, cache_lookups: CacheLookups::default() }
    }
}

/// The JWT providers of a workload's policies, compiled once per policy update and shared by
/// every request (`Send + Sync`, no locks on the verification path).
pub struct Authenticator {
    providers: Vec<Arc<Provider>>,
    /// Every (header, prefix) any provider reads, once each.
    locations: Vec<(HeaderName, String)>,
    /// Every query parameter any provider reads, once each; its bit follows `locations`'.
    params: Vec<String>,
    /// Per provider, the bits of `locations` and `params` it reads.
    masks: Vec<u64>,
    /// Headers that carry forwarded claims: removed from every incoming request.
    forwarded: Vec<HeaderName>,
    options: AuthnOptions,
    cache: VerifiedCache,
}

/// A token found in a request (decoded, when a query parameter held it escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'h> {
    pub token: std::borrow::Cow<'h, str>,
    mask: u64,
}

/// A verified token: who it names and what it claims. Cloning it (from the cache of verified
/// tokens into a request) copies a pointer, not the claims.
#[derive(Debug, Clone)]
pub struct Verified(Arc<VerifiedToken>);

#[derive(Debug)]
struct VerifiedToken {
    provider: Arc<Provider>,
    principal: String,
    claims: Claims,
    /// The `forwardClaims` headers, made once: a token from the cache sets them without
    /// reading its claims again.
    forwarded: Vec<(HeaderName, HeaderValue)>,
}

// === impl Authenticator ===

impl Authenticator {
    /// Builds every provider with `runtime` (see [`AuthnRuntime::provider`]).
    pub fn from_specs(
        runtime: &AuthnRuntime,
        specs: &[ProviderSpec],
        options: AuthnOptions,
    ) -> Result<Authenticator, AuthnError> {
        let providers = specs.iter().map(|s| runtime.provider(s)).collect::<Result<Vec<_>, _>>()?;
        Authenticator::new(providers, options)
    }

    pub fn new(providers: Vec<Provider>, options: AuthnOptions) -> Result<Authenticator, AuthnError> {
        if options.max_token_bytes == 0 {
            return Err(AuthnError::Options("maxTokenBytes must be positive".into()));
        }
        let mut locations: Vec<(HeaderName, String)> = Vec::new();
        let mut masks = Vec::new();
        let mut forwarded: Vec<HeaderName> = Vec::new();
        for p in &providers {
            let mut mask = 0u64;
            for (name, prefix) in &p.from_headers {
                let i = match locations.iter().position(|(n, pre)| n == name && pre.eq_ignore_ascii_case(prefix)) {
                    Some(i) => i,
                    None => {
                        locations.push((name.clone(), prefix.clone()));
                        locations.len() - 1
                    }
                };
                if i >= MAX_TOKEN_LOCATIONS {
                    return Err(AuthnError::Options(format!("more than {MAX_TOKEN_LOCATIONS} token locations")));
                }
                mask |= 1 << i;
            }
            masks.push(mask);
            for (_, header) in &p.forward {
                if !forwarded.contains(header) {
                    forwarded.push(header.clone());
                }
            }
        }
        for h in &forwarded {
            if locations.iter().any(|(n, _)| n == h) {
                return Err(AuthnError::Options(format!("{h} both carries a token and receives a forwarded claim")));
            }
        }
        // The parameters' bits follow the headers'.
        let mut params: Vec<String> = Vec::new();
        for (p, mask) in providers.iter().zip(masks.iter_mut()) {
            for name in &p.from_params {
                let i = match params.iter().position(|n| n == name) {
                    Some(i) => i,
                    None => {
                        params.push(name.clone());
                        params.len() - 1
                    }
                };
                if locations.len() + i >= MAX_TOKEN_LOCATIONS {
                    return Err(AuthnError::Options(format!("more than {MAX_TOKEN_LOCATIONS} token locations")));
                }
                *mask |= 1 << (locations.len() + i);
            }
        }
        let cache = VerifiedCache::new(options.cache_lookups.clone());
        Ok(Authenticator {
            providers: providers.into_iter().map(Arc::new).collect(),
            locations,
            params,
            masks,
            forwarded,
            options,
            cache,
        })
    }

    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.iter().map(|p| &**p)
    }

    /// Headers that `forwardClaims` set. Remove them from every request before it reaches the
    /// app, with a token or without, or a caller could send its own `x-user-id`.
    pub fn forwarded_headers(&self) -> &[HeaderName] {
        &self.forwarded
    }

    /// Finds the request's token, in its headers or its `query`. `Ok(None)`: no configured
    /// location holds one (a header with another scheme, such as `Authorization: Basic`, is not
    /// a token). The same token in several places is one token; two different ones are refused.
    pub fn extract<'h>(&self, headers: &'h HeaderMap, query: Option<&'h str>) -> Result<Option<Found<'h>>, Failure> {
        let mut found: Option<Found<'h>> = None;
        for (i, (name, prefix)) in self.locations.iter().enumerate() {
            for value in headers.get_all(name) {
                let Some(rest) = after_prefix(value.as_bytes(), prefix.as_bytes()) else { continue };
                let Ok(rest) = rest else {
                    return Err(Failure::new(Reason::Malformed, format!("no blank after the scheme in {name}")));
                };
                let rest = rest.trim_ascii();
                if rest.is_empty() {
                    return Err(Failure::new(Reason::Malformed, format!("empty token in {name}")));
                }
                let Ok(text) = std::str::from_utf8(rest) else {
                    return Err(Failure::new(Reason::Malformed, format!("non-ASCII token in {name}")));
                };
                match &mut found {
                    None => found = Some(Found { token: text.into(), mask: 1 << i }),
                    Some(f) if f.token == text => f.mask |= 1 << i,
                    Some(_) => return Err(Failure::new(Reason::MultipleTokens, format!("a second token in {name}"))),
                }
            }
        }
        let query = query.filter(|_| !self.params.is_empty()).unwrap_or_default();
        // Every spelling an app's framework reads as the parameter (`access.token`, `;`
        // separators, `ACCESS_TOKEN`): one the sidecar skipped reached PHP's `$_GET` unverified.
        for (raw_name, raw_value) in crate::query::params(query.as_bytes()) {
            let Some(i) = self.params.iter().position(|p| crate::query::is_named(raw_name, p.as_bytes())) else {
                continue;
            };
            let (key, bit) = (&self.params[i], 1 << (self.locations.len() + i));
            let text = match crate::query::form_text(raw_value) {
                Some(text) if text.trim_ascii().is_empty() => {
                    return Err(Failure::new(Reason::Malformed, format!("empty token in the {key} parameter")))
                }
                Some(text) => text,
                None => return Err(Failure::new(Reason::Malformed, format!("non-UTF-8 token in the {key} parameter"))),
            };
            match &mut found {
                None => found = Some(Found { token: text, mask: bit }),
                Some(f) if f.token == text => f.mask |= bit,
                Some(_) => {
                    return Err(Failure::new(Reason::MultipleTokens, format!("a second token in the {key} parameter")))
                }
            }
        }
        Ok(found)
    }

    /// The whole request step: extract, then verify. `Ok(None)` when the request has no token
    /// (`requireJwt` decides); waits only when a remote JWKS must be refreshed for an unknown
    /// `kid` (see [`Authenticator::verify`]).
    pub async fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Option<Verified>, Failure> {
        match self.extract(headers, query)? {
            None => Ok(None),
            Some(found) => self.verify_in(&found.token, found.mask).await.map(Some),
        }
    }

    /// Verifies a token given directly (a service-account token in a CSR, say), with any
    /// provider whose issuer it names. On an unknown `kid` with a remote JWKS, refreshes it
    /// (rate-limited) and tries once more.
    pub async fn verify(&self, token: &str) -> Result<Verified, Failure> {
        self.verify_in(token, u64::MAX).await
    }

    /// Verifies with the keys in hand only: never waits, never triggers a refresh.
    pub fn verify_cached(&self, token: &str) -> Result<Verified, Failure> {
        if let Some(cached) = self.cache.get(token, u64::MAX) {
            return cached;
        }
        self.attempt(token, u64::MAX).map_err(|(f, _)| f)
    }

    /// A token verified before is taken from the cache (one lookup per verification, however
    /// many attempts a refresh makes).
    async fn verify_in(&self, token: &str, mask: u64) -> Result<Verified, Failure> {
        if let Some(cached) = self.cache.get(token, mask) {
            return cached;
        }
        match self.attempt(token, mask) {
            Ok(v) => Ok(v),
            Err((_, Some(remote))) => {
                remote.refresh_for_unknown_kid().await;
                self.attempt(token, mask).map_err(|(f, _)| f)
            }
            Err((f, None)) => Err(f),
        }
    }

    /// Lookups of the cache of verified tokens: (hits, misses). A hit skipped the signature
    /// check; a miss was verified in full (or refused).
    pub fn cache_counts(&self) -> (u64, u64) {
        self.cache.counts()
    }

    /// One try with the current keys, in full; a failure that a refresh may cure carries its
    /// JWKS.
    fn attempt(&self, token: &str, mask: u64) -> Result<Verified, (Failure, Option<Arc<super::jwks::RemoteJwks>>)> {
        let parsed = token::parse(token, self.options.max_token_bytes).map_err(|f| (f, None))?;
        // `iss` is read before the signature is checked only to choose the provider; it is
        // trusted once that provider's keys verified the token.
        let iss = match parsed.claims.get("iss") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err((Failure::new(Reason::Malformed, "iss is not a string"), None)),
            None => return Err((Failure::new(Reason::WrongIssuer, "no iss claim"), None)),
        };
        let mut candidates = self.providers.iter().zip(&self.masks).filter(|(p, _)| p.issuer == iss).peekable();
        if candidates.peek().is_none() {
            return Err((Failure::new(Reason::WrongIssuer, format!("iss {:?}", token::truncate(&iss))), None));
        }
        let mut candidates = candidates.filter(|(_, m)| *m & mask != 0).map(|(p, _)| p).peekable();
        let Some(first) = candidates.next() else {
            return Err((Failure::new(Reason::WrongIssuer, "the token is in a header its issuer does not use"), None));
        };
        if candidates.peek().is_none() {
            // The common case: one provider per issuer, and the parsed claims move into it.
            // Only here is a result cached: with one candidate, the same token in the same
            // headers can only ever be this provider's.
            return match first.verify(parsed) {
                Ok((claims, keys)) => {
                    let v = verified(first, claims)?;
                    self.cache.insert(token, mask, keys, &v);
                    Ok(v)
                }
                Err((f, remote)) => Err((f, remote.cloned())),
            };
        }
        // Several providers share the issuer (policies with different audiences): the first
        // that accepts wins; the first failure is reported. Each gets its own parse, as a
        // provider consumes the claims it verifies.
        let mut first_failure = None;
        let mut parsed = Some(parsed);
        for p in std::iter::once(first).chain(candidates) {
            let token = match parsed.take() {
                Some(t) => t,
                None => token::parse(token, self.options.max_token_bytes).map_err(|f| (f, None))?,
            };
            match p.verify(token) {
                Ok((claims, _)) => return verified(p, claims),
                Err((f, r)) => {
                    first_failure.get_or_insert((f, r.cloned()));
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| (Failure::new(Reason::WrongIssuer, "no provider"), None)))
    }
}

fn verified(
    provider: &Arc<Provider>,
    claims: Claims,
) -> Result<Verified, (Failure, Option<Arc<super::jwks::RemoteJwks>>)> {
    let principal = provider.principal(&claims).map_err(|f| (f, None))?;
    let forwarded = provider.forward_headers(&claims);
    Ok(Verified(Arc::new(VerifiedToken { provider: provider.clone(), principal, claims, forwarded })))
}

/// What follows a location's prefix in a header value: `None` when the value does not start
/// with it (another scheme: not a token). A prefix ending in a blank is a scheme (`Bearer `): any
/// run of spaces and tabs after the scheme's word matches it, as the parsers that split on
/// whitespace read it, and `Err` when the word is followed by anything else (`Bearer:x`,
/// `Bearerx`), which an app that cuts the scheme's length off the value would take for a token
/// the sidecar never verified.
fn after_prefix<'a>(value: &'a [u8], prefix: &[u8]) -> Option<Result<&'a [u8], ()>> {
    let scheme = prefix.trim_ascii_end();
    if scheme.len() == prefix.len() || scheme.is_empty() {
        return strip_prefix_ignore_case(value, prefix).map(Ok);
    }
    let rest = strip_prefix_ignore_case(value, scheme)?;
    match rest.first() {
        Some(b' ' | b'\t') => Some(Ok(rest)),
        None => Some(Ok(rest)),
        Some(_) => Some(Err(())),
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&value[prefix.len()..])
    } else {
        None
    }
}

impl Default for CacheLookups {
    /// Counters registered nowhere.
    fn default() -> CacheLookups {
        let counter = |name| IntCounter::new(name, "lookups of the cache of verified tokens").expect("a valid name");
        CacheLookups { hits: counter("hits"), misses: counter("misses") }
    }
}

// === impl Verified ===

impl Verified {
    /// `request.auth.principal`: `<iss>/<sub>`.
    pub fn principal(&self) -> &str {
        &self.0.principal
    }

    pub fn issuer(&self) -> &str {
        &self.0.provider.issuer
    }

    pub fn subject(&self) -> Option<&str> {
        self.0.claims.as_map().get("sub").and_then(|v| v.as_str())
    }

    /// `request.auth.claims[...]`.
    pub fn claims(&self) -> &Claims {
        &self.0.claims
    }

    pub(crate) fn provider(&self) -> &Provider {
        &self.0.provider
    }

    /// The `forwardClaims` headers to set on the request to the app (after removing
    /// [`Authenticator::forwarded_headers`]). A claim that is absent, an object, or not a valid
    /// header value sets nothing.
    pub fn forward_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0.forwarded
    }
}

impl Authenticator {
    /// The places to clear of the token `verified` so that it does not reach the app (Envoy's
    /// and Istio's default) where [`carries_token`] finds one: every header any provider reads,
    /// since one request holds one token however many places it came in, and a copy in a place
    /// only another provider reads was never checked there (an app reading `Authorization` got
    /// a token its own provider refuses, verified from `x-jwt`). The verifying provider's own
    /// places stay when it sets `forwardOriginalToken`.
    pub fn token_places<'a>(&'a self, verified: &'a Verified) -> impl Iterator<Item = (&'a HeaderName, &'a str)> {
        let provider = &verified.0.provider;
        let kept = move |name: &HeaderName, prefix: &str| {
            provider.forward_original_token
                && provider.from_headers.iter().any(|(n, p)| n == name && p.eq_ignore_ascii_case(prefix))
        };
        self.locations.iter().filter(move |(n, p)| !kept(n, p)).map(|(n, p)| (n, p.as_str()))
    }
}

/// Whether `headers` carry a token at `name` after `prefix`: an `Authorization: Basic` beside
/// a token in `x-jwt` carries none, and is the app's.
pub fn carries_token(headers: &HeaderMap, name: &HeaderName, prefix: &str) -> bool {
    headers.get_all(name).iter().any(|v| after_prefix(v.as_bytes(), prefix.as_bytes()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{b64, JwksSpec, SecretSpec};

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A provider with only a shared secret: these tests need no key pairs.
    fn hs_spec(issuer: &str) -> ProviderSpec {
        ProviderSpec {
            issuer: issuer.into(),
            audiences: vec![],
            jwks: None,
            hmac_secret: Some(SecretSpec { file: None, inline: Some(SECRET.into()) }),
            from_headers: vec![
                super::super::FromHeader { name: "authorization".into(), prefix: "Bearer ".into() },
                super::super::FromHeader { name: "x-jwt".into(), prefix: String::new() },
            ],
            from_params: None,
            forward_claims: vec![],
            forward_original_token: false,
            algorithms: None,
            clock_skew_seconds: None,
        }
    }

    fn hs256(claims: &str) -> String {
        let input = format!("{}.{}", b64::encode(br#"{"alg":"HS256"}"#), b64::encode(claims.as_bytes()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        format!("{input}.{}", b64::encode(ring::hmac::sign(&key, input.as_bytes()).as_ref()))
    }

    fn authn() -> Authenticator {
        Authenticator::from_specs(&AuthnRuntime::default(), &[hs_spec("a")], AuthnOptions::default()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn extraction_finds_exactly_one_token() {
        let a = authn();
        assert_eq!(a.extract(&headers(&[]), None).unwrap(), None);
        assert_eq!(a.extract(&headers(&[("authorization", "Basic dXNlcg==")]), None).unwrap(), None);
        assert_eq!(a.extract(&headers(&[("authorization", "bearer t1")]), None).unwrap().unwrap().token, "t1");
        // Parsers that split on whitespace read a token after a tab or several blanks: so does this.
        for value in ["Bearer\tt1", "Bearer  \t t1", "BEARER t1 "] {
            assert_eq!(
                a.extract(&headers(&[("authorization", value)]), None).unwrap().unwrap().token,
                "t1",
                "{value:?}"
            );
        }
        assert_eq!(a.extract(&headers(&[("x-jwt", " t1 ")]), None).unwrap().unwrap().token, "t1");
        let same = headers(&[("authorization", "Bearer t1"), ("x-jwt", "t1")]);
        assert_eq!(a.extract(&same, None).unwrap().unwrap().mask, 0b11);
        for (h, r) in [
            (headers(&[("authorization", "Bearer t1"), ("x-jwt", "t2")]), Reason::MultipleTokens),
            (headers(&[("authorization", "Bearer t1"), ("authorization", "Bearer t2")]), Reason::MultipleTokens),
            (headers(&[("authorization", "Bearer ")]), Reason::Malformed),
            (headers(&[("authorization", "Bearer")]), Reason::Malformed),
            // What an app that cuts off "Bearer " or splits on any character would take for a token.
            (headers(&[("authorization", "Bearer:t1")]), Reason::Malformed),
            (headers(&[("authorization", "BEARERt1")]), Reason::Malformed),
            (headers(&[("authorization", "Bearer\tt1"), ("x-jwt", "t2")]), Reason::MultipleTokens),
        ] {
            assert_eq!(a.extract(&h, None).unwrap_err().reason, r);
        }
    }

    #[test]
    fn hs_tokens_verify_with_the_configured_secret() {
        let a = authn();
        let v = a.verify_cached(&hs256(r#"{"iss":"a","sub":"u","exp":99999999999}"#)).unwrap();
        assert_eq!(v.principal(), "a/u");
        let wrong_iss = a.verify_cached(&hs256(r#"{"iss":"b","sub":"u","exp":99999999999}"#)).unwrap_err();
        assert_eq!(wrong_iss.reason, Reason::WrongIssuer);
        let mut t = hs256(r#"{"iss":"a","exp":99999999999}"#);
        t.replace_range(t.len() - 2.., "AA");
        assert_eq!(a.verify_cached(&t).unwrap_err().reason, Reason::BadSignature);
    }

    #[test]
    fn a_provider_reads_only_its_own_headers() {
        let mut only_bearer = hs_spec("a");
        only_bearer.from_headers.truncate(1);
        let mut other = hs_spec("b");
        other.from_headers.remove(0);
        let a = Authenticator::from_specs(&AuthnRuntime::default(), &[only_bearer, other], AuthnOptions::default())
            .unwrap();
        let token = hs256(r#"{"iss":"a","exp":99999999999}"#);
        let h = headers(&[("x-jwt", &token)]);
        let err = futures_block(a.authenticate(&h, None)).unwrap_err();
        assert_eq!(err.reason, Reason::WrongIssuer);
        assert!(futures_block(a.authenticate(&headers(&[("authorization", &format!("Bearer {token}"))]), None)).is_ok());
    }

    #[test]
    fn shared_across_threads_and_awaited_in_send_futures() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Authenticator>();
        send_sync::<Verified>();
        send_sync::<Failure>();
        send_sync::<AuthnRuntime>();
        let a = authn();
        let h = HeaderMap::new();
        send(&a.authenticate(&h, None));
        send(&a.verify("t"));
    }

    #[test]
    fn providers_sharing_an_issuer_are_each_tried() {
        let (mut orders, mut payments) = (hs_spec("a"), hs_spec("a"));
        orders.audiences = vec!["orders".into()];
        payments.audiences = vec!["payments".into()];
        let a =
            Authenticator::from_specs(&AuthnRuntime::default(), &[orders, payments], AuthnOptions::default()).unwrap();
        assert!(a.verify_cached(&hs256(r#"{"iss":"a","aud":"payments","exp":99999999999}"#)).is_ok());
        assert!(a.verify_cached(&hs256(r#"{"iss":"a","aud":"orders","exp":99999999999}"#)).is_ok());
        let other = a.verify_cached(&hs256(r#"{"iss":"a","aud":"other","exp":99999999999}"#)).unwrap_err();
        assert_eq!(other.reason, Reason::WrongAudience);
    }

    #[test]
    fn config_errors_are_caught_when_built() {
        let rt = AuthnRuntime::default();
        let mut no_keys = hs_spec("a");
        no_keys.hmac_secret = None;
        let mut short = hs_spec("a");
        short.hmac_secret = Some(SecretSpec { file: None, inline: Some("short".into()) });
        let mut rs_without_jwks = hs_spec("a");
        rs_without_jwks.algorithms = Some(vec![crate::authn::Algorithm::RS256]);
        let mut bad_forward = hs_spec("a");
        bad_forward.forward_claims = vec![super::super::ForwardClaim { claim: "sub".into(), header: "host".into() }];
        let mut bad_jwks = hs_spec("a");
        bad_jwks.jwks = Some(JwksSpec { inline: Some("{\"keys\":[]}".into()), ..Default::default() });
        // A skew of years turns expiry off; a value meant in milliseconds is hours.
        let mut skewed = hs_spec("a");
        skewed.clock_skew_seconds = Some(60_000);
        let mut forever = hs_spec("a");
        forever.jwks = Some(JwksSpec {
            uri: Some("https://issuer.example/jwks".into()),
            cache_seconds: Some(u64::MAX),
            ..Default::default()
        });
        for spec in [no_keys, short, rs_without_jwks, bad_forward, bad_jwks, skewed, forever] {
            assert!(rt.provider(&spec).is_err(), "{spec:?}");
        }
        let mut an_hour = hs_spec("a");
        an_hour.clock_skew_seconds = Some(3600);
        assert!(rt.provider(&an_hour).is_ok());
    }

    #[test]
    fn claims_are_never_forwarded_in_the_headers_only_the_sidecar_sets() {
        // A token's `sub` in x-forwarded-client-cert would let whoever picks a subject at the
        // issuer pose as a mesh peer to the app.
        let rt = AuthnRuntime::default();
        // Nor in Linkerd's `l5d-client-id`, which the sidecar writes for apps moved from Linkerd.
        for header in [
            "x-forwarded-client-cert",
            "X-Forwarded-Client-Cert",
            "l5d-client-id",
            "palisade-orig-proto",
            "x-request-id",
        ] {
            let mut spec = hs_spec("a");
            spec.forward_claims = vec![super::super::ForwardClaim { claim: "sub".into(), header: header.into() }];
            let e = rt.provider(&spec).expect_err(header).to_string();
            assert!(e.contains("cannot be forwarded"), "{header}: {e}");
        }
        let mut fine = hs_spec("a");
        fine.forward_claims = vec![super::super::ForwardClaim { claim: "sub".into(), header: "x-user".into() }];
        assert!(rt.provider(&fine).is_ok());
    }

    #[test]
    fn a_token_in_the_access_token_parameter_is_found_by_default_and_verified() {
        let rt = AuthnRuntime::default();
        let mut default = hs_spec("https://issuer.example");
        default.from_headers.truncate(1); // Authorization: Bearer, the default
        let a = Authenticator::from_specs(&rt, &[default.clone()], AuthnOptions::default()).unwrap();
        let token = hs256(r#"{"iss":"https://issuer.example","sub":"alice","exp":99999999999}"#);
        let (none, query) = (headers(&[]), format!("x=1&access_token={token}"));
        assert_eq!(a.extract(&none, Some(&query)).unwrap().unwrap().token, token.as_str());
        assert!(futures_block(a.authenticate(&headers(&[]), Some(&format!("access_token={token}")))).is_ok());
        // Named as a framework decodes names; the same token in the header too is one token.
        let escaped = format!("access%5Ftoken={token}");
        assert!(a.extract(&headers(&[]), Some(&escaped)).unwrap().is_some());
        let bearer = format!("Bearer {token}");
        assert!(a.extract(&headers(&[("authorization", &bearer)]), Some(&escaped)).unwrap().is_some());
        // A forged one is refused as in a header; two different ones, or an empty one, too.
        let other = hs256(r#"{"iss":"https://issuer.example","sub":"mallory","exp":99999999999}"#);
        let forged = format!("{}{}", &other[..other.rfind('.').unwrap()], &token[token.rfind('.').unwrap()..]);
        let e = futures_block(a.authenticate(&headers(&[]), Some(&format!("access_token={forged}")))).unwrap_err();
        assert_eq!(e.reason, Reason::BadSignature);
        let two = format!("access_token={token}&access_token={forged}");
        assert_eq!(a.extract(&headers(&[]), Some(&two)).unwrap_err().reason, Reason::MultipleTokens);
        let e = a.extract(&headers(&[("authorization", &format!("Bearer {forged}"))]), Some(&escaped)).unwrap_err();
        assert_eq!(e.reason, Reason::MultipleTokens);
        assert_eq!(a.extract(&headers(&[]), Some("access_token=")).unwrap_err().reason, Reason::Malformed);
        // Other parameters are the app's.
        assert_eq!(a.extract(&headers(&[]), Some("token=abc&access_tokens=x")).unwrap(), None);
        // Every spelling a framework reads as the name is the name: PHP's `.`, blank and `[`,
        // `;` as a separator, ASP.NET's case.
        for spelling in [
            "x=1;access_token",
            "access.token",
            "access+token",
            "%20access_token",
            "access[token",
            "ACCESS_TOKEN",
            "access_token%00",
        ] {
            let query = format!("{spelling}={forged}");
            assert!(a.extract(&none, Some(&query)).unwrap().is_some(), "{spelling}");
            let both = format!("access_token={token}&{spelling}={forged}");
            assert_eq!(a.extract(&none, Some(&both)).unwrap_err().reason, Reason::MultipleTokens, "{spelling}");
        }

        // `fromParams: []` reads none; a provider that names its headers names its parameters.
        let mut none = default.clone();
        none.from_params = Some(vec![]);
        let mut own_headers = hs_spec("https://issuer.example");
        own_headers.from_headers = vec![super::super::FromHeader { name: "x-jwt".into(), prefix: String::new() }];
        for spec in [none, own_headers] {
            let a = Authenticator::from_specs(&rt, &[spec], AuthnOptions::default()).unwrap();
            assert_eq!(a.extract(&headers(&[]), Some(&format!("access_token={token}"))).unwrap(), None);
        }
        let mut named = default;
        named.from_params = Some(vec!["jwt".into()]);
        let a = Authenticator::from_specs(&rt, &[named], AuthnOptions::default()).unwrap();
        assert!(a.extract(&headers(&[]), Some(&format!("jwt={token}"))).unwrap().is_some());
        assert_eq!(a.extract(&headers(&[]), Some(&format!("access_token={token}"))).unwrap(), None);
    }

    #[test]
    fn claims_are_never_forwarded_in_headers_that_say_how_the_app_reads_the_request() {
        // Every caller's copy of a forwarded header is removed: a claim in content-type took
        // every request's type away, one in cookie every cookie.
        let rt = AuthnRuntime::default();
        for header in [
            "content-type",
            "Content-Encoding",
            "cookie",
            "expect",
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "keep-alive",
            "x-http-method-override",
            "x-original-url",
            "x-forwarded-host",
            "forwarded",
            "authorization",
            "x_user_id",
        ] {
            let mut spec = hs_spec("a");
            spec.forward_claims = vec![super::super::ForwardClaim { claim: "sub".into(), header: header.into() }];
            let e = rt.provider(&spec).expect_err(header).to_string();
            assert!(e.contains("cannot be forwarded"), "{header}: {e}");
        }
    }

    #[test]
    fn no_token_is_read_from_a_header_the_sidecar_sets() {
        let rt = AuthnRuntime::default();
        for header in ["x-forwarded-client-cert", "L5d-Client-Id", "palisade-orig-proto", "x-request-id"] {
            let mut spec = hs_spec("a");
            spec.from_headers = vec![super::super::FromHeader { name: header.into(), prefix: String::new() }];
            let e = rt.provider(&spec).expect_err(header).to_string();
            assert!(e.contains("set by the sidecar"), "{header}: {e}");
        }
        // Nor from one whose '-' twin an app reads as the same header.
        let mut spec = hs_spec("a");
        spec.from_headers = vec![super::super::FromHeader { name: "x_jwt".into(), prefix: String::new() }];
        assert!(rt.provider(&spec).expect_err("x_jwt").to_string().contains("'-' twin"));
    }

    fn futures_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }
}
