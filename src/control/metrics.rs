//! The control plane's own metrics (its registry, apart from any sidecar's).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// From a file change to a sidecar's ACK spans milliseconds to seconds.
const PUSH_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct ControlMetrics {
    registry: Registry,
    pub connected: IntGauge,
    pub pushes: IntCounter,
    pub acks: IntCounter,
    pub nacks: IntCounter,
    pub push_latency: Histogram,
    pub refused: IntCounterVec,
    pub policy_updates: IntCounterVec,
    pub policies: IntGauge,
    /// 1 while policy streams are sent from the catalog; 0 while they are put off (a refused
    /// file this process never saw good).
    pub servable: IntGauge,
    pub version: IntGaugeVec,
    /// When the control plane's own certificate ends (the name a sidecar's has, in this process's
    /// registry), set at each scrape.
    pub certificate_expiry: Gauge,
    pub webhook_certificate_expiry: Gauge,
}

impl ControlMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connected =
            IntGauge::new("palisade_control_connected_sidecars", "Sidecar streams open now.").expect("metric");
        let pushes =
            IntCounter::new("palisade_control_pushes_total", "Policy snapshots sent to sidecars.").expect("metric");
        let acks = IntCounter::new("palisade_control_acks_total", "Snapshots sidecars applied (ACK).").expect("metric");
        let nacks =
            IntCounter::new("palisade_control_nacks_total", "Snapshots sidecars refused (NACK).").expect("metric");
        let push_latency = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_control_push_latency_seconds",
                "From the change that made a snapshot to the sidecar's ACK or NACK of it.",
            )
            .buckets(PUSH_BUCKETS.to_vec()),
        )
        .expect("metric");
        let refused = IntCounterVec::new(
            Opts::new("palisade_control_subscriptions_refused_total", "Streams refused, by reason."),
            &["reason"],
        )
        .expect("metric");
        let policy_updates = IntCounterVec::new(
            Opts::new("palisade_policy_updates_total", "Policy file changes, applied or rejected."),
            &["result"],
        )
        .expect("metric");
        let policies = IntGauge::new("palisade_control_policies", "Policies in force.").expect("metric");
        let servable = IntGauge::new(
            "palisade_control_policy_servable",
            "1 while policy streams are served; 0 while a refused file this process never saw good holds them off.",
        )
        .expect("metric");
        let version = IntGaugeVec::new(
            Opts::new("palisade_policy_version_info", "The version of every policy in force (value 1)."),
            &["source", "version"],
        )
        .expect("metric");
        let build_info =
            IntGaugeVec::new(Opts::new("palisade_build_info", "Build information."), &["version"]).expect("metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let certificate_expiry = Gauge::new(
            "palisade_certificate_expiry_timestamp_seconds",
            "When the control plane's own certificate in use expires (Unix time).",
        )
        .expect("metric");
        let webhook_certificate_expiry = Gauge::new(
            "palisade_webhook_certificate_expiry_timestamp_seconds",
            "When the injection webhook's serving certificate in use expires (Unix time).",
        )
        .expect("metric");
        for c in [
            Box::new(connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pushes.clone()),
            Box::new(acks.clone()),
            Box::new(nacks.clone()),
            Box::new(push_latency.clone()),
            Box::new(refused.clone()),
            Box::new(policy_updates.clone()),
            Box::new(policies.clone()),
            Box::new(servable.clone()),
            Box::new(version.clone()),
            Box::new(build_info),
            Box::new(certificate_expiry.clone()),
            Box::new(crate::telemetry::ProcessMetrics::new()),
            // The webhook's certificate is registered by the control plane that has one.
        ] {
            registry.register(c).expect("metric registers once");
        }
        ControlMetrics {
            registry,
            connected,
            pushes,
            acks,
            nacks,
            push_latency,
            refused,
            policy_updates,
            policies,
            servable,
            version,
            certificate_expiry,
            webhook_certificate_expiry,
        }
    }

    /// For metrics of parts of the control plane with their own types (the CA).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        out
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}
