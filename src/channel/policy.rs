//! The policy stream, sidecar side: one stream to the control plane, kept open; every snapshot
//! is validated and applied through the [`PolicyStore`] and answered with ACK or NACK. When the
//! stream breaks, the policy in force stays and the channel reconnects with jittered
//! exponential backoff, saying which version it holds so an unchanged set is not sent again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{ControlPlaneAddress, Workload};
use crate::identity::SpiffeId;
use crate::policy::PolicyStore;
use crate::proto::policy_discovery_client::PolicyDiscoveryClient;
use crate::proto::{control_message, sidecar_message, Ack, Hello, Nack, Revision, SidecarMessage};
use crate::telemetry::Telemetry;
use crate::tls::TlsStore;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(10);
/// The longest a sidecar waits to reconnect after the control plane closed its stream.
const RECONNECT_SPREAD: Duration = Duration::from_secs(5);
/// Bytes of a NACK's reason: what the control plane keeps of one (4 KiB), with room for the
/// count of what was cut (its messages may be 64 KiB).
const MAX_NACK_REASON: usize = 3584;
/// A snapshot of a few hundred large policies; tonic's default of 4 MB would fail silently
/// into a reconnect loop before a workload reached that many.
const MAX_SNAPSHOT_BYTES: usize = 32 * 1024 * 1024;

/// What `/config_dump` shows of the channel.
#[derive(Default)]
pub struct ChannelState {
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Streams tried since start: with `connected`, whether a sidecar is stuck retrying.
    attempts: std::sync::atomic::AtomicU64,
    /// The latest revision known for the snapshot in force (0: none, or its source gave none):
    /// the snapshot's own, or a later one the control plane confirmed for it without sending it
    /// again. Said in every Hello, so a replica at a lower one holds back.
    revision: std::sync::atomic::AtomicU64,
}

impl ChannelState {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("channel state lock").clone()
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }
}

pub struct PolicyChannel {
    pub address: ControlPlaneAddress,
    pub expected: SpiffeId,
    pub tls: Arc<TlsStore>,
    pub policy: Arc<PolicyStore>,
    pub workload: Workload,
    /// Shown in the control plane's /status: the pod name in Kubernetes.
    pub node: String,
    /// A projected service-account token, read at every connect (the kubelet rotates it): it
    /// lets the control plane read this pod's labels from the API server instead of trusting
    /// the ones the Hello claims.
    pub token_file: Option<std::path::PathBuf>,
    /// The certificate from the control plane's CA, when that is where it comes from: the
    /// stream waits for it (the placeholder would be refused), and a trust bundle this
    /// certificate no longer chains to asks it to be renewed.
    pub identity: Option<Arc<super::IdentityState>>,
    pub telemetry: Arc<Telemetry>,
    pub state: Arc<ChannelState>,
}

