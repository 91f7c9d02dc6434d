//! One JWT issuer as a policy configures it (`authentication.jwt[]`), built into a verifier.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::alg::{Algorithm, KeyKind};
use super::claims::{ClaimPath, Claims, Clock, SystemClock, TimeRules};
use super::failure::{Failure, Reason};
use super::fetch::{FetchJwks, HttpFetcher};
use super::jwks::{JwksLocation, JwksSpec, KeySource, KeysUsed, RemoteJwks, DEFAULT_MIN_REFRESH_INTERVAL};
use super::keys::{KeySet, Lookup};
use super::token::Unverified;
use super::AuthnError;

/// The most `clockSkewSeconds` a provider may allow.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 3600;

/// Envoy's `clock_skew_seconds` default.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a header named with `_` cannot carry what the sidecar vouches for: CGI, WSGI, Rack and
/// PHP read `x_jwt` and `x-jwt` as one header.
fn underscored(name: &str) -> Option<&'static str> {
    name.contains('_').then_some(
        "a header name with '_' is read by CGI, WSGI, Rack and PHP apps as its '-' twin, which a caller can send; name it with '-'",
    )
}

/// Headers a claim must never be forwarded into: they frame the request or route it, say what
/// its body is or how the app reads it (every caller's copy of a forwarded header is removed: a
/// claim in `content-type` took every request's type away, and the app read the body by a type
/// the WAF had not read it as), carry its trace, or only the sidecar sets them (the caller's
/// verified identity, the caller's protocol, the request id): a token's `sub` in
/// `x-forwarded-client-cert` would let whoever picks a subject pose as a peer.
pub(crate) const RESERVED_HEADERS: [&str; 36] = [
    "host",
    "authorization",
    "proxy-authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-type",
    "content-encoding",
    "cookie",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-forwarded-client-cert",
    "l5d-client-id",
    "palisade-orig-proto",
    "x-request-id",
];

/// Headers the sidecar writes for the app in place of any copy the caller sent, once the
/// policy has decided: the caller's proven identity (`x-forwarded-client-cert`, and Linkerd's
/// `l5d-client-id`, which apps moved from Linkerd read) and the caller's protocol. All are
/// [`RESERVED_HEADERS`] too.
pub(crate) const SIDECAR_SET_HEADERS: [&str; 3] = ["x-forwarded-client-cert", "l5d-client-id", "palisade-orig-proto"];

/// One entry of `authentication.jwt`, as written in a policy (field names as in SPEC section 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderSpec {
    pub issuer: String,
    /// Any one of these in `aud` is enough; empty means `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSpec>,
    /// Enables HS256/384/512 for this issuer only. Serialised, as the control plane sends policies
    /// to its sidecars that way (over mutual TLS); `/config_dump` redacts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<SecretSpec>,
    #[serde(default = "default_from_headers")]
    pub from_headers: Vec<FromHeader>,
    /// Query parameters a token is read from (Istio's `fromParams`). Not given, with the
    /// default `fromHeaders`: `access_token`, as Envoy's and Istio's default locations are the
    /// bearer header and that parameter (RFC 6750 2.3); a forged token there reached the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_params: Option<Vec<String>>,
    #[serde(default)]
    pub forward_claims: Vec<ForwardClaim>,
    /// Keep the token's header on the request to the app (Envoy's `forward`); default removes it.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Accepted algorithms; default every public-key one, plus HS* when `hmacSecret` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<Algorithm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<u64>,
}

/// A shared secret: the exact bytes of a file, or inline text.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

/// `fromHeaders` entry: the token is the header's value after `prefix` (matched without regard
/// to ASCII case, as the `Bearer` scheme is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

/// `forwardClaims` entry. `claim` is a top-level name (`sub`) or a bracketed path
/// (`[kubernetes.io][namespace]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardClaim {
    pub claim: String,
    pub header: String,
}

fn default_from_headers() -> Vec<FromHeader> {
    vec![FromHeader { name: "authorization".into(), prefix: "Bearer ".into() }]
}

/// The query parameter of RFC 6750 section 2.3, read by default.
pub const DEFAULT_TOKEN_PARAM: &str = "access_token";

impl ProviderSpec {
    /// The query parameters a token is read from: `fromParams`, else `access_token` when
    /// `fromHeaders` is the default (a provider that names its own headers names its params).
    pub fn token_params(&self) -> Vec<String> {
        match &self.from_params {
            Some(params) => params.clone(),
            None if self.from_headers == default_from_headers() => vec![DEFAULT_TOKEN_PARAM.to_string()],
            None => Vec::new(),
        }
    }
}

