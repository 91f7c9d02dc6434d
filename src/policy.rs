//! The policy engine (SPEC sections 4 and 5): `SecurityPolicy` documents, compiled once per
//! update into an immutable [`PolicySnapshot`] that answers authorisation and rate-limit
//! questions without locks, and a [`PolicyStore`] that swaps a new snapshot in atomically when
//! the files change, keeping the last good one when they are bad.

mod compile;
mod decide;
mod document;
mod load;
mod normalize;
mod patterns;
mod ratelimit;

pub use crate::config::IpBlock;
/// The WAF's reading of a gRPC `Content-Type`, for what else treats gRPC as such (body timers).
pub use crate::waf::{grpc_status, is_grpc, rpc_over_http1, GRPC_STATUS};
pub use compile::{selects, InputLimits, PolicySnapshot};
pub use decide::{
    Allowed, Authenticated, BodyInspection, BodyPlan, ConnectionView, DecidedBy, GrpcCall, Limited, Malformation, Note,
    Refusal, RequestView, Throttle, Unauthenticated, WafFinding,
};
pub use document::{Action, LimitAction, Mode, SecurityPolicy, WafMode};
pub use load::{
    expand_directories, is_policy_file_name, load_files, parse_file, parse_values_file, unique, Located, Sources,
};
pub use normalize::{match_form, normalize, PathError};
pub use patterns::{PathPattern, Pattern};
pub use ratelimit::Buckets;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::config::{ConfigError, FailMode, MtlsMode, Workload};
use crate::telemetry::{SecurityEvent, Telemetry};

/// Where the policies of a sidecar come from and what it will accept.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    pub files: Vec<PathBuf>,
    pub workload: Workload,
    /// `inbound.mtls`: the mode while no policy says otherwise.
    pub default_mtls: MtlsMode,
    /// `inbound.allowPermissive`: false refuses any policy asking for PERMISSIVE.
    pub allow_permissive: bool,
    pub fail_mode: FailMode,
    /// A control plane is configured: without files, there is no policy until it answers.
    pub control_plane: bool,
}

/// Which source the snapshot in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing loaded yet; `failMode` decides.
    None,
    Files,
    ControlPlane,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::Files => "files",
            Source::ControlPlane => "controlPlane",
        }
    }
}

/// The policy in force and how it changes. Requests read one [`PolicySnapshot`] without a
/// lock; an update validates a whole new snapshot first and publishes it with one store, so no
/// request ever sees half of an update (or a mode from one update and rules from another).
pub struct PolicyStore {
    options: PolicyOptions,
    current: ArcSwap<PolicySnapshot>,
    /// Wakes whoever must act when the snapshot changes (connections admitted as plaintext
    /// re-check the mode); it carries no state of its own.
    changed: watch::Sender<()>,
    /// The version last tried from files, good or bad, so a bad file is reported once, not
    /// every tick; with the key files those policies named, read again every tick.
    last_tried: std::sync::Mutex<Tried>,
    /// Held from the source check to the swap, so a file reload and a control-plane snapshot
    /// that arrive together cannot interleave (never taken on a request's path).
    updating: std::sync::Mutex<()>,
    telemetry: Arc<Telemetry>,
    /// JWKS caches and their refresh tasks, kept across updates: a recompiled policy naming the
    /// same JWKS URI keeps its keys.
    authn: crate::authn::AuthnRuntime,
}

/// What the last reload from files tried: see [`PolicyStore::reload_if_changed`].
struct Tried {
    version: String,
    key_files: Vec<PathBuf>,
}

