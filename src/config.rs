//! Configuration files: the schema of SPEC section 3, loading with `PALISADE_<SECTION>_<KEY>`
//! environment overrides, and errors that name the file, line, field and the expected form.
//!
//! Values are checked while they are parsed (addresses, durations, modes are typed), so every
//! error carries its position; rules across fields are checked next and located the same way.
//! Every mistake of a file is reported at once. Nothing binds a port before the whole file is
//! good.

mod control;
mod env;
mod inject;
mod otel;
mod sidecar;
mod types;

pub use control::{
    CaConfig, ControlConfig, ControlIdentityFiles, JwksSourceConfig, KubernetesConfig, Listen, PolicyDirConfig,
    TokenReviewConfig, TokensConfig, WebhookConfig,
};
pub use env::{Env, ProcessEnv};
pub use inject::{
    is_log_filter, is_quantity, log_filter_text, ControlPlaneRef, FailurePolicy, IdentityMode, IdentitySettings,
    InjectSettings, ProxyPorts, PullPolicy, Resources,
};
pub use otel::{ParentRoot, Propagators, SamplerChoice, TraceSettings};
pub use sidecar::{
    app_target, same_authority, same_host_and_port, split_authority, AdminConfig, AppProbe, AppProtocol,
    ControlPlaneAddress, Destination, EventFormat, EventSink, EventsConfig, FailMode, GrpcProbe, Http2Limits,
    IdentityConfig, IdentityFromControlPlane, InboundConfig, LimitsConfig, MtlsMode, OtlpConfig, OtlpProtocol,
    OutboundConfig, PinnedAddresses, PolicySourceConfig, ProbeHeader, SidecarConfig, SpiffeIdField, TelemetryConfig,
    TrustDomain, UnderscoreHeaders, Workload, WorkloadConfig, DEFAULT_OPAQUE_PORTS, MAX_THREADS,
};
pub use types::{HumanDuration, IpBlock, ListenAddr};

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A configuration error, pointing at where it was found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<u32>,
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
            (Some(var), _) if self.field == *var => write!(f, "environment variable {var}")?,
            (Some(var), _) => {
                write!(f, "environment variable {var} (overrides {} in {})", self.field, self.file.display())?
            }
            (None, Some(line)) => write!(f, "{}:{line}:{}", self.file.display(), self.column.unwrap_or(1))?,
            (None, None) => write!(f, "{}", self.file.display())?,
        }
        let mut separator = if self.file.as_os_str().is_empty() && self.env_var.is_none() { "" } else { ": " };
        if !self.field.is_empty() && self.env_var.is_none() {
            write!(f, "{separator}{}", self.field)?;
            separator = ": ";
        }
        write!(f, "{separator}{}", self.message)
    }
}

impl ConfigError {
    /// A cross-field mistake found in a configuration made in code (no file, no lines).
    pub fn from_invalid(file: &Path, invalid: Invalid) -> Self {
        match invalid {
            Invalid::Field { field, message } => ConfigError::new(file, &field, message),
            Invalid::Var { name, message } => {
                ConfigError { env_var: Some(name.clone()), ..ConfigError::new(file, &name, message) }
            }
        }
    }

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

/// Cross-field rules a configuration checks once it is read: the field (dotted path) or the
/// environment variable each mistake is in, and what is wrong.
pub trait Validate {
    fn validate(&self, env: &dyn Env) -> Vec<Invalid>;
}

/// One mistake found by [`Validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// A setting of the file, by its dotted path (`inbound.mtls`).
    Field { field: String, message: String },
    /// A variable read directly from the environment (`OTEL_TRACES_SAMPLER`).
    Var { name: String, message: String },
}

impl Invalid {
    pub fn field(field: &str, message: impl Into<String>) -> Invalid {
        Invalid::Field { field: field.to_string(), message: message.into() }
    }
}

/// The most mistakes reported from one file: enough for any real file, and a bound on the
/// read-remove-read-again loop of [`crate::yaml::from_node_all`].
const MAX_ERRORS: usize = 20;

