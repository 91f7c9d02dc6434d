//! The workload CA inside `palisade control`: built from the `ca` section (the signer, how tokens
//! are checked), serving `Certificates/Sign` on its own TLS listener, reloading its files (a
//! rotation's new root reaches every sidecar through the policy streams), and signing the
//! control plane's own certificate when no files are given for it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use super::metrics::ControlMetrics;
use crate::ca::{
    CaFiles, CaMetrics, CaService, CaSigner, JwksTokens, KubeApi, Reserved, TokenChecker, TokenReviewTokens,
};
use crate::config::{CaConfig, ConfigError, ControlConfig};
use crate::identity::SpiffeId;
use crate::lifecycle::poll_files;
use crate::proto::identity::certificates_server::CertificatesServer;
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::TlsStore;

/// A CA ready to serve: what `ControlPlane::start` checked before binding.
pub struct WorkloadCa {
    pub signer: Arc<ArcSwap<CaSigner>>,
    files: CaFiles,
    /// Bounded for the CA's requests.
    tokens: Arc<dyn TokenChecker>,
    /// Unbounded: `tokens()` bounds it again for the policy streams.
    checker: Arc<dyn TokenChecker>,
    ttl: Duration,
    /// The roots in force, DER: every policy stream sends them when they change.
    pub bundle: watch::Sender<Arc<Vec<Vec<u8>>>>,
    pub listener: Option<crate::lifecycle::Listener>,
}

/// The API server, when the control plane can reach one: configured, or the pod's own.
pub fn kube_api(config: &ControlConfig) -> Result<Option<Arc<KubeApi>>, String> {
    match &config.kubernetes {
        Some(k) => KubeApi::new(&k.url, k.ca_file.as_deref(), k.token_file.as_deref()).map(|api| Some(Arc::new(api))),
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            KubeApi::in_cluster().map(|api| Some(Arc::new(api)))
        }
        None => Ok(None),
    }
}

