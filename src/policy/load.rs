//! Reading policy files: one or many `SecurityPolicy` documents per file, every error with its
//! file, line and field.

use std::path::{Path, PathBuf};

use super::document::SecurityPolicy;
use crate::config::ConfigError;

/// A policy and where it came from.
#[derive(Debug, Clone)]
pub struct Located {
    pub policy: SecurityPolicy,
    pub file: PathBuf,
}

/// Parses every document of `text`; returns the good ones and an error for each bad one.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Located>, Vec<ConfigError>) {
    let mut policies = Vec::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        match serde_path_to_error::deserialize::<_, Option<SecurityPolicy>>(document) {
            Ok(Some(policy)) => policies.push(Located { policy, file: file.to_path_buf() }),
            Ok(None) => {} // an empty document, e.g. after a trailing `---`
            Err(e) => {
                let error = crate::config::yaml_error(file, e);
                // A syntax error leaves the rest of the stream unreadable, and serde_yaml's
                // document iterator then returns that same error for ever: stop at the first
                // repeat, or the error list grows until memory runs out.
                let repeated = errors.last().is_some_and(|last| {
                    (last.line, last.column, &last.message) == (error.line, error.column, &error.message)
                });
                if repeated {
                    break;
                }
                let unpositioned = error.line.is_none();
                errors.push(error);
                if unpositioned {
                    break;
                }
            }
        }
    }
    (policies, errors)
}

/// The policy files as read at one moment, with a digest of exactly those bytes: the version.
pub struct Sources {
    pub texts: Vec<(PathBuf, std::io::Result<String>)>,
    pub version: String,
}

impl Sources {
    pub fn read(files: &[PathBuf]) -> Sources {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let texts: Vec<_> = files
            .iter()
            .map(|file| {
                let text = std::fs::read_to_string(file);
                ctx.update(file.as_os_str().as_encoded_bytes());
                ctx.update(b"\0");
                ctx.update(text.as_deref().unwrap_or("\0unreadable").as_bytes());
                ctx.update(b"\0");
                (file.clone(), text)
            })
            .collect();
        let version = ctx.finish().as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
        Sources { texts, version }
    }

    /// Parses every file; errors also for unreadable files and for one policy (namespace and
    /// name) defined twice.
    pub fn parse(&self) -> (Vec<Located>, Vec<ConfigError>) {
        let mut all: Vec<Located> = Vec::new();
        let mut errors = Vec::new();
        for (file, text) in &self.texts {
            let text = match text {
                Ok(text) => text,
                Err(e) => {
                    errors.push(ConfigError::new(file, "", format!("cannot read the file: {e}")));
                    continue;
                }
            };
            let (policies, file_errors) = parse_file(file, text);
            errors.extend(file_errors);
            for located in policies {
                let m = &located.policy.metadata;
                let twice =
                    all.iter().find(|o| o.policy.metadata.name == m.name && o.policy.metadata.namespace == m.namespace);
                match twice {
                    Some(first) => errors.push(ConfigError::new(
                        file,
                        "metadata.name",
                        format!("policy {}/{} is also defined in {}", m.namespace, m.name, first.file.display()),
                    )),
                    None => all.push(located),
                }
            }
        }
        (all, errors)
    }
}

/// Reads and parses files (what `palisade check` does).
pub fn load_files(files: &[PathBuf]) -> (Vec<Located>, Vec<ConfigError>) {
    Sources::read(files).parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<ConfigError> {
        parse_file(Path::new("p.yaml"), text).1
    }

    const HEAD: &str =
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";

    #[test]
    fn the_spec_shape_parses_without_the_features_not_built_yet() {
        let text = format!(
            "{HEAD}  selector: {{matchLabels: {{app: orders}}}}\n  mtls: STRICT\n  authorization:\n    mode: ENFORCE\n    default: DENY\n    rules:\n      - name: frontend-reads\n        action: ALLOW\n        from: {{principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"], namespaces: [shop], ipBlocks: [\"10.0.0.0/8\"]}}\n        to: {{methods: [GET, HEAD], paths: [\"/orders\", \"/orders/*\"], ports: [8080]}}\n        when:\n          - {{key: \"request.headers[x-tenant]\", values: [acme]}}\n  rateLimits:\n    - {{name: per-caller, match: {{methods: [POST], paths: [\"/orders*\"]}}, key: source.principal, rate: 100, per: 1s, burst: 200}}\n  inputValidation: {{maxBodyBytes: 1048576, maxHeaderBytes: 65536, maxUriBytes: 8192, waf: {{mode: OFF}}}}\n"
        );
        let (policies, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(policies.len(), 1);
    }

    #[test]
    fn each_error_points_at_its_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, from: {principals: [\"a*b\"]}}\n", 7, "spec.authorization.rules[0].from.principals[0]", "wildcard"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, from: {ipBlocks: [\"10.0.0.0/40\"]}}\n", 7, "ipBlocks", "CIDR"),
            ("  rateLimits:\n    - {name: r, rate: 0}\n", 6, "spec.rateLimits[0].rate", "nonzero"),
            ("  rateLimits:\n    - {name: r, rate: 5, key: source.mac}\n", 6, "spec.rateLimits[0].key", "unknown key kind"),
            ("  authorization:\n    rules:\n      - name: a\n        action: ALLOW\n      - name: a\n        action: DENY\n", 9, "spec.authorization.rules[1].name", "duplicate name"),
            ("  authorization:\n    rulez: []\n", 6, "spec.authorization", "unknown field `rulez`"),
            ("  authorization:\n    mode: SOMETIMES\n", 6, "spec.authorization.mode", "ENFORCE"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, to: {paths: [\"orders\"]}}\n", 7, "paths", "must start with '/'"),
            ("  authentication:\n    jwt: []\n", 5, "spec.authentication", "not yet available"),
            ("  inputValidation:\n    waf: {mode: BLOCK}\n", 6, "spec.inputValidation.waf.mode", "not yet available"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, from: {principals: []}}\n", 7, "principals", "empty list"),
            ("  rateLimits:\n    - {name: r, rate: 1, per: 10000000h}\n", 6, "rateLimits[0]", "per must be between"),
            ("  rateLimits:\n    - {name: r, rate: 1, per: 0s}\n", 6, "rateLimits[0]", "per must be between"),
        ];
        for (spec, line, field, words) in cases {
            let errors = errors_of(&format!("{HEAD}{spec}"));
            assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.line, Some(*line), "{spec}: {e}");
            assert!(e.field.contains(field), "{spec}: field {:?} lacks {field}", e.field);
            assert!(e.message.contains(words), "{spec}: {e}");
        }
    }

    #[test]
    fn a_syntax_error_is_reported_once_and_parsing_ends() {
        for bad in ["spec: {a: [}\n", "spec: a: b\n", "spec:\n\tmtls: STRICT\n", "metadata: {name: \"p\n"] {
            let text = format!("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\n{bad}");
            let (policies, errors) = parse_file(Path::new("p.yaml"), &text);
            assert!(policies.is_empty(), "{bad:?}");
            // The document's own error may come first; the syntax error ends the list.
            assert!((1..=2).contains(&errors.len()), "{bad:?}: {errors:?}");
            assert!(errors.iter().all(|e| e.line.is_some()), "{bad:?}: {errors:?}");
        }
    }

    #[test]
    fn several_documents_report_lines_in_the_whole_file() {
        let text = format!("{HEAD}  mtls: STRICT\n---\n{HEAD}  mtls: LOOSE\n---\n");
        let (policies, errors) = parse_file(Path::new("p.yaml"), &text);
        assert_eq!(policies.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(11), "{}", errors[0]);
    }
}