impl PolicyStore {
    /// Loads and compiles the files; any error is fatal here (nothing listens yet). With a
    /// control plane and no files, starts with no policy: `failMode` decides until one arrives.
    pub fn load(options: PolicyOptions, telemetry: Arc<Telemetry>) -> Result<Self, Vec<ConfigError>> {
        let authn = crate::authn::AuthnRuntime::default();
        let mut key_files = Vec::new();
        let snapshot = if options.files.is_empty() && options.control_plane {
            no_policy_yet(&options, &telemetry, &authn)
        } else {
            let sources = Sources::read_now(&options.files);
            let located = validate(sources.parse(), &options, false)?;
            key_files = load::key_files(&located);
            let version = sources.version_with(&key_files);
            compile(version, Source::Files, &located, &options, &telemetry, &authn, None)?
        };
        let store = PolicyStore {
            authn,
            last_tried: std::sync::Mutex::new(Tried { version: snapshot.version.clone(), key_files }),
            options,
            current: ArcSwap::from_pointee(snapshot),
            changed: watch::Sender::new(()),
            updating: std::sync::Mutex::new(()),
            telemetry,
        };
        Ok(store)
    }

    /// Reports the policy loaded at start (the log line, the metric, the event), once the
    /// sidecar is sure to run: a process that then fails to bind its ports must not have told
    /// the event log a policy is in force.
    pub fn announce(&self) {
        if self.source() != Source::None {
            self.published(&self.current());
        }
    }

    /// The snapshot in force; cheap, lock-free.
    pub fn current(&self) -> Guard<Arc<PolicySnapshot>> {
        self.current.load()
    }

    /// Fires after every change of the snapshot in force.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.options.files
    }

    pub fn source(&self) -> Source {
        self.current().source
    }

    /// Whether the sidecar may say it is ready as far as policy goes: a policy was loaded, or
    /// `failMode: open` lets traffic through without one.
    pub fn ready(&self) -> bool {
        self.source() != Source::None || self.options.fail_mode == FailMode::Open
    }

    /// The version the control plane gave, for a reconnect to resume from.
    pub fn control_plane_version(&self) -> Option<String> {
        let current = self.current();
        (current.source == Source::ControlPlane).then(|| current.version.clone())
    }

    /// Reloads when the files' contents changed, or those of the key files their policies name
    /// (they are read and hashed: file times can miss a same-size rewrite). On error the
    /// snapshot in force stays, and the error is logged, counted and reported as a security
    /// event.
    pub fn reload_if_changed(&self) -> Option<Arc<PolicySnapshot>> {
        let _updating = self.updating.lock().expect("update lock");
        if self.options.files.is_empty() || self.source() == Source::ControlPlane {
            return None;
        }
        let files = &self.options.files;
        let unchanged = |sources: &Sources| {
            let tried = self.last_tried.lock().expect("version lock");
            sources.version_with(&tried.key_files) == tried.version
        };
        // Read again, until two reads agree, only when something changed.
        let first = Sources::read(files);
        if unchanged(&first) {
            return None;
        }
        let sources = Sources::settle(first, files).filter(|sources| !unchanged(sources))?;
        let parsed = sources.parse();
        let key_files = load::key_files(&parsed.0);
        let version = sources.version_with(&key_files);
        *self.last_tried.lock().expect("version lock") = Tried { version: version.clone(), key_files };
        let previous = self.current.load_full();
        let compiled = validate(parsed, &self.options, false).and_then(|located| {
            compile(version, Source::Files, &located, &self.options, &self.telemetry, &self.authn, Some(&previous))
        });
        match compiled {
            Ok(snapshot) => Some(self.install(snapshot)),
            Err(errors) => {
                self.rejected(&previous, errors.iter().map(ToString::to_string).collect());
                None
            }
        }
    }

    /// Applies a snapshot from the control plane: `documents` are (source file, YAML bytes)
    /// pairs. They go through the same validation as files, and every policy must select this
    /// workload; on any error nothing changes and the reasons come back for the NACK.
    pub fn apply_remote(
        &self,
        version: String,
        documents: &[(String, bytes::Bytes)],
    ) -> Result<Arc<PolicySnapshot>, String> {
        let _updating = self.updating.lock().expect("update lock");
        let previous = self.current.load_full();
        let mut located = Vec::new();
        let mut errors = Vec::new();
        for (source, bytes) in documents {
            let file = PathBuf::from(format!("controlPlane:{source}"));
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    let (policies, file_errors) = parse_file(&file, text);
                    located.extend(policies);
                    errors.extend(file_errors);
                }
                Err(_) => errors.push(ConfigError::new(&file, "", "the document is not UTF-8 text")),
            }
        }
        let compiled = validate((located, errors), &self.options, true).and_then(|located| {
            let source = Source::ControlPlane;
            compile(version, source, &located, &self.options, &self.telemetry, &self.authn, Some(&previous))
        });
        match compiled {
            Ok(snapshot) => Ok(self.install(snapshot)),
            Err(errors) => {
                let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                self.rejected(&previous, reasons.clone());
                Err(reasons.join("; "))
            }
        }
    }

    fn install(&self, snapshot: PolicySnapshot) -> Arc<PolicySnapshot> {
        let snapshot = Arc::new(snapshot);
        let previous = self.current.swap(snapshot.clone());
        snapshot.drop_series_left_by(&previous, &self.telemetry.metrics);
        self.changed.send_replace(());
        self.published(&snapshot);
        snapshot
    }

    fn rejected(&self, kept: &PolicySnapshot, reasons: Vec<String>) {
        self.telemetry.metrics.policy_updates.with_label_values(&["rejected"]).inc();
        for reason in &reasons {
            tracing::warn!(error = %reason, version = %kept.version, "policy update rejected; the policy in force stays");
        }
        self.telemetry
            .events
            .emit(SecurityEvent::PolicyRejected { kept_version: kept.version.clone(), errors: reasons });
    }

    fn published(&self, snapshot: &PolicySnapshot) {
        let metrics = &self.telemetry.metrics;
        let source = snapshot.source.label();
        metrics.policy_updates.with_label_values(&["applied"]).inc();
        metrics.policy_version.reset();
        metrics.policy_version.with_label_values(&[source, &snapshot.version]).set(1);
        let names: Vec<String> = snapshot.policies.iter().map(|p| p.name.to_string()).collect();
        tracing::info!(version = %snapshot.version, source, mtls = ?snapshot.mtls, port_mtls = ?snapshot.port_mtls, policies = ?names, "policy in force");
        self.telemetry.events.emit(SecurityEvent::PolicyApplied { version: snapshot.version.clone(), policies: names });
    }
}

