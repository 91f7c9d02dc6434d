//! Where a provider's keys come from, and the background refresh of a remote JWKS.
//!
//! A remote set is fetched when built, again every `cacheSeconds`, and early when a token
//! names a `kid` the set does not have (an issuer rotated its key), but never more often than
//! once per `min_refresh_interval` however many such tokens arrive: unknown `kid`s are free to
//! send, and each must not become a fetch. A failed fetch keeps the last good set.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::claims::Clock;
use super::fetch::FetchJwks;
use super::keys::KeySet;
use super::AuthnError;

/// The longest `cacheSeconds`: a longer one keeps a key the issuer dropped for longer than any
/// reason to; far longer overflowed the refresh timer.
pub const MAX_CACHE_SECONDS: u64 = 7 * 24 * 3600;

/// Envoy's and Istio's default JWKS cache duration.
pub const DEFAULT_CACHE_SECONDS: u64 = 600;

/// The least time between two fetches triggered by unknown `kid`s.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// A fetch (connect, TLS, request, body) that takes longer is abandoned.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries after a failed fetch start here and double up to this cap (and never exceed
/// `cacheSeconds`).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// `jwks:` of a provider: exactly one of `file`, `inline` or `uri`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `uri` only: seconds between refreshes (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_seconds: Option<u64>,
    /// `uri` only: PEM CA certificates that verify the JWKS host instead of the system bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `uri` only: a file whose content is sent as `Authorization: Bearer`, read again on every
    /// fetch (projected tokens rotate). For a Kubernetes API server whose `/openid/v1/jwks`
    /// does not allow anonymous reads: `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
}

/// The checked form of a [`JwksSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum JwksLocation {
    File(PathBuf),
    Inline(String),
    Uri { uri: String, cache: Duration, ca_file: Option<PathBuf>, bearer_token_file: Option<PathBuf> },
}

/// The keys a provider verifies with.
#[derive(Clone)]
pub(crate) enum KeySource {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// A JWKS fetched from a URI and kept fresh by a background task, which ends when the last
/// handle is dropped.
pub struct RemoteJwks {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    label: String,
    keys: ArcSwapOption<KeySet>,
    refresh: Mutex<RefreshState>,
    wake: Notify,
    /// Counts finished fetch attempts; waiters for a refresh watch it change.
    attempts: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    min_interval: Duration,
    cache: Duration,
}

#[derive(Default)]
struct RefreshState {
    in_flight: bool,
    /// When the last fetch started (clock time), success or not.
    last_start: Option<Duration>,
    last_error: Option<String>,
}

// === impl JwksSpec ===

impl JwksSpec {
    pub(crate) fn check(&self) -> Result<JwksLocation, String> {
        let remote_only = self.cache_seconds.is_some() || self.ca_file.is_some() || self.bearer_token_file.is_some();
        match (&self.file, &self.inline, &self.uri) {
            (Some(f), None, None) if !remote_only => Ok(JwksLocation::File(f.clone())),
            (None, Some(i), None) if !remote_only => Ok(JwksLocation::Inline(i.clone())),
            (None, None, Some(u)) => {
                let secs = self.cache_seconds.unwrap_or(DEFAULT_CACHE_SECONDS);
                if secs == 0 || secs > MAX_CACHE_SECONDS {
                    return Err(format!("jwks.cacheSeconds must be 1 to {MAX_CACHE_SECONDS} (a week)"));
                }
                Ok(JwksLocation::Uri {
                    uri: u.clone(),
                    cache: Duration::from_secs(secs),
                    ca_file: self.ca_file.clone(),
                    bearer_token_file: self.bearer_token_file.clone(),
                })
            }
            (None, None, None) => Err("jwks needs one of file, inline or uri".into()),
            _ if remote_only && self.uri.is_none() => {
                Err("jwks.cacheSeconds, caFile and bearerTokenFile go with uri only".into())
            }
            _ => Err("jwks takes only one of file, inline or uri".into()),
        }
    }
}

// === impl KeySource ===

impl KeySource {
    /// The keys in force; `None` while a remote set was never fetched successfully.
    pub(crate) fn current(&self) -> Current<'_> {
        match self {
            KeySource::Static(set) => Current::Static(set),
            KeySource::Remote(remote) => Current::Remote(remote.shared.keys.load()),
        }
    }

