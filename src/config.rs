//! Configuration files: the schema of SPEC section 3, loading with `PALISADE_<SECTION>_<KEY>`
//! environment overrides, and errors that name the file, line, field and the expected form.
//!
//! Values are checked while they are parsed (addresses, durations, modes are typed), so every
//! error carries the position serde_yaml saw. Nothing binds a port before the whole file is good.

mod control;
mod env;
mod sidecar;
mod types;

pub use control::{ControlConfig, ControlIdentityFiles, Listen, PolicyDirConfig};
pub use env::{Env, ProcessEnv};
pub use sidecar::{
    AdminConfig, AppProtocol, ControlPlaneAddress, Destination, EventFormat, EventSink, EventsConfig, FailMode,
    IdentityConfig, InboundConfig, MtlsMode, OtlpConfig, OtlpProtocol, OutboundConfig, PolicySourceConfig,
    SidecarConfig, SpiffeIdField, TelemetryConfig, TrustDomain, WorkloadConfig,
};
pub use types::{HumanDuration, ListenAddr};

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A configuration error, pointing at where it was found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `inbound.mtls`; empty for the whole document.
    pub field: String,
    /// What was wrong and what was expected.
    pub message: String,
    /// The environment variable the bad value came from, if it did.
    pub env_var: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.env_var, self.line) {
            (Some(var), _) => {
                write!(f, "environment variable {var} (overrides {} in {})", self.field, self.file.display())?
            }
            (None, Some(line)) => write!(f, "{}:{line}:{}", self.file.display(), self.column.unwrap_or(1))?,
            (None, None) => write!(f, "{}", self.file.display())?,
        }
        if !self.field.is_empty() && self.env_var.is_none() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    pub fn new(file: &Path, field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: field.to_string(),
            message: message.into(),
            env_var: None,
        }
    }
}

/// Reads a YAML file into `T`, then applies `PALISADE_*` overrides from `env`.
pub fn load<T>(file: &Path, env: &dyn Env) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize,
{
    let text =
        std::fs::read_to_string(file).map_err(|e| ConfigError::new(file, "", format!("cannot read the file: {e}")))?;
    let parsed: T = parse_yaml(file, &text)?;
    env::apply_overrides(file, parsed, env)
}

/// Parses YAML text into `T`, reporting the line, column and field of the first error.
pub fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    // An empty file is an empty mapping: every field takes its default.
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| yaml_error(file, e))
}

/// A positioned error from serde_yaml, with the field path serde_path_to_error tracked.
pub(crate) fn yaml_error(file: &Path, e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let field = e.path().to_string();
    let field = if field == "." { String::new() } else { field };
    let inner = e.into_inner();
    let location = inner.location();
    let message = strip_location(&inner.to_string());
    // serde_yaml sometimes starts its message with its own spelling of the path; say it once.
    let unindexed: String = field.split('[').map(|part| part.split_once(']').map_or(part, |(_, rest)| rest)).collect();
    let message = match message.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && !head.contains(' ') && unindexed.starts_with(head) => {
            rest.to_string()
        }
        _ => message,
    };
    ConfigError {
        file: file.to_path_buf(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        field,
        message,
        env_var: None,
    }
}

/// serde_yaml appends " at line L column C"; the error carries those as fields already.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