impl WorkloadCa {
    /// Loads the CA and its token checker; every mistake goes to `errors`, named by field.
    pub fn prepare(
        ca: &CaConfig,
        trust_domain: &str,
        api: Option<&Arc<KubeApi>>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<WorkloadCa> {
        let mut fail = |field: &str, message: String| errors.push(ConfigError::new(Path::new(""), field, message));
        let files = CaFiles { cert: ca.cert.clone(), key: ca.key.clone(), trust_bundle: ca.trust_bundle.clone() };
        // The field of the file the error is about: a missing or mismatched key is ca.key's.
        let field_of = |e: &crate::ca::CaError| match e {
            crate::ca::CaError::File { path, .. } if *path == files.key => "ca.key",
            crate::ca::CaError::File { path, .. } if Some(path) == files.trust_bundle.as_ref() => "ca.trustBundle",
            crate::ca::CaError::File { .. } => "ca.cert",
        };
        let signer = CaSigner::load(&files, trust_domain).map_err(|e| fail(field_of(&e), e.to_string())).ok();
        let tokens: Option<Arc<dyn TokenChecker>> = match (&ca.tokens.token_review, &ca.tokens.jwks, api) {
            (Some(_), _, Some(api)) => {
                Some(Arc::new(TokenReviewTokens { api: api.clone(), audience: ca.tokens.audience.clone() }))
            }
            (Some(_), _, None) => {
                fail(
                    "ca.tokens.tokenReview",
                    "no API server to ask: not in a pod (KUBERNETES_SERVICE_HOST) and no kubernetes section".into(),
                );
                None
            }
            (None, Some(jwks), _) => match JwksTokens::new(jwks, &ca.tokens.audience) {
                Ok(tokens) => Some(Arc::new(tokens)),
                Err(e) => {
                    fail("ca.tokens.jwks", e);
                    None
                }
            },
            (None, None, _) => None, // reported by the configuration's own checks
        };
        let (signer, tokens) = (signer?, tokens?);
        // The CA's own bound on token checks: its callers have proven nothing before the check,
        // so a flood of them must not take the turns of policy streams, which come over mutual
        // TLS and check with their own bound (`tokens()`).
        let checker = tokens;
        let tokens: Arc<dyn TokenChecker> = Arc::new(crate::ca::BoundedTokens::new(checker.clone()));
        let bundle = watch::Sender::new(Arc::new(der_of(&signer)));
        Some(WorkloadCa {
            signer: Arc::new(ArcSwap::from_pointee(signer)),
            files,
            tokens,
            checker,
            ttl: ca.cert_ttl.0,
            bundle,
            listener: None,
        })
    }

    /// A token checker for the policy streams, with a bound of its own (see `new`).
    pub fn tokens(&self) -> Arc<dyn TokenChecker> {
        Arc::new(crate::ca::BoundedTokens::new(self.checker.clone()))
    }

    /// The control plane's own credentials, signed by this CA for `identity`.
    pub fn own_store(&self, identity: &SpiffeId) -> Result<TlsStore, String> {
        let signer = self.signer.load();
        let domains = crate::tls::TrustDomains::new([signer.trust_domain()]);
        let store =
            TlsStore::bootstrap(identity, signer.trust_bundle().to_vec(), domains).map_err(|e| e.to_string())?;
        store.install(signer.issue_own(identity, self.ttl)?).map_err(|e| e.to_string())?;
        Ok(store)
    }

    /// Serves `Certificates/Sign` until `stop`, reloads the CA's files every `every`, and renews
    /// the control plane's own certificate when it signed it (`own`).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        self,
        tls: Arc<TlsStore>,
        own: Option<SpiffeId>,
        metrics: &ControlMetrics,
        telemetry: Arc<Telemetry>,
        every: Duration,
        stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let WorkloadCa { signer, files, tokens, checker: _, ttl, bundle, listener } = self;
        let trust_domain = signer.load().trust_domain().to_string();
        let reserved = Reserved {
            ids: [Some(crate::channel::default_identity(&trust_domain)), own.clone()].into_iter().flatten().collect(),
            own: Some(tls.clone()),
        };
        // The CA's files: a new key, certificate or bundle is in force for the next request,
        // and the control plane's own certificate is signed again so that it chains to a root
        // the sidecars are sent (a rotation's last step removes the old one).
        let metrics = CaMetrics::register(metrics.registry());
        metrics.in_force(&signer.load(), ttl);
        let reloaded_metrics = metrics.clone();
        let reloading = signer.clone();
        let changed = Arc::new(Notify::new());
        let own_changed = changed.clone();
        let reporting = telemetry.clone();
        // A broken set is said once, not every tick, until it changes or is mended.
        let mut last_error: Option<String> = None;
        tokio::spawn(poll_files(
            every,
            stop.clone(),
            move || CaSigner::load(&files, &trust_domain),
            move |loaded| match loaded {
                Ok(new) if new.same_as(&reloading.load()) => last_error = None,
                Ok(new) => {
                    last_error = None;
                    let roots = der_of(&new);
                    reloaded_metrics.in_force(&new, ttl);
                    let ends = new.not_after().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                    let identity = format!("the CA of {}", new.trust_domain());
                    reloading.store(Arc::new(new));
                    tracing::info!(roots = roots.len(), "the CA's files changed; the new CA is in force");
                    reporting.events.emit(SecurityEvent::CertificateRotated {
                        identity,
                        serial: String::new(),
                        not_after: ends,
                    });
                    if **bundle.borrow() != roots {
                        tracing::info!(
                            roots = roots.len(),
                            "the CA's trust bundle changed; sending it to every sidecar"
                        );
                        bundle.send_replace(Arc::new(roots));
                    }
                    own_changed.notify_one();
                }
                Err(e) => {
                    let reason = format!("the CA's files: {e}");
                    if last_error.as_ref() != Some(&reason) {
                        tracing::warn!(error = %e, "the CA's files are not usable; the CA in force stays");
                        reporting.events.emit(SecurityEvent::CertificateReloadFailed { reason: reason.clone() });
                        last_error = Some(reason);
                    }
                }
            },
        ));
        if let Some(own) = own {
            tokio::spawn(renew_own(signer.clone(), tls.clone(), own, ttl, changed, telemetry.clone(), stop.clone()));
        }
        let listener = listener?.into_async();
        let sources = CaService::per_source();
        let service = CaService { signer, tokens, ttl, metrics, telemetry: telemetry.clone(), sources, reserved };
        let refused = move |peer: SocketAddr, reason: String| {
            tracing::debug!(%peer, %reason, "CA TLS handshake refused");
        };
        let incoming = super::transport::accept_tls(listener, tls, refused, stop.clone());
        let mut ca_stop = stop;
        Some(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                // A sidecar asks for one certificate at a time: the policy stream's bound serves.
                .max_concurrent_streams(Some(super::server::MAX_STREAMS_PER_CONNECTION))
                // The port asks no certificate: a connection that does not answer pings is
                // closed, and none lives longer than a renewal needs (a sidecar reconnects).
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .max_connection_age(Duration::from_secs(300))
                .add_service(CertificatesServer::new(service).max_decoding_message_size(crate::ca::MAX_REQUEST_BYTES))
                .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
                    let _ = ca_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the CA's listener failed");
            }
        }))
    }
}

