//! Wiring: the one place that knows every module. Builds a sidecar from its configuration,
//! binds its listeners, runs it on one runtime, and drains it on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::path::Path;

use pingora::apps::HttpServerOptions;
use pingora::proxy::{http_proxy, ProxyHttp};
use pingora::server::configuration::ServerConf;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::channel::{ChannelState, PolicyChannel};
use crate::config::{ConfigError, PinnedAddresses, ProcessEnv, SidecarConfig, TraceSettings, Validate};
pub use crate::lifecycle::StartError;
use crate::lifecycle::{bind, poll_files, runtime, stop_requested, Readiness, Running};
use crate::policy::{PolicyOptions, PolicyStore};
use crate::proxy::{Inbound, Outbound};
use crate::serve::{serve_with, ConnectionLimits, ConnectionTracker, OpaqueTcp, Transport};
use crate::telemetry::{LogLevel, SecurityEvent, Telemetry};
use crate::tls::{IdentityFiles, TlsStore, TrustDomains};

/// A running sidecar. Dropping it does not stop it; call [`Sidecar::shutdown`].
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    running: Running,
}

/// Options that differ between the `palisade sidecar` process and an embedded sidecar.
#[derive(Clone)]
pub struct RunOptions {
    /// Stop on SIGTERM and SIGINT (a process); embedded sidecars leave signals alone.
    pub handle_signals: bool,
    pub log_level: LogLevel,
}

impl Sidecar {
    /// Checks everything, binds every listener, then serves on a thread of its own.
    /// Returns once the sidecar accepts connections; fails before binding on any bad input.
    pub fn start(config: SidecarConfig, options: RunOptions) -> Result<Sidecar, StartError> {
        let runtime = runtime(config.threads).map_err(StartError::System)?;
        // Policies that name a remote JWKS start its background fetch as they compile.
        let parts = {
            let _entered = runtime.enter();
            Parts::build(&config)?
        };
        let listeners = [
            bind(config.inbound.listen.0, "inbound.listen").map_err(StartError::System)?,
            bind(config.outbound.listen.0, "outbound.listen").map_err(StartError::System)?,
            bind(config.admin.listen.0, "admin.listen").map_err(StartError::System)?,
        ];
        let [inbound, outbound, admin] = listeners.each_ref().map(|l| l.local_addr().expect("bound address"));
        parts.policy.announce();
        let (shutdown, _) = watch::channel(false);
        let sender = shutdown.clone();
        let drain = config.drain_period.0;
        let bound = Bound { inbound, outbound, admin };
        let thread = std::thread::Builder::new().name("palisade".into()).spawn(move || {
            runtime.block_on(run(config, parts, listeners, bound, sender, drain, options));
            // Work still on the blocking pool (a file read) must not hold the exit.
            runtime.shutdown_timeout(crate::lifecycle::SHUTDOWN_GRACE);
        })?;
        Ok(Sidecar { inbound, outbound, admin, running: Running::new(shutdown, thread) })
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain period) and waits.
    pub fn shutdown(mut self) {
        self.running.stop();
    }

    /// Waits until the sidecar has stopped (after SIGTERM or `POST /shutdown`).
    pub fn wait(&mut self) {
        self.running.wait();
    }
}

