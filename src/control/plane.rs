//! `palisade control`: the policy directory watched, the gRPC policy stream over mutual TLS, and
//! the admin listener, on one runtime.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::path::Path;

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use super::admin::ControlAdmin;
use super::catalog::{Catalog, PolicyDirectory, ScanOutcome};
use super::metrics::ControlMetrics;
use super::server::PolicyService;
use super::status::Registry;
use super::workload_ca::{self, WorkloadCa};
use crate::config::{ConfigError, ControlConfig, ProcessEnv, TelemetryConfig, Validate};
use crate::inject::InjectWebhook;
use crate::lifecycle::{bind, poll_files, runtime, stop_requested, Readiness, Running, StartError};
use crate::proto::policy_discovery_server::PolicyDiscoveryServer;
use crate::serve::{serve, ConnectionTracker, Transport};
use crate::telemetry::{SecurityEvent, Telemetry};
use crate::tls::{IdentityFiles, ServingCert, TlsStore, TrustDomains};

/// A running control plane. Call [`ControlPlane::shutdown`] to stop it.
pub struct ControlPlane {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The injection webhook's listener, when `webhook` is configured.
    pub webhook: Option<SocketAddr>,
    /// The workload CA's listener, when `ca` is configured.
    pub ca: Option<SocketAddr>,
    running: Running,
}

/// What `start` checked and built before binding, for `run`.
struct Parts {
    tls: TlsStore,
    telemetry: Telemetry,
    webhook: Option<Webhook>,
    ca: Option<WorkloadCa>,
    api: Option<Arc<crate::ca::KubeApi>>,
    /// The control plane's own identity, when its CA signs it (no files given).
    own: Option<crate::identity::SpiffeId>,
}

/// How near its end the webhook's certificate is: each stage is said once, on the way there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WebhookCertificate {
    Valid,
    EndsSoon,
    Expired,
}

impl WebhookCertificate {
    const SOON: i64 = 30 * 86_400;

    fn at(not_after: i64, now: i64) -> Self {
        match not_after - now {
            left if left <= 0 => WebhookCertificate::Expired,
            left if left < Self::SOON => WebhookCertificate::EndsSoon,
            _ => WebhookCertificate::Valid,
        }
    }
}

/// The injection webhook: what it answers, and the certificate it answers with.
struct Webhook {
    app: InjectWebhook,
    cert: ServingCert,
    listener: crate::lifecycle::Listener,
}

