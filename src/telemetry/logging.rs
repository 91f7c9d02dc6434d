//! Diagnostic logs (tracing), with a level that can be changed at run time through the admin API.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogLevel(Option<reload::Handle<EnvFilter, Registry>>);

const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn";

impl LogLevel {
    /// Installs the global subscriber, logging to stderr (stdout carries security events).
    /// The filter comes from `PALISADE_LOG`, in `RUST_LOG` syntax.
    pub fn init() -> Self {
        Self::init_with(DEFAULT_FILTER)
    }

    /// As [`LogLevel::init`], with another filter when `PALISADE_LOG` is not set.
    pub fn init_with(default_filter: &str) -> Self {
        let filter = std::env::var("PALISADE_LOG")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new(default_filter));
        let (filter, handle) = reload::Layer::new(filter);
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init()
            .is_ok();
        // A second sidecar in the same process (tests) shares the first one's subscriber.
        LogLevel(installed.then_some(handle))
    }

    pub fn get(&self) -> String {
        self.0.as_ref().and_then(|h| h.with_current(|f| f.to_string()).ok()).unwrap_or_else(|| "unmanaged".into())
    }

    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(filter).map_err(|e| format!("bad filter {filter:?}: {e}"))?;
        match &self.0 {
            Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
            None => Err("the log level is managed by another component in this process".into()),
        }
    }
}