impl PolicyChannel {
    /// Runs until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = super::Backoff::new(FIRST_RETRY, LONGEST_RETRY);
        loop {
            let outcome = tokio::select! {
                outcome = self.session(&mut backoff) => outcome,
                _ = stop.wait_for(|s| *s) => return,
            };
            self.set_connected(false);
            // A control plane that closes its streams (a replica stopping) closes them all at
            // once: their sidecars come back spread over RECONNECT_SPREAD, not in one burst of
            // handshakes and token checks on the replicas left.
            let delay = match outcome {
                Ok(()) => backoff.next().max(RECONNECT_SPREAD.mul_f64(super::random_fraction())),
                Err(_) => backoff.next(),
            };
            let reason = outcome.err().unwrap_or_else(|| "the control plane closed the stream".into());
            tracing::warn!(control_plane = %self.address, %reason, retry_in = ?delay,
                version = %self.policy.current().version, "policy stream down; the policy in force stays");
            *self.state.last_error.lock().expect("channel state lock") = Some(reason);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Roots from the control plane (a CA rotation): put in force beside the certificate when
    /// the certificate comes from the CA; a certificate they do not cover is renewed first.
    fn trust(&self, roots: Vec<Vec<u8>>) {
        if self.tls.files().is_some() {
            return; // the trust bundle file rules
        }
        let roots: Vec<rustls_pki_types::CertificateDer<'static>> =
            roots.into_iter().map(rustls_pki_types::CertificateDer::from).collect();
        if roots == self.tls.current().credentials.bundle {
            return;
        }
        let source = std::path::Path::new("the control plane's trust bundle");
        match self.tls.current().credentials.with_bundle(roots, source).and_then(|c| self.tls.install(c)) {
            Ok(state) => {
                tracing::info!(roots = state.credentials.bundle.len(), "trust bundle from the control plane in force")
            }
            // The roots themselves are unusable (none, or not CA certificates): a renewal
            // could not help, and whatever is in force keeps working.
            Err(e @ crate::tls::TlsError::File { .. }) => {
                tracing::warn!(error = %e, "trust bundle from the control plane refused; the roots in force stay")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the certificate in force does not chain to the new roots; renewing it");
                if let Some(identity) = &self.identity {
                    identity.renew_soon();
                }
            }
        }
    }

    /// The control plane's revision moved on (or the stream resumed on a replica at a later
    /// one) with this workload's set unchanged: recorded when the sidecar holds that set, never
    /// lowered (only a snapshot, which the control plane holds back for `revisionHold`, takes
    /// a sidecar to an earlier revision). Nothing is applied, and nothing is answered.
    fn noted(&self, note: Revision) {
        if note.revision == 0 || self.policy.control_plane_version().as_deref() != Some(note.version.as_str()) {
            // Not the set in force (this sidecar refused it): its revision is not ours.
            return;
        }
        let before = self.state.revision.fetch_max(note.revision, Ordering::AcqRel);
        if note.revision > before {
            tracing::debug!(revision = note.revision, before, version = %note.version,
                "policy revision moved on; the set in force is unchanged");
        }
    }

    fn set_connected(&self, connected: bool) {
        self.state.connected.store(connected, Ordering::Release);
        self.telemetry.metrics.control_plane_connected.set(connected as i64);
    }

    async fn session(&self, backoff: &mut super::Backoff) -> Result<(), String> {
        if let Some(identity) = &self.identity {
            identity.wait_issued().await;
        }
        self.state.attempts.fetch_add(1, Ordering::AcqRel);
        let connector =
            super::connector(self.address.host.clone(), self.address.port, self.expected.clone(), self.tls.clone());
        let channel = tonic::transport::Endpoint::from_static("http://palisade-control")
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(&self.address.to_string(), &e))?;
        let (sender, receiver) = mpsc::channel(4);
        let hello = Hello {
            namespace: self.workload.namespace.clone(),
            labels: self.workload.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            version: self.policy.control_plane_version().unwrap_or_default(),
            revision: self.state.revision(),
            node: self.node.clone(),
            token: match &self.token_file {
                Some(file) => crate::yaml::read_file(file, 64 * 1024)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("the service-account token {}: {e}", file.display()))?,
                None => String::new(),
            },
        };
        let _ = sender.send(message(sidecar_message::Kind::Hello(hello))).await;
        let mut inbound = PolicyDiscoveryClient::new(channel)
            .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
            .stream_policies(ReceiverStream::new(receiver))
            .await
            .map_err(|status| format!("the control plane refused the stream: {}", status.message()))?
            .into_inner();
        self.set_connected(true);
        *self.state.last_error.lock().expect("channel state lock") = None;
        tracing::info!(control_plane = %self.address, identity = %self.expected, "policy stream open");
        loop {
            let Some(received) = inbound.message().await.map_err(|s| format!("stream broke: {}", s.message()))? else {
                return Ok(());
            };
            let snapshot = match received.kind {
                Some(control_message::Kind::Snapshot(snapshot)) => snapshot,
                Some(control_message::Kind::TrustBundle(bundle)) => {
                    self.trust(bundle.roots);
                    continue;
                }
                Some(control_message::Kind::Revision(note)) => {
                    self.noted(note);
                    continue;
                }
                None => continue,
            };
            let reply = self.answer(snapshot).await?;
            if matches!(reply, sidecar_message::Kind::Ack(_)) {
                // A stream that delivered a policy is a working one: only now does the next
                // failure start from the shortest wait again.
                backoff.reset();
            }
            if sender.send(message(reply)).await.is_err() {
                return Err("stream closed".into());
            }
        }
    }

    /// A snapshot validated and applied: ACK; refused, NACK, and the policy in force stays.
    async fn answer(&self, snapshot: crate::proto::PolicySnapshot) -> Result<sidecar_message::Kind, String> {
        let (version, revision) = (snapshot.version, snapshot.revision);
        if version.is_empty() {
            // A Hello's empty version says "none held": applied, this set would be sent again
            // at every reconnect, and /status could not tell it from none.
            let reason = "the snapshot has no version".to_string();
            tracing::warn!(%reason, "policy snapshot refused; the policy in force stays");
            return Ok(sidecar_message::Kind::Nack(Nack { version, reason }));
        }
        let documents: Vec<(String, bytes::Bytes)> =
            snapshot.policies.into_iter().map(|p| (p.source, p.document)).collect();
        let store = self.policy.clone();
        let applying = version.clone();
        // Parsing and compiling take up to a few milliseconds: off the request threads.
        let applied = tokio::task::spawn_blocking(move || store.apply_remote(applying, &documents))
            .await
            .map_err(|e| format!("applying a snapshot failed: {e}"))?;
        Ok(match applied {
            Ok(_) => {
                // The control plane holds back an earlier revision than the Hello's for as
                // long as a lagging replica may take, then sends it (the revision was reset):
                // taken then. A snapshot without one (policies written by hand) keeps the last.
                if revision != 0 {
                    self.state.revision.store(revision, Ordering::Release);
                }
                sidecar_message::Kind::Ack(Ack { version })
            }
            Err(reason) => sidecar_message::Kind::Nack(Nack { version, reason: nack_reason(reason) }),
        })
    }
}

