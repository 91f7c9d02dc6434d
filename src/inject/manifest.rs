//! Manifests in, manifests out: every document of a YAML stream, the pod template of each
//! workload kind, the items of a `List`; the edits spliced into the original text.

use serde_json::Value;

use super::patch::Op;
use super::pod::{self, Decision, PodError, Skip};
use super::text::{self, Chars, TextError};
use crate::config::InjectSettings;
use crate::yaml::{self, Limits};

/// Where a kind keeps its pod: the JSON Pointer of the pod template, or of the pod itself.
pub fn pod_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The document's first line.
    pub line: usize,
    pub kind: String,
    pub name: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// With the warnings of [`super::annotations::warnings`].
    Injected(Vec<String>),
    Skipped(Skip),
    /// A kind without pods (a Service, a ConfigMap): passed through untouched.
    NoPods,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = format!("{}/{}", self.kind.to_lowercase(), self.name);
        match &self.outcome {
            Outcome::Injected(warnings) => {
                write!(f, "{what} injected")?;
                warnings.iter().try_for_each(|w| write!(f, "; warning: {w}"))
            }
            Outcome::Skipped(why) => write!(f, "{what} skipped: {why}"),
            Outcome::NoPods => write!(f, "{what} passed through (no pods)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Yaml(yaml::Error),
    #[error("line {line}: {kind}/{name}: {error}")]
    Pod { line: usize, kind: String, name: String, error: PodError },
    #[error("line {line}: {error}")]
    Text { line: usize, error: TextError },
}

/// The manifests with every pod injected, and what happened to each object.
pub fn inject(text: &str, settings: &InjectSettings) -> Result<(String, Vec<Report>), ManifestError> {
    let documents = yaml::parse(text, &Limits::MANIFESTS).map_err(ManifestError::Yaml)?;
    let chars = Chars::new(text);
    let mut edits = Vec::new();
    let mut reports = Vec::new();
    // Each document as the JSON Patch leaves it, with its first line.
    let mut expected = Vec::new();
    for document in &documents {
        if document.root.is_null() {
            continue;
        }
        let line = document.root.mark.line.max(document.start.line);
        if let Some(at) = document.first_anchor {
            return Err(text_error(
                at.line,
                "YAML anchors and aliases (&name, *name) cannot be injected in place: an edit would change one copy of what they share. Expand them first (yq 'explode(.)'), or let the admission webhook inject the objects".into(),
            ));
        }
        let mut ops = Vec::new();
        let mut object = document.root.to_json();
        plan_object(&object, "", line, settings, &mut ops, &mut reports)?;
        if !ops.is_empty() {
            edits.extend(
                text::edits(&chars, &document.root, &ops).map_err(|error| ManifestError::Text { line, error })?,
            );
            super::patch::apply(&mut object, &ops).map_err(|message| text_error(line, message))?;
        }
        expected.push((line, object));
    }
    let out = text::apply(&chars, edits).map_err(|error| ManifestError::Text { line: 0, error })?;
    // The edited text must read back as the patched objects: an edit that went wrong is an
    // error here, never a manifest that kubectl refuses or, worse, reads otherwise.
    let reread =
        yaml::parse(&out, &Limits::MANIFESTS).map_err(|e| text_error(0, format!("the output does not parse: {e}")))?;
    let mut reread = reread.iter().filter(|d| !d.root.is_null()).map(|d| d.root.to_json());
    for (line, object) in &expected {
        if reread.next().as_ref() != Some(object) {
            return Err(text_error(*line, "the edited text does not read back as the injected object (a fault of palisade inject: nothing was written; the admission webhook injects this object as JSON, or report the manifest)".into()));
        }
    }
    Ok((out, reports))
}

fn text_error(line: usize, message: String) -> ManifestError {
    ManifestError::Text { line, error: TextError { path: String::new(), message } }
}

/// The operations for one object at `base` (items of a `List` recursively).
pub fn plan_object(
    object: &Value,
    base: &str,
    line: usize,
    settings: &InjectSettings,
    ops: &mut Vec<Op>,
    reports: &mut Vec<Report>,
) -> Result<(), ManifestError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    if kind == "List" || (kind.ends_with("List") && object.get("items").is_some_and(Value::is_array)) {
        for (i, item) in object.get("items").and_then(Value::as_array).into_iter().flatten().enumerate() {
            plan_object(item, &format!("{base}/items/{i}"), line, settings, ops, reports)?;
        }
        return Ok(());
    }
    let report = |outcome| Report { line, kind: kind.clone(), name: name.clone(), outcome };
    let Some(path) = pod_path(&kind) else {
        reports.push(report(Outcome::NoPods));
        return Ok(());
    };
    let pod_error = |error| ManifestError::Pod { line, kind: kind.clone(), name: name.clone(), error };
    let template = object.pointer(path).ok_or_else(|| {
        pod_error(PodError::Shape { field: format!("{base}{path}"), message: "expected the pod template".into() })
    })?;
    let namespace = metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str);
    // A workload's own `palisade.dev/inject: disabled` counts as its pods'.
    let workload_opted_out = !path.is_empty() && {
        let says = |field: &str| {
            metadata.and_then(|m| m.get(field)).and_then(|a| a.get(super::annotations::INJECT)).and_then(Value::as_str)
                == Some(super::annotations::DISABLED)
        };
        says("annotations") || says("labels")
    };
    if workload_opted_out {
        reports.push(report(Outcome::Skipped(Skip::OptedOut)));
        return Ok(());
    }
    match pod::plan(template, &format!("{base}{path}"), namespace, settings).map_err(pod_error)? {
        Decision::Inject { ops: more, warnings } => {
            ops.extend(more);
            reports.push(report(Outcome::Injected(warnings)));
        }
        Decision::Skip(why) => reports.push(report(Outcome::Skipped(why))),
    }
    Ok(())
}
