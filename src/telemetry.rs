//! What the sidecar reports: Prometheus metrics and security events.
//!
//! Other modules record through [`Telemetry`]; it owns the registry and the event writer.

mod events;
mod logging;
mod metrics;
mod recorder;

pub use events::{EventWriter, SecurityEvent};
pub use logging::LogLevel;
pub use metrics::Metrics;
pub use recorder::{Fnv1a, RequestRecorder};

use crate::config::EventsConfig;

pub struct Telemetry {
    pub metrics: Metrics,
    pub requests: RequestRecorder,
    pub events: EventWriter,
}

impl Telemetry {
    pub fn new(events: &EventsConfig) -> std::io::Result<Self> {
        let metrics = Metrics::new();
        let events = EventWriter::start(events, metrics.events_dropped.clone())?;
        Ok(Telemetry { metrics, requests: RequestRecorder::default(), events })
    }
}