impl ControlPlane {
    /// Loads the identity and reads the policy directory, binds both listeners, then serves on
    /// a thread of its own. Fails before binding on any bad input.
    pub fn start(config: ControlConfig, handle_signals: bool) -> Result<ControlPlane, StartError> {
        let mut errors: Vec<ConfigError> =
            config.validate(&ProcessEnv).into_iter().map(|i| ConfigError::from_invalid(Path::new(""), i)).collect();
        let trust_domain = config.trust_domain.0.clone();
        let api = workload_ca::kube_api(&config)
            .map_err(|e| errors.push(ConfigError::new(Path::new(""), "kubernetes", e)))
            .ok()
            .flatten();
        let mut ca =
            config.ca.as_ref().and_then(|ca| WorkloadCa::prepare(ca, &trust_domain, api.as_ref(), &mut errors));
        let own_id = match &config.identity.spiffe_id {
            Some(id) => id.0.clone(),
            None => crate::channel::default_identity(&trust_domain),
        };
        let (tls, signs_own) = match (&config.identity.files, &ca) {
            (Some(files), _) => {
                let identity_files = IdentityFiles {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    trust_bundle: files.trust_bundle.clone(),
                };
                let tls = TlsStore::load(identity_files, &trust_domain, TrustDomains::new([trust_domain.as_str()]))
                    .map_err(|e| errors.push(ConfigError::new(Path::new(""), "identity.files", format!("{e:#}"))))
                    .ok();
                (tls, false)
            }
            (None, Some(ca)) => {
                let tls = ca
                    .own_store(&own_id)
                    .map_err(|e| {
                        errors.push(ConfigError::new(Path::new(""), "ca", format!("signing our own certificate: {e}")))
                    })
                    .ok();
                (tls, true)
            }
            (None, None) => (None, false), // reported by the configuration's own checks
        };
        if let Err(e) = std::fs::read_dir(&config.policies.dir) {
            let message = format!("cannot read {}: {e}", config.policies.dir.display());
            errors.push(ConfigError::new(Path::new(""), "policies.dir", message));
        }
        let telemetry = Telemetry::new(
            &TelemetryConfig { events: config.events.clone(), access_log: false, ..Default::default() },
            None,
        )
        .map_err(|e| errors.push(ConfigError::new(Path::new(""), "events.sink", e.error.to_string())))
        .ok();
        let webhook = config.webhook.as_ref().map(|w| {
            let app = InjectWebhook::from_config(w).map_err(|list| {
                errors.extend(list.into_iter().map(|(field, message)| ConfigError::new(Path::new(""), &field, message)))
            });
            let cert = ServingCert::load(&w.cert, &w.key)
                .map_err(|e| errors.push(ConfigError::new(Path::new(""), "webhook.cert", e.to_string())));
            (app, cert)
        });
        let (Some(tls), Some(telemetry), true) = (tls, telemetry, errors.is_empty()) else {
            return Err(StartError::Config(errors));
        };
        let webhook = match (webhook, &config.webhook) {
            (Some((Ok(app), Ok(cert))), Some(w)) => {
                let listener = bind(w.listen.0, "webhook.listen").map_err(StartError::System)?;
                if let Some(ca) = &ca {
                    app.follow_ca_roots(ca.bundle.subscribe());
                }
                Some(Webhook { app, cert, listener })
            }
            _ => None,
        };
        if let (Some(ca), Some(ca_config)) = (&mut ca, &config.ca) {
            ca.listener = Some(bind(ca_config.listen.0, "ca.listen").map_err(StartError::System)?);
        }
        let ca_address = ca.as_ref().and_then(|c| c.listener.as_ref()).map(|l| l.local_addr()).transpose()?;
        // One stream per sidecar: a soft limit of 1,024 files would cap the mesh near that.
        let open_files = crate::lifecycle::raise_open_files_limit();
        tracing::debug!(open_files, "open-files limit");
        let runtime = runtime(1).map_err(StartError::System)?;
        let grpc_listener = bind(config.grpc.listen.0, "grpc.listen").map_err(StartError::System)?;
        let admin_listener = bind(config.admin.listen.0, "admin.listen").map_err(StartError::System)?;
        let grpc = grpc_listener.local_addr()?;
        let admin = admin_listener.local_addr()?;
        let webhook_address = webhook.as_ref().map(|w| w.listener.local_addr()).transpose()?;
        let (shutdown, _) = watch::channel(false);
        let sender = shutdown.clone();
        let parts = Parts { tls, telemetry, webhook, ca, api, own: signs_own.then_some(own_id) };
        let thread = std::thread::Builder::new().name("palisade-control".into()).spawn(move || {
            let listeners = [grpc_listener, admin_listener];
            runtime.block_on(run(config, parts, listeners, sender, handle_signals));
            runtime.shutdown_timeout(crate::lifecycle::SHUTDOWN_GRACE);
        })?;
        Ok(ControlPlane {
            grpc,
            admin,
            webhook: webhook_address,
            ca: ca_address,
            running: Running::new(shutdown, thread),
        })
    }

    /// Closes every stream (sidecars reconnect elsewhere) and waits.
    pub fn shutdown(mut self) {
        self.running.stop();
    }

    /// Waits until the control plane has stopped (after SIGTERM).
    pub fn wait(&mut self) {
        self.running.wait();
    }
}

