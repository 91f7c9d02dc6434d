//! `PALISADE_<SECTION>_<KEY>` overrides. Names match field names without regard to case, so
//! `PALISADE_WORKLOAD_SERVICEACCOUNT` sets `workload.serviceAccount`. Values are read as YAML
//! scalars or flow collections (`8080`, `true`, `[a, b]`).

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::yaml::{Node, Quoted, Value};

use super::ConfigError;

const PREFIX: &str = "PALISADE_";
/// Variables with the prefix that are not configuration overrides.
/// The process's own variables (`--log-format`'s, and the binary the demo and bench scripts
/// run), which are no sections: never overrides, never warned about.
const NOT_OVERRIDES: &[&str] =
    &["PALISADE_LOG", "PALISADE_LOG_FORMAT", super::CONFIG_VAR, "PALISADE_BIN", "PALISADE_PLAIN_BIN"];

/// One of the variables the kubelet gives a Service, by its name and its value's form:
/// `<SVC>_SERVICE_HOST` (an address), `<SVC>_SERVICE_PORT[_<PORT NAME>]` (a number), `<SVC>_PORT`
/// and `<SVC>_PORT_<n>_<PROTO>` (`tcp://10.96.0.10:15000`), and the latter's `_PROTO`, `_PORT`
/// and `_ADDR`. A Service named `palisade-admin` or `palisade-policy` in the pod's namespace would
/// otherwise stop every sidecar there from starting; a mistyped setting still fails.
fn is_service_link(name: &str, value: &str) -> bool {
    let number = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let address = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let url = |v: &str| ["tcp://", "udp://", "sctp://"].iter().any(|p| v.starts_with(p));
    if name.ends_with("_SERVICE_HOST") {
        return address(value);
    }
    if name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return number(value);
    }
    // `_PORT_15000_TCP_PORT` ends in `_PORT` too: the longer form is looked for first.
    let numbered = name.split_once("_PORT_").map(|(_, after)| after.split('_').collect::<Vec<_>>());
    let Some(parts) = numbered.filter(|p| p.len() >= 2 && number(p[0]) && matches!(p[1], "TCP" | "UDP" | "SCTP"))
    else {
        return name.ends_with("_PORT") && url(value);
    };
    let protocol = parts[1];
    match (parts.get(2).copied(), parts.get(3)) {
        (None, _) => url(value),
        (Some("PROTO"), None) => value.eq_ignore_ascii_case(protocol),
        (Some("PORT"), None) => number(value),
        (Some("ADDR"), None) => address(value),
        _ => false,
    }
}

/// Where the environment comes from; tests pass a map instead of touching the process.
pub trait Env {
    fn vars(&self) -> Vec<(String, String)>;