/// Why a token was refused, with the remote set to refresh when its key was unknown.
pub(crate) type Refusal<'a> = (Failure, Option<&'a Arc<RemoteJwks>>);

/// A provider ready to verify: keys parsed, names checked.
pub struct Provider {
    pub(crate) issuer: String,
    audiences: Vec<String>,
    keys: Option<KeySource>,
    hmac: Vec<(Algorithm, hmac::Key)>,
    algorithms: Vec<Algorithm>,
    pub(crate) from_headers: Vec<(HeaderName, String)>,
    pub(crate) from_params: Vec<String>,
    pub(crate) forward: Vec<(ClaimPath, HeaderName)>,
    pub(crate) forward_original_token: bool,
    time: TimeRules,
    clock: Arc<dyn Clock>,
}

/// What providers share across policy updates: the clock and the remote JWKS caches, so a
/// recompiled policy naming the same URI keeps its keys and its refresh task. Make one per
/// sidecar (or control plane) and keep it.
pub struct AuthnRuntime {
    clock: Arc<dyn Clock>,
    min_refresh_interval: Duration,
    fetcher: FetcherFactory,
    remotes: Mutex<HashMap<RemoteKey, Weak<RemoteJwks>>>,
}

/// A remote JWKS is shared by providers that name the same URI, cache period, CA and token.
type RemoteKey = JwksLocation;

type FetcherFactory = Arc<dyn Fn(&JwksSpec) -> Result<Arc<dyn FetchJwks>, AuthnError> + Send + Sync>;

// === impl Provider ===

impl Provider {
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The remote JWKS behind this provider, if its keys come from a URI.
    pub fn remote_jwks(&self) -> Option<&Arc<RemoteJwks>> {
        self.keys.as_ref().and_then(KeySource::remote)
    }