/// Reads a YAML file into `T`, applies `PALISADE_*` overrides from `env`, and checks `T`'s
/// cross-field rules: every mistake is reported, each with its line and field or its
/// environment variable.
pub fn load<T>(file: &Path, env: &dyn Env) -> Result<T, Vec<ConfigError>>
where
    T: DeserializeOwned + Serialize + Validate,
{
    let text = crate::yaml::read_file(file, crate::yaml::Limits::FILE.max_bytes)
        .map_err(|e| vec![ConfigError::new(file, "", format!("cannot read the file: {e}"))])?;
    load_text(file, &text, env)
}

/// The variable that holds a whole configuration when no file is given: how an injected
/// sidecar gets its configuration, since a pod cannot mount a ConfigMap of another namespace.
pub const CONFIG_VAR: &str = "PALISADE_CONFIG";

/// As [`load`], for configuration text from `source` (a file's name, or [`CONFIG_VAR`]).
pub fn load_text<T>(source: &Path, text: &str, env: &dyn Env) -> Result<T, Vec<ConfigError>>
where
    T: DeserializeOwned + Serialize + Validate,
{
    let file = source;
    let root = parse_root(file, text).map_err(|e| vec![e])?;
    let (value, mut errors) = read_all::<T>(file, &root);
    let Some(value) = value else { return Err(errors) };
    let overridden = env::apply_overrides(file, value, env);
    errors.extend(overridden.errors);
    let Some(value) = overridden.value else { return Err(errors) };
    for invalid in value.validate(env) {
        errors.push(locate(file, &root, &overridden.applied, invalid));
    }
    match errors.is_empty() {
        true => Ok(value),
        false => Err(errors),
    }
}

/// Parses YAML text into `T`, reporting the line, column and field of the first error (tests
/// and configurations made in code; [`load`] reports every error of a file).
pub fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let root = parse_root(file, text)?;
    crate::yaml::from_node(&root).map_err(|(path, e)| located(file, path, e))
}

/// The one document of a configuration file; an empty file is an empty mapping (every field
/// takes its default).
fn parse_root(file: &Path, text: &str) -> Result<crate::yaml::Node, ConfigError> {
    let mut documents =
        crate::yaml::parse(text, &crate::yaml::Limits::FILE).map_err(|e| located(file, String::new(), e))?;
    if documents.len() > 1 {
        let second = documents[1].start;
        return Err(ConfigError {
            line: Some(second.line),
            column: Some(second.column as u32),
            ..ConfigError::new(file, "", "a configuration file holds one document; this is a second one")
        });
    }
    Ok(documents.pop().map(|d| d.root).unwrap_or_else(|| crate::yaml::Node::new(crate::yaml::Value::Null)))
}

/// Every independent error of the document, and the value read without the bad entries.
pub(crate) fn read_all<T: DeserializeOwned>(file: &Path, root: &crate::yaml::Node) -> (Option<T>, Vec<ConfigError>) {
    let (value, errors) = crate::yaml::from_node_all::<T>(root, MAX_ERRORS);
    (value, errors.into_iter().map(|(path, e)| located(file, path, e)).collect())
}

/// A YAML error as a configuration error: the field's path, its position, and the variable it
/// came from when it was an environment override.
pub(crate) fn located(file: &Path, field: String, e: crate::yaml::Error) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: e.mark.map(|m| m.line),
        column: e.mark.map(|m| m.column as u32),
        message: match secret_field(&field) {
            true => quoted_redacted(&in_plain_words(e.message)),
            false => in_plain_words(e.message),
        },
        field,
        env_var: e.origin.map(|o| o.to_string()),
    }
}

/// Fields whose values are secrets (`/config_dump` shows them as `<redacted>`): a value written
/// in the wrong shape there is likely a secret all the same, and an error goes to logs, events
/// and CI output.
fn secret_field(field: &str) -> bool {
    field.split(['.', '[']).any(holds_secrets)
}

