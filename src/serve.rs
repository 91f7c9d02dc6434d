//! Accepting connections: TLS (STRICT), TLS or plaintext sniffed by the first byte (PERMISSIVE),
//! or plaintext (outbound, admin); then handing each stream to a pingora app. Captured outbound
//! connections that are not HTTP are relayed or refused here ([`opaque`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::AsyncListener;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::sync::{watch, Notify};

use crate::config::{HumanDuration, MtlsMode};
use crate::memory::CutWait;
use crate::policy::PolicyStore;
use crate::telemetry::{RefusalCounter, RefusalReason, Telemetry};
use crate::tls::HelloFor;
pub use inbound_tcp::InboundTcp;
use inbound_tcp::Spoke;

mod h2_frames;
mod inbound_tcp;
mod opaque;
use h2_frames::H2Frames;
pub(crate) use h2_frames::PREFACE as H2_PREFACE;
pub use opaque::OpaqueTcp;

/// A TLS ClientHello starts with a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections per listener by default (SPEC `limits.maxConnections`); past it new ones are
/// closed at once, so a flood of idle or half-open connections cannot exhaust file descriptors or
/// memory.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 10_000;

/// Files kept for all but the listeners' connections: the listeners, certificate and policy
/// files, the control channel, JWKS fetches, logs, the runtime's own.
const FILES_BESIDES_CONNECTIONS: u64 = 128;

/// A source may hold this many admin connections (kubelet's probes and a scraper need a few): a
/// node's worth of pods holding the configured per-source count could fill the admin's slots.
pub const ADMIN_CONNECTIONS_PER_SOURCE: usize = 64;

/// How many connections each data listener and the admin listener may hold with `open_files`
/// files, at most `configured` each: `(data, admin)`. A data connection may hold a second file
/// (its upstream), and a tenth is the admin's, so that when the data ports are full there are
/// still files for the probes' connections, and the data ports fill before the files run out.
pub fn connection_budget(open_files: u64, configured: usize) -> (usize, usize) {
    let usable = open_files.saturating_sub(FILES_BESIDES_CONNECTIONS);
    let admin = (usable / 10).max(1);
    let data = ((usable - admin.min(usable)) / 4).max(1);
    let fit = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(configured);
    (fit(data), fit(admin))
}

/// What one listener's connections may cost (SPEC section 3 `limits`), and the label its closures
/// are counted under.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `direction` of `palisade_connections_closed_total`: inbound, outbound, admin...
    pub direction: &'static str,
    /// The whole request head, from the connection's start or a later request's first byte.
    pub header_timeout: Duration,
    /// Between requests (HTTP/1.1), or with no stream open (HTTP/2).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections from one source address; `None`: no such limit.
    pub max_connections_per_source: Option<usize>,
    /// The answer to an HTTP/1.1 request head cut short by `header_timeout` (SPEC section 5: 408
    /// and close), written before the connection closes; `None`: closed without one.
    pub head_timeout_answer: Option<HeadTimeoutAnswer>,
    /// RST_STREAM frames an HTTP/2 peer may send within a second before its connection is
    /// closed (`limits.http2.maxResetsPerSecond`); `None`: not counted.
    pub max_resets_per_second: Option<u32>,
    /// The sidecar's memory guard (`limits.maxMemoryBytes`), when it has a limit: while it is
    /// over it, no new connection is taken on, and one whose writes wait on a peer that does not
    /// read, or with no request in flight, is closed.
    pub memory: Option<Arc<crate::memory::Pressure>>,
}

/// Makes (and records) the answer to an HTTP/1.1 request head that `header_timeout` cut short,
/// from the caller at the address given, with the SPIFFE ID it proved when it proved one.
#[derive(Clone)]
pub struct HeadTimeoutAnswer(pub Arc<AnswerTo>);

/// From the caller's address and proven SPIFFE ID, the bytes to write.
pub type AnswerTo = dyn Fn(SocketAddr, Option<&str>) -> Vec<u8> + Send + Sync;

impl std::fmt::Debug for HeadTimeoutAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadTimeoutAnswer")
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            direction: "other",
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: MAX_CONNECTIONS_PER_LISTENER,
            max_connections_per_source: None,
            head_timeout_answer: None,
            max_resets_per_second: None,
            memory: None,
        }
    }
}

/// Open connections per source address on one listener (`limits.maxConnectionsPerSource`, and
/// the control plane's TLS ports). Entries exist only for sources with a connection open, so the
/// table is never larger than the listener's connection limit.
pub(crate) struct PerSource {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    max: usize,
}

/// A connection's place in its source's count, given back when it is dropped.
pub(crate) struct SourceSlot {
    table: Arc<PerSource>,
    source: std::net::IpAddr,
}

impl PerSource {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PerSource { open: std::sync::Mutex::new(Default::default()), max })
    }

    /// How many sources have a connection open.
    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.open.lock().expect("per-source lock").len()
    }

    /// A place for one more connection from `ip`, or `None` when its source has `max` open.
    /// The source is the address (an IPv4-mapped one as IPv4), not an IPv6 peer's /64 as for
    /// clients on the internet: a Kubernetes node's pods share one /64 (the default node CIDR
    /// mask), and some CNIs give many nodes' pods one, so one pod would fill its neighbours' slots.
    pub(crate) fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let source = ip.to_canonical();
        let mut open = self.open.lock().expect("per-source lock");
        let n = open.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { table: self.clone(), source })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("per-source lock");
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

pub enum Transport {
    Plain,
    /// Plaintext from the pod's own app, redirected there by iptables: HTTP as [`Transport::Plain`];
    /// anything else relayed to its original destination or refused ([`OpaqueTcp`]).
    Outbound(Arc<OpaqueTcp>),
    /// Mutual TLS; plaintext too while the policy in force says PERMISSIVE, without a
    /// principal. A policy's `mtls` takes effect for new connections at once, and a plaintext
    /// connection let in under PERMISSIVE is closed when the mode becomes STRICT, after the
    /// request it is serving (ztunnel re-checks live connections on a policy change too).
    /// A mesh peer's tunnel (a TCP connection it carries for its app), and a PERMISSIVE port's
    /// plaintext to an opaque port, are served as bytes to the app ([`InboundTcp`]).
    /// The listener's credentials, policy and app are the [`InboundTcp`]'s, which also serves
    /// what is not HTTP there.
    Mesh(Arc<InboundTcp>),
    /// Server TLS without client certificates (the injection webhook, called by the API
    /// server).
    Tls(Acceptor),
}

/// Counts open connections so a drain can wait for them.
#[derive(Clone, Default)]
pub struct ConnectionTracker(Arc<(AtomicUsize, Notify)>);

pub struct ConnectionGuard(ConnectionTracker);

impl ConnectionTracker {
    pub fn open(&self) -> ConnectionGuard {
        self.0 .0.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.0 .0.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0 .0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0 .1.notify_waiters();
        }
    }
}

/// Accepts on `listener` until `shutdown` turns true, then drops the listener (new connections
/// are refused) and returns; connections already open finish on their own tasks. Default limits.
pub async fn serve<A>(
    listener: AsyncListener,
    transport: Transport,
    app: Arc<A>,
    telemetry: Arc<Telemetry>,
    tracker: ConnectionTracker,
    shutdown: watch::Receiver<bool>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    serve_with(listener, transport, app, telemetry, tracker, shutdown, ConnectionLimits::default()).await
}