fn compile(
    version: String,
    source: Source,
    located: &[Located],
    options: &PolicyOptions,
    telemetry: &Telemetry,
    authn: &crate::authn::AuthnRuntime,
    previous: Option<&PolicySnapshot>,
) -> Result<PolicySnapshot, Vec<ConfigError>> {
    // Files this sidecar was told to read, none of whose policies is for it: a selector or a
    // namespace mistyped, most likely, and every request let in as if there were no policy.
    let workload = &options.workload;
    if source == Source::Files && !located.is_empty() && !located.iter().any(|l| selects(&l.policy, workload)) {
        let names: Vec<String> =
            located.iter().map(|l| format!("{}/{}", l.policy.metadata.namespace, l.policy.metadata.name)).collect();
        tracing::warn!(
            policies = ?names,
            namespace = %workload.namespace,
            labels = ?workload.labels,
            "none of the policies in policy.files selects this workload, so none is enforced: check their \
             metadata.namespace and spec.selector.matchLabels against the workload's"
        );
    }
    PolicySnapshot::compile(
        version,
        source,
        located,
        workload,
        options.default_mtls,
        &telemetry.metrics,
        authn,
        previous,
    )
}

/// What `palisade check` adds to parsing: every JWT issuer's keys read (files) or their
/// address checked (URIs), without fetching anything. Returns the errors, then warnings for
/// keys a usable set leaves out.
pub fn check_authentication(located: &[Located]) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let (mut errors, warnings) = check_providers(located);
    for l in located {
        // Against every policy checked here that may select a workload this one does.
        let together: Vec<&Located> = located.iter().filter(|other| may_select_together(l, other)).collect();
        errors.extend(conflicts_across_policies(l, &together));
    }
    (errors, warnings)
}