/// Keeps the control plane's own certificate renewed at 70% of its life, and signed by the CA
/// in force when that changes.
async fn renew_own(
    signer: Arc<ArcSwap<CaSigner>>,
    tls: Arc<TlsStore>,
    own: SpiffeId,
    ttl: Duration,
    ca_changed: Arc<Notify>,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // At 70% of what is left of the certificate in force (shorter than `ttl` near the CA's
        // end), and never in a busy loop. One that already lasts to the CA's end gains nothing
        // from another (each was an event, every second once the CA had ended): the next comes
        // with a new CA.
        let (lasts_to_the_end, left) = {
            let state = tls.current();
            let ca_end =
                signer.load().not_after().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            (state.credentials.not_after >= ca_end, state.credentials.life_left(std::time::SystemTime::now()))
        };
        if lasts_to_the_end {
            tokio::select! {
                _ = ca_changed.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        } else {
            let wait = left.mul_f64(0.7).clamp(Duration::from_secs(1), ttl.mul_f64(0.7));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ca_changed.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        match signer.load().issue_own(&own, ttl).map(|c| tls.install(c)) {
            Ok(Ok(state)) => {
                let c = &state.credentials;
                tracing::info!(serial = %c.serial, "control plane certificate renewed by its own CA");
                telemetry.events.emit(SecurityEvent::CertificateRotated {
                    identity: c.id.to_string(),
                    serial: c.serial.clone(),
                    not_after: c.not_after,
                });
            }
            Ok(Err(e)) => tracing::error!(error = %e, "the control plane's own certificate could not be renewed"),
            Err(e) => tracing::error!(error = %e, "the control plane's own certificate could not be renewed"),
        }
    }
}

fn der_of(signer: &CaSigner) -> Vec<Vec<u8>> {
    signer.trust_bundle().iter().map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing or mismatched CA key is `ca.key`'s mistake, not `ca.cert`'s.
    #[test]
    fn a_ca_files_mistake_is_named_by_its_own_field() {
        let dir = tempfile::tempdir().unwrap();
        let ours = crate::identity::DevCa::generate("cluster.local").unwrap().write(&dir.path().join("ours")).unwrap();
        let other =
            crate::identity::DevCa::generate("cluster.local").unwrap().write(&dir.path().join("other")).unwrap();
        let fields = |cert: &Path, key: &Path| {
            let mut ca = CaConfig { cert: cert.into(), key: key.into(), ..CaConfig::default() };
            ca.tokens.token_review = None;
            let mut errors = Vec::new();
            WorkloadCa::prepare(&ca, "cluster.local", None, &mut errors);
            errors.iter().map(|e| e.field.clone()).collect::<Vec<_>>()
        };
        assert_eq!(fields(&ours.cert, &dir.path().join("nokey")), ["ca.key"]);
        assert_eq!(fields(&ours.cert, &other.key), ["ca.key"], "another CA's key");
        assert_eq!(fields(&dir.path().join("nocert"), &ours.key), ["ca.cert"]);
    }
}