/// [`serve`] with the given limits.
pub async fn serve_with<A>(
    mut listener: AsyncListener,
    transport: Transport,
    app: Arc<A>,
    telemetry: Arc<Telemetry>,
    tracker: ConnectionTracker,
    mut shutdown: watch::Receiver<bool>,
    limits: ConnectionLimits,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let transport = Arc::new(transport);
    let limits = Arc::new(limits);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_source = limits.max_connections_per_source.map(PerSource::new);
    // Counters looked up once per listener, not per connection; each closure is counted at once
    // and reported as an event in aggregate (`Telemetry::report_refusals`, below).
    let listening = listener.local_addr().ok();
    let counter = |reason: RefusalReason, limit: String| {
        let series = telemetry.metrics.connections_closed.with_label_values(&[limits.direction, reason.label()]);
        let counter = telemetry.refusals.counter(limits.direction, reason, limit, series);
        match listening {
            Some(addr) => counter.at(addr),
            None => counter,
        }
    };
    let memory = limits.memory.clone();
    let memory_setting = memory.as_ref().map_or_else(|| "none".to_string(), |m| m.setting());
    let counters = Closures {
        direction: limits.direction,
        header: counter(RefusalReason::HeaderTimeout, HumanDuration(limits.header_timeout).to_string()),
        idle: counter(RefusalReason::IdleTimeout, HumanDuration(limits.idle_timeout).to_string()),
        resets: counter(
            RefusalReason::RapidReset,
            limits.max_resets_per_second.map_or_else(|| "none".to_string(), |n| n.to_string()),
        ),
        h2_abuse: counter(RefusalReason::Http2Abuse, "h2's flood guards".to_string()),
        memory_cut: counter(RefusalReason::MemoryCut, memory_setting.clone()),
        memory_idle: counter(RefusalReason::MemoryIdle, memory_setting.clone()),
    };
    let at_memory_limit = counter(RefusalReason::MemoryLimit, memory_setting);
    let at_limit = counter(RefusalReason::ConnectionLimit, limits.max_connections.to_string());
    let at_source_limit = per_source.as_ref().map(|p| counter(RefusalReason::SourceLimit, p.max.to_string()));
    // The outbound listener sorts each connection before pingora sees it ([`OpaqueTcp::sort`]).
    let sorting = match &*transport {
        Transport::Outbound(opaque) => Some((opaque.clone(), counter(RefusalReason::NotHttp, opaque.setting()))),
        _ => None,
    };
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = report.tick() => {
                telemetry.report_refusals();
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Closed at once, each counted; logged one by one only at debug level (the event and
        // the warning of each second's report say how many).
        if let Some(memory) = &memory {
            // A connection costs tens of kilobytes before its first request (TLS and HTTP/2
            // buffers): while over the memory limit none is taken on.
            memory.watch();
            if memory.is_over() {
                at_memory_limit.refused(Some(peer.ip()));
                tracing::debug!(%peer, direction = limits.direction, "over limits.maxMemoryBytes; closing");
                continue;
            }
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            at_limit.refused(Some(peer.ip()));
            tracing::debug!(%peer, direction = limits.direction, limit = limits.max_connections,
                "connection limit reached; closing");
            continue;
        };
        let source_slot = match &per_source {
            Some(table) => match table.enter(peer.ip()) {
                Some(s) => Some(s),
                None => {
                    if let Some(counter) = &at_source_limit {
                        counter.refused(Some(peer.ip()));
                    }
                    tracing::debug!(%peer, direction = limits.direction, limit = table.max,
                        "connection limit per source reached; closing");
                    continue;
                }
            },
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        let guard = tracker.open();
        let app = app.clone();
        let transport = transport.clone();
        let telemetry = telemetry.clone();
        let shutdown = shutdown.clone();
        let counters = counters.clone();
        let limits = limits.clone();
        let sorting = sorting.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _slot = slot;
            let _source_slot = source_slot;
            // Sorting waits for the first bytes, which is the head's wait: its deadline runs from
            // the start of that wait. Elsewhere it runs once the stream is made (after a TLS
            // handshake).
            let (tcp, digest, since) = match sorting {
                Some((opaque, refused)) => {
                    let since = tokio::time::Instant::now();
                    let digest = socket_digest(&tcp, peer);
                    let sorted = opaque.sort(
                        tcp,
                        peer,
                        redirected_to(&digest),
                        limits.header_timeout,
                        &counters.header,
                        &refused,
                    );
                    match Box::pin(sorted).await {
                        opaque::Sorted::Http(tcp) => (tcp, Some(digest), Some(since)),
                        opaque::Sorted::Done => return,
                    }
                }
                None => (tcp, None, None),
            };
            // Boxed: the TLS handshake's state is 7 KB, and a future inline in the task would be
            // held for the connection's whole life (the task's size is its largest state's).
            let accepted = tokio::time::Instant::now();
            let handshake = handshake(tcp, peer, digest, &transport, &telemetry);
            let (stream, gate) = match (Box::pin(handshake).await, &*transport) {
                (Some(Handshake::Http(stream, gate)), _) => (stream, gate),
                (Some(Handshake::Tunnel(stream, deadline)), Transport::Mesh(inbound)) => {
                    return Box::pin(inbound.serve_tunnel(*stream, peer, deadline)).await;
                }
                (Some(Handshake::Plaintext(stream, spoke)), Transport::Mesh(inbound)) => {
                    return Box::pin(inbound.serve_plaintext(*stream, peer, spoke)).await;
                }
                // Only a mesh listener's handshake finds tunnels and plaintext TCP.
                _ => return,
            };
            // A PERMISSIVE port's plaintext (the gate is its) has had no handshake to set aside:
            // its head's deadline runs from the accept, not from after the look at its first
            // words (which would give a line never finished two `headerTimeout`s).
            let since = since.or(gate.is_some().then_some(accepted));
            let relaying =
                stream.get_ssl_digest().is_some_and(|d| d.extension.get::<crate::tls::PeerIdentity>().is_some());
            let mut conn =
                Deadlined::new(stream, peer, &limits, counters, since.unwrap_or_else(tokio::time::Instant::now));
            if relaying {
                conn.relaying_many_callers();
            }
            let stream: Stream = Box::new(conn);
            match (gate, &*transport) {
                (Some((gate, plaintext)), Transport::Mesh(inbound)) => {
                    serve_revocable(app, stream, gate, plaintext, &inbound.policy, shutdown).await;
                }
                _ => {
                    let mut next = app.process_new(stream, &shutdown).await;
                    while let Some(stream) = next {
                        next = app.process_new(stream, &shutdown).await;
                    }
                }
            }
        });
    }
    drop(listener);
    telemetry.flush_refusals();
    app.cleanup().await;
}

/// How often an accept loop asks for the refusals counted since the last report to be reported:
/// a report is made once a second at most (`Refusals::report`), by whichever loop asks first.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Serves a plaintext connection let in under PERMISSIVE, to `port`. When the policy makes that
/// port STRICT, it is told to stop: HTTP/2 with a GOAWAY after its streams, HTTP/1.1 after the
/// response in flight (or at once when idle between requests).
async fn serve_revocable<A: ServerApp + Send + Sync + 'static>(
    app: Arc<A>,
    stream: Stream,
    gate: Arc<IdleGate>,
    Plaintext { port, mut changes }: Plaintext,
    policy: &PolicyStore,
    mut shutdown: watch::Receiver<bool>,
) {
    let (stop, stopping) = watch::channel(false);
    let serving = async {
        let mut next = app.process_new(stream, &stopping).await;
        while let Some(stream) = next {
            next = app.process_new(stream, &stopping).await;
        }
    };
    tokio::pin!(serving);
    let mut closing = false;
    loop {
        tokio::select! {
            () = &mut serving => return,
            _ = shutdown.wait_for(|s| *s), if !closing => {
                closing = true;
                stop.send_replace(true);
            }
            changed = changes.changed(), if !closing => {
                if changed.is_err() || policy.current().mtls_at(port) == MtlsMode::STRICT {
                    tracing::debug!(port, "the port is STRICT now; closing a plaintext connection");
                    closing = true;
                    stop.send_replace(true);
                    gate.close();
                }
            }
        }
    }
}

/// `digest`: the socket's, when the accept loop already made it (its original destination read).
/// What an accepted connection turned out to be.
enum Handshake {
    /// HTTP (over TLS or not), for pingora; with the gate of a PERMISSIVE port's plaintext, and
    /// what ends it.
    Http(Stream, Option<(Arc<IdleGate>, Plaintext)>),
    /// A mesh peer's tunnel (whatever was read of its ClientHello put back), and the deadline
    /// its handshake shares with the look at that ClientHello.
    Tunnel(Box<L4Stream>, tokio::time::Instant),
    /// A PERMISSIVE port's plaintext to one of the app's opaque ports (whatever was read of it
    /// put back): a client without a sidecar, whose bytes go to the app as they are; and whether
    /// it has spoken yet.
    Plaintext(Box<L4Stream>, Spoke),
}

/// A PERMISSIVE port's plaintext: the port (the one the caller addressed) whose mode it was let
/// in by, and the policy's changes, watched from before that mode was read.
struct Plaintext {
    port: u16,
    changes: watch::Receiver<()>,
}

/// How long a connection to an opaque port under PERMISSIVE may send nothing before it is taken
/// for a plaintext client of a protocol whose server speaks first (MySQL, SMTP), and its app
/// connected to say its first words. A mesh peer's sidecar sends its ClientHello as soon as it
/// has connected, so only one stalled for this long is misread, and then its handshake fails:
/// it is never let in without its identity. Linkerd's 10 s detection stalls are a standing
/// complaint; only these ports, already named as not HTTP, wait at all.
const SERVER_FIRST_AFTER: Duration = Duration::from_millis(500);