/// Each policy's JWT providers on their own, as a sidecar builds them (key files it cannot
/// read here are warnings: they are in the sidecar's pod): errors, then warnings.
pub fn check_providers(located: &[Located]) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let runtime = crate::authn::AuthnRuntime::default();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for l in located {
        for (i, spec) in l.policy.spec.authentication.iter().flat_map(|a| a.jwt.iter()).enumerate() {
            let field = format!("spec.authentication.jwt[{i}]");
            match runtime.check(spec) {
                Ok(said) => warnings.extend(said.iter().map(|why| l.error(&field, why))),
                Err(e) => errors.push(l.error(&field, e)),
            }
        }
    }
    (errors, warnings)
}

/// What `doc` gets wrong beside the policies that may select the same workloads (`together`,
/// itself among them), as `palisade check`, the control plane and a sidecar each judge it.
pub fn conflicts_across_policies(doc: &Located, together: &[&Located]) -> Vec<ConfigError> {
    let mut errors = compile::judged_headers_written_by(doc, together);
    errors.extend(compile::token_locations_in_conflict(doc, together));
    errors
}

/// Whether two policies may both select one workload: the same namespace, and no label both
/// name with different values.
pub fn may_select_together(a: &Located, b: &Located) -> bool {
    fn labels(l: &Located) -> Option<&std::collections::BTreeMap<String, String>> {
        l.policy.spec.selector.as_ref().map(|s| &s.match_labels)
    }
    let disagree = match (labels(a), labels(b)) {
        (Some(la), Some(lb)) => la.iter().any(|(k, v)| lb.get(k).is_some_and(|w| w != v)),
        _ => false,
    };
    a.policy.metadata.namespace == b.policy.metadata.namespace && !disagree
}

/// What `palisade check` says without failing: a `requireJwt` that no policy of its namespace
/// among those checked names an issuer for (a sidecar it selects refuses it, unless a policy in
/// a file not checked here names one: a hook may check only the files that changed); a
/// `maxDelay` on a `REJECT` limit, which answers at once (SPEC's own example writes one, so it
/// is not an error, but an operator who wanted throttling did not get it).
pub fn check_warnings(located: &[Located]) -> Vec<ConfigError> {
    let mut warnings = Vec::new();
    for l in located {
        for (i, limit) in l.policy.spec.rate_limits.iter().enumerate() {
            if limit.max_delay.is_some() && limit.action == LimitAction::REJECT {
                warnings.push(l.error(
                    &format!("spec.rateLimits[{i}].maxDelay"),
                    format!(
                        "limit {} is REJECT, which answers 429 at once: maxDelay is read only with action: DELAY",
                        limit.name.0
                    ),
                ));
            }
        }
        let requires = l.policy.spec.authentication.as_ref().is_some_and(|a| a.require_jwt);
        let names_an_issuer = |other: &Located| {
            other.policy.metadata.namespace == l.policy.metadata.namespace
                && other.policy.spec.authentication.as_ref().is_some_and(|a| !a.jwt.is_empty())
        };
        if requires && !located.iter().any(names_an_issuer) {
            warnings.push(l.error(
                "spec.authentication.requireJwt",
                format!(
                    "requires a token, but no policy of namespace {} checked here names a JWT issuer: a sidecar it selects refuses it unless another policy names one",
                    l.policy.metadata.namespace
                ),
            ));
        }
    }
    warnings
}