/// A NACK's reason, cut to what the control plane takes in one message with room to spare: every
/// error of a large snapshot (each naming the workload's labels) ran past its 64 KiB, so the
/// NACK never arrived and the stream broke, reconnected and was refused again, unseen.
fn nack_reason(reason: String) -> String {
    if reason.len() <= MAX_NACK_REASON {
        return reason;
    }
    let mut end = MAX_NACK_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... ({} more bytes)", &reason[..end], reason.len() - end)
}

fn message(kind: sidecar_message::Kind) -> SidecarMessage {
    SidecarMessage { kind: Some(kind) }
}

/// An error and its causes on one line (tonic's own message is only "transport error").
/// Why connecting to the control plane (`what`) failed, in full; when it refused the control
/// plane's certificate, with the usual cause after a CA rotation: the bundle this sidecar was
/// started with does not hold the new root yet.
pub(super) fn connect_error(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut refused = false;
    while let Some(cause) = source {
        // Refused during the handshake (an identity refused after it has its own words). The
        // connector's `io::Error` holds it, which its `source()` skips.
        let held = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        let held = held.map(|inner| inner as &(dyn std::error::Error + 'static));
        for error in [Some(cause), held].into_iter().flatten() {
            let at_handshake = error.downcast_ref::<crate::tls::ConnectError>();
            refused |= matches!(at_handshake, Some(crate::tls::ConnectError::Refusal(_, None)));
        }
        source = cause.source();
    }
    let hint = match refused {
        true => "; its certificate does not chain to this sidecar's trust bundle (identity.controlPlane.trustBundle, or identity.files.trustBundle): after a CA rotation, that bundle must hold the new root before the control plane uses it",
        false => "",
    };
    format!("connecting to {what}: {}{hint}", chain(e))
}

pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of the current
/// step, so a control plane restart does not see every sidecar return at the same instant.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_certificate_refused_at_the_handshake_names_the_trust_bundle() {
        use crate::tls::ConnectError;
        let refused = ConnectError::Refusal("handshake failed: invalid peer certificate: BadSignature".into(), None);
        let said = connect_error("the CA at cp:15012", &std::io::Error::other(refused));
        assert!(said.starts_with("connecting to the CA at cp:15012: handshake failed"), "{said}");
        assert!(said.contains("identity.controlPlane.trustBundle"), "{said}");
        let down = connect_error("cp:15010", &std::io::Error::other(ConnectError::NoHandshake("closed".into())));
        assert!(!down.contains("trustBundle"), "{down}");
    }

    /// A channel for workload shop/orders to the control plane at `address`, its state, and
    /// the directory that holds its certificate (kept while the channel is used).
    fn channel_to(address: &str) -> (PolicyChannel, Arc<ChannelState>, tempfile::TempDir) {
        use crate::config::{EventSink, EventsConfig, FailMode, MtlsMode, TelemetryConfig};
        use crate::identity::{DevCa, LeafSpec};
        use crate::policy::PolicyOptions;
        use crate::tls::{IdentityFiles, TrustDomains};
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("cluster.local").unwrap();
        let files = ca.issue_to(&LeafSpec::workload("spiffe://cluster.local/ns/shop/sa/orders"), dir.path()).unwrap();
        let identity = IdentityFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            trust_bundle: files.trust_bundle.clone(),
        };
        let tls = TlsStore::load(identity, "cluster.local", TrustDomains::new(["cluster.local"])).unwrap();
        let telemetry = Arc::new(
            Telemetry::new(
                &TelemetryConfig {
                    events: EventsConfig { sink: EventSink::Stderr, ..Default::default() },
                    access_log: false,
                    ..Default::default()
                },
                None,
            )
            .unwrap(),
        );
        let options = PolicyOptions {
            files: Vec::new(),
            workload: Workload::default(),
            default_mtls: MtlsMode::STRICT,
            allow_permissive: true,
            fail_mode: FailMode::Closed,
            control_plane: true,
        };
        let state = Arc::new(ChannelState::default());
        let channel = PolicyChannel {
            address: address.parse().unwrap(),
            expected: crate::channel::default_identity("cluster.local"),
            tls: Arc::new(tls),
            policy: Arc::new(PolicyStore::load(options, telemetry.clone()).unwrap()),
            workload: Workload::default(),
            node: "test".into(),
            token_file: None,
            identity: None,
            telemetry,
            state: state.clone(),
        };
        (channel, state, dir)
    }

    /// A channel to a control plane that is not there, on a runtime whose clock only moves when
    /// every task waits: the retries follow the backoff in virtual time, and no test waits for
    /// real seconds.
    #[tokio::test(start_paused = true)]
    async fn a_missing_control_plane_is_retried_with_doubling_jittered_delays() {
        // Port 1 on loopback: refused at once, every time.
        let (channel, state, _dir) = channel_to("https://127.0.0.1:1");
        let (stop, stopped) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(channel.run(stopped));
        while state.attempts() < 8 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let waited = started.elapsed();
        // Seven delays: steps of 100 ms doubling, each jittered to between half and all of it.
        let steps: Duration =
            [100u64, 200, 400, 800, 1600, 3200, 6400].iter().map(|ms| Duration::from_millis(*ms)).sum();
        assert!(waited >= steps / 2 && waited <= steps + Duration::from_millis(100), "{waited:?} for {steps:?}");
        assert!(!state.connected() && state.last_error().is_some_and(|e| e.contains("127.0.0.1:1")));
        stop.send_replace(true);
        task.await.unwrap();
    }

    /// A snapshot without a version is refused: applied, the next Hello would say "none held"
    /// and the set would come again at every reconnect. The policy in force stays.
    #[tokio::test]
    async fn a_snapshot_without_a_version_is_refused_and_the_policy_in_force_stays() {
        use crate::proto::PolicySnapshot;
        let (channel, _state, _dir) = channel_to("https://127.0.0.1:1");
        let good = PolicySnapshot { version: "aaaaaaaaaaaa".into(), policies: Vec::new(), revision: 3 };
        assert!(
            matches!(channel.answer(good).await, Ok(sidecar_message::Kind::Ack(Ack { version })) if version == "aaaaaaaaaaaa")
        );
        let unversioned = PolicySnapshot { version: String::new(), policies: Vec::new(), revision: 4 };
        match channel.answer(unversioned).await {
            Ok(sidecar_message::Kind::Nack(nack)) => assert!(nack.reason.contains("no version"), "{}", nack.reason),
            other => panic!("an unversioned snapshot answered {other:?}"),
        }
        assert_eq!(channel.policy.control_plane_version().as_deref(), Some("aaaaaaaaaaaa"));
        assert_eq!(channel.state.revision(), 3);
    }

    /// Roots from the control plane that cannot be roots (none, or bytes that are no CA
    /// certificate) leave the bundle in force as it is; real new roots are taken.
    #[test]
    fn an_unusable_trust_bundle_from_the_control_plane_leaves_the_roots_in_force() {
        use crate::identity::{DevCa, LeafSpec};
        use rustls_pki_types::pem::PemObject;
        let (channel, _state, _dir) = channel_to("https://127.0.0.1:1");
        let ca = DevCa::generate("cluster.local").unwrap();
        let root = |ca: &DevCa| {
            rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()).next().unwrap().unwrap()
        };
        let own = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
        let domains = crate::tls::TrustDomains::new(["cluster.local"]);
        let store = TlsStore::bootstrap(&own, vec![root(&ca)], domains).unwrap();
        // As the CA would have issued it.
        let (cert, key) = ca.issue(&LeafSpec::workload(own.as_str())).unwrap();
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let issued = crate::tls::Credentials::from_memory(chain, key, vec![root(&ca)], "cluster.local", "ca".as_ref());
        store.install(issued.unwrap()).unwrap();
        let channel = PolicyChannel { tls: Arc::new(store), ..channel };
        let bundle = || channel.tls.current().credentials.bundle.clone();
        let first = bundle();
        let (other, _) = ca.issue(&LeafSpec::workload("spiffe://cluster.local/ns/shop/sa/other")).unwrap();
        let other = rustls_pki_types::CertificateDer::pem_slice_iter(other.as_bytes()).next().unwrap().unwrap();
        for unusable in [Vec::new(), vec![b"not a certificate".to_vec()], vec![other.to_vec()]] {
            channel.trust(unusable);
            assert_eq!(bundle(), first);
        }
        let next = DevCa::generate("cluster.local").unwrap();
        channel.trust(vec![root(&ca).to_vec(), root(&next).to_vec()]);
        assert_eq!(bundle().len(), 2, "a rotation's roots are taken");
    }

    /// A revision the control plane confirms for a set counts only when that set is in force,
    /// and never takes the sidecar's revision back: only a snapshot (held back by the control
    /// plane for `revisionHold`) does that.
    #[test]
    fn a_revision_counts_for_the_set_in_force_and_never_goes_back() {
        let (channel, state, _dir) = channel_to("https://127.0.0.1:1");
        let note = |version: &str, revision| Revision { version: version.into(), revision };
        channel.noted(note("", 9));
        assert_eq!(state.revision(), 0, "no control-plane set in force yet");
        channel.policy.apply_remote("aaaaaaaaaaaa".into(), &[]).unwrap();
        state.revision.store(5, Ordering::Release);
        channel.noted(note("bbbbbbbbbbbb", 9));
        assert_eq!(state.revision(), 5, "a set it does not hold (refused): not its revision");
        channel.noted(note("aaaaaaaaaaaa", 7));
        assert_eq!(state.revision(), 7);
        channel.noted(note("aaaaaaaaaaaa", 6));
        channel.noted(note("aaaaaaaaaaaa", 0));
        assert_eq!(state.revision(), 7, "never lowered");
    }
}