async fn handshake(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    digest: Option<SocketDigest>,
    transport: &Transport,
    telemetry: &Telemetry,
) -> Option<Handshake> {
    let inbound = match transport {
        Transport::Plain | Transport::Outbound(_) => {
            return Some(Handshake::Http(Box::new(CoalescedWrites::new(l4_stream(tcp, peer, digest), None)), None))
        }
        Transport::Mesh(inbound) => inbound,
        Transport::Tls(acceptor) => {
            return match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(l4_stream(tcp, peer, None)))
                .await
            {
                Ok(Ok(tls)) => Some(Handshake::Http(Box::new(tls), None)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    None
                }
                Err(_) => None,
            };
        }
    };
    let (store, policy) = (&inbound.tls, &inbound.policy);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // Where a refused caller came, for its event (mesh connections are few and long-lived).
    let listener = tcp.local_addr().ok();
    // Whether this connection's port is PERMISSIVE (the port the caller addressed, which only
    // the socket says, and is read only when some port is PERMISSIVE).
    let (mut plaintext_tcp, mut made_digest) = (false, None);
    let permissive = match policy.current().plaintext_anywhere() {
        false => None,
        true => {
            let digest = socket_digest(&tcp, peer);
            // Watched from before the mode is read: an update that makes the port STRICT after
            // this look is one the connection's watch sees.
            let changes = policy.subscribe();
            let port = inbound.addressed_port(&digest);
            match policy.current().mtls_at(port) {
                MtlsMode::PERMISSIVE => Some((digest, Plaintext { port, changes })),
                MtlsMode::STRICT => {
                    made_digest = Some(digest);
                    None
                }
            }
        }
    };
    // Under PERMISSIVE, a connection to one of the app's opaque ports may be a client without a
    // sidecar speaking the app's protocol: its plaintext, or its own TLS.
    if let Some((digest, plaintext)) = permissive {
        let opaque = inbound.reaches_opaque_port(&digest);
        let http = |stream: L4Stream, plaintext: Plaintext| {
            let gate = Arc::new(IdleGate::default());
            let stream = CoalescedWrites::new(stream, Some(gate.clone()));
            Some(Handshake::Http(Box::new(stream), Some((gate, plaintext))))
        };
        let mut first = [0u8; 1];
        let wait = if opaque { deadline.min(tokio::time::Instant::now() + SERVER_FIRST_AFTER) } else { deadline };
        match tokio::time::timeout_at(wait, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => (plaintext_tcp, made_digest) = (opaque, Some(digest)),
            Ok(Ok(1)) if opaque => {
                // A request to an opaque port still goes through the pipeline; what cannot be
                // one goes to the app as bytes.
                let first_words = opaque::read_first_words(&mut tcp, deadline, Vec::new()).await;
                let Ok((request, read)) = first_words else { return None };
                let app_port = inbound.app_port(&digest);
                let mut stream = l4_stream(tcp, peer, Some(digest));
                stream.rewind(&read);
                if request {
                    // Counted beside the relayed plaintext: a client a STRICT port would refuse.
                    inbound.count(None, app_port, "http");
                    return http(stream, plaintext);
                }
                return Some(Handshake::Plaintext(Box::new(stream), Spoke::Client));
            }
            Ok(Ok(1)) => return http(l4_stream(tcp, peer, Some(digest)), plaintext),
            // Nothing yet: its server may speak first.
            Err(_) if opaque => {
                return Some(Handshake::Plaintext(Box::new(l4_stream(tcp, peer, Some(digest))), Spoke::Neither))
            }
            _ => return None,
        }
    }
    let handshakes = &telemetry.metrics.tls_handshakes;
    // The first record (the ClientHello) says whether this is a tunnel, HTTP, or the app's own
    // TLS.
    let (hello_for, read) = match tokio::time::timeout_at(deadline, sort_hello(&mut tcp)).await {
        Ok(Ok(Some(sorted))) => sorted,
        // Closed before a byte: a TCP probe, not a handshake.
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            return inbound_handshake_refused(telemetry, peer, listener, format!("inside its first TLS record: {e}"))
        }
        Err(_) => {
            handshakes.with_label_values(&["inbound", "timeout"]).inc();
            return None;
        }
    };
    let mut stream = l4_stream(tcp, peer, made_digest);
    stream.rewind(&read);
    match (hello_for, plaintext_tcp) {
        (HelloFor::Tunnel, _) => return Some(Handshake::Tunnel(Box::new(stream), deadline)),
        (HelloFor::App | HelloFor::Unknown, true) => {
            return Some(Handshake::Plaintext(Box::new(stream), Spoke::Client))
        }
        // Under STRICT, or to an HTTP port: the HTTP handshake refuses what is not the mesh's.
        (HelloFor::App | HelloFor::Unknown | HelloFor::Http, _) => {}
    }
    drop(read);
    let state = store.current();
    match tokio::time::timeout_at(deadline, state.acceptor.tls_handshake(stream)).await {
        Ok(Ok(tls)) if proves_an_identity(&tls) => {
            handshakes.with_label_values(&["inbound", "success"]).inc();
            Some(Handshake::Http(Box::new(tls), None))
        }
        // Only a resumed session gets here (a full handshake's chain was just verified): its
        // certificate has expired since it was first verified.
        Ok(Ok(_)) => inbound_handshake_refused(
            telemetry,
            peer,
            listener,
            "a resumed TLS session's client certificate is no longer valid".to_string(),
        ),
        Ok(Err(e)) => inbound_handshake_refused(telemetry, peer, listener, handshake_failure_reason(&e)),
        Err(_) => {
            handshakes.with_label_values(&["inbound", "timeout"]).inc();
            None
        }
    }
}

/// What a connection's first TLS record asks for ([`HelloFor`]; `None`: closed before a byte), and
/// what was read off the socket to tell, which must be put back. Looked at in place when the
/// record has arrived whole (the usual case: nothing read, nothing to put back); read when it
/// came in pieces, bounded by [`crate::tls::TUNNEL_HELLO_MAX`]: a longer record is no sidecar's
/// and is left unread, so a caller that announces 16 KiB and sends 5 bytes holds no buffer.
async fn sort_hello(tcp: &mut tokio::net::TcpStream) -> std::io::Result<Option<(HelloFor, Vec<u8>)>> {
    use crate::tls::{sort_client_hello, RECORD_HEADER, TUNNEL_HELLO_MAX};
    use tokio::io::AsyncReadExt;
    let record_len = |header: &[u8]| {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        (header[0] == TLS_HANDSHAKE_RECORD && len <= TUNNEL_HELLO_MAX).then_some(len)
    };
    let mut peeked = [0u8; RECORD_HEADER + TUNNEL_HELLO_MAX];
    let n = tcp.peek(&mut peeked).await?;
    if n == 0 {
        return Ok(None);
    }
    if peeked[0] != TLS_HANDSHAKE_RECORD {
        return Ok(Some((HelloFor::Unknown, Vec::new())));
    }
    if n >= RECORD_HEADER {
        match record_len(&peeked[..RECORD_HEADER]) {
            None => return Ok(Some((HelloFor::Unknown, Vec::new()))),
            Some(len) if n >= RECORD_HEADER + len => {
                return Ok(Some((sort_client_hello(&peeked[..RECORD_HEADER + len]), Vec::new())))
            }
            Some(_) => {}
        }
    }
    // In pieces: read the record (a peek would return at once with what is there already).
    let mut header = [0u8; RECORD_HEADER];
    tcp.read_exact(&mut header).await?;
    let Some(len) = record_len(&header) else { return Ok(Some((HelloFor::Unknown, header.to_vec()))) };
    let mut record = vec![0u8; RECORD_HEADER + len];
    record[..RECORD_HEADER].copy_from_slice(&header);
    tcp.read_exact(&mut record[RECORD_HEADER..]).await?;
    Ok(Some((sort_client_hello(&record), record)))
}

/// An inbound handshake refused: counted, and [`Telemetry::tls_refused`]. Returns what a refused
/// handshake leaves to serve: nothing.
fn inbound_handshake_refused<T>(
    telemetry: &Telemetry,
    peer: SocketAddr,
    listener: Option<SocketAddr>,
    reason: String,
) -> Option<T> {
    telemetry.metrics.tls_handshakes.with_label_values(&["inbound", "failure"]).inc();
    telemetry.tls_refused("inbound", peer, listener, reason);
    None
}

/// Whether an inbound mTLS connection carries the caller's identity (set after the handshake by
/// [`crate::tls`], for a certificate valid now).
fn proves_an_identity<S>(tls: &pingora::protocols::tls::TlsStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    use pingora::protocols::Ssl;
    tls.get_ssl_digest().is_some_and(|d| d.extension.get::<crate::tls::PeerIdentity>().is_some())
}

/// The verifier's own words when it refused the certificate, else pingora's description.
fn handshake_failure_reason(e: &pingora::Error) -> String {
    e.root_cause().downcast_ref::<std::io::Error>().and_then(crate::tls::refusal_reason).unwrap_or_else(|| {
        // pingora's accept keeps only the text, behind its own words for a client's connect.
        let text = e.to_string();
        let text = text.trim();
        crate::tls::in_words(text.strip_prefix("TLSHandshakeFailure context: tls connect error: ").unwrap_or(text))
    })
}

/// What pingora's own listener knows of a socket: the peer, the local address and, behind an
/// iptables REDIRECT, the original destination (each read when first asked for).
fn socket_digest(tcp: &tokio::net::TcpStream, peer: SocketAddr) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    digest
}

/// Where the app meant to go, when iptables redirected its connection here: the original
/// destination, if it is not this socket's own address (which is what the kernel gives for a
/// connection that was not redirected).
pub fn redirected_to(digest: &SocketDigest) -> Option<SocketAddr> {
    let original = digest.original_dst()?.as_inet()?;
    (Some(original) != digest.local_addr().and_then(|l| l.as_inet())).then_some(*original)
}

