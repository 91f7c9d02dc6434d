//! The policy engine (SPEC sections 4 and 5): `SecurityPolicy` documents, compiled once per
//! update into an immutable [`PolicySnapshot`] that answers authorisation and rate-limit
//! questions without locks, and a [`PolicyStore`] that swaps a new snapshot in atomically when
//! the files change, keeping the last good one when they are bad.

mod compile;
mod document;
mod load;
mod normalize;
mod patterns;
mod ratelimit;

pub use compile::{selects, Denied, InputLimits, Limited, PolicySnapshot, RequestView};
pub use document::{Action, Mode, SecurityPolicy};
pub use load::{load_files, parse_file, Located, Sources};
pub use normalize::{match_form, normalize, PathError};
pub use patterns::{IpBlock, PathPattern, Pattern};
pub use ratelimit::Buckets;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::config::{ConfigError, WorkloadConfig};
use crate::telemetry::{SecurityEvent, Telemetry};

pub struct PolicyStore {
    files: Vec<PathBuf>,
    workload: WorkloadConfig,
    current: ArcSwap<PolicySnapshot>,
    /// The version last tried, good or bad, so a bad file is reported once, not every tick.
    last_tried: std::sync::Mutex<String>,
    telemetry: Arc<Telemetry>,
}

impl PolicyStore {
    /// Loads and compiles the files; any error is fatal here (nothing listens yet).
    pub fn load(
        files: Vec<PathBuf>,
        workload: WorkloadConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, Vec<ConfigError>> {
        let snapshot = build(Sources::read(&files), &workload, &telemetry, None)?;
        let store = PolicyStore {
            last_tried: std::sync::Mutex::new(snapshot.version.clone()),
            files,
            workload,
            current: ArcSwap::from_pointee(snapshot),
            telemetry,
        };
        store.published(&store.current());
        Ok(store)
    }

    /// The snapshot in force; cheap, lock-free.
    pub fn current(&self) -> Guard<Arc<PolicySnapshot>> {
        self.current.load()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Reloads when the files' contents changed (they are read and hashed: file times can miss
    /// a same-size rewrite). On error the snapshot in force stays, and the error is logged,
    /// counted and reported as a security event.
    pub fn reload_if_changed(&self) -> Option<Arc<PolicySnapshot>> {
        let sources = Sources::read(&self.files);
        {
            let mut tried = self.last_tried.lock().expect("version lock");
            if *tried == sources.version {
                return None;
            }
            *tried = sources.version.clone();
        }
        let previous = self.current.load_full();
        match build(sources, &self.workload, &self.telemetry, Some(&previous)) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.current.store(snapshot.clone());
                self.published(&snapshot);
                Some(snapshot)
            }
            Err(errors) => {
                self.telemetry.metrics.policy_updates.with_label_values(&["rejected"]).inc();
                let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                for reason in &reasons {
                    tracing::warn!(error = %reason, version = %previous.version, "policy update rejected; the policy in force stays");
                }
                self.telemetry
                    .events
                    .emit(SecurityEvent::PolicyRejected { kept_version: previous.version.clone(), errors: reasons });
                None
            }
        }
    }

    fn published(&self, snapshot: &PolicySnapshot) {
        let metrics = &self.telemetry.metrics;
        metrics.policy_updates.with_label_values(&["applied"]).inc();
        metrics.policy_version.reset();
        metrics.policy_version.with_label_values(&["files", &snapshot.version]).set(1);
        let names: Vec<String> = snapshot.policies.iter().map(|p| p.name.to_string()).collect();
        tracing::info!(version = %snapshot.version, policies = ?names, "policy in force");
        self.telemetry.events.emit(SecurityEvent::PolicyApplied { version: snapshot.version.clone(), policies: names });
    }
}

fn build(
    sources: Sources,
    workload: &WorkloadConfig,
    telemetry: &Telemetry,
    previous: Option<&PolicySnapshot>,
) -> Result<PolicySnapshot, Vec<ConfigError>> {
    let (located, errors) = sources.parse();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PolicySnapshot::compile(sources.version, &located, workload, &telemetry.metrics, previous))
}