    pub(crate) fn remote(&self) -> Option<&Arc<RemoteJwks>> {
        match self {
            KeySource::Remote(r) => Some(r),
            KeySource::Static(_) => None,
        }
    }
}

pub(crate) enum Current<'a> {
    Static(&'a KeySet),
    Remote(Guard<Option<Arc<KeySet>>>),
}

impl Current<'_> {
    pub(crate) fn get(&self) -> Option<&KeySet> {
        match self {
            Current::Static(set) => Some(set),
            Current::Remote(guard) => guard.as_deref(),
        }
    }

    /// What a verification with these keys leaves for a cache to recheck; `None` while a
    /// remote set was never fetched (then nothing verified).
    pub(crate) fn into_used(self) -> Option<KeysUsed> {
        match self {
            Current::Static(_) => Some(KeysUsed::Fixed),
            Current::Remote(guard) => Guard::into_inner(guard).map(KeysUsed::Remote),
        }
    }
}

/// The keys a successful verification used. A remote set is held (not just its address), so
/// a later set can never be mistaken for it at the same address.
pub(crate) enum KeysUsed {
    /// A shared secret, or a JWKS from a file or inline text: fixed for the provider's life
    /// (a changed file is a new policy version, with a new provider: see `policy::key_files`).
    Fixed,
    Remote(Arc<KeySet>),
}

impl KeySource {
    /// Whether the keys a verification used are still the ones in force: a refresh that
    /// dropped the token's key must be seen by a cached result.
    pub(crate) fn still_in_force(&self, used: &KeysUsed) -> bool {
        match (self, used) {
            (_, KeysUsed::Fixed) => true,
            (KeySource::Remote(remote), KeysUsed::Remote(set)) => {
                remote.shared.keys.load().as_ref().is_some_and(|now| Arc::ptr_eq(now, set))
            }
            (KeySource::Static(_), KeysUsed::Remote(_)) => false,
        }
    }
}

// === impl RemoteJwks ===

impl RemoteJwks {
    /// Starts fetching at once on the current tokio runtime. `label` names the source in logs.
    pub fn spawn(
        label: String,
        fetcher: Arc<dyn FetchJwks>,
        cache: Duration,
        min_interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<RemoteJwks>, AuthnError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| AuthnError::Fetch(format!("{label}: a remote JWKS needs a tokio runtime")))?;
        let shared = Arc::new(Shared {
            label,
            keys: ArcSwapOption::empty(),
            // The task fetches as soon as it runs: a token arriving first waits for that fetch.
            refresh: Mutex::new(RefreshState {
                in_flight: true,
                last_start: Some(clock.since_epoch()),
                last_error: None,
            }),
            wake: Notify::new(),
            attempts: watch::channel(0).0,
            clock,
            min_interval,
            cache,
        });
        let task = runtime.spawn(run(shared.clone(), fetcher));
        Ok(Arc::new(RemoteJwks { shared, task }))
    }

    /// Called when a token's `kid` is not in the set: starts a fetch unless one started less
    /// than `min_interval` ago, and waits for the fetch in progress, if any, to finish (at most
    /// [`FETCH_TIMEOUT`]). Returns at once when rate-limited.
    pub async fn refresh_for_unknown_kid(&self) {
        let mut done = self.shared.attempts.subscribe();
        if !self.claim_refresh() {
            return;
        }
        let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), done.changed()).await;
    }

    /// Whether the caller should wait for a fetch: one is running, or it may start one now.
    fn claim_refresh(&self) -> bool {
        let mut state = self.shared.lock();
        if state.in_flight {
            return true;
        }
        let now = self.shared.clock.since_epoch();
        // A clock that went backwards counts as enough time passed, not as "wait for ever".
        let allowed =
            state.last_start.is_none_or(|t| now.checked_sub(t).is_none_or(|since| since >= self.shared.min_interval));
        if allowed {
            state.in_flight = true;
            state.last_start = Some(now);
            self.shared.wake.notify_one();
        }
        allowed
    }

    /// The set in force, if any fetch ever succeeded.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.shared.keys.load_full()
    }

    /// How many fetches have finished, successful or not.
    pub fn attempts(&self) -> u64 {
        *self.shared.attempts.borrow()
    }

    /// The error of the last fetch, when it failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// Waits until at least `n` fetches have finished (tests and readiness checks).
    pub async fn wait_for_attempts(&self, n: u64) {
        let mut rx = self.shared.attempts.subscribe();
        let _ = rx.wait_for(|&a| a >= n).await;
    }
}