/// What a sidecar enforces before any policy was loaded: with `failMode: closed`, one policy
/// that denies every request (its denials name it, so the event log says why); with `open`,
/// none.
fn no_policy_yet(options: &PolicyOptions, telemetry: &Telemetry, authn: &crate::authn::AuthnRuntime) -> PolicySnapshot {
    let mut located = Vec::new();
    if options.fail_mode == FailMode::Closed {
        let text = format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: no-policy-loaded, namespace: {}}}\nspec:\n  authorization: {{default: DENY}}\n",
            options.workload.namespace
        );
        let (policies, errors) = parse_file(Path::new("failMode: closed"), &text);
        debug_assert!(errors.is_empty(), "{errors:?}");
        located = policies;
    }
    compile("none".into(), Source::None, &located, options, telemetry, authn, None)
        .expect("the fail-closed policy names no JWT issuer")
}

/// The one validation every update goes through, from files or from the control plane: the
/// documents' own errors, a policy defined twice, settings this sidecar's configuration
/// forbids, and (from the control plane, which sends only what selects this workload) a policy
/// that does not select it.
fn validate(
    (located, mut errors): (Vec<Located>, Vec<ConfigError>),
    options: &PolicyOptions,
    must_select: bool,
) -> Result<Vec<Located>, Vec<ConfigError>> {
    let (located, twice) = unique(located);
    errors.extend(twice);
    for l in &located {
        let m = &l.policy.metadata;
        let selected = selects(&l.policy, &options.workload);
        if must_select && !selected {
            errors.push(ConfigError::new(
                &l.file,
                "spec.selector",
                format!(
                    "policy {}/{} does not select this workload (namespace {}, labels {:?})",
                    m.namespace, m.name, options.workload.namespace, options.workload.labels
                ),
            ));
        }
        if selected && !options.allow_permissive {
            let spec = &l.policy.spec;
            let ports = spec.port_level_mtls.iter().filter(|(_, e)| e.mode == MtlsMode::PERMISSIVE);
            let fields = (spec.mtls == Some(MtlsMode::PERMISSIVE)).then(|| "spec.mtls".to_string());
            for field in fields.into_iter().chain(ports.map(|(port, _)| format!("spec.portLevelMtls.{port}.mode"))) {
                errors.push(ConfigError::new(
                    &l.file,
                    &field,
                    format!(
                        "policy {}/{} asks for PERMISSIVE, which this sidecar refuses (inbound.allowPermissive is false)",
                        m.namespace, m.name
                    ),
                ));
            }
        }
    }
    match errors.is_empty() {
        true => Ok(located),
        false => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EventSink, EventsConfig, TelemetryConfig};

    /// `palisade check` judges a `when` on a forwarded claim's header against every policy it
    /// checks that may select the same workloads, as a sidecar judges the set it enforces.
    #[test]
    fn check_refuses_a_condition_on_a_header_another_policy_forwards_a_claim_into() {
        let doc = |name: &str, labels: &str, spec: &str| {
            format!("---\napiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{{labels}}}}}\n{spec}")
        };
        let jwt = "  authentication:\n    jwt:\n      - issuer: https://auth.example\n        audiences: [orders]\n        hmacSecret: {inline: \"0123456789abcdef0123456789abcdef\"}\n        forwardClaims: [{claim: sub, header: x-user-id}]\n";
        let when = "  authorization:\n    rules:\n      - {name: alice, action: ALLOW, when: [{key: \"request.headers[x-user-id]\", values: [alice]}]}\n";
        let text = [
            doc("jwt", "app: orders", jwt),
            doc("alice", "app: orders", when),
            doc("elsewhere", "app: web", &when.replace("alice}", "web}")),
        ]
        .concat();
        let (located, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let (errors, _) = check_authentication(&located);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("x-user-id is written by forwardClaims"), "{}", errors[0]);
    }

    /// Issuers of different policies that a sidecar could not hold together: found by
    /// `palisade check`, with the file and line, not first by a sidecar that fails to start.
    #[test]
    fn check_refuses_token_locations_a_sidecar_could_not_build() {
        let doc = |name: &str, issuers: &str| {
            format!("---\napiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  authentication:\n    jwt:\n{issuers}")
        };
        let issuer = |n: usize, extra: &str| {
            format!("      - issuer: https://{n}.example\n        audiences: [orders]\n        hmacSecret: {{inline: \"0123456789abcdef0123456789abcdef\"}}\n{extra}")
        };
        // One policy forwards a claim into the header another's issuer reads tokens from.
        let text = [
            doc("forwards", &issuer(1, "        forwardClaims: [{claim: sub, header: x-jwt}]\n")),
            doc("reads", &issuer(2, "        fromHeaders: [{name: X-Jwt}]\n")),
        ]
        .concat();
        let (located, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let (errors, _) = check_authentication(&located);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let shown = errors[0].to_string();
        assert!(shown.starts_with("p.yaml:8:1: spec.authentication.jwt[0]"), "{shown}");
        assert!(shown.contains("forwardClaims[0].header x-jwt") && shown.contains("shop/reads"), "{shown}");

        // 65 token locations over two policies.
        let many = |from: usize, to: usize| {
            (from..to)
                .map(|n| issuer(n, &format!("        fromHeaders: [{{name: x-token-{n}}}]\n")))
                .collect::<String>()
        };
        let text = [doc("first", &many(0, 40)), doc("second", &many(40, 65))].concat();
        let (located, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let (errors, _) = check_authentication(&located);
        assert_eq!(errors.len(), 2, "each policy is told: {errors:?}");
        assert!(errors[0].to_string().contains("65 places"), "{}", errors[0]);
        let (errors, _) = check_authentication(&located[..1]);
        assert!(errors.is_empty(), "40 alone are fine: {errors:?}");
    }

    #[test]
    fn allow_permissive_false_refuses_a_permissive_port_as_it_refuses_a_permissive_workload() {
        let options = PolicyOptions {
            files: Vec::new(),
            workload: Workload {
                namespace: "shop".into(),
                labels: [("app".to_string(), "db".to_string())].into(),
                ..Default::default()
            },
            default_mtls: MtlsMode::STRICT,
            allow_permissive: false,
            fail_mode: FailMode::Closed,
            control_plane: false,
        };
        let head =
            "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  selector: {matchLabels: {app: db}}\n";
        let text =
            format!("{head}  mtls: STRICT\n  portLevelMtls: {{5432: {{mode: PERMISSIVE}}, 8080: {{mode: STRICT}}}}\n");
        let errors = validate(parse_file(Path::new("db.yaml"), &text), &options, false).expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.portLevelMtls.5432.mode"], "{errors:?}");
        assert!(errors[0].message.contains("inbound.allowPermissive is false"), "{}", errors[0]);
        let strict_only = format!("{head}  portLevelMtls: {{8080: {{mode: STRICT}}}}\n");
        assert!(validate(parse_file(Path::new("db.yaml"), &strict_only), &options, false).is_ok());
    }

    #[test]
    fn a_remote_document_that_is_not_utf8_is_refused_with_its_source_and_nothing_changes() {
        let config = TelemetryConfig {
            events: EventsConfig { sink: EventSink::Stderr, ..Default::default() },
            access_log: false,
            ..Default::default()
        };
        let telemetry = Arc::new(Telemetry::new(&config, None).unwrap());
        let options = PolicyOptions {
            files: Vec::new(),
            workload: Workload::default(),
            default_mtls: MtlsMode::STRICT,
            allow_permissive: true,
            fail_mode: FailMode::Closed,
            control_plane: true,
        };
        let store = PolicyStore::load(options, telemetry).unwrap_or_else(|e| panic!("{e:?}"));
        let documents = [("orders.yaml".to_string(), bytes::Bytes::from_static(b"\xff\xfe"))];
        let reason = store.apply_remote("v1".into(), &documents).err().expect("refused");
        assert_eq!(reason, "controlPlane:orders.yaml: the document is not UTF-8 text");
        assert_eq!((store.source(), store.current().version.as_str()), (Source::None, "none"));
    }
}