    /// Verifies a parsed token that names this provider's issuer. `Err` carries the remote
    /// set to refresh when the failure is an unknown key.
    pub(crate) fn verify(&self, token: Unverified<'_>) -> Result<(Claims, KeysUsed), Refusal<'_>> {
        let alg = token.alg;
        if !self.algorithms.contains(&alg) {
            return Err((Failure::new(Reason::UnsupportedAlg, format!("{alg} is not accepted for this issuer")), None));
        }
        let used = if alg.key_kind() == KeyKind::Hmac {
            let key = self.hmac.iter().find(|(a, _)| *a == alg).map(|(_, k)| k);
            let ok = key.is_some_and(|k| hmac::verify(k, token.signing_input, &token.signature).is_ok());
            if !ok {
                return Err((Failure::new(Reason::BadSignature, format!("{alg} signature does not verify")), None));
            }
            KeysUsed::Fixed
        } else {
            self.verify_with_jwks(&token)?
        };
        let claims = Claims::new(token.claims);
        self.check_times(&claims).map_err(|f| (f, None))?;
        claims.check_audience(&self.audiences).map_err(|f| (f, None))?;
        Ok((claims, used))
    }

    /// `exp`, `nbf` and `iat` against now: on every verification, and on every use of a cached one.
    pub(crate) fn check_times(&self, claims: &Claims) -> Result<(), Failure> {
        claims.check_times(self.clock.since_epoch(), &self.time)
    }

    /// Whether a verification that used `keys` would still find them (see [`KeySource::still_in_force`]).
    pub(crate) fn keys_in_force(&self, keys: &KeysUsed) -> bool {
        match &self.keys {
            Some(source) => source.still_in_force(keys),
            None => matches!(keys, KeysUsed::Fixed),
        }
    }

    fn verify_with_jwks(&self, token: &Unverified<'_>) -> Result<KeysUsed, Refusal<'_>> {
        let Some(source) = &self.keys else {
            return Err((Failure::new(Reason::UnsupportedAlg, "no JWKS for public-key algorithms"), None));
        };
        let remote = source.remote();
        let current = source.current();
        let kid = token.kid.as_deref();
        let unknown = || {
            let kid = kid.map_or_else(|| "(none)".to_string(), |k| format!("{:?}", super::token::truncate(k)));
            Failure::new(Reason::UnknownKey, format!("no {} key with kid {kid}", token.alg))
        };
        let not_fetched = || (Failure::new(Reason::UnknownKey, "the JWKS has not been fetched yet"), remote);
        let Some(set) = current.get() else { return Err(not_fetched()) };
        let (keys, kid_known) = match set.lookup(kid, token.alg) {
            Lookup::Unknown => return Err((unknown(), remote)),
            Lookup::WrongAlgorithm => {
                return Err((
                    Failure::new(
                        Reason::UnsupportedAlg,
                        format!("the key with this kid does not verify {}", token.alg),
                    ),
                    None,
                ))
            }
            Lookup::Found(keys) => (keys, true),
            Lookup::KidlessOnly(keys) => (keys, false),
        };
        if keys.iter().any(|k| k.verify(token.alg, token.signing_input, &token.signature)) {
            drop(keys);
            current.into_used().ok_or_else(not_fetched)
        } else if kid_known {
            Err((Failure::new(Reason::BadSignature, format!("{} signature does not verify", token.alg)), None))
        } else {
            Err((unknown(), remote))
        }
    }

    /// `<iss>/<sub>`, Istio's request principal; `sub` may be absent (then empty).
    pub(crate) fn principal(&self, claims: &Claims) -> Result<String, Failure> {
        let sub = claims.str_claim("sub")?.unwrap_or("");
        Ok(format!("{}/{}", self.issuer, sub))
    }

    pub(crate) fn forward_headers(&self, claims: &Claims) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.forward.len());
        for (path, header) in &self.forward {
            // A value that cannot be a header value (control characters), or that the app
            // would read back as something else, is not forwarded; the header stays removed.
            if let Some(v) = claims.header_text(path).and_then(|t| HeaderValue::from_bytes(t.as_bytes()).ok()) {
                out.push((header.clone(), v));
            }
        }
        out
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

// === impl AuthnRuntime ===

impl Default for AuthnRuntime {
    fn default() -> Self {
        AuthnRuntime::new(Arc::new(SystemClock))
    }
}

impl AuthnRuntime {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        AuthnRuntime {
            clock,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            fetcher: Arc::new(|spec: &JwksSpec| {
                let uri = spec.uri.as_deref().unwrap_or_default();
                let fetcher = HttpFetcher::new(uri, spec.ca_file.as_deref())?
                    .with_bearer_token_file(spec.bearer_token_file.clone());
                Ok(Arc::new(fetcher) as Arc<dyn FetchJwks>)
            }),
            remotes: Mutex::new(HashMap::new()),
        }
    }

    /// Spacing of fetches triggered by unknown `kid`s (default 30 s).
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Replaces how a JWKS URI is fetched (another transport, a Kubernetes API client).
    pub fn with_fetcher<F>(mut self, factory: F) -> Self
    where
        F: Fn(&JwksSpec) -> Result<Arc<dyn FetchJwks>, AuthnError> + Send + Sync + 'static,
    {
        self.fetcher = Arc::new(factory);
        self
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Checks `spec` and builds its provider: files are read and JWKS parsed now; a remote
    /// JWKS starts fetching in the background (this needs a tokio runtime).
    pub fn provider(&self, spec: &ProviderSpec) -> Result<Provider, AuthnError> {
        self.build(spec, Mode::Run)
    }

    /// Everything [`AuthnRuntime::provider`] checks (JWKS parsed, URIs and CA files valid,
    /// algorithms) without fetching or starting anything, for `palisade check` and the control
    /// plane, where the sidecar's files may not be: a key or secret file is read when it is
    /// there, and when it is not, that is a warning (the sidecar that reads it judges it).
    /// Returns the warnings: those, and the keys of a JWKS that are left out, each with why
    /// (tokens signed with them are refused as `unknown_key`).
    pub fn check(&self, spec: &ProviderSpec) -> Result<Vec<String>, AuthnError> {
        let mut warnings = Vec::new();
        let files = [
            spec.jwks.as_ref().and_then(|j| j.file.as_deref()),
            spec.hmac_secret.as_ref().and_then(|s| s.file.as_deref()),
        ];
        for path in files.into_iter().flatten().filter(|path| not_here(path)) {
            warnings.push(format!("{}: no such file here: the sidecar that reads it judges it", path.display()));
        }
        let provider = self.build(spec, Mode::Check)?;
        if let Some(KeySource::Static(set)) = &provider.keys {
            warnings.extend(set.ignored().iter().map(|why| format!("{why}: {KEY_LEFT_OUT}")));
        }
        Ok(warnings)
    }

    fn build(&self, spec: &ProviderSpec, mode: Mode) -> Result<Provider, AuthnError> {
        let err = |reason: String| AuthnError::Provider { issuer: spec.issuer.clone(), reason };
        if spec.issuer.is_empty() {
            return Err(err("issuer is empty".into()));
        }
        let keys = match &spec.jwks {
            None => None,
            Some(jwks) => Some(self.key_source(jwks, mode).map_err(|e| err(e.to_string()))?),
        };
        let secret = match &spec.hmac_secret {
            None => None,
            // A secret file not here (it is in the sidecar's pod) stands in as one long enough
            // for every HMAC algorithm: `check` says so in a warning.
            Some(s) if mode == Mode::Check && s.file.as_deref().is_some_and(not_here) => Some(vec![0; 64]),
            Some(s) => Some(read_secret(s).map_err(err)?),
        };
        let algorithms = match &spec.algorithms {
            Some(list) if list.is_empty() => return Err(err("algorithms is empty".into())),
            Some(list) => list.clone(),
            None => {
                let mut list = if keys.is_some() { Algorithm::ASYMMETRIC.to_vec() } else { Vec::new() };
                if let Some(secret) = &secret {
                    list.extend(
                        [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
                            .into_iter()
                            .filter(|a| secret.len() >= a.min_secret_len()),
                    );
                }
                list
            }
        };
        if keys.is_none() && secret.is_none() {
            return Err(err("needs jwks or hmacSecret".into()));
        }
        let mut hmac_keys = Vec::new();
        for &alg in &algorithms {
            if !alg.is_hmac() {
                if keys.is_none() {
                    return Err(err(format!("{alg} needs a jwks")));
                }
                continue;
            }
            // HS* only with the provider's own secret: never a JWKS key, never an RSA key's
            // bytes (the classic confusion of RS256 tokens re-signed as HS256).
            let secret = secret.as_ref().ok_or_else(|| err(format!("{alg} needs hmacSecret")))?;
            if secret.len() < alg.min_secret_len() {
                return Err(err(format!("{alg} needs a secret of at least {} bytes", alg.min_secret_len())));
            }
            let digest = match alg {
                Algorithm::HS256 => hmac::HMAC_SHA256,
                Algorithm::HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            hmac_keys.push((alg, hmac::Key::new(digest, secret)));
        }
        if secret.is_some() && hmac_keys.is_empty() {
            return Err(err("hmacSecret is set but no HS algorithm is accepted (secret too short?)".into()));
        }
        // Compared as frameworks compare them: ASP.NET ignores case ([`crate::query::is_named`]).
        let from_params: Vec<String> = spec.token_params().iter().map(|p| p.to_ascii_lowercase()).collect();
        if spec.from_headers.is_empty() && from_params.is_empty() {
            return Err(err("no token location: fromHeaders and fromParams are both empty".into()));
        }
        if let Some(bad) = from_params.iter().find(|p| p.is_empty() || p.bytes().any(|b| !b.is_ascii_graphic())) {
            return Err(err(format!("fromParams: {bad:?} is not a query parameter name (visible ASCII)")));
        }
        let mut from_headers = Vec::new();
        for h in &spec.from_headers {
            let name =
                HeaderName::try_from(h.name.as_str()).map_err(|_| err(format!("bad header name {:?}", h.name)))?;
            if h.prefix.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
                return Err(err(format!("prefix {:?} must be printable ASCII", h.prefix)));
            }
            // A forged token sent as `x-jwt` would be read where the verified `x_jwt` was.
            if let Some(why) = underscored(name.as_str()) {
                return Err(err(format!("{name}: {why}")));
            }
            // The sidecar replaces these with its own: a token there is never the caller's.
            if SIDECAR_SET_HEADERS.contains(&name.as_str()) || name == "x-request-id" {
                return Err(err(format!("{name} is set by the sidecar, never by a caller: no token is read from it")));
            }
            from_headers.push((name, h.prefix.clone()));
        }
        let mut forward = Vec::new();
        for f in &spec.forward_claims {
            let path = if f.claim.starts_with('[') || f.claim.starts_with("request.auth.claims") {
                ClaimPath::parse(&f.claim)?
            } else {
                ClaimPath::from_names([f.claim.as_str()])?
            };
            let header =
                HeaderName::try_from(f.header.as_str()).map_err(|_| err(format!("bad header name {:?}", f.header)))?;
            if RESERVED_HEADERS.contains(&header.as_str()) || from_headers.iter().any(|(n, _)| n == header) {
                return Err(err(format!("claims cannot be forwarded in {header}")));
            }
            // The app reads `x_user_id` as `x-user-id` too, a copy the caller can send.
            if let Some(why) = underscored(header.as_str()) {
                return Err(err(format!("claims cannot be forwarded in {header}: {why}")));
            }
            forward.push((path, header));
        }
        // An hour at most: more turns expiry off (12 years let a token that expired 10 years ago
        // in), and a value meant in milliseconds (60000) is 16 hours.
        if spec.clock_skew_seconds.is_some_and(|s| s > MAX_CLOCK_SKEW_SECONDS) {
            return Err(err(format!("clockSkewSeconds must be at most {MAX_CLOCK_SKEW_SECONDS}")));
        }
        let skew = spec.clock_skew_seconds.map_or(DEFAULT_CLOCK_SKEW, Duration::from_secs);
        Ok(Provider {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            keys,
            hmac: hmac_keys,
            algorithms,
            from_headers,
            from_params,
            forward,
            forward_original_token: spec.forward_original_token,
            time: TimeRules { skew },
            clock: self.clock.clone(),
        })
    }

    fn key_source(&self, spec: &JwksSpec, mode: Mode) -> Result<KeySource, AuthnError> {
        let location = spec.check().map_err(AuthnError::Jwks)?;
        match &location {
            JwksLocation::Inline(text) => {
                let set = KeySet::from_json(text.as_bytes())?;
                if mode == Mode::Run {
                    warn_left_out("inline", &set);
                }
                Ok(KeySource::Static(Arc::new(set)))
            }
            JwksLocation::File(path) => {
                let file_err = |reason: String| AuthnError::File { path: path.clone(), reason };
                // Not here (it is in the sidecar's pod): `check` says so in a warning.
                if mode == Mode::Check && not_here(path) {
                    return Ok(KeySource::Static(Arc::new(KeySet::default())));
                }
                let bytes = crate::files::read_regular(path, crate::files::MAX_KEY_FILE_BYTES)
                    .map_err(|e| file_err(e.to_string()))?;
                // A set with no usable key is how a file revokes its last key (the Secret's
                // keys all taken out), as an issuer's published set does: taken, and said.
                let set = KeySet::parse_json(&bytes).map_err(|e| file_err(e.to_string()))?;
                if mode == Mode::Run {
                    warn_left_out(&path.display().to_string(), &set);
                    if set.is_empty() {
                        tracing::warn!(file = %path.display(),
                            "the JWKS file has no usable key: every token of its issuer is refused until it has one");
                    }
                }
                Ok(KeySource::Static(Arc::new(set)))
            }
            JwksLocation::Uri { uri, cache, .. } => {
                if mode == Mode::Check {
                    // The URI, CA file and scheme are checked by building the fetcher; nothing
                    // is fetched and no task starts.
                    (self.fetcher)(spec)?;
                    return Ok(KeySource::Static(Arc::new(KeySet::default())));
                }
                let mut remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
                remotes.retain(|_, weak| weak.strong_count() > 0);
                if let Some(existing) = remotes.get(&location).and_then(Weak::upgrade) {
                    return Ok(KeySource::Remote(existing));
                }
                let fetcher = (self.fetcher)(spec)?;
                let remote =
                    RemoteJwks::spawn(uri.clone(), fetcher, *cache, self.min_refresh_interval, self.clock.clone())?;
                remotes.insert(location.clone(), Arc::downgrade(&remote));
                Ok(KeySource::Remote(remote))
            }
        }
    }
}

/// A key an issuer publishes and this sidecar cannot use (an encryption key, a short RSA
/// modulus) makes that issuer's tokens signed with it fail as `unknown_key`; said once per
/// load, so an operator can tell why.
pub(crate) fn warn_left_out(source: &str, set: &KeySet) {
    for why in set.ignored() {
        tracing::warn!(source, "JWKS {why}: {KEY_LEFT_OUT}");
    }
}

/// What a key a JWKS leaves out means, said wherever one is reported.
pub const KEY_LEFT_OUT: &str = "left out, so tokens signed with it are refused (unknown_key)";

/// Whether building a provider may start a remote JWKS (`Run`) or only checks (`Check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Check,
}

/// A key or secret file that does not exist where a policy is checked (it is in the sidecar's
/// pod); one that exists is read and judged, a FIFO or a device refused as a sidecar refuses it.
fn not_here(path: &std::path::Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// An HMAC secret longer than this is no secret someone meant to write.
const MAX_SECRET_BYTES: usize = 64 * 1024;

fn read_secret(spec: &SecretSpec) -> Result<Vec<u8>, String> {
    match (&spec.file, &spec.inline) {
        (Some(path), None) => crate::files::read_regular(path, MAX_SECRET_BYTES)
            .map_err(|e| format!("hmacSecret {}: {e}", path.display())),
        (None, Some(text)) => Ok(text.as_bytes().to_vec()),
        _ => Err("hmacSecret needs exactly one of file or inline".into()),
    }
}