impl Drop for RemoteJwks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("source", &self.shared.label).finish_non_exhaustive()
    }
}

/// The refresh loop. Whoever starts a fetch marks it in flight first: the timer here, or a
/// caller in [`RemoteJwks::claim_refresh`] (then the wake-up is expected); a wake-up that
/// finds nothing in flight is a stale one and is slept through.
async fn run(shared: Arc<Shared>, fetcher: Arc<dyn FetchJwks>) {
    let mut failures = 0u32;
    loop {
        let outcome = match tokio::time::timeout(FETCH_TIMEOUT, fetcher.fetch()).await {
            Ok(Ok(bytes)) => KeySet::parse_json(&bytes),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AuthnError::Fetch(format!("{}: timed out after {FETCH_TIMEOUT:?}", shared.label))),
        };
        let (next, error) = match outcome {
            Ok(set) => {
                // Said when what is left out changes, not at every refresh.
                let same = shared.keys.load().as_ref().is_some_and(|last| last.ignored() == set.ignored());
                if !same {
                    super::provider::warn_left_out(&shared.label, &set);
                }
                // The issuer's word replaces the last set even when it holds no key this sidecar
                // can use (revoked, or moved to an algorithm it does not take): the old keys are
                // refused from now on, not kept because the answer was unusable.
                if set.is_empty() {
                    tracing::warn!(source = %shared.label, ignored = ?set.ignored(),
                        "the JWKS has no usable key: every token of this issuer is refused until it has one");
                }
                tracing::debug!(source = %shared.label, keys = set.len(), "JWKS loaded");
                shared.keys.store(Some(Arc::new(set)));
                failures = 0;
                (shared.cache, None)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let kept = if shared.keys.load().is_some() { "keeping the last good keys" } else { "no keys yet" };
                tracing::warn!(source = %shared.label, error = %e, "JWKS fetch failed; {kept}");
                (retry_delay(failures).min(shared.cache), Some(e.to_string()))
            }
        };
        {
            let mut state = shared.lock();
            state.in_flight = false;
            state.last_error = error;
        }
        shared.attempts.send_modify(|n| *n += 1);
        let due = tokio::time::Instant::now() + next;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    let mut state = shared.lock();
                    state.in_flight = true;
                    state.last_start = Some(shared.clock.since_epoch());
                    break;
                }
                _ = shared.wake.notified() => {
                    if shared.lock().in_flight {
                        break;
                    }
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, RefreshState> {
        self.refresh.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const JWKS: &str =
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    /// Answers from a script of outcomes (the last one repeats) and counts calls: the schedule
    /// is what is under test here, with tokio's paused clock. Fetching from a real server is
    /// tested in tests/authn.rs.
    struct Scripted {
        outcomes: Vec<Result<&'static str, &'static str>>,
        calls: AtomicU64,
    }

    #[async_trait::async_trait]
    impl FetchJwks for Scripted {
        async fn fetch(&self) -> Result<Vec<u8>, AuthnError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
            match self.outcomes[n.min(self.outcomes.len() - 1)] {
                Ok(body) => Ok(body.as_bytes().to_vec()),
                Err(e) => Err(AuthnError::Fetch(e.into())),
            }
        }
    }

    /// The clock for rate limiting follows tokio's (paused) clock.
    struct TokioClock(tokio::time::Instant);

    impl Clock for TokioClock {
        fn since_epoch(&self) -> Duration {
            Duration::from_secs(1_000_000) + self.0.elapsed()
        }
    }

    fn remote(outcomes: Vec<Result<&'static str, &'static str>>) -> (Arc<RemoteJwks>, Arc<Scripted>) {
        let fetcher = Arc::new(Scripted { outcomes, calls: AtomicU64::new(0) });
        let clock = Arc::new(TokioClock(tokio::time::Instant::now()));
        let r = RemoteJwks::spawn(
            "test".into(),
            fetcher.clone(),
            Duration::from_secs(600),
            DEFAULT_MIN_REFRESH_INTERVAL,
            clock,
        )
        .unwrap();
        (r, fetcher)
    }

    #[test]
    fn spec_takes_exactly_one_source() {
        let uri = JwksSpec { uri: Some("https://x/".into()), ..Default::default() };
        assert!(matches!(uri.check(), Ok(JwksLocation::Uri { cache, .. }) if cache == Duration::from_secs(600)));
        let file = JwksSpec { file: Some("/j".into()), ..Default::default() };
        assert!(file.check().is_ok());
        for bad in [
            JwksSpec::default(),
            JwksSpec { file: Some("/j".into()), inline: Some("{}".into()), ..Default::default() },
            JwksSpec { file: Some("/j".into()), cache_seconds: Some(5), ..Default::default() },
            JwksSpec { uri: Some("https://x/".into()), cache_seconds: Some(0), ..Default::default() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_every_cache_period() {
        let (r, f) = remote(vec![Ok(JWKS)]);
        r.wait_for_attempts(1).await;
        assert_eq!(r.keys().unwrap().len(), 1);
        tokio::time::sleep(Duration::from_secs(599)).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        r.wait_for_attempts(2).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_keeps_the_last_good_set_and_retries_with_backoff() {
        let (r, f) = remote(vec![Ok(JWKS), Err("down")]);
        r.wait_for_attempts(1).await;
        tokio::time::sleep(Duration::from_secs(601)).await;
        r.wait_for_attempts(2).await;
        assert_eq!(r.keys().unwrap().len(), 1, "last good set kept");
        assert!(r.last_error().unwrap().contains("down"));
        // Retries at 1, 2, 4, 8 s after the failure.
        tokio::time::sleep(Duration::from_millis(15_500)).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 6);
        assert_eq!(r.keys().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_jwks_with_no_usable_key_replaces_the_last_set() {
        // An issuer revokes its only key by publishing an empty set (or moves to keys the
        // sidecar cannot use): the revoked key must stop working, not be kept as after a failure.
        for answer in [r#"{"keys":[]}"#, r#"{"keys":[{"kty":"OKP","crv":"Ed448","kid":"b","x":"AA"}]}"#] {
            let (r, _) = remote(vec![Ok(JWKS), Ok(answer)]);
            r.wait_for_attempts(1).await;
            assert_eq!(r.keys().unwrap().len(), 1);
            tokio::time::sleep(Duration::from_secs(601)).await;
            r.wait_for_attempts(2).await;
            assert_eq!(r.keys().map(|k| k.len()), Some(0), "{answer}: the last set was kept");
            assert!(r.last_error().is_none(), "{answer}: an answer, not a failure");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refresh_at_most_once_per_interval() {
        let (r, f) = remote(vec![Ok(JWKS)]);
        r.wait_for_attempts(1).await;
        // Right after the initial fetch: rate-limited, no fetch.
        for _ in 0..100 {
            r.refresh_for_unknown_kid().await;
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(30)).await;
        // A flood after the interval: the first starts one fetch, the rest wait for it or are
        // rate-limited.
        let flood: Vec<_> = (0..100)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.refresh_for_unknown_kid().await })
            })
            .collect();
        for t in flood {
            t.await.unwrap();
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        assert_eq!(r.attempts(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_before_the_first_fetch_waits_for_it() {
        let (r, f) = remote(vec![Ok(JWKS)]);
        r.refresh_for_unknown_kid().await;
        assert!(r.keys().is_some());
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_task_ends_with_the_last_handle() {
        let (r, _) = remote(vec![Ok(JWKS)]);
        let shared = Arc::downgrade(&r.shared);
        drop(r);
        for _ in 0..100 {
            if shared.upgrade().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the refresh task still holds the JWKS");
    }

    #[test]
    fn needs_a_runtime() {
        let fetcher = Arc::new(Scripted { outcomes: vec![Ok(JWKS)], calls: AtomicU64::new(0) });
        let clock = Arc::new(super::super::SystemClock);
        assert!(RemoteJwks::spawn("x".into(), fetcher, Duration::from_secs(1), Duration::from_secs(1), clock).is_err());
    }
}