    fn var(&self, name: &str) -> Option<String> {
        self.vars().into_iter().find_map(|(k, v)| (k == name).then_some(v))
    }
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// What the overrides made of a configuration.
pub(super) struct Overridden<T> {
    /// The value with every good override applied (a bad one leaves its setting at the file's
    /// value or default, so the rules across fields can still be checked).
    pub value: Option<T>,
    /// Which field each variable set, so a rule broken across fields can name the variable.
    pub applied: Vec<(String, String)>,
    /// Every bad variable.
    pub errors: Vec<ConfigError>,
}

/// Applies the `PALISADE_*` variables to `parsed`.
pub(super) fn apply_overrides<T>(file: &Path, parsed: T, env: &dyn Env) -> Overridden<T>
where
    T: DeserializeOwned + Serialize,
{
    let mut overrides: Vec<(String, String)> =
        env.vars().into_iter().filter(|(k, _)| k.starts_with(PREFIX) && !NOT_OVERRIDES.contains(&k.as_str())).collect();
    if overrides.is_empty() {
        return Overridden { value: Some(parsed), applied: Vec::new(), errors: Vec::new() };
    }
    overrides.sort();
    let mut root = Node::from_json(&serde_json::to_value(&parsed).expect("configuration serialises"));
    // Kubernetes injects PALISADE_<SERVICE>_PORT and friends for every Service named palisade-*:
    // only a variable that starts with a known section is an override.
    overrides.retain(|(name, raw)| {
        let section = name[PREFIX.len()..].split('_').next().unwrap_or_default();
        let known = keys(&root).any(|k| k.eq_ignore_ascii_case(section));
        match known {
            true => {}
            false if is_service_link(&name[PREFIX.len()..], raw) => {
                tracing::debug!(variable = %name, "a Kubernetes Service's variable, not a configuration override; ignored")
            }
            // Likely a misspelt section (PALISADE_ADMN_LISTEN): said, though not refused, as a
            // variable of the pod's may be meant for another program.
            false => {
                let sections: Vec<&str> = keys(&root).collect();
                tracing::warn!(variable = %name, sections = %sections.join(", "), "names no configuration section: ignored (a misspelt override?)")
            }
        }
        known
    });
    let mut applied: Vec<(String, String)> = Vec::new();
    let mut errors = Vec::new();
    for (name, raw) in &overrides {
        let field = match set_path(&root, &name[PREFIX.len()..]) {
            Ok(field) => field,
            // One of a Service's variables (a Service named palisade-admin gives
            // PALISADE_ADMIN_PORT): the kubelet's, never the operator's, and not a setting.
            Err(_) if is_service_link(&name[PREFIX.len()..], raw) => {
                tracing::debug!(variable = %name, "a Kubernetes Service's variable, not a configuration override; ignored");
                continue;
            }
            Err(message) => {
                errors.push(ConfigError {
                    env_var: Some(name.clone()),
                    ..ConfigError::new(file, &name[PREFIX.len()..].to_lowercase().replace('_', "."), message)
                });
                continue;
            }
        };
        let slot = lookup_mut(&mut root, &field);
        let origin: Option<Arc<str>> = Some(name.as_str().into());
        // A string setting takes the text as it is ("123" stays a name); others read it as YAML.
        let value = match &slot.value {
            Value::Scalar(_, Quoted::Yes) => Node::new(Value::Scalar(raw.clone(), Quoted::Yes)),
            _ => crate::yaml::parse(raw, &crate::yaml::Limits::FILE)
                .ok()
                .and_then(|mut docs| docs.pop())
                .map(|d| d.root)
                .unwrap_or_else(|| Node::new(Value::Scalar(raw.clone(), Quoted::Yes))),
        };
        *slot = with_origin(value, &origin);
        applied.push((field.join("."), name.clone()));
    }
    let (value, read_errors) = super::read_all::<T>(file, &root);
    errors.extend(read_errors.into_iter().map(|mut e| {
        // Every node the overrides did not touch came from a value that read once already.
        if e.env_var.is_none() {
            e.env_var = applied.iter().find(|(f, _)| e.field.starts_with(f.as_str())).map(|(_, v)| v.clone());
        }
        e.line = None;
        e.column = None;
        e
    }));
    Overridden { value, applied, errors }
}

fn keys(node: &Node) -> impl Iterator<Item = &str> {
    let entries: &[(Node, Node)] = match &node.value {
        Value::Map(entries) => entries,
        _ => &[],
    };
    entries.iter().filter_map(|(k, _)| k.as_str())
}

fn with_origin(mut node: Node, origin: &Option<Arc<str>>) -> Node {
    node.origin = origin.clone();
    node.mark = Default::default();
    node.value = match node.value {
        Value::Seq(items) => Value::Seq(items.into_iter().map(|n| with_origin(n, origin)).collect()),
        Value::Map(entries) => {
            Value::Map(entries.into_iter().map(|(k, v)| (with_origin(k, origin), with_origin(v, origin))).collect())
        }
        other => other,
    };
    node
}

/// Resolves `SECTION_KEY` to the real field names of the document; the names of the path.
fn set_path(root: &Node, name: &str) -> Result<Vec<String>, String> {
    let mut path = Vec::new();
    let mut node: &Node = root;
    for part in name.split('_') {
        if !matches!(node.value, Value::Map(_)) {
            return Err(format!("{} is not a section with settings", path.join(".")));
        }
        let key = keys(node).find(|k| k.eq_ignore_ascii_case(part)).ok_or_else(|| {
            let known: Vec<&str> = keys(node).collect();
            format!("no setting {part:?} here; expected one of: {}", known.join(", "))
        })?;
        let key = key.to_string();
        node = node.get(&key).expect("the key was just found");
        path.push(key);
    }
    Ok(path)
}

fn lookup_mut<'a>(root: &'a mut Node, path: &[String]) -> &'a mut Node {
    path.iter().fold(root, |node, key| node.get_mut(key).expect("the path was resolved on this tree"))
}