/// The pod address an inbound caller reached, where an unspecified `inbound.app` sends it: the
/// original destination behind a REDIRECT when that is an address of this pod (a pod may have
/// several of a family, and REDIRECT lands on one of them), else the connection's own local
/// address. A neighbour that makes the pod its next hop for another address (a host outside
/// the mesh, or 127.0.0.1) would otherwise have the sidecar connect there for it, from the pod's
/// address: a relay past every source-address check, and into what the app bound to loopback.
/// An IPv4 address comes as itself, not mapped into IPv6; an IPv6 link-local one with the scope
/// of the interface the connection came in on (outside tester l3: without it, every request to
/// a pod's link-local address was a 502 and an error line).
pub fn addressed_pod_address(digest: &SocketDigest) -> Option<SocketAddr> {
    let local = *digest.local_addr()?.as_inet()?;
    let local_ip = local.ip().to_canonical();
    let original = redirected_to(digest).filter(|o| {
        let ip = o.ip().to_canonical();
        ip != local_ip && is_own_address(ip, local_ip)
    });
    let addressed = original.unwrap_or(local);
    Some(match addressed {
        SocketAddr::V6(v6) => match v6.ip().to_canonical() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            // The kernel names a scope only when the socket is bound to an interface (a caller
            // from another link-local address); the interface holding the address has it.
            IpAddr::V6(ip) if v6.scope_id() == 0 && ip.is_unicast_link_local() => {
                let scope = address_scope(IpAddr::V6(ip)).unwrap_or(0);
                SocketAddr::V6(std::net::SocketAddrV6::new(ip, v6.port(), 0, scope))
            }
            IpAddr::V6(_) => addressed,
        },
        v4 => v4,
    })
}

/// Whether `ip` is an address of this network namespace that a connection landing on `local`
/// may have addressed: one of its interfaces' addresses from the network; from loopback (a
/// client on this host) any loopback address. Asked only of a redirected connection that
/// landed on another address than the one it addressed. The interfaces are asked, not `bind`:
/// with `ip_nonlocal_bind` (set in some load balancers' pods) binding to any address succeeds.
fn is_own_address(ip: IpAddr, local: IpAddr) -> bool {
    match (ip.is_loopback(), local.is_loopback()) {
        (true, true) => true,
        (false, false) => !ip.is_unspecified() && holds_address(ip),
        _ => false,
    }
}

/// Whether `ip` is one of this network namespace's interface addresses, from a copy of
/// [`interface_addresses`] read again when it is older than a second or does not hold `ip`:
/// asked per request of a pod whose callers address another of its addresses than the one
/// REDIRECT lands on, where a netlink dump each time would cost more than the request (an
/// address added a moment ago is found).
pub fn holds_address(ip: IpAddr) -> bool {
    address_scope(ip).is_some()
}

/// The scope (interface index) of `ip` if an interface of this namespace holds it: non-zero for
/// an IPv6 link-local address, which is only reachable through its interface.
fn address_scope(ip: IpAddr) -> Option<u32> {
    type Addresses = Vec<(IpAddr, u32)>;
    static RECENT: std::sync::Mutex<Option<(std::time::Instant, Addresses)>> = std::sync::Mutex::new(None);
    let find = |addresses: &Addresses| addresses.iter().find(|(a, _)| *a == ip).map(|(_, scope)| *scope);
    let mut recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((read, addresses)) = &*recent {
        if read.elapsed() < Duration::from_secs(1) {
            if let Some(scope) = find(addresses) {
                return Some(scope);
            }
        }
    }
    let addresses = interface_addresses();
    let held = find(&addresses);
    *recent = Some((std::time::Instant::now(), addresses));
    held
}

