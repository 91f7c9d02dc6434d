//! `PALISADE_<SECTION>_<KEY>` overrides. Names match field names without regard to case, so
//! `PALISADE_WORKLOAD_SERVICEACCOUNT` sets `workload.serviceAccount`. Values are read as YAML
//! scalars or flow collections (`8080`, `true`, `[a, b]`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;

use super::ConfigError;

const PREFIX: &str = "PALISADE_";
/// Variables with the prefix that are not configuration overrides.
const NOT_OVERRIDES: &[&str] = &["PALISADE_LOG"];

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

pub(super) fn apply_overrides<T>(file: &Path, parsed: T, env: &dyn Env) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize,
{
    let mut overrides: Vec<(String, String)> =
        env.vars().into_iter().filter(|(k, _)| k.starts_with(PREFIX) && !NOT_OVERRIDES.contains(&k.as_str())).collect();
    if overrides.is_empty() {
        return Ok(parsed);
    }
    overrides.sort();
    let mut root = serde_yaml::to_value(&parsed).expect("configuration serialises");
    // Kubernetes injects PALISADE_<SERVICE>_PORT and friends for every Service named palisade-*:
    // only a variable that starts with a known section is an override.
    overrides.retain(|(name, _)| {
        let section = name[PREFIX.len()..].split('_').next().unwrap_or_default();
        let known = root
            .as_mapping()
            .is_some_and(|m| m.keys().filter_map(Value::as_str).any(|k| k.eq_ignore_ascii_case(section)));
        if !known {
            tracing::debug!(variable = %name, "not a configuration override; ignored");
        }
        known
    });
    let mut applied: Vec<(String, String)> = Vec::new();
    for (name, raw) in &overrides {
        let field = set_path(&mut root, &name[PREFIX.len()..]).map_err(|message| ConfigError {
            env_var: Some(name.clone()),
            ..ConfigError::new(file, &name[PREFIX.len()..].to_lowercase().replace('_', "."), message)
        })?;
        let slot = lookup_mut(&mut root, &field);
        // A string setting takes the text as it is ("123" stays a name); others read it as YAML.
        *slot = match slot {
            Value::String(_) => Value::String(raw.clone()),
            _ => serde_yaml::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.clone())),
        };
        applied.push((field.join("."), name.clone()));
    }
    serde_path_to_error::deserialize(root).map_err(|e| {
        let path = e.path().to_string();
        let (field, var) = applied
            .iter()
            .find(|(field, _)| path.starts_with(field.as_str()))
            .cloned()
            .unwrap_or_else(|| (path.clone(), applied[0].1.clone()));
        ConfigError { env_var: Some(var), ..ConfigError::new(file, &field, e.into_inner().to_string()) }
    })
}

/// Resolves `SECTION_KEY` to the real field names of the document; the names of the path.
fn set_path(root: &mut Value, name: &str) -> Result<Vec<String>, String> {
    let mut path = Vec::new();
    let mut node: &Value = root;
    for part in name.split('_') {
        let Value::Mapping(map) = node else {
            return Err(format!("{} is not a section with settings", path.join(".")));
        };
        let key = map
            .keys()
            .filter_map(Value::as_str)
            .find(|k| k.eq_ignore_ascii_case(part))
            .ok_or_else(|| {
                let known: Vec<&str> = map.keys().filter_map(Value::as_str).collect();
                format!("no setting {part:?} here; expected one of: {}", known.join(", "))
            })?
            .to_string();
        node = &map[key.as_str()];
        path.push(key);
    }
    Ok(path)
}

fn lookup_mut<'a>(root: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(root, |node, key| &mut node[key.as_str()])
}