/// Field names whose values are, or may hold, secrets: `/config_dump` redacts them, and errors
/// in them do not quote what was written. Names are matched, so a field added later under such
/// a name is covered too.
pub fn holds_secrets(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    matches!(name, "when" | "headers" | "inline")
        || lower.contains("secret")
        || lower.contains("password")
        || lower == "token"
}

/// `message` with the text of each quoted value replaced (`got "s3cr3t"` reads `got "<redacted>"`).
fn quoted_redacted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        // The closing quote: the first not escaped by a backslash (Rust's `{:?}` escapes).
        let mut close = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    close = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(close) = close else {
            out.push_str("<redacted>");
            return out;
        };
        out.push_str("<redacted>\"");
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// serde names Rust's types (`expected usize`); a user reads what to write instead.
fn in_plain_words(message: String) -> String {
    const WORDS: [(&str, &str); 8] = [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    match WORDS.iter().find(|(rust, _)| message.ends_with(rust)) {
        Some((rust, plain)) => format!("{}{plain}", &message[..message.len() - rust.len()]),
        None => message,
    }
}

/// Places a cross-field mistake: the variable that set the field, else the field's line.
fn locate(file: &Path, root: &crate::yaml::Node, overridden: &[(String, String)], invalid: Invalid) -> ConfigError {
    match invalid {
        Invalid::Var { name, message } => ConfigError {
            env_var: Some(name.clone()),
            file: PathBuf::from("the environment"),
            ..ConfigError::new(Path::new(""), &name, message)
        },
        Invalid::Field { field, message } => {
            if let Some((_, var)) = overridden.iter().find(|(f, _)| field.starts_with(f.as_str())) {
                return ConfigError { env_var: Some(var.clone()), ..ConfigError::new(file, &field, message) };
            }
            // The field itself when the file sets it, else the nearest section that is there.
            let mut path = field.as_str();
            let node = loop {
                if let Some(node) = root.find(path) {
                    break Some(node);
                }
                match path.rsplit_once('.') {
                    Some((parent, _)) => path = parent,
                    None => break None,
                }
            };
            let mark = node.filter(|n| n.mark.line > 0).map(|n| n.mark);
            ConfigError {
                line: mark.map(|m| m.line),
                column: mark.map(|m| m.column as u32),
                ..ConfigError::new(file, &field, message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret written in the wrong shape is not repeated in the error (tester m3: it reached
    /// `palisade check` output, logs, security events and `/status`); the field and the shape
    /// expected are.
    #[test]
    fn a_secret_in_the_wrong_shape_is_not_quoted_in_its_error() {
        let head =
            "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";
        let docs = [
            "  authentication:\n    jwt:\n      - issuer: https://a\n        hmacSecret: \"hs-SUPERSECRET-value-0123456789abcdef\"\n",
            "  authorization:\n    rules:\n      - {name: r, action: ALLOW, when: [{key: \"request.headers[x-k]\", values: \"sk_live_TOPSECRET_123\"}]}\n",
        ];
        for doc in docs {
            let (_, errors) = crate::policy::parse_file(Path::new("p.yaml"), &format!("{head}{doc}"));
            assert_eq!(errors.len(), 1, "{errors:?}");
            let said = errors[0].to_string();
            assert!(!said.contains("SECRET"), "{said}");
            assert!(said.contains("<redacted>") && said.contains("expected"), "{said}");
        }
        // Elsewhere, what was written is quoted: it is how the mistake is found.
        assert!(parse_yaml::<SidecarConfig>(Path::new("c.yaml"), "threads: two")
            .unwrap_err()
            .message
            .contains("\"two\""));
        assert_eq!(quoted_redacted(r#"got "a\"b" and "c""#), r#"got "<redacted>" and "<redacted>""#);
    }

    /// serde's words for Rust's types are said as what to write.
    #[test]
    fn type_errors_say_what_to_write() {
        let error = |text: &str| parse_yaml::<SidecarConfig>(Path::new("c.yaml"), text).unwrap_err().message;
        assert_eq!(error("threads: two"), "invalid type: string \"two\", expected a whole number, 0 or more");
        assert!(error("limits: {maxInflight: -1}").ends_with("expected a whole number, 0 or more"));
    }
}