async fn run(
    config: ControlConfig,
    parts: Parts,
    listeners: [crate::lifecycle::Listener; 2],
    shutdown: watch::Sender<bool>,
    handle_signals: bool,
) {
    let Parts { tls, telemetry, webhook, ca, api, own } = parts;
    let (tls, telemetry) = (Arc::new(tls), Arc::new(telemetry));
    let [grpc_listener, admin_listener] = listeners.map(crate::lifecycle::Listener::into_async);
    let metrics = Arc::new(ControlMetrics::new());
    let registry = Registry::new(metrics.clone());
    let directory = Arc::new(Mutex::new(PolicyDirectory::new(config.policies.dir.clone())));
    let first = directory.lock().expect("directory lock").scan();
    let (catalog_sender, catalog) = watch::channel(Arc::new(Catalog::default()));
    publish(first, &catalog_sender, &metrics, &telemetry);

    let stop = shutdown.subscribe();
    let readiness = Arc::new(Readiness::default());
    let identity = tls.current().credentials.id.to_string();
    let admin = Arc::new(ControlAdmin {
        tls: tls.clone(),
        policies_dir: config.policies.dir.clone(),
        catalog: catalog.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
    });
    let admin_task = tokio::spawn(serve(
        admin_listener,
        Transport::Plain,
        admin,
        telemetry.clone(),
        ConnectionTracker::default(),
        stop.clone(),
    ));

    let tokens: Option<Arc<dyn crate::ca::TokenChecker>> = match (&ca, &api) {
        (Some(ca), _) => Some(ca.tokens()),
        (None, Some(api)) => Some(Arc::new(crate::ca::BoundedTokens::new(Arc::new(crate::ca::TokenReviewTokens {
            api: api.clone(),
            audience: "palisade".into(),
        })))),
        (None, None) => None,
    };
    let service = PolicyService {
        labels: super::server::LabelSource {
            tokens,
            api: api.clone(),
            trust_hello: config.policies.trust_hello_labels,
        },
        bundle: ca.as_ref().map(|ca| ca.bundle.subscribe()),
        catalog: catalog.clone(),
        registry,
        metrics: metrics.clone(),
        telemetry: telemetry.clone(),
        trust_domain: config.trust_domain.0.clone(),
        revision_hold: config.policies.revision_hold.0,
        stop: stop.clone(),
    };
    let refused = {
        let (metrics, telemetry) = (metrics.clone(), telemetry.clone());
        let listener = grpc_listener.local_addr().ok();
        move |peer: SocketAddr, reason: String| {
            metrics.refused.with_label_values(&["handshake"]).inc();
            telemetry.tls_refused("control", peer, listener, reason);
        }
    };
    let incoming = super::transport::accept_mtls(grpc_listener, tls.clone(), refused, stop.clone());
    let mut grpc_stop = stop.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .max_concurrent_streams(Some(super::server::MAX_STREAMS_PER_CONNECTION))
            .add_service(
                PolicyDiscoveryServer::new(service).max_decoding_message_size(super::server::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            }),
    );

    let every = config.policies.poll_interval.0;
    let scanning = directory.clone();
    let (sender, m, t) = (catalog_sender, metrics.clone(), telemetry.clone());
    tokio::spawn(poll_files(
        every,
        stop.clone(),
        move || scanning.lock().expect("directory lock").scan(),
        move |outcome| publish(outcome, &sender, &m, &t),
    ));
    let reload_every =
        config.identity.files.as_ref().map_or(std::time::Duration::from_secs(1), |f| f.reload_interval.0);
    let ca_task = ca.and_then(|ca| ca.spawn(tls.clone(), own, &metrics, telemetry.clone(), reload_every, stop.clone()));
    let certificates = tls.clone();
    let mut own_id = tls.current().credentials.id.clone();
    let rotations = telemetry.clone();
    tokio::spawn(poll_files(
        reload_every,
        stop.clone(),
        move || certificates.reload_if_changed(),
        move |outcome| match outcome {
            Ok(Some(state)) => {
                let creds = &state.credentials;
                if creds.id != own_id {
                    // Sidecars check the control plane by its SPIFFE ID: a new one fails every
                    // stream that does not expect it.
                    tracing::warn!(from = %own_id, to = %creds.id, "the reloaded certificate names another SPIFFE ID: sidecars that expect the old one refuse this control plane");
                    own_id = creds.id.clone();
                }
                tracing::info!(serial = %creds.serial, "control plane certificate reloaded");
                rotations.events.emit(SecurityEvent::CertificateRotated {
                    identity: creds.id.to_string(),
                    serial: creds.serial.clone(),
                    not_after: creds.not_after,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "new certificate files are not usable; keeping the current ones");
                rotations.events.emit(SecurityEvent::CertificateReloadFailed { reason: e.to_string() });
            }
        },
    ));
    let webhook_task = webhook.map(|Webhook { app, cert, listener }| {
        let listener = listener.into_async();
        let acceptor = cert.acceptor().expect("a certificate that loaded makes an acceptor");
        let cert = Arc::new(cert);
        let expiry = metrics.webhook_certificate_expiry.clone();
        let _ = metrics.registry().register(Box::new(expiry.clone()));
        let watched = cert.clone();
        let mut said = WebhookCertificate::Valid;
        tokio::spawn(poll_files(
            reload_every,
            stop.clone(),
            move || cert.reload_if_changed(),
            move |outcome| {
                match outcome {
                    Ok(true) => {
                        tracing::info!("webhook certificate reloaded");
                        said = WebhookCertificate::Valid;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e,
                        "new webhook certificate files are not usable; keeping the current ones"),
                }
                let not_after = watched.not_after();
                expiry.set(not_after as f64);
                let stage = WebhookCertificate::at(not_after, (crate::telemetry::now_millis() / 1000) as i64);
                if stage > said {
                    let ends = crate::telemetry::rfc3339_millis(not_after.max(0) as u64 * 1000);
                    match stage {
                        WebhookCertificate::Expired => tracing::error!(%ends,
                            "the injection webhook's certificate has expired: the API server refuses to call the webhook, and with failurePolicy Fail every pod of a meshed namespace is refused; renew it (the chart renews a generated one on helm upgrade within 30 days of its end; cert-manager renews its own)"),
                        _ => tracing::warn!(%ends,
                            "the injection webhook's certificate ends within 30 days: renew it (helm upgrade renews a generated one; cert-manager renews its own)"),
                    }
                }
                said = said.max(stage);
            },
        ));
        // pingora closes an idle HTTP/2 connection only when told to (serve.rs's deadlines hold
        // HTTP/1.1 and the preface): the API server's, or anyone's who can reach the port.
        let mut app = pingora::apps::http_app::HttpServer::new_app(app);
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(crate::serve::ConnectionLimits::default().idle_timeout);
        app.server_options = Some(options);
        // The API server holds a few connections (HTTP/2 carries its reviews side by side); any
        // pod can reach the port too, and must not hold all of it.
        let limits = crate::serve::ConnectionLimits {
            direction: "webhook",
            max_connections_per_source: Some(super::transport::MAX_CONNECTIONS_PER_SOURCE),
            ..Default::default()
        };
        tokio::spawn(crate::serve::serve_with(
            listener,
            Transport::Tls(acceptor),
            Arc::new(app),
            telemetry.clone(),
            ConnectionTracker::default(),
            stop.clone(),
            limits,
        ))
    });
    readiness.listeners.store(true, Ordering::Release);
    crate::memory::release_startup_pages_soon();
    crate::memory::return_freed_heap_periodically(metrics.registry(), stop.clone());
    tracing::info!(%identity, grpc = %config.grpc.listen, admin = %config.admin.listen,
        policies = %config.policies.dir.display(), "control plane ready");

    if !stop_requested(handle_signals, stop.clone()).await {
        return;
    }
    readiness.draining.store(true, Ordering::Release);
    shutdown.send_replace(true);
    match tokio::time::timeout(Duration::from_secs(5), grpc_task).await {
        Ok(_) => tracing::info!("streams closed; exiting"),
        Err(_) => tracing::warn!("streams still open after 5 s; exiting"),
    }
    let _ = admin_task.await;
    for task in [webhook_task, ca_task].into_iter().flatten() {
        let _ = task.await;
    }
}