/// The addresses the listeners got (port 0 in the configuration picks a free one).
#[derive(Clone, Copy)]
struct Bound {
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

/// Everything built from the configuration before any port is bound.
struct Parts {
    /// Where the certificate comes from when the control plane's CA signs it: the CA's
    /// address, the identity it must present, and the token file.
    identity: Option<IdentityFromCa>,
    /// The workload with its downward-API labels read.
    workload: crate::config::Workload,
    channel: Option<Arc<ChannelState>>,
    telemetry: Arc<Telemetry>,
    tls: Arc<TlsStore>,
    policy: Arc<PolicyStore>,
    reload_interval: Duration,
}

impl Parts {
    /// Everything that can be checked before binding, every mistake at once.
    fn build(config: &SidecarConfig) -> Result<Parts, StartError> {
        let mut errors: Vec<ConfigError> =
            config.validate(&ProcessEnv).into_iter().map(|i| ConfigError::from_invalid(Path::new(""), i)).collect();
        let files = config.identity.files.clone().unwrap_or_default();
        let trust_domain = &config.trust_domain.0;
        let domains = TrustDomains::new([trust_domain.as_str()]);
        // With its own certificate the sidecar is the workload that certificate names; with the
        // control plane's CA, the certificate is issued for the workload configured.
        let (tls, identity, workload) = match &config.identity.control_plane {
            Some(cp) => {
                let workload = resolve_workload(config, None, &mut errors);
                match from_control_plane(cp, trust_domain, &workload, domains) {
                    Ok((tls, client)) => (Some(tls), Some(client), workload),
                    Err((field, e)) => {
                        errors.push(ConfigError::new(Path::new(""), &field, e));
                        (None, None, workload)
                    }
                }
            }
            None => {
                let identity_files = IdentityFiles {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    trust_bundle: files.trust_bundle.clone(),
                };
                let tls = TlsStore::load(identity_files, trust_domain, domains)
                    .map(TlsStore::keep_identity)
                    .map_err(|e| errors.push(ConfigError::new(Path::new(""), "identity.files", format!("{e:#}"))))
                    .ok();
                let certificate = tls.as_ref().map(|tls| tls.current().credentials.id.clone());
                let workload = resolve_workload(config, certificate.as_ref(), &mut errors);
                (tls, None, workload)
            }
        };
        let traces = TraceSettings::resolve(config.telemetry.otlp.as_ref(), &ProcessEnv, &workload).unwrap_or_default();
        let telemetry = Telemetry::new(&config.telemetry, traces)
            .map_err(|e| errors.push(ConfigError::new(Path::new(""), e.setting, e.error.to_string())))
            .ok()
            .map(Arc::new);
        let (Some(tls), Some(telemetry)) = (tls, telemetry) else {
            return Err(StartError::Config(errors));
        };
        let options = PolicyOptions {
            default_mtls: config.inbound.mtls,
            files: config.policy.files.clone(),
            workload: workload.clone(),
            allow_permissive: config.inbound.allow_permissive,
            fail_mode: config.policy.fail_mode,
            control_plane: config.policy.control_plane.is_some(),
        };
        let policy = PolicyStore::load(options, telemetry.clone()).map_err(|mut e| errors.append(&mut e)).ok();
        match policy {
            Some(policy) if errors.is_empty() => Ok(Parts {
                identity,
                workload,
                channel: config.policy.control_plane.as_ref().map(|_| Arc::new(ChannelState::default())),
                telemetry,
                tls: Arc::new(tls),
                policy: Arc::new(policy),
                reload_interval: files.reload_interval.0,
            }),
            _ => Err(StartError::Config(errors)),
        }
    }
}

/// The workload the configuration and the certificate name together; a mistake is added to
/// `errors` and the defaults stand in, so that every other mistake is still found.
fn resolve_workload(
    config: &SidecarConfig,
    certificate: Option<&crate::identity::SpiffeId>,
    errors: &mut Vec<ConfigError>,
) -> crate::config::Workload {
    config.workload.resolve(certificate).unwrap_or_else(|(field, e)| {
        errors.push(ConfigError::new(Path::new(""), field, e));
        crate::config::Workload::default()
    })
}

/// A sidecar's certificate from the control plane's CA: where the CA is, and what proves this
/// workload to it.
struct IdentityFromCa {
    host: String,
    port: u16,
    expected: crate::identity::SpiffeId,
    own: crate::identity::SpiffeId,
    token_file: std::path::PathBuf,
    state: Arc<crate::channel::IdentityState>,
}

/// A store that starts with a placeholder beside the roots given (trustAnchors, else the
/// trustBundle file), and what the identity client needs to replace it.
fn from_control_plane(
    cp: &crate::config::IdentityFromControlPlane,
    trust_domain: &str,
    workload: &crate::config::Workload,
    domains: TrustDomains,
) -> Result<(TlsStore, IdentityFromCa), (String, String)> {
    use rustls_pki_types::pem::PemObject;
    let field = |f: &str| format!("identity.controlPlane.{f}");
    let (host, port) = crate::channel::parse_address(&cp.address).map_err(|e| (field("address"), e))?;
    let (pem, from) = match &cp.trust_anchors {
        Some(pem) => (pem.clone().into_bytes(), "trustAnchors"),
        None => (
            crate::files::read_regular(&cp.trust_bundle, crate::files::MAX_KEY_FILE_BYTES)
                .map_err(|e| (field("trustBundle"), format!("{}: {e}", cp.trust_bundle.display())))?,
            "trustBundle",
        ),
    };
    crate::identity::check_trust_anchors(&String::from_utf8_lossy(&pem)).map_err(|e| (field(from), e))?;
    let roots: Vec<rustls_pki_types::CertificateDer<'static>> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| (field(from), format!("not PEM certificates: {e}")))?;
    let own = crate::identity::SpiffeId::for_workload(trust_domain, &workload.namespace, &workload.service_account)
        .map_err(|e| ("workload".to_string(), e.to_string()))?;
    let tls = TlsStore::bootstrap(&own, roots, domains).map_err(|e| (field(from), e.to_string()))?;
    let expected = crate::channel::default_identity(trust_domain);
    let identity = IdentityFromCa {
        host,
        port,
        expected,
        own,
        token_file: cp.token_file.clone(),
        state: Arc::new(crate::channel::IdentityState::default()),
    };
    Ok((tls, identity))
}

/// The most of a stream's answer h2 holds for a caller that is not taking it.
const H2_SEND_BUFFER_BYTES: usize = 64 * 1024;
/// What one stream's body may hold of the sidecar's memory while the app is not taking it.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// What all of a connection's bodies may hold while their app is not taking them: 64 streams'
/// windows. More streams than that stalled at once (a caller's doing) hold up that caller's
/// other bodies, not the sidecar's memory.
const H2_MAX_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A proxy whose parser refusals carry the sidecar's JSON body (see [`crate::proxy::Strict`]).
fn proxy_app<P>(
    conf: &Arc<ServerConf>,
    inner: P,
    limits: &crate::config::LimitsConfig,
    telemetry: &Arc<Telemetry>,
    direction: &'static str,
) -> Arc<crate::proxy::Strict<pingora::proxy::HttpProxy<P>>>
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let mut app = http_proxy(conf, inner);
    let mut options = HttpServerOptions::default();
    // gRPC clients speak HTTP/2 over plaintext with prior knowledge.
    options.h2c = true;
    // Idleness, HTTP/2's included, is serve.rs's: pingora's `h2_idle_timeout` kept a timer per
    // idle spell alive for the whole timeout.
    app.server_options = Some(options);
    // limits.http2, on pingora's bounded defaults (h2's own rapid-reset and CONTINUATION guards
    // stay; the reset rate is serve.rs's).
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(limits.http2.max_concurrent_streams);
    h2.max_header_list_size(limits.http2.max_header_list_bytes);
    // What a stream's answer may hold in memory while its caller reads nothing: with h2's ~400 KB,
    // a caller that granted large windows and stopped reading pinned over 500 KB per stream
    // (streams × connections of it) until limits.sendTimeout; one 64 KiB piece keeps a
    // stream's answer flowing while the sidecar reads the next.
    h2.max_send_buffer_size(H2_SEND_BUFFER_BYTES);
    // What a caller may send of a body before the app takes it. h2's default of 64 KiB for the
    // stream and the whole connection alike meant that one upload the app stopped reading held up
    // every other body on the connection (all of a peer sidecar's requests to this pod), and that
    // uploads across nodes went no faster than 64 KiB per round trip on a connection.
    h2.initial_window_size(H2_STREAM_WINDOW);
    let streams = limits.http2.max_concurrent_streams;
    h2.initial_connection_window_size(H2_STREAM_WINDOW.saturating_mul(streams).min(H2_MAX_CONNECTION_WINDOW));
    app.h2_options = Some(h2);
    Arc::new(crate::proxy::Strict { app: Arc::new(app), telemetry: telemetry.clone(), direction })
}

