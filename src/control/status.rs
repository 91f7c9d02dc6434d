//! What the control plane knows of each connected sidecar: who it is, what it was sent, and
//! what it acknowledged. Read by `GET /status`; written once per stream event (never on a
//! request path), so one mutex is enough.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::metrics::ControlMetrics;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionAt {
    pub version: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub version: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// A snapshot was sent and not answered yet.
    Pending,
    /// The last snapshot sent was applied.
    Synced,
    /// The last snapshot sent was refused; the sidecar enforces an older one.
    Rejected,
    /// The sidecar holds a snapshot of a later revision than this replica has read (it synced
    /// with another replica first): nothing is sent until this one reads that revision.
    Ahead,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarRecord {
    pub identity: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Where the labels came from: `apiServer` (the pod a verified token names) or `hello`.
    pub labels_source: &'static str,
    pub node: String,
    pub address: Option<SocketAddr>,
    pub connected_at: String,
    pub state: SyncState,
    /// Snapshots sent on this stream.
    pub pushes: u64,
    /// The catalog generation this stream last looked at: once it equals the catalog's, the
    /// stream has sent whatever that catalog asked for.
    pub evaluated: u64,
    pub sent: Option<VersionAt>,
    pub acked: Option<VersionAt>,
    pub nacked: Option<Refusal>,
    #[serde(skip)]
    awaiting: Option<(String, Instant)>,
}

pub struct Registry {
    next_id: AtomicU64,
    sidecars: Mutex<HashMap<u64, SidecarRecord>>,
    metrics: Arc<ControlMetrics>,
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

impl Registry {
    pub fn new(metrics: Arc<ControlMetrics>) -> Arc<Self> {
        Arc::new(Registry { next_id: AtomicU64::new(1), sidecars: Mutex::new(HashMap::new()), metrics })
    }

    /// Records a new stream; the returned session removes it when dropped.
    pub fn open(
        self: &Arc<Self>,
        identity: String,
        namespace: String,
        labels: BTreeMap<String, String>,
        node: String,
        address: Option<SocketAddr>,
        labels_source: &'static str,
    ) -> Session {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = SidecarRecord {
            identity,
            namespace,
            labels,
            labels_source,
            node,
            address,
            connected_at: now(),
            state: SyncState::Pending,
            pushes: 0,
            evaluated: 0,
            sent: None,
            acked: None,
            nacked: None,
            awaiting: None,
        };
        self.sidecars.lock().expect("registry lock").insert(id, record);
        self.metrics.connected.inc();
        Session { id, registry: self.clone() }
    }

    /// Every connected sidecar, by identity then connection time.
    pub fn list(&self) -> Vec<SidecarRecord> {
        let mut all: Vec<SidecarRecord> = self.sidecars.lock().expect("registry lock").values().cloned().collect();
        all.sort_by(|a, b| (&a.identity, &a.connected_at).cmp(&(&b.identity, &b.connected_at)));
        all
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut SidecarRecord)) {
        if let Some(record) = self.sidecars.lock().expect("registry lock").get_mut(&id) {
            change(record);
        }
    }
}

/// One stream's entry in the registry.
pub struct Session {
    id: u64,
    registry: Arc<Registry>,
}

impl Session {
    /// A snapshot was sent; `since` is when the change that made it was seen.
    pub fn pushed(&self, version: &str, since: Instant) {
        self.registry.metrics.pushes.inc();
        self.registry.update(self.id, |r| {
            r.pushes += 1;
            r.state = SyncState::Pending;
            r.sent = Some(VersionAt { version: version.to_string(), at: now() });
            r.awaiting = Some((version.to_string(), since));
        });
    }

    /// The stream looked at catalog `generation` (and sent what it had to).
    pub fn evaluated(&self, generation: u64) {
        self.registry.update(self.id, |r| r.evaluated = generation);
    }

    /// The sidecar reconnected already holding the current version: nothing to send.
    pub fn resumed(&self, version: &str) {
        self.registry.update(self.id, |r| {
            r.state = SyncState::Synced;
            r.acked = Some(VersionAt { version: version.to_string(), at: now() });
        });
    }

    /// The sidecar reconnected holding revision `held`, later than this replica's `mine`.
    pub fn ahead(&self, version: Option<&str>, held: u64, mine: u64) {
        tracing::info!(
            held,
            mine,
            "a sidecar holds a later policy revision than this replica has read; waiting for it"
        );
        self.registry.update(self.id, |r| {
            r.state = SyncState::Ahead;
            if let Some(version) = version {
                r.acked = Some(VersionAt { version: version.to_string(), at: now() });
            }
        });
    }

    pub fn acked(&self, version: &str) {
        let acked = VersionAt { version: version.to_string(), at: now() };
        self.answered(version, "ACK", &self.registry.metrics.acks, SyncState::Synced, |r| r.acked = Some(acked));
    }

    pub fn nacked(&self, version: &str, reason: &str) {
        let nacked = Refusal { version: version.to_string(), reason: reason.to_string(), at: now() };
        self.answered(version, "NACK", &self.registry.metrics.nacks, SyncState::Rejected, |r| r.nacked = Some(nacked));
    }

    /// The sidecar's ACK or NACK of `version`: counted, its push's latency observed, the stream
    /// left in `state`, and `record` written. One for a version this stream never sent (nor the
    /// sidecar said it held) is none of those, as Envoy leaves out an ACK whose nonce is not its
    /// last response's: /status must not show as applied what was never sent.
    fn answered(
        &self,
        version: &str,
        answer: &str,
        counter: &prometheus::IntCounter,
        state: SyncState,
        record: impl FnOnce(&mut SidecarRecord),
    ) {
        let latency = &self.registry.metrics.push_latency;
        // Who answered, when it named another version: logged once the registry is unlocked.
        let mut stranger = None;
        self.registry.update(self.id, |r| {
            let is = |v: &Option<VersionAt>| v.as_ref().is_some_and(|v| v.version == version);
            if !(is(&r.sent) || is(&r.acked)) {
                stranger = Some((r.identity.clone(), r.node.clone(), r.sent.as_ref().map(|s| s.version.clone())));
                return;
            }
            if let Some((_, since)) = r.awaiting.take_if(|(v, _)| v == version) {
                latency.observe(since.elapsed().as_secs_f64());
                r.state = state;
            }
            record(r);
        });
        match stranger {
            None => counter.inc(),
            Some((identity, node, sent)) => tracing::warn!(%identity, %node, version, ?sent,
                "a sidecar answered {answer} for a version this stream never sent it; not recorded"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.registry.sidecars.lock().expect("registry lock").remove(&self.id);
        self.registry.metrics.connected.dec();
    }
}