/// The addresses of this network namespace's interfaces, each with its IPv6 scope (0 but for
/// link-local ones).
#[allow(unsafe_code)] // see the SAFETY notes
fn interface_addresses() -> Vec<(IpAddr, u32)> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list it allocated in `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, which is not freed yet.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr, of the length its family says.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let v4 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                addresses.push((IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()), 0));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let v6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                addresses.push((IpAddr::from(v6.sin6_addr.s6_addr), v6.sin6_scope_id));
            }
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once, after its last use.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// Wraps a socket the way pingora's own listener does, so the session has its digest (`digest`,
/// when one was made already).
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr, digest: Option<SocketDigest>) -> L4Stream {
    let digest = digest.unwrap_or_else(|| socket_digest(&tcp, peer));
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(digest);
    stream
}

/// A plaintext connection whose small writes wait for a flush. pingora's own listener gives its
/// streams a write buffer, but only through a crate-private call; a stream made from a socket
/// here writes straight through, so an HTTP/1.1 answer left as a header and then a body — two
/// segments, two wake-ups of the app. pingora's HTTP/1.1 code flushes wherever the other side
/// must see the bytes now (1xx, bodies of unknown length, the end of a body), so only writes that
/// were going to be followed by more wait. (TLS streams need no such layer: rustls writes a whole
/// flight of HTTP/2 frames as one record.)
#[derive(Debug)]
struct CoalescedWrites {
    io: tokio::io::BufWriter<L4Stream>,
    /// Set on plaintext connections of a PERMISSIVE port: lets the connection be ended between
    /// two HTTP/1.1 requests.
    gate: Option<Arc<IdleGate>>,
    /// Whether the last bytes moved were read (a request is in flight) or written (its answer).
    last_read: bool,
    /// HTTP/2 (the connection's first bytes are its preface, as far as they go): its requests
    /// interleave, so it is ended with a GOAWAY instead.
    h2: bool,
    /// Whether any byte has been read: only the first ones can be HTTP/2's preface.
    started: bool,
}

/// pingora's own listener's default: one Ethernet-sized segment.
const WRITE_BUFFER: usize = 1460;

/// Ends an HTTP/1.1 connection at its next idle moment: the next read after an answer is an end
/// of stream, so pingora closes the connection instead of waiting for another request.
#[derive(Debug, Default)]
pub struct IdleGate {
    closing: std::sync::atomic::AtomicBool,
    /// The reader parked on the socket, woken when the gate closes.
    reader: std::sync::Mutex<Option<std::task::Waker>>,
}

impl IdleGate {
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(waker) = self.reader.lock().expect("gate lock").take() {
            waker.wake();
        }
    }
}

impl CoalescedWrites {
    fn new(stream: L4Stream, gate: Option<Arc<IdleGate>>) -> Self {
        CoalescedWrites {
            io: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, stream),
            gate,
            last_read: false,
            h2: false,
            started: false,
        }
    }

    /// Between requests on a connection whose gate closed.
    fn ended(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.closing.load(Ordering::Acquire)) && !self.last_read && !self.h2
    }
}

impl tokio::io::AsyncRead for CoalescedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.ended() {
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        match polled {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if !self.started && self.gate.is_some() {
                    self.h2 = h2_frames::preface_matched(0, &buf.filled()[before..]).is_some();
                }
                self.started = true;
                self.last_read = true;
            }
            std::task::Poll::Pending => {
                if let Some(gate) = &self.gate {
                    *gate.reader.lock().expect("gate lock") = Some(cx.waker().clone());
                    // The gate may have closed between the first check and the registration.
                    if self.ended() {
                        return std::task::Poll::Ready(Ok(()));
                    }
                }
            }
            _ => {}
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CoalescedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last_read = false;
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last_read = false;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Shutdown for CoalescedWrites {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await {
            tracing::debug!(error = %e, "shutting down a connection");
        }
    }
}

pass_stream_digests!(CoalescedWrites, s => s.io.get_ref(), s => s.io.get_mut());

impl pingora::protocols::Ssl for CoalescedWrites {}

#[async_trait::async_trait]
impl pingora::protocols::Peek for CoalescedWrites {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.io.get_mut().try_peek(buf).await
    }
}

/// The counters a connection's closures go to, resolved once per listener.
#[derive(Clone)]
struct Closures {
    direction: &'static str,
    header: RefusalCounter,
    idle: RefusalCounter,
    resets: RefusalCounter,
    h2_abuse: RefusalCounter,
    memory_cut: RefusalCounter,
    memory_idle: RefusalCounter,
}

/// Where a request head's lines are, for finding its end as httparse does: the first empty line
/// after the request line, lines ending in CRLF or a bare LF, empty lines before the request
/// line skipped (a head that starts with them is still a head, held to its deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadScan {
    /// Only empty lines so far.
    Lead,
    InLine,
    /// A line just ended.
    LineStart,
    /// A CR at a line's start: the empty line that ends the head, if LF follows.
    LineStartCr,
}

impl HeadScan {
    /// Follows `bytes`: where the lines are after them, or `None` when the head ended in them.
    fn scan(mut self, bytes: &[u8]) -> Option<HeadScan> {
        for &b in bytes {
            self = match (self, b) {
                (HeadScan::LineStart | HeadScan::LineStartCr, b'\n') => return None,
                (HeadScan::Lead, b'\r' | b'\n') => HeadScan::Lead,
                (HeadScan::LineStart, b'\r') => HeadScan::LineStartCr,
                (_, b'\n') => HeadScan::LineStart,
                _ => HeadScan::InLine,
            };
        }
        Some(self)
    }
}

/// Whether a byte after an answer starts the next request head: a method's first character
/// (RFC 9110's token characters, which httparse takes) or an empty line before it.
fn starts_request(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~\r\n".contains(&b)
}

/// Where an HTTP/1.1 connection is, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head: `seen` bytes of it so far, `scan` where its lines are.
    /// Deadline: the head's.
    Head { seen: bool, scan: HeadScan },
    /// The first bytes are the start of HTTP/2's connection preface, `matched` of its 24 so far:
    /// HTTP/2 once it is whole, HTTP/1.1 if a byte differs. Deadline: the head's (a client that
    /// stops in the middle of the preface is a slowloris client too).
    Preface { matched: u8 },
    /// The head arrived; the body and the answer are pingora's (its own read and write timeouts).
    Request,
    /// An answer is being written, or was: the next request head may come. Deadline: idle, from
    /// the last byte moved.
    Answered,
    /// HTTP/2: idle (no stream open) for `idle_timeout`, closed with a GOAWAY; its requests
    /// interleave, and heads are frames.
    H2,
    /// HTTP/1.1 switched to another protocol (a `101`, a WebSocket): its bytes are not HTTP's
    /// and an open WebSocket may rightly be silent; no deadline of this connection's holds.
    Upgraded,
}

/// A data-path connection with the deadlines pingora's per-read timeouts do not give (issue 16):
/// the whole request head within `header_timeout` (pingora restarts its timer on every byte, so a
/// client sending one byte a second held a connection forever), and `idle_timeout` between
/// HTTP/1.1 requests. Requests themselves are not parsed: the end of a head is the first
/// `\r\n\r\n`, and an answer starts with the first write after it. When a deadline passes while
/// pingora waits to read, the read ends the connection (an error mid-head, an end of stream when
/// idle), so it closes the way a client that left would.
///
/// Cost: one timer per connection, reset at most twice per request (at a head's first byte and
/// when it is found idle); the idle deadline moves lazily (the time of the last byte is kept and
/// the timer re-armed only when it fires).
struct Deadlined {
    io: Stream,
    phase: Phase,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether `timer` runs for the phase (armed at the phase's start).
    armed: bool,
    /// The last byte moved while `Answered`: the idle deadline is this plus `idle_timeout`.
    last_activity: tokio::time::Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    peer: SocketAddr,
    closures: Closures,
    head_timeout_answer: Option<HeadTimeoutAnswer>,
    /// What is being written before the sidecar closes the connection: the 408 for a head that
    /// did not arrive in time, or an HTTP/2 GOAWAY.
    farewell: Option<Farewell>,
    /// HTTP/2: the peer's stream resets, when limited.
    max_resets_per_second: Option<u32>,
    /// HTTP/2: its frames, followed for the resets and (with the memory guard) its open streams.
    h2: Option<H2Frames>,
    /// The memory guard; since when the writes wait on the peer, and what they poll for the
    /// guard's word to give up; what a read on an idle connection polls for it.
    memory: Option<Arc<crate::memory::Pressure>>,
    stalled_since: Option<tokio::time::Instant>,
    stall_wait: CutWait,
    idle_wait: CutWait,
    /// HTTP/2 requests h2 refused as malformed, for whoever reports them
    /// ([`malformed_http2_requests`]).
    malformed_h2: Arc<std::sync::atomic::AtomicU32>,
}

/// The count of HTTP/2 requests h2 (or pingora's HTTP/2 server, for an ambiguous authority)
/// refuses as malformed on this connection (they never reach the proxy, whose phases count and report every other refusal), when `stream` is a listener's
/// connection: looked up once, then read after each write by whoever reports them.
pub(crate) fn malformed_http2_requests(stream: &Stream) -> Option<Arc<std::sync::atomic::AtomicU32>> {
    (**stream).as_any().downcast_ref::<Deadlined>().map(|d| d.malformed_h2.clone())
}

/// How long a farewell (the 408 for a late head, a GOAWAY) may take to write before the
/// connection is closed anyway (a client that does not read is not waited for).
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Bytes written before the sidecar closes a connection, how many of them have been, and what
/// the read that waits on them then returns (so that pingora closes the connection).
struct Farewell {
    bytes: Vec<u8>,
    written: usize,
    then: std::io::Result<()>,
}

impl std::fmt::Debug for Deadlined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlined").field("io", &self.io).field("phase", &self.phase).finish()
    }
}

/// How many callers' worth of stream resets a connection from a peer sidecar may carry.
const RELAYED_RESETS: u32 = 10;

/// An answer that switches protocols (a WebSocket's handshake).
const SWITCHED: &[u8] = b"HTTP/1.1 101";

/// The interim answer pingora may write before reading a body (`100 Continue`): not an answer.
const INTERIM: &[u8] = b"HTTP/1.1 1";

impl Deadlined {
    /// The answer to a head cut short by `header_timeout`, recorded with who sent it.
    fn head_timeout_answer(&self, answer: &HeadTimeoutAnswer) -> Vec<u8> {
        let digest = self.io.get_ssl_digest();
        let principal = digest.as_ref().and_then(|d| d.extension.get::<crate::tls::PeerIdentity>());
        (answer.0)(self.peer, principal.map(|p| p.id.as_str()))
    }

    /// `since`: when the first head's deadline starts (now, or when a wait for the first bytes
    /// began before this stream was made).
    fn new(
        io: Stream,
        peer: SocketAddr,
        limits: &ConnectionLimits,
        closures: Closures,
        since: tokio::time::Instant,
    ) -> Self {
        let now = tokio::time::Instant::now();
        // The first head's deadline runs from the start: a connection that sends nothing is a
        // slowloris connection too. HTTP/2 (by ALPN or prior knowledge) is held to it until its
        // connection preface is whole; no byte of the preface is ALPN's to vouch for.
        Deadlined {
            io,
            phase: Phase::Head { seen: false, scan: HeadScan::Lead },
            timer: Box::pin(tokio::time::sleep_until(since + limits.header_timeout)),
            armed: true,
            last_activity: now,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            peer,
            closures,
            head_timeout_answer: limits.head_timeout_answer.clone(),
            farewell: None,
            max_resets_per_second: limits.max_resets_per_second,
            h2: None,
            memory: limits.memory.clone(),
            stalled_since: None,
            stall_wait: CutWait::default(),
            idle_wait: CutWait::default(),
            malformed_h2: Arc::default(),
        }
    }

    /// The peer proved a mesh identity: a peer sidecar, whose one connection carries the
    /// requests of every caller in its pod, and their cancellations (a gRPC deadline missed under
    /// load is a reset). It holds each of its callers to `maxResetsPerSecond` itself; here the
    /// connection may carry [`RELAYED_RESETS`] times as many before it is closed, failing every
    /// caller's request on it.
    fn relaying_many_callers(&mut self) {
        self.max_resets_per_second = self.max_resets_per_second.map(|n| n.saturating_mul(RELAYED_RESETS));
    }

    /// What a write's outcome means: what went (`went`, given how many bytes went) for the
    /// head's and idle deadlines or the HTTP/2 frames; a wait on the peer for the memory guard.
    fn wrote<'b, I: Iterator<Item = &'b [u8]>>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: std::task::Poll<std::io::Result<usize>>,
        went: impl FnOnce(usize) -> I,
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let std::task::Poll::Ready(Ok(n @ 1..)) = written {
            if self.phase != Phase::H2 {
                self.on_write(went(n).find(|b| !b.is_empty()).unwrap_or_default());
            } else if let Some(h2) = self.h2.as_mut() {
                let busy = h2.idle_since().is_none();
                went(n).for_each(|bytes| h2.wrote(bytes));
                let malformed = h2.take_malformed();
                if malformed > 0 {
                    self.malformed_h2.fetch_add(malformed, std::sync::atomic::Ordering::Relaxed);
                }
                if h2.take_abused() {
                    self.closures.h2_abuse.refused(Some(self.peer.ip()));
                }
                // h2 writes what ends its streams after its read has parked: the read's check
                // saw a busy connection, so the idle one waits on the guard and its idle
                // deadline from here (a timer that fires wakes the task, whose read then closes).
                if busy && h2.idle_since().is_some() {
                    self.await_idle_close(cx);
                    if !self.armed && self.h2_idle(cx).is_some() {
                        cx.waker().wake_by_ref();
                    }
                }
            }
        }
        self.waited(cx, written)
    }

    /// A write or flush that is done ends a wait on the peer; one that waits may be cut off.
    fn waited<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        outcome: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match outcome {
            std::task::Poll::Pending if self.cut_under_pressure(cx) => std::task::Poll::Ready(Err(Self::memory_cut())),
            std::task::Poll::Pending => std::task::Poll::Pending,
            done => {
                // A stall that ends on an idle connection: the read's check passed it over.
                if self.stalled_since.take().is_some() {
                    self.await_idle_close(cx);
                }
                done
            }
        }
    }

    /// A write waits on the peer: whether the memory guard says to give up on it now (counted):
    /// at a sample over the limit once the writes have waited `CUT_AFTER`. Only samples taken
    /// during the wait count.
    fn cut_under_pressure(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let Some(memory) = self.memory.as_ref() else { return false };
        memory.watch();
        let since = match self.stalled_since {
            Some(since) => since,
            None => {
                self.stall_wait.restart(memory);
                *self.stalled_since.insert(tokio::time::Instant::now())
            }
        };
        if self.stall_wait.poll(cx, memory, since).is_pending() {
            return false;
        }
        self.stalled_since = None;
        self.closures.memory_cut.refused(Some(self.peer.ip()));
        tracing::debug!(peer = %self.peer, direction = self.closures.direction, "closing a connection that is not reading its answer: over limits.maxMemoryBytes");
        true
    }

    /// A read waits on an idle connection (no request in flight): whether the memory guard says
    /// to close it now: at a sample over the limit once it has been idle `CUT_AFTER`. Every idle
    /// connection waits on the guard, so that a sample over the limit reaches those that parked
    /// while the heap was low.
    fn idle_under_pressure(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let (Some(since), Some(memory)) = (self.idle_since(), self.memory.as_ref()) else { return false };
        // A write waiting on the peer is the write's to cut (`cut_under_pressure`).
        self.stalled_since.is_none() && self.idle_wait.poll(cx, memory, since).is_ready()
    }

    /// The connection became idle outside a read (a write ended its last HTTP/2 stream, or a
    /// stalled write went): its task waits on the guard from now on, as a parked read would.
    fn await_idle_close(&mut self, cx: &mut std::task::Context<'_>) {
        let (Some(since), Some(memory)) = (self.idle_since(), self.memory.as_ref()) else { return };
        self.idle_wait.restart(memory);
        if self.idle_wait.poll(cx, memory, since).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Counts and logs an idle connection closed for the memory guard; what its read fails with.
    fn close_idle(&self) -> std::io::Error {
        self.closures.memory_idle.refused(Some(self.peer.ip()));
        tracing::debug!(peer = %self.peer, direction = self.closures.direction, "closing an idle connection: over limits.maxMemoryBytes");
        std::io::Error::new(std::io::ErrorKind::TimedOut, "closed while idle: over limits.maxMemoryBytes")
    }

    /// Since when the connection has had no request in flight: an HTTP/1.1 one waiting for a
    /// request head (a slowloris head is not a request yet) or between requests, an HTTP/2 one
    /// with no stream open. HTTP/1.1 answers are not parsed, so one that has sent nothing since
    /// its last piece (server-sent events between two events) counts as idle from that piece.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        match self.phase {
            Phase::Head { .. } | Phase::Preface { .. } | Phase::Answered => Some(self.last_activity),
            Phase::Request | Phase::Upgraded => None,
            Phase::H2 => self.h2.as_ref().and_then(H2Frames::idle_since),
        }
    }

    /// What a write fails with once the sidecar is closing the connection: nothing may come
    /// between its farewell's bytes.
    fn closing() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the sidecar is closing the connection")
    }

    /// What a write the memory guard cut fails with.
    fn memory_cut() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "cut off: over limits.maxMemoryBytes while the peer was not reading",
        )
    }

    /// Part of an HTTP/1.1 request head came, not all of it: what SPEC section 5 answers with
    /// 408 when the head's deadline passes. (Nothing at all, or HTTP/2, is closed silently.)
    fn partial_head(&self) -> Option<&HeadTimeoutAnswer> {
        self.head_timeout_answer.as_ref().filter(|_| matches!(self.phase, Phase::Head { seen: true, .. }))
    }

    /// Writes `bytes` (for at most `ANSWER_GRACE`), then ends the read that waits with `then`.
    fn say_farewell(
        &mut self,
        cx: &mut std::task::Context<'_>,
        bytes: Vec<u8>,
        then: std::io::Result<()>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.timer.as_mut().reset(tokio::time::Instant::now() + ANSWER_GRACE);
        self.farewell = Some(Farewell { bytes, written: 0, then });
        self.poll_farewell(cx)
    }

    fn poll_farewell(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        use tokio::io::AsyncWrite;
        // The bytes, then the end of the stream, which TLS sends as its close_notify: a client
        // then reads what was said instead of failing on a truncated connection.
        while let Some(farewell) = self.farewell.as_mut() {
            let step = if farewell.written < farewell.bytes.len() {
                std::pin::Pin::new(&mut self.io).poll_write(cx, &farewell.bytes[farewell.written..]).map_ok(Some)
            } else {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx).map_ok(|()| None)
            };
            match step {
                Poll::Ready(Ok(Some(n))) if n > 0 => farewell.written += n,
                Poll::Pending if self.timer.as_mut().poll(cx).is_pending() => return Poll::Pending,
                // Flushed, or the client cannot take it (gone, or not reading): close either way.
                _ => break,
            }
        }
        Poll::Ready(self.farewell.take().map_or(Ok(()), |farewell| farewell.then))
    }

    /// Ends a connection the sidecar closes itself, an HTTP/2 one (the only kind followed by
    /// frames) after a GOAWAY carrying `code` when one can be written; the waiting read then
    /// returns `then`.
    fn close_with_goaway(
        &mut self,
        cx: &mut std::task::Context<'_>,
        code: u32,
        then: std::io::Result<()>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.h2.as_ref().and_then(|h2| h2.goaway(code)) {
            Some(goaway) => self.say_farewell(cx, goaway.to_vec(), then),
            None => std::task::Poll::Ready(then),
        }
    }

    /// Follows the request bytes just read.
    fn on_read(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Head { seen: false, .. } => self.on_preface(0, bytes),
            Phase::Preface { matched } => self.on_preface(usize::from(matched), bytes),
            Phase::Head { seen: true, scan } => self.on_head(scan, bytes),
            Phase::Answered => {
                // A new request: its method's first character (any token character, as httparse
                // takes it), or the empty lines httparse skips before it (so a head that starts
                // with CRLF and then trickles is a head too). Anything else after an answer (the
                // rest of a body pingora drains; a head no parser takes) is not held to the head
                // deadline.
                if bytes.first().is_some_and(|&b| starts_request(b)) {
                    self.on_head(HeadScan::Lead, bytes);
                    if matches!(self.phase, Phase::Head { .. }) {
                        // Idle (for the memory guard) from the head's first byte, not the last
                        // answer: a head that comes in pieces is not an idle connection.
                        let now = tokio::time::Instant::now();
                        self.last_activity = now;
                        self.timer.as_mut().reset(now + self.header_timeout);
                        self.armed = true;
                    }
                } else {
                    self.phase = Phase::Request;
                    self.armed = false;
                }
            }
            Phase::Request | Phase::H2 | Phase::Upgraded => {}
        }
    }

    /// The connection's first bytes, `matched` of them already HTTP/2's preface: HTTP/2 once the
    /// preface is whole (its frames are followed from there, the rest is pingora's), HTTP/1.1's
    /// head as soon as a byte differs.
    fn on_preface(&mut self, matched: usize, bytes: &[u8]) {
        match h2_frames::preface_matched(matched, bytes) {
            // The preface's bytes so far were the head's first, and may have ended it.
            None => match HeadScan::Lead.scan(&h2_frames::PREFACE[..matched]) {
                Some(scan) => self.on_head(scan, bytes),
                None => {
                    self.phase = Phase::Request;
                    self.armed = false;
                }
            },
            Some(now) if now < h2_frames::PREFACE.len() => self.phase = Phase::Preface { matched: now as u8 },
            Some(_) => {
                self.phase = Phase::H2;
                self.armed = false;
                let left = h2_frames::PREFACE.len() - matched;
                // Its open streams are followed for its idle deadline (and the memory guard).
                self.h2 = H2Frames::new(self.max_resets_per_second, true, left);
            }
        }
    }

    /// Bytes of an HTTP/1.1 head whose lines so far left `scan`. Bytes past its end (a body, a
    /// pipelined request) are pingora's to parse.
    fn on_head(&mut self, scan: HeadScan, bytes: &[u8]) {
        match scan.scan(bytes) {
            Some(scan) => self.phase = Phase::Head { seen: true, scan },
            None => {
                self.phase = Phase::Request;
                self.armed = false;
            }
        }
    }

    fn on_write(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Request if bytes.starts_with(SWITCHED) => {
                self.phase = Phase::Upgraded;
                self.armed = false;
            }
            Phase::Request if !bytes.starts_with(INTERIM) => {
                self.phase = Phase::Answered;
                self.last_activity = tokio::time::Instant::now();
                // Armed lazily: when a read finds the connection waiting (see poll_read).
                self.armed = false;
            }
            Phase::Answered => self.last_activity = tokio::time::Instant::now(),
            _ => {}
        }
    }

    /// A read is parked: whether a deadline has passed, as the reason to close.
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> Option<&'static str> {
        if self.phase == Phase::H2 && !self.armed {
            return self.h2_idle(cx);
        }
        if self.phase == Phase::Answered && !self.armed {
            self.timer.as_mut().reset(self.last_activity + self.idle_timeout);
            self.armed = true;
        }
        if !self.armed || self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        if self.phase == Phase::Answered {
            // Bytes moved since the timer was set: move the deadline, not the connection.
            let deadline = self.last_activity + self.idle_timeout;
            if deadline > tokio::time::Instant::now() {
                self.timer.as_mut().reset(deadline);
                return self.timer.as_mut().poll(cx).is_ready().then_some("idle_timeout");
            }
            return Some("idle_timeout");
        }
        Some("header_timeout")
    }
}

impl Deadlined {
    /// An HTTP/2 connection with no stream open for `idle_timeout` is closed, on this
    /// connection's own timer, set once per idle period (a read parks after every frame, so the
    /// last stream's end is seen here). pingora's `h2_idle_timeout` registered a timer in its
    /// timer wheel each time the connection fell idle, kept until its deadline however soon a
    /// stream came: a busy connection that fell idle between requests grew by some 20 bytes a
    /// request for `idle_timeout` (5 minutes: megabytes at a few hundred requests a second).
    fn h2_idle(&mut self, cx: &mut std::task::Context<'_>) -> Option<&'static str> {
        let since = self.h2.as_ref().and_then(H2Frames::idle_since)?;
        let deadline = since + self.idle_timeout;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready().then_some("idle_timeout")
    }

    /// Closes an HTTP/2 connection whose peer reset more streams in a second than it may: the
    /// read that brought the resets fails (h2 never sees them), and pingora closes the connection.
    fn close_for_resets(&mut self) -> std::io::Result<()> {
        if let Some(h2) = self.h2.as_mut() {
            h2.stop_counting_resets();
        }
        self.closures.resets.refused(Some(self.peer.ip()));
        tracing::debug!(peer = %self.peer, direction = self.closures.direction, "closing an HTTP/2 connection: rapid reset");
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "more stream resets than limits.http2.maxResetsPerSecond",
        ))
    }

    /// Counts and logs a closure; what the parked read returns so that pingora closes the
    /// connection: an end of stream when idle (as if the client had left between requests), an
    /// error mid-head.
    fn close(&mut self, reason: &'static str) -> std::io::Result<()> {
        self.armed = false;
        let idle = reason == "idle_timeout";
        let (counter, timeout) =
            if idle { (&self.closures.idle, self.idle_timeout) } else { (&self.closures.header, self.header_timeout) };
        counter.refused(Some(self.peer.ip()));
        tracing::debug!(peer = %self.peer, direction = self.closures.direction, reason, ?timeout, "closing a connection");
        if idle {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request head did not arrive within limits.headerTimeout",
            ))
        }
    }
}

impl tokio::io::AsyncRead for Deadlined {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.farewell.is_some() {
            return self.poll_farewell(cx);
        }
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.io).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let read = &buf.filled()[before..];
                if read.is_empty() {
                    return std::task::Poll::Ready(Ok(()));
                }
                let was_h2 = this.phase == Phase::H2;
                if !was_h2 && !matches!(this.phase, Phase::Request | Phase::Upgraded) {
                    this.on_read(read);
                }
                // The bytes that made the connection HTTP/2 start with the preface: counted too.
                if this.phase == Phase::H2 && this.h2.as_mut().is_some_and(|h2| h2.read(read)) {
                    // h2 never sees what came with the resets: the connection ends here.
                    buf.set_filled(before);
                    let then = this.close_for_resets();
                    return this.close_with_goaway(cx, h2_frames::ENHANCE_YOUR_CALM, then);
                }
                // An HTTP/2 request head in pieces (CONTINUATION frames) is held to the head's
                // deadline from its first frame, as an HTTP/1.1 head is from its first byte.
                if let Some(in_block) = this.h2.as_ref().map(H2Frames::in_header_block) {
                    if in_block && !this.armed {
                        this.timer.as_mut().reset(tokio::time::Instant::now() + this.header_timeout);
                    }
                    this.armed = in_block;
                }
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Pending => match self.expired(cx) {
                None if self.idle_under_pressure(cx) => {
                    let then = Err(self.close_idle());
                    self.close_with_goaway(cx, h2_frames::NO_ERROR, then)
                }
                None => std::task::Poll::Pending,
                Some("header_timeout") if self.partial_head().is_some() => {
                    let answer = self.partial_head().map(|answer| self.head_timeout_answer(answer)).unwrap_or_default();
                    let then = self.close("header_timeout");
                    self.say_farewell(cx, answer, then)
                }
                Some(reason) if self.phase == Phase::H2 => {
                    // Said with a GOAWAY, so the client opens its next stream elsewhere.
                    let then = self.close(reason);
                    self.close_with_goaway(cx, h2_frames::NO_ERROR, then)
                }
                Some(reason) => std::task::Poll::Ready(self.close(reason)),
            },
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Deadlined {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.farewell.is_some() {
            return std::task::Poll::Ready(Err(Self::closing()));
        }
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written, |n| std::iter::once(&buf[..n]))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.farewell.is_some() {
            return std::task::Poll::Ready(Err(Self::closing()));
        }
        let written = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written, |n| {
            bufs.iter().scan(n, |left, b| {
                let take = (*left > 0).then(|| (*left).min(b.len()))?;
                *left -= take;
                Some(&b[..take])
            })
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.waited(cx, flushed)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Shutdown for Deadlined {
    async fn shutdown(&mut self) {
        self.io.shutdown().await
    }
}

pass_stream_digests!(Deadlined, s => s.io, s => s.io);

impl pingora::protocols::Ssl for Deadlined {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.io.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.io.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.io.selected_alpn_proto()
    }
}

#[async_trait::async_trait]
impl pingora::protocols::Peek for Deadlined {
    /// pingora peeks for an HTTP/2 preface on plaintext ports before each HTTP/1.1 request, and
    /// waits for it without a timer: the same deadlines as a read.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        loop {
            let (deadline, reason) = match self.phase {
                Phase::Head { .. } if self.armed => (self.timer.deadline(), "header_timeout"),
                Phase::Answered => (self.last_activity + self.idle_timeout, "idle_timeout"),
                _ => return self.io.try_peek(buf).await,
            };
            // A peek reads until it has all it asked for: what came of it so far shows in `buf`
            // (zeroed first; a request head starts with a letter) if the deadline ends it.
            buf.fill(0);
            let (idle_since, memory, idle_wait) = (self.idle_since(), self.memory.as_deref(), &mut self.idle_wait);
            let idle_close = std::future::poll_fn(|cx| match (idle_since, memory) {
                (Some(since), Some(memory)) => idle_wait.poll(cx, memory, since),
                _ => std::task::Poll::Pending,
            });
            let peeked = tokio::select! {
                peeked = tokio::time::timeout_at(deadline, self.io.try_peek(buf)) => Some(peeked),
                () = idle_close => None,
            };
            let Some(peeked) = peeked else { return Err(self.close_idle()) };
            match peeked {
                Ok(peeked) => return peeked,
                // Bytes moved since (an answer still being written): wait on.
                Err(_) if reason == "idle_timeout" && self.last_activity + self.idle_timeout > deadline => {}
                Err(_) => {
                    let came = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())];
                    // The start of an HTTP/2 preface gets no HTTP/1.1 answer.
                    let peeked_head = !came.is_empty() && !H2_PREFACE.starts_with(came);
                    let answer = match self.partial_head() {
                        Some(answer) => Some(answer),
                        None if peeked_head => self.head_timeout_answer.as_ref(),
                        None => None,
                    };
                    if let (Some(answer), "header_timeout") = (answer, reason) {
                        use tokio::io::AsyncWriteExt;
                        let answer = self.head_timeout_answer(answer);
                        let write = async {
                            self.io.write_all(&answer).await?;
                            self.io.flush().await
                        };
                        let _: Result<std::io::Result<()>, _> = tokio::time::timeout(ANSWER_GRACE, write).await;
                    }
                    return self.close(reason).and_then(|()| {
                        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle (limits.idleTimeout)"))
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_own_address_of_the_same_kind_counts_as_addressed() {
        use super::is_own_address;
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // From loopback, another loopback address is this host's (a test's netns, a local client).
        assert!(is_own_address(ip("127.0.0.97"), ip("127.0.0.1")));
        // From the network, loopback never is: a neighbour routing 127.0.0.1 through the pod.
        assert!(!is_own_address(ip("127.0.0.1"), ip("198.18.0.2")));
        // An address that is not this host's (TEST-NET-1), or no single host's, never is.
        for other in ["192.0.2.1", "0.0.0.0", "224.0.0.1", "::"] {
            assert!(!is_own_address(ip(other), ip("127.0.0.1")), "{other}");
            assert!(!is_own_address(ip(other), ip("198.18.0.2")), "{other}");
        }
        // This host's own non-loopback address (the one it would send from; no packet is sent).
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if probe.connect("192.0.2.1:9").is_ok() {
            let own = probe.local_addr().unwrap().ip();
            assert!(is_own_address(own, ip("198.18.0.2")), "{own}");
        }
    }

    /// A connected pair on loopback: (the client's end, the listener's).
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    /// A rustls ClientHello's first record, offering `alpn`.
    fn hello(alpn: &[u8]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let name = rustls_pki_types::ServerName::try_from("peer.example").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn a_first_record_that_arrived_whole_is_looked_at_in_place() {
        use tokio::io::AsyncWriteExt;
        let sorts = [(crate::tls::TUNNEL_ALPN, HelloFor::Tunnel), (&b"redis"[..], HelloFor::App)];
        for (alpn, sorted_as) in sorts {
            let (mut client, mut server) = tcp_pair().await;
            client.write_all(&hello(alpn)).await.unwrap();
            let sorted = sort_hello(&mut server).await.unwrap();
            assert_eq!(sorted, Some((sorted_as, Vec::new())), "nothing read, nothing to put back");
        }
    }

    #[tokio::test]
    async fn a_first_record_in_pieces_is_read_whole_and_given_back() {
        use tokio::io::AsyncWriteExt;
        let record = hello(crate::tls::TUNNEL_ALPN);
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(&record[..3]).await.unwrap();
        let sorting = tokio::spawn(async move { sort_hello(&mut server).await });
        // On this runtime's one thread, the sort runs (and waits, its peek short) before the rest.
        tokio::task::yield_now().await;
        client.write_all(&record[3..]).await.unwrap();
        assert_eq!(sorting.await.unwrap().unwrap(), Some((HelloFor::Tunnel, record)));
    }

    #[tokio::test]
    async fn a_long_announced_record_is_left_to_the_http_handshake_unread() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tcp_pair().await;
        // 16 KiB announced, 5 bytes sent: no waiting for the rest, no buffer for it.
        client.write_all(&[TLS_HANDSHAKE_RECORD, 3, 1, 0x40, 0]).await.unwrap();
        assert_eq!(sort_hello(&mut server).await.unwrap(), Some((HelloFor::Unknown, Vec::new())));
        // Plaintext under STRICT: the HTTP handshake refuses it, as before.
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sort_hello(&mut server).await.unwrap(), Some((HelloFor::Unknown, Vec::new())));
    }

    #[tokio::test]
    async fn a_close_before_a_byte_is_no_handshake_and_one_inside_the_record_an_error() {
        use tokio::io::AsyncWriteExt;
        let (client, mut server) = tcp_pair().await;
        drop(client);
        assert_eq!(sort_hello(&mut server).await.unwrap(), None);
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(&hello(crate::tls::TUNNEL_ALPN)[..3]).await.unwrap();
        drop(client);
        let err = sort_hello(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn each_ipv6_address_is_a_source_of_its_own_and_a_mapped_ipv4_one_is_ipv4() {
        let table = PerSource::new(1);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let first = table.enter(ip("fd00:10:244:1::5")).expect("a first connection");
        // Another pod on the same node: same /64, its own count.
        let neighbour = table.enter(ip("fd00:10:244:1::6")).expect("a neighbour is not held to the first's count");
        assert!(table.enter(ip("fd00:10:244:1::5")).is_none(), "the first pod is at its limit");
        let v4 = table.enter(ip("10.0.0.7")).expect("an IPv4 source");
        assert!(table.enter(ip("::ffff:10.0.0.7")).is_none(), "the same IPv4 source, mapped");
        drop((first, neighbour, v4));
        assert_eq!(table.sources(), 0, "slots given back");
    }
    use super::*;

    fn closures() -> Closures {
        let refusals = crate::telemetry::Refusals::default();
        let counter = |reason: RefusalReason| {
            let series = prometheus::IntCounter::new("closed", "closed").unwrap();
            refusals.counter("inbound", reason, "test", series)
        };
        Closures {
            direction: "inbound",
            header: counter(RefusalReason::HeaderTimeout),
            idle: counter(RefusalReason::IdleTimeout),
            resets: counter(RefusalReason::RapidReset),
            h2_abuse: counter(RefusalReason::Http2Abuse),
            memory_cut: counter(RefusalReason::MemoryCut),
            memory_idle: counter(RefusalReason::MemoryIdle),
        }
    }

    #[test]
    fn connections_fit_the_open_files_limit_with_room_for_the_admin_port() {
        assert_eq!(connection_budget(1 << 20, 10_000), (10_000, 10_000), "a raised limit: the configured counts");
        // A soft 1,024 that cannot be raised: 896 files for connections, 89 the admin's, the
        // rest for two data listeners at two files a connection.
        assert_eq!(connection_budget(1024, 10_000), (201, 89));
        let (data, admin) = connection_budget(1024, 10_000);
        assert!(2 * 2 * data + admin + FILES_BESIDES_CONNECTIONS as usize <= 1024);
        assert_eq!(connection_budget(1024, 50), (50, 50), "a smaller configured count stands");
        assert_eq!(connection_budget(16, 10_000), (1, 1), "never none");
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_after_the_request_line_however_it_is_split() {
        let ends = |pieces: &[&[u8]]| {
            let mut scan = HeadScan::Lead;
            for (i, piece) in pieces.iter().enumerate() {
                match scan.scan(piece) {
                    Some(next) => scan = next,
                    None => return Some(i),
                }
            }
            None
        };
        let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(ends(&[head]), Some(0));
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(ends(&bytes), Some(bytes.len() - 1), "a byte at a time: at its last byte");
        assert_eq!(ends(&[b"GET / HTTP/1.1\nhost: a\n\n"]), Some(0), "bare LFs, as httparse takes them");
        assert_eq!(ends(&[b"GET / HTTP/1.1\nhost: a\n", b"\r\n"]), Some(1));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nhost: a\r\n"]), None, "no empty line yet");
        // Empty lines before the request line are skipped, not taken for the end of a head:
        // else a client could start with them and trickle the rest past the deadline.
        assert_eq!(ends(&[b"\r\n\r\n", b"GET / HT"]), None);
        assert_eq!(ends(&[b"\n\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some(1));
    }

    /// A connection from a peer sidecar carries the resets of every caller in its pod (their
    /// missed deadlines): ten callers' worth before it is closed. Fifteen streams opened and
    /// reset at once, past a limit of ten a second (and within h2's own bound on streams reset
    /// before they are accepted): a client's connection is closed (GOAWAY), a peer sidecar's
    /// answers the PING sent after them.
    #[tokio::test(start_paused = true)]
    async fn a_peer_sidecars_connection_may_carry_ten_callers_worth_of_stream_resets() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([kind, flags]);
            f.extend(stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        for relaying in [false, true] {
            let limits = ConnectionLimits { max_resets_per_second: Some(10), ..ConnectionLimits::default() };
            let resets = prometheus::IntCounter::new("closed", "closed").unwrap();
            let mut closures = closures();
            closures.resets = crate::telemetry::Refusals::default().counter(
                "inbound",
                RefusalReason::RapidReset,
                "10",
                resets.clone(),
            );
            let (mut client, server_io) = tokio::io::duplex(1 << 20);
            let mut conn = Deadlined::new(
                Box::new(server_io),
                "127.0.0.1:1".parse().unwrap(),
                &limits,
                closures,
                tokio::time::Instant::now(),
            );
            if relaying {
                conn.relaying_many_callers();
            }
            tokio::spawn(async move {
                let mut h2 = h2::server::handshake(conn).await?;
                while let Some(request) = h2.accept().await {
                    drop(request?);
                }
                Ok::<_, h2::Error>(())
            });
            let mut bytes = h2_frames::PREFACE.to_vec();
            bytes.extend(frame(0x4, 0, 0, &[]));
            // GET https://orders.shop/ in HPACK.
            let mut head = vec![0x82, 0x87, 0x84, 0x01, 11];
            head.extend_from_slice(b"orders.shop");
            for stream in (1..30u32).step_by(2) {
                bytes.extend(frame(0x1, 0x4 | 0x1, stream, &head));
                bytes.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
            }
            bytes.extend(frame(0x6, 0, 0, b"12345678"));
            client.write_all(&bytes).await.unwrap();
            // The server's frames, until its PING acknowledgement or its GOAWAY.
            let mut read = Vec::new();
            let outcome = loop {
                let mut at = 0;
                let mut seen = None;
                while read.len() >= at + 9 {
                    let len = u32::from_be_bytes([0, read[at], read[at + 1], read[at + 2]]) as usize;
                    match (read[at + 3], read[at + 4]) {
                        (0x6, 0x1) => seen = Some("ping acknowledged"),
                        (0x7, _) => seen = Some("goaway"),
                        _ => {}
                    }
                    at += 9 + len;
                }
                if let Some(seen) = seen {
                    break seen;
                }
                let mut buf = [0u8; 4096];
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without a word, relaying: {relaying}");
                read.extend_from_slice(&buf[..n]);
            };
            match relaying {
                true => assert_eq!((outcome, resets.get()), ("ping acknowledged", 0)),
                false => assert_eq!((outcome, resets.get()), ("goaway", 1)),
            }
        }
    }

    /// h2 writes the frames that end a stream after its read has parked, and nothing more comes
    /// from a client done with its answer: the connection must still be closed once idle.
    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_whose_last_stream_the_server_ended_is_closed_idle_under_pressure() {
        let memory = crate::memory::Pressure::always_over();
        let limits = ConnectionLimits {
            header_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
            memory: Some(memory.clone()),
            ..ConnectionLimits::default()
        };
        let closures = closures();
        let idle_closed = closures.memory_idle.clone();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let conn = Deadlined::new(
            Box::new(server_io),
            "127.0.0.1:1".parse().unwrap(),
            &limits,
            closures,
            tokio::time::Instant::now(),
        );
        // As pingora serves HTTP/2: each stream on a task of its own, here answered after a
        // while (samples over the limit come meanwhile, while the connection is busy).
        let server = tokio::spawn(async move {
            let mut h2 = h2::server::handshake(conn).await.unwrap();
            while let Some(request) = h2.accept().await {
                let (_, mut respond) = request?;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    respond.send_response(http::Response::new(()), true).unwrap();
                });
            }
            Ok::<_, h2::Error>(())
        });
        let (client, mut connection) = h2::client::handshake(client_io).await.unwrap();
        let mut ping = connection.ping_pong().unwrap();
        tokio::spawn(connection);
        // A round trip first: the server has read everything of the handshake (the client's
        // acknowledgement of its SETTINGS) before the request.
        ping.ping(h2::Ping::opaque()).await.unwrap();
        let mut client = client.ready().await.unwrap();
        let (answer, _) = client.send_request(http::Request::get("https://orders/").body(()).unwrap(), true).unwrap();
        // From now on every sample is over the limit (the guard samples on its own past half).
        memory.watch();
        assert_eq!(answer.await.unwrap().status(), 200);
        let answered = tokio::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(60), server).await.expect("closed").unwrap();
        let e = ended.expect_err("closed by the guard, not by the client");
        assert!(e.is_io(), "{e}");
        assert!(answered.elapsed() >= crate::memory::CUT_AFTER, "idle for {:?}", answered.elapsed());
        assert_eq!(idle_closed.total(), 1);
        drop(client);
    }
}