async fn run(
    config: SidecarConfig,
    parts: Parts,
    listeners: [crate::lifecycle::Listener; 3],
    bound: Bound,
    shutdown: watch::Sender<bool>,
    drain: Duration,
    options: RunOptions,
) {
    let Parts { identity, workload, channel, telemetry, tls, policy, reload_interval } = parts;
    let [inbound_listener, outbound_listener, admin_listener] = listeners.map(crate::lifecycle::Listener::into_async);
    // pingora builds a TLS connector per proxy and, without a CA file, parses the platform's
    // whole public root store into it. Sidecars never use that connector (both hops are ours),
    // and a mesh proxy should trust no public CA anyway: point it at the mesh's bundle.
    let conf = Arc::new(ServerConf {
        ca_file: tls.files().map(|f| f.trust_bundle.display().to_string()),
        ..ServerConf::default()
    });
    let readiness = Arc::new(Readiness::default());
    let data_path = ConnectionTracker::default();

    // One memory guard for the sidecar: the heap is the process's, whichever listener fills it.
    let memory_limit = config.limits.memory_limit(crate::memory::container_memory_limit());
    let memory = crate::memory::Pressure::new(memory_limit);
    match memory.limit() {
        Some(limit) => tracing::info!(
            limit,
            "heap past this sheds requests and cuts off callers that do not read (limits.maxMemoryBytes)"
        ),
        None => tracing::debug!("no memory limit (limits.maxMemoryBytes)"),
    }
    let memory_setting = memory.setting();
    if crate::memory::heap_in_use().is_some() {
        let metrics = &telemetry.metrics;
        metrics.register_read_at_scrape(
            "palisade_memory_heap_bytes",
            "Heap in use (glibc's count of allocated bytes), as limits.maxMemoryBytes measures it.",
            || crate::memory::heap_in_use().unwrap_or(0) as f64,
        );
        let limit = memory.limit().unwrap_or(0) as f64;
        metrics.register_read_at_scrape(
            "palisade_memory_limit_bytes",
            "limits.maxMemoryBytes in force (0: none).",
            move || limit,
        );
        let guard = memory.clone();
        metrics.register_read_at_scrape(
            "palisade_memory_overloaded",
            "1 while the heap is over limits.maxMemoryBytes: new requests and connections shed, idle connections and stalled answers cut.",
            move || f64::from(u8::from(guard.is_over())),
        );
    }
    let caller_timeouts = |direction, listener| {
        let counted = |reason: crate::telemetry::RefusalReason, limit: &dyn std::fmt::Display| {
            let series = telemetry.metrics.connections_closed.with_label_values(&[direction, reason.label()]);
            telemetry.refusals.counter(direction, reason, limit, series).at(listener)
        };
        use crate::telemetry::RefusalReason::{BodyTimeout, MemoryCut, SendTimeout};
        let (body, send) = (config.limits.body_timeout, config.limits.send_timeout);
        crate::proxy::CallerTimeouts::new((body.0, counted(BodyTimeout, &body)), (send.0, counted(SendTimeout, &send)))
            .memory(memory.clone(), counted(MemoryCut, &memory_setting))
    };
    let open_files = crate::lifecycle::raise_open_files_limit();
    let (data_connections, admin_connections) =
        crate::serve::connection_budget(open_files, config.limits.max_connections);
    if data_connections < config.limits.max_connections {
        tracing::warn!(
            open_files,
            configured = config.limits.max_connections,
            data_connections,
            admin_connections,
            "the open-files limit (its hard limit, which the sidecar cannot raise) holds fewer connections than \
             limits.maxConnections: each data listener takes at most data_connections and the admin listener \
             admin_connections; raise the container's nofile hard limit, or set limits.maxConnections to \
             data_connections to say so in the configuration"
        );
    }
    // Each request in flight may hold a file of its own (its connection to the app or a
    // passthrough server), however few connections carry them: one HTTP/2 connection to an
    // HTTP/1.1 app holds one per stream. So a listener's requests in flight are held to its
    // connections' budget too, and the files cannot run out under the probes.
    let files_allow = crate::serve::connection_budget(open_files, usize::MAX).0;
    let max_inflight = config.limits.max_inflight.min(files_allow);
    if max_inflight < config.limits.max_inflight {
        tracing::warn!(
            open_files,
            configured = config.limits.max_inflight,
            max_inflight,
            "the open-files limit holds fewer requests in flight than limits.maxInflight: each data listener sheds \
             (503) past max_inflight, as each may hold a file to the app; raise the container's nofile hard limit, \
             or set limits.maxInflight to max_inflight to say so in the configuration"
        );
    }
    let per_source = config.limits.max_inflight_per_source.unwrap_or(max_inflight / 4).max(1);
    // A listener's requests in flight; the inbound one also holds each source to its share.
    let inflight = |direction, listener, per_source: Option<usize>| {
        let shed = telemetry.metrics.requests_shed.with_label_values(&[direction]);
        let counted = |reason, limit: &dyn std::fmt::Display| {
            telemetry.refusals.counter(direction, reason, limit, shed.clone()).at(listener)
        };
        use crate::telemetry::RefusalReason::{MemoryShed, Shed, SourceShed};
        let max = max_inflight;
        let inflight = crate::proxy::Inflight::with_memory(
            max,
            counted(Shed, &max),
            memory.clone(),
            counted(MemoryShed, &memory_setting),
        );
        match per_source {
            Some(share) => inflight.per_source(share, counted(SourceShed, &share)),
            None => inflight,
        }
    };
    let inbound = proxy_app(
        &conf,
        Inbound::new(
            config.inbound.app.0,
            config.inbound.app_protocol,
            config.inbound.app_timeout.map(|t| t.0),
            policy.clone(),
            telemetry.clone(),
        )
        .shedding(inflight("inbound", bound.inbound, Some(per_source)))
        .caller_timeouts(caller_timeouts("inbound", bound.inbound))
        .underscore_headers(config.inbound.headers_with_underscores),
        &config.limits,
        &telemetry,
        "inbound",
    );
    let outbound = proxy_app(
        &conf,
        Outbound::new(
            &config.outbound.destinations,
            &config.outbound.passthrough,
            bound.outbound,
            tls.clone(),
            telemetry.clone(),
        )
        .shedding(inflight("outbound", bound.outbound, None))
        .caller_timeouts(caller_timeouts("outbound", bound.outbound)),
        &config.limits,
        &telemetry,
        "outbound",
    );
    let identity_state = identity.as_ref().map(|i| i.state.clone());
    let admin = Arc::new(Admin {
        identity: identity_state.clone(),
        telemetry: telemetry.clone(),
        tls: tls.clone(),
        policy: policy.clone(),
        channel: channel.clone(),
        readiness: readiness.clone(),
        config: {
            // The limits in force, where the open files held them below the file's.
            let mut dump = serde_json::to_value(&config).expect("configuration serialises");
            let limits = &mut dump["limits"];
            limits["maxConnections"] = data_connections.into();
            limits["maxInflight"] = max_inflight.into();
            limits["maxInflightPerSource"] = per_source.into();
            dump
        },
        app_probes: config.admin.app_probes.clone(),
        log_level: options.log_level.clone(),
        shutdown: shutdown.clone(),
    });
    let inbound_transport = Transport::Mesh(Arc::new(crate::serve::InboundTcp {
        tls: tls.clone(),
        policy: policy.clone(),
        app: config.inbound.app.0,
        opaque_ports: config.inbound.opaque_ports.clone(),
        telemetry: telemetry.clone(),
        plaintext_idle: config.limits.idle_timeout.0,
    }));

    let stop = shutdown.subscribe();
    let limits = |direction| ConnectionLimits {
        direction,
        header_timeout: config.limits.header_timeout.0,
        idle_timeout: config.limits.idle_timeout.0,
        max_connections: if direction == "admin" { admin_connections } else { data_connections },
        // The outbound listener's only caller is the pod's own app: one source.
        max_connections_per_source: match direction {
            "outbound" => None,
            "admin" => Some(config.limits.max_connections_per_source.min(crate::serve::ADMIN_CONNECTIONS_PER_SOURCE)),
            _ => Some(config.limits.max_connections_per_source),
        },
        head_timeout_answer: Some(crate::serve::HeadTimeoutAnswer(Arc::new({
            // The admin port's answers are not the data path's requests.
            let telemetry = (direction != "admin").then(|| telemetry.clone());
            move |peer, principal| {
                crate::proxy::request_timeout_answer(telemetry.as_deref(), direction, peer, principal)
            }
        }))),
        max_resets_per_second: Some(config.limits.http2.max_resets_per_second),
        memory: (direction != "admin" && memory.limit().is_some()).then(|| memory.clone()),
    };
    let serving = [
        tokio::spawn(serve_with(
            inbound_listener,
            inbound_transport,
            inbound,
            telemetry.clone(),
            data_path.clone(),
            stop.clone(),
            limits("inbound"),
        )),
        tokio::spawn(serve_with(
            outbound_listener,
            Transport::Outbound(Arc::new(OpaqueTcp::new(
                &config.outbound.passthrough,
                &config.outbound.opaque_ports,
                PinnedAddresses::new(&config.outbound.destinations),
                tls.clone(),
                &telemetry,
            ))),
            outbound,
            telemetry.clone(),
            data_path.clone(),
            stop.clone(),
            limits("outbound"),
        )),
    ];
    // The admin listener outlives the drain, so /ready can say 503 while it runs. It has its own
    // connection slots, so a data port at its limit leaves /ready answering.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(serve_with(
        admin_listener,
        Transport::Plain,
        admin,
        telemetry.clone(),
        ConnectionTracker::default(),
        admin_stop_rx,
        limits("admin"),
    ));
    tokio::spawn(watch_certificates(tls.clone(), telemetry.clone(), reload_interval, stop.clone()));
    if let Some(identity) = identity {
        let client = crate::channel::IdentityClient {
            host: identity.host,
            port: identity.port,
            expected: identity.expected,
            own: identity.own,
            token_file: identity.token_file,
            tls: tls.clone(),
            telemetry: telemetry.clone(),
            state: identity.state,
        };
        tokio::spawn(client.run(stop.clone()));
    }
    tokio::spawn(watch_policy(policy.clone(), reload_interval, stop.clone()));
    if let (Some(address), Some(state)) = (&config.policy.control_plane, &channel) {
        let expected = match &config.policy.control_plane_identity {
            Some(id) => id.0.clone(),
            None => crate::channel::default_identity(&config.trust_domain.0),
        };
        let node = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), bound.inbound.port())
        });
        let channel = PolicyChannel {
            address: address.clone(),
            expected,
            tls: tls.clone(),
            policy: policy.clone(),
            workload,
            node,
            token_file: config
                .policy
                .token_file
                .clone()
                .or_else(|| config.identity.control_plane.as_ref().map(|cp| cp.token_file.clone())),
            identity: identity_state.clone(),
            telemetry: telemetry.clone(),
            state: state.clone(),
        };
        tokio::spawn(channel.run(stop.clone()));
    }
    if telemetry.traces.is_some() {
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            if let Some(traces) = &telemetry.traces {
                traces.export().await;
            }
        });
    }
    readiness.listeners.store(true, Ordering::Release);
    crate::memory::release_startup_pages_soon();
    crate::memory::return_freed_heap_periodically(telemetry.metrics.registry(), stop.clone());
    tracing::info!(
        identity = %tls.current().credentials.id,
        inbound = %bound.inbound, outbound = %bound.outbound, admin = %bound.admin,
        // Listening is not ready: `/ready` also waits for a valid certificate and, with
        // failMode closed, a first policy.
        "sidecar listening; /ready says when it serves"
    );

    if !stop_requested(options.handle_signals, stop.clone()).await {
        return;
    }
    readiness.draining.store(true, Ordering::Release);
    shutdown.send_replace(true);
    for task in serving {
        let _ = task.await;
    }
    match tokio::time::timeout(drain, data_path.idle()).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(open = data_path.count(), "drain period over; closing the remaining connections"),
    }
    admin_stop.send_replace(true);
    let _ = admin_task.await;
    // What the connections that drained were refused after the listeners stopped, and every
    // event and access-log line emitted so far, written before the process exits (tester u2: a
    // flood's last aggregate event was missing from the file in 4 runs of 7).
    telemetry.flush_refusals();
    let written = telemetry.clone();
    let _ = tokio::task::spawn_blocking(move || written.flush()).await;
}