/// Reports what a scan found and hands a changed catalog to every stream.
fn publish(
    outcome: ScanOutcome,
    sender: &watch::Sender<Arc<Catalog>>,
    metrics: &ControlMetrics,
    telemetry: &Telemetry,
) {
    // Before the first catalog there is no version in force; "none" says so, as a sidecar does.
    let kept = Some(sender.borrow().version.clone()).filter(|v| !v.is_empty()).unwrap_or_else(|| "none".into());
    for (file, errors) in &outcome.held {
        for error in errors {
            tracing::info!(%file, %error, "policy file held back with a refused one");
        }
    }
    for (file, errors) in &outcome.rejected {
        metrics.policy_updates.with_label_values(&["rejected"]).inc();
        for error in errors {
            tracing::warn!(%file, %error, "policy file rejected; the policies in force do not change");
        }
        telemetry.events.emit(SecurityEvent::PolicyRejected { kept_version: kept.clone(), errors: errors.clone() });
    }
    for file in &outcome.accepted {
        metrics.policy_updates.with_label_values(&["applied"]).inc();
        tracing::info!(%file, "policy file accepted");
    }
    let Some(mut catalog) = outcome.catalog else { return };
    if let Some(why) = &catalog.unservable_because {
        tracing::warn!(reason = %why, "no policy is sent to any sidecar yet");
    }
    catalog.generation = sender.borrow().generation + 1;
    metrics.policies.set(catalog.len() as i64);
    metrics.servable.set(i64::from(catalog.servable()));
    metrics.version.reset();
    metrics.version.with_label_values(&["dir", &catalog.version]).set(1);
    // A catalog that is not sent (a refused file never seen good holds every stream) is in force
    // nowhere: its event comes when it is sent.
    let was_servable = sender.borrow().servable();
    if catalog.servable() && (catalog.version != sender.borrow().version || !was_servable) {
        let names: Vec<String> = catalog.sources.iter().flat_map(|s| s.policies.iter().cloned()).collect();
        tracing::info!(version = %catalog.version, policies = names.len(), "policy catalog in force");
        telemetry.events.emit(SecurityEvent::PolicyApplied { version: catalog.version.clone(), policies: names });
    }
    sender.send_replace(Arc::new(catalog));
}