/// Swaps in a new policy snapshot when the files change and are valid; drops idle buckets.
async fn watch_policy(policy: Arc<PolicyStore>, every: Duration, stop: watch::Receiver<bool>) {
    let store = policy.clone();
    poll_files(
        every,
        stop,
        move || {
            store.reload_if_changed();
        },
        |()| policy.current().forget_idle_buckets(),
    )
    .await
}

/// Swaps in new credentials when the identity files change and are usable.
async fn watch_certificates(
    tls: Arc<TlsStore>,
    telemetry: Arc<Telemetry>,
    every: Duration,
    stop: watch::Receiver<bool>,
) {
    let in_force = tls.clone();
    // A certificate from the CA is renewed, and its failures reported, by the identity client.
    let from_files = tls.files().is_some();
    // The serial of the certificate whose expiry was reported: once each, not once per look.
    let mut expiry_reported: Option<String> = None;
    poll_files(
        every,
        stop,
        move || tls.reload_if_changed(),
        |outcome| match outcome {
            Ok(Some(state)) => {
                let creds = &state.credentials;
                tracing::info!(identity = %creds.id, serial = %creds.serial, "certificate and trust bundle reloaded");
                telemetry.metrics.certificate_reloads.with_label_values(&["applied"]).inc();
                telemetry.metrics.certificate_expiry.set(creds.not_after as f64);
                telemetry.events.emit(SecurityEvent::CertificateRotated {
                    identity: creds.id.to_string(),
                    serial: creds.serial.clone(),
                    not_after: creds.not_after,
                });
            }
            // Files whose writer stopped renewing (cert-manager or SPIRE down, a Secret no
            // longer projected) leave an expired certificate in force: /ready says so, and so
            // must the log and the events an operator alerts on.
            Ok(None) if from_files => {
                let state = in_force.current();
                let creds = &state.credentials;
                if creds.expired_at(SystemTime::now()) && expiry_reported.as_deref() != Some(creds.serial.as_str()) {
                    tracing::error!(identity = %creds.id, serial = %creds.serial, not_after = creds.not_after,
                        "the workload certificate has expired and its files hold no newer one: peers refuse this sidecar and it is not ready until they do");
                    telemetry.events.emit(SecurityEvent::CertificateExpired {
                        identity: creds.id.to_string(),
                        serial: creds.serial.clone(),
                        not_after: creds.not_after,
                    });
                    expiry_reported = Some(creds.serial.clone());
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "new certificate files are not usable; keeping the current ones");
                telemetry.metrics.certificate_reloads.with_label_values(&["rejected"]).inc();
                telemetry.events.emit(SecurityEvent::CertificateReloadFailed { reason: e.to_string() });
            }
        },
    )
    .await
}
