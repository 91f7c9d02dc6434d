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
    /// The line of its `metadata.name`.
    pub line: usize,
    /// The lines of the fields that are checked only when the policy is compiled (a JWT
    /// issuer's keys, the WAF's settings), so that their errors point at them.
    pub field_lines: Vec<(String, usize)>,
    /// What the policy's fields are named under in its file: `policies[3].` in a Helm values
    /// file, nothing in a policy file.
    pub prefix: String,
}

impl Located {
    /// An error in `field` of this policy, at the field's line when it is one of
    /// [`Located::field_lines`], else at the policy's own.
    pub fn error(&self, field: &str, message: impl ToString) -> ConfigError {
        let mut e = ConfigError::new(&self.file, &format!("{}{field}", self.prefix), message.to_string());
        e.line = Some(self.field_lines.iter().find(|(f, _)| f == field).map_or(self.line, |(_, line)| *line));
        e
    }
}

/// The errors one file's policies are reported with, at most: one file of 149,000 empty
/// documents made a 16.6 MB security event (which log shippers split) and 149,000 log lines.
const MAX_ERRORS_PER_FILE: usize = 100;

/// Parses every document of `text`; returns the good ones and an error for each bad one. A text
/// with no policy at all is an error: an empty or truncated file must never read as "no policy".
pub fn parse_file(file: &Path, text: &str) -> (Vec<Located>, Vec<ConfigError>) {
    let documents = match crate::yaml::parse(text, &crate::yaml::Limits::FILE) {
        Ok(documents) => documents,
        // A syntax error leaves the rest of the stream unreadable: one error for the file.
        Err(e) => return (Vec::new(), vec![crate::config::located(file, String::new(), e)]),
    };
    let roots = documents.iter().filter(|d| !d.root.is_null()).map(|d| (&d.root, d.start.line, String::new()));
    read_policies(
        file,
        roots,
        "holds no SecurityPolicy document (an empty or truncated file is refused; the policy in force stays)",
    )
}

/// The chart's `policies` value in a Helm values file (`palisade check --values`): each item a
/// SecurityPolicy document, checked as the control plane checks the ConfigMap the chart makes
/// of them, its errors at the values file's lines and named `policies[i].<field>`. A values
/// file with no `policies` is refused: checking nothing is no check.
pub fn parse_values_file(file: &Path, text: &str) -> (Vec<Located>, Vec<ConfigError>) {
    let documents = match crate::yaml::parse(text, &crate::yaml::Limits::FILE) {
        Ok(documents) => documents,
        Err(e) => return (Vec::new(), vec![crate::config::located(file, String::new(), e)]),
    };
    let Some(policies) = documents.first().and_then(|d| d.root.get("policies")) else {
        return (
            Vec::new(),
            vec![ConfigError::new(
                file,
                "policies",
                "no policies value in this values file: give the values file with the chart's `policies:` list (SecurityPolicy documents), or the policy files themselves without --values",
            )],
        );
    };
    let crate::yaml::Value::Seq(items) = &policies.value else {
        let mut e = ConfigError::new(file, "policies", "expected a list of SecurityPolicy documents");
        e.line = Some(policies.mark.line);
        return (Vec::new(), vec![e]);
    };
    // The chart's default (`policies: []`) is no mistake: nothing to check, and nothing wrong.
    if items.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let roots = items.iter().enumerate().map(|(i, item)| (item, item.mark.line, format!("policies[{i}].")));
    let (policies, mut errors) = read_policies(file, roots, "the policies value lists no SecurityPolicy document");
    // The chart refuses a policy listed twice (its template fails the render).
    let (policies, twice) = unique(policies);
    errors.extend(twice);
    (policies, errors)
}

/// The policies of YAML `roots` (each with the line it starts at and the prefix its fields are
/// reported under), with an error for each bad one; `none` when there is none at all.
fn read_policies<'n>(
    file: &Path,
    roots: impl Iterator<Item = (&'n crate::yaml::Node, usize, String)>,
    none: &str,
) -> (Vec<Located>, Vec<ConfigError>) {
    let mut policies = Vec::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut unreported = 0;
    for (root, start_line, prefix) in roots {
        let (policy, mut document_errors) = crate::config::read_all::<SecurityPolicy>(file, root);
        let named = |mut e: ConfigError| {
            e.field = format!("{prefix}{}", e.field);
            e
        };
        if document_errors.is_empty() {
            if let Some(policy) = policy.as_ref().filter(|p| !p.spec.port_level_mtls.is_empty()) {
                if policy.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty()) {
                    // As Istio's PeerAuthentication: a port number means one thing only among
                    // the workloads a selector picks.
                    let mut error = ConfigError::new(
                        file,
                        "spec.portLevelMtls",
                        "a port's mode needs spec.selector: a port means one thing only for the workloads a selector picks",
                    );
                    error.line = root.find("spec.portLevelMtls").map(|n| n.mark.line);
                    errors.push(named(error));
                    continue;
                }
            }
            if let Some(policy) = policy {
                // Where the policy names itself: what a duplicate's error points at.
                let line = root.find("metadata.name").map_or(start_line, |n| n.mark.line);
                let issuers = policy.spec.authentication.as_ref().map_or(0, |a| a.jwt.len());
                let delays = policy.spec.rate_limits.iter().enumerate().filter(|(_, l)| l.max_delay.is_some());
                let fields = (0..issuers)
                    .map(|i| format!("spec.authentication.jwt[{i}]"))
                    .chain(delays.map(|(i, _)| format!("spec.rateLimits[{i}].maxDelay")))
                    .chain(["spec.inputValidation.waf".to_string(), "spec.authentication.requireJwt".to_string()]);
                let field_lines = fields.filter_map(|f| root.find(&f).map(|n| (f, n.mark.line))).collect();
                policies.push(Located { policy, file: file.to_path_buf(), line, field_lines, prefix: prefix.clone() });
            }
        }
        let room = MAX_ERRORS_PER_FILE.saturating_sub(errors.len());
        unreported += document_errors.len().saturating_sub(room);
        errors.extend(document_errors.drain(..).take(room).map(named));
    }
    if unreported > 0 {
        errors.push(ConfigError::new(
            file,
            "",
            format!("and {unreported} more errors in this file, not listed: mend the ones above first"),
        ));
    }
    if policies.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(file, "", none));
    }
    (policies, errors)
}

/// Whether a file in a policy directory is a policy file: `*.yaml` or `*.yml` in any case (a
/// ConfigMap key may be `billing.YAML`), not a dot-entry (a ConfigMap mount's `..data`).
pub fn is_policy_file_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && (lower.ends_with(".yaml") || lower.ends_with(".yml"))
}

/// The files `palisade check` reads for `paths`: a file as given, a directory's policy files
/// (as the control plane reads them from its directory), sorted.
pub fn expand_directories(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut inside: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_str().is_some_and(is_policy_file_name))
            .map(|entry| entry.path())
            .collect();
        if inside.is_empty() {
            return Err(format!("{}: no *.yaml or *.yml file in this directory", path.display()));
        }
        inside.sort();
        files.extend(inside);
    }
    Ok(files)
}

/// The policy files as read at one moment, with a digest of exactly those bytes: the version.
pub struct Sources {
    pub texts: Vec<(PathBuf, std::io::Result<String>)>,
    pub version: String,
}

impl Sources {
    /// The files as one moment's, from `first`, a read of them (see [`crate::files::settled`]);
    /// `None` while they are still changing under the reader.
    pub fn settle(first: Sources, files: &[PathBuf]) -> Option<Sources> {
        crate::files::settled(first, || Sources::read(files), |a, b| a.version == b.version)
    }

    /// [`Sources::settle`] where there is no next look to wait for (a start, `palisade check`):
    /// the last read when the files never settled.
    pub fn read_now(files: &[PathBuf]) -> Sources {
        Sources::settle(Sources::read(files), files).unwrap_or_else(|| Sources::read(files))
    }

    /// The files as read now.
    pub fn read(files: &[PathBuf]) -> Sources {
        let texts: Vec<_> = files
            .iter()
            .map(|file| (file.clone(), crate::yaml::read_file(file, crate::yaml::Limits::FILE.max_bytes)))
            .collect();
        // An unreadable file's version is its reason, so a new reason is a new (refused) update.
        let reasons: Vec<String> = texts
            .iter()
            .map(|(_, t)| t.as_ref().err().map(|e| format!("\0unreadable: {e}")).unwrap_or_default())
            .collect();
        let version = digest(texts.iter().zip(&reasons).map(|((file, text), reason)| {
            (file.as_os_str().as_encoded_bytes(), text.as_deref().map(str::as_bytes).unwrap_or(reason.as_bytes()))
        }));
        Sources { texts, version }
    }

    /// Parses every file; errors also for unreadable files and for one policy (namespace and
    /// name) defined twice.
    pub fn parse(&self) -> (Vec<Located>, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let mut parsed = Vec::new();
        for (file, text) in &self.texts {
            match text {
                Ok(text) => {
                    let (policies, file_errors) = parse_file(file, text);
                    parsed.extend(policies);
                    errors.extend(file_errors);
                }
                Err(e) => errors.push(ConfigError::new(file, "", format!("cannot read the file: {e}"))),
            }
        }
        let (all, twice) = unique(parsed);
        errors.extend(twice);
        (all, errors)
    }
}

/// The files policies name for their keys: a JWT issuer's `jwks.file` and `hmacSecret.file`.
/// Their bytes are part of what the policies say, so they are part of the version: a key taken
/// out of a mounted JWKS is revoked by the next reload, as a changed policy file would be.
pub fn key_files(located: &[Located]) -> Vec<PathBuf> {
    let providers = located.iter().filter_map(|l| l.policy.spec.authentication.as_ref()).flat_map(|a| &a.jwt);
    let mut files: Vec<PathBuf> = providers
        .flat_map(|p| {
            [p.jwks.as_ref().and_then(|j| j.file.clone()), p.hmac_secret.as_ref().and_then(|s| s.file.clone())]
        })
        .flatten()
        .collect();
    files.sort();
    files.dedup();
    files
}

impl Sources {
    /// The version of these policy files together with the key files they name (without any,
    /// the files' own version).
    pub fn version_with(&self, key_files: &[PathBuf]) -> String {
        if key_files.is_empty() {
            return self.version.clone();
        }
        let contents: Vec<Vec<u8>> = key_files
            .iter()
            .map(|file| {
                crate::files::read_regular(file, crate::files::MAX_KEY_FILE_BYTES)
                    .unwrap_or_else(|e| format!("\0unreadable: {e}").into_bytes())
            })
            .collect();
        let keys = key_files.iter().zip(&contents).map(|(f, c)| (f.as_os_str().as_encoded_bytes(), c.as_slice()));
        digest(std::iter::once((&b"policies"[..], self.version.as_bytes())).chain(keys))
    }
}

/// A short digest of named byte strings: the version of a set of files or documents, which
/// depends on their content only.
pub(crate) fn digest<'a>(parts: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, bytes) in parts {
        ctx.update(name);
        ctx.update(b"\0");
        ctx.update(bytes);
        ctx.update(b"\0");
    }
    ctx.finish().as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps the first of each policy (namespace and name); every later one is an error at its
/// own file and line. Files, the control plane's snapshots and `palisade check` all go
/// through here.
pub fn unique(located: Vec<Located>) -> (Vec<Located>, Vec<ConfigError>) {
    let mut all: Vec<Located> = Vec::new();
    let mut errors = Vec::new();
    for l in located {
        let m = &l.policy.metadata;
        let first = all.iter().find(|o| o.policy.metadata.name == m.name && o.policy.metadata.namespace == m.namespace);
        match first {
            Some(first) => errors.push(ConfigError {
                line: Some(l.line),
                column: Some(1),
                ..ConfigError::new(
                    &l.file,
                    "metadata.name",
                    format!(
                        "policy {}/{} is also defined in {}:{}",
                        m.namespace,
                        m.name,
                        first.file.display(),
                        first.line
                    ),
                )
            }),
            None => all.push(l),
        }
    }
    (all, errors)
}

/// Reads and parses files (what `palisade check` does).
pub fn load_files(files: &[PathBuf]) -> (Vec<Located>, Vec<ConfigError>) {
    Sources::read_now(files).parse()
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
    fn the_spec_shape_parses() {
        let text = format!(
            "{HEAD}  selector: {{matchLabels: {{app: orders}}}}\n  mtls: STRICT\n  authorization:\n    mode: ENFORCE\n    default: DENY\n    rules:\n      - name: frontend-reads\n        action: ALLOW\n        from: {{principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"], namespaces: [shop], ipBlocks: [\"10.0.0.0/8\"], requestPrincipals: [\"https://auth.example.com/*\"]}}\n        to: {{methods: [GET, HEAD], paths: [\"/orders\", \"/orders/*\"], ports: [8080]}}\n        when:\n          - {{key: \"request.headers[x-tenant]\", values: [acme]}}\n          - {{key: \"request.auth.claims[scope]\", values: [\"orders:read\"]}}\n  rateLimits:\n    - {{name: per-caller, match: {{methods: [POST], paths: [\"/orders*\"]}}, key: source.principal, rate: 100, per: 1s, burst: 200}}\n  inputValidation: {{maxBodyBytes: 1048576, maxHeaderBytes: 65536, maxUriBytes: 8192, waf: {{mode: BLOCK, paranoia: 1, detectors: [sqli, xss, path_traversal, command_injection, protocol], exclusions: [{{paths: [\"/search\"], detectors: [sqli]}}]}}}}\n  authentication:\n    jwt:\n      - issuer: https://auth.example.com\n        audiences: [orders]\n        jwks: {{file: /etc/palisade/jwks.json}}\n        fromHeaders: [{{name: Authorization, prefix: \"Bearer \"}}]\n        forwardClaims: [{{claim: sub, header: x-user-id}}]\n    requireJwt: false\n"
        );
        let (policies, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(policies.len(), 1);
    }

    #[test]
    fn a_selector_no_pod_can_match_is_refused_with_the_label_named() {
        // Kubernetes refuses these labels on a pod, so such a selector picked no workload, and a
        // DENY written in it protected nothing, silently.
        for (labels, words) in [
            ("{\"app*\": orders}", "label key \"app*\""),
            ("{\"\": x}", "label key \"\""),
            ("{\"a/b/c\": x}", "prefix"),
            ("{\"Example.com/app\": x}", "prefix"),
            ("{app: \"a b\"}", "value \"a b\""),
            ("{app: \"-x\"}", "value \"-x\""),
        ] {
            let errors = errors_of(&format!("{HEAD}  selector: {{matchLabels: {labels}}}\n  mtls: STRICT\n"));
            assert!(
                errors.len() == 1
                    && errors[0].field == "spec.selector.matchLabels"
                    && errors[0].line == Some(5)
                    && errors[0].message.contains(words),
                "{labels}: {errors:?}"
            );
        }
        for labels in [
            "{app: orders}",
            "{app: \"\"}",
            "{app.kubernetes.io/name: orders, tier: web_1.2}",
            "{\"example.com/x\": Y}",
        ] {
            let errors = errors_of(&format!("{HEAD}  selector: {{matchLabels: {labels}}}\n  mtls: STRICT\n"));
            assert!(errors.is_empty(), "{labels}: {errors:?}");
        }
    }

    #[test]
    fn a_condition_or_key_on_a_header_the_sidecar_writes_for_the_app_is_refused() {
        for key in ["x-forwarded-client-cert", "L5d-Client-Id", "palisade-orig-proto"] {
            let when = format!(
                "{HEAD}  authorization:\n    rules:\n      - {{name: r, action: ALLOW, when: [{{key: \"request.headers[{key}]\", values: [\"*\"]}}]}}\n"
            );
            let errors = errors_of(&when);
            assert!(errors.len() == 1 && errors[0].message.contains("only the sidecar sets"), "{key}: {errors:?}");
            let limit =
                format!("{HEAD}  rateLimits:\n    - {{name: l, key: \"request.headers[{key}]\", rate: 1, per: 1s}}\n");
            assert_eq!(errors_of(&limit).len(), 1, "{key}");
        }
        // A forwarded claim's header: judged before the sidecar writes it, so refused too, by
        // `palisade check` and by every sidecar the policy selects.
        let text = format!(
            "{HEAD}  authentication:\n    jwt:\n      - issuer: https://auth.example.com\n        audiences: [orders]\n        jwks: {{file: /etc/palisade/jwks.json}}\n        forwardClaims: [{{claim: sub, header: x-user-id}}]\n  authorization:\n    rules:\n      - {{name: alice, action: ALLOW, when: [{{key: \"request.headers[X-User-Id]\", values: [alice]}}]}}\n  rateLimits:\n    - {{name: per-user, key: \"request.headers[x-user-id]\", rate: 1, per: 1s}}\n"
        );
        let (located, errors) = parse_file(Path::new("p.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let located: Vec<&Located> = located.iter().collect();
        let errors: Vec<ConfigError> =
            located.iter().flat_map(|doc| super::super::compile::judged_headers_written_by(doc, &located)).collect();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.authorization.rules[0].when[0].key", "spec.rateLimits[0].key"]);
        assert!(errors[0].message.contains("request.auth.claims[sub]"), "{}", errors[0]);
    }

    #[test]
    fn a_file_of_many_bad_documents_is_reported_with_the_first_hundred_errors_and_a_count() {
        let text = "--- {}\n".repeat(1000);
        let errors = errors_of(&text);
        assert_eq!(errors.len(), MAX_ERRORS_PER_FILE + 1);
        assert!(errors[MAX_ERRORS_PER_FILE].message.contains("and 900 more errors"), "{}", errors[MAX_ERRORS_PER_FILE]);
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
            ("  authentication:\n    jwt:\n      - {issuer: \"https://a\", jwks: {file: /j}, forwardToken: true}\n", 7, "spec.authentication.jwt[0]", "unknown field `forwardToken`"),
            ("  authentication:\n    jwt:\n      - {issuer: \"https://a\", algorithms: [none]}\n", 7, "spec.authentication.jwt[0].algorithms[0]", "none"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, when: [{key: \"request.auth.claims[]\", values: [x]}]}\n", 7, "when[0].key", "empty"),
            ("  rateLimits:\n    - {name: r, rate: 5, key: \"request.auth.claims[sub\"}\n", 6, "spec.rateLimits[0].key", "missing ]"),
            ("  inputValidation:\n    waf: {mode: BLOCK, paranoia: 5}\n", 6, "spec.inputValidation.waf.paranoia", "1, 2, 3 or 4"),
            ("  inputValidation:\n    waf: {mode: BLOCK, detectors: [sqlx]}\n", 6, "spec.inputValidation.waf.detectors[0]", "unknown detector"),
            ("  inputValidation:\n    waf: {mode: BLOCK, inspectBodyBytes: 100000}\n", 6, "spec.inputValidation.waf.inspectBodyBytes", "65536"),
            ("  inputValidation:\n    waf: {mode: BLOCK, exclusions: [{paths: [\"/search\"]}]}\n", 6, "spec.inputValidation.waf.exclusions[0]", "detectors"),
            ("  inputValidation:\n    waf: {mode: ON}\n", 6, "spec.inputValidation.waf.mode", "BLOCK"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, from: {principals: []}}\n", 7, "principals", "empty list"),
            ("  rateLimits:\n    - {name: r, rate: 1, per: 10000000h}\n", 6, "rateLimits[0]", "per must be between"),
            ("  rateLimits:\n    - {name: r, rate: 1, per: 0s}\n", 6, "rateLimits[0]", "per must be between"),
            // Istio's form of a principal would match no caller: a DENY that never fires.
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {principals: [\"cluster.local/ns/shop/sa/x\"]}}\n", 7, "principals", "write spiffe://cluster.local/ns/shop/sa/x"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {principals: [\"spiffe//cluster.local/ns/shop/sa/x\"]}}\n", 7, "principals", "[0] \"spiffe//cluster.local/ns/shop/sa/x\" would match no caller: it is no SPIFFE ID (spiffe://"),
            // Patterns no handshake gives: DENY rules that never fire.
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {principals: [\"*\", \"spiffe://cluster.local/ns/o/sa/e/\"]}}\n", 7, "principals", "[1] \"spiffe://cluster.local/ns/o/sa/e/\" would match no caller: path must not end"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {principals: [\"spiffe://Cluster.Local/ns/*\"]}}\n", 7, "principals", "trust domain may hold only lowercase"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {principals: [\"spiffe://cluster.local//ns/o/*\"]}}\n", 7, "principals", "non-empty"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {principals: [\"*/sa/evil \"]}}\n", 7, "principals", "would match no caller"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {namespaces: [\"spiffe://cluster.local/ns/other\"]}}\n", 7, "namespaces", "a namespace is lowercase"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, from: {namespaces: [shop, Other]}}\n", 7, "namespaces", "[1] \"Other\""),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, to: {paths: [\"/api/export?format=csv\"]}}\n", 7, "paths", "never the query"),
            ("  authorization:\n    rules:\n      - {name: a, action: DENY, to: {paths: [\"/admin#x\"]}}\n", 7, "paths", "never the query or a fragment"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, to: {paths: [\"/users/{**}/orders\"]}}\n", 7, "spec.authorization.rules[0].to.paths[0]", "must be its last segment"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, to: {paths: [\"/users/{id}\"]}}\n", 7, "paths[0]", "'{*}' (one segment)"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, to: {paths: [\"/users/{*}.json\"]}}\n", 7, "paths[0]", "whole segments"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, to: {paths: [\"/users/{request.auth.claims[]}\"]}}\n", 7, "paths[0]", "empty"),
            ("  rateLimits:\n    - {name: r, rate: 5, match: {paths: [\"/users/{request.auth.claims[sub]}\"]}}\n", 6, "spec.rateLimits[0].match.paths[0]", "belongs in an authorization rule"),
            ("  inputValidation:\n    waf: {mode: BLOCK, exclusions: [{paths: [\"/u/{request.auth.claims[sub]}\"], detectors: [sqli]}]}\n", 6, "exclusions[0].paths[0]", "belongs in an authorization rule"),
            ("  authorization:\n    rules:\n      - {name: a, action: ALLOW, when: []}\n", 7, "when", "empty list"),
            ("  authorization:\n    rules:\n      - {name: default, action: DENY}\n", 7, "name", "default decision"),
            ("  inputValidation: {maxUriBytes: 100000}\n", 5, "maxUriBytes", "1 to 8192"),
            ("  inputValidation: {maxUriBytes: 0}\n", 5, "maxUriBytes", "1 to 8192"),
            ("  inputValidation: {maxHeaderBytes: 18446744073709551615}\n", 5, "maxHeaderBytes", "1 to 65536"),
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
    fn principal_patterns_that_can_match_a_spiffe_id_are_taken() {
        for p in [
            "*",
            "spiffe*",
            "spiffe://*",
            "spiffe://cluster.local/ns/shop/*",
            "*/sa/admin",
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b*",
            "spiffe://cluster.local/*",
            "spiffe://cluster.*",
            "*.local/ns/a/sa/b",
        ] {
            let spec = format!(
                "  authorization:\n    rules:\n      - {{name: a, action: ALLOW, from: {{principals: [\"{p}\"]}}}}\n"
            );
            assert!(errors_of(&format!("{HEAD}{spec}")).is_empty(), "{p}");
        }
    }

    #[test]
    fn port_0_is_refused_where_a_rule_names_ports() {
        let spec = "  authorization:\n    rules:\n      - {name: a, action: DENY, to: {ports: [0, 8080]}}\n";
        let errors = errors_of(&format!("{HEAD}{spec}"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].field.starts_with("spec.authorization.rules[0].to.ports"), "{errors:?}");
        assert!(errors[0].message.contains("port 0"), "{errors:?}");
    }

    #[test]
    fn several_errors_in_one_list_each_name_their_own_index() {
        let spec = "  authorization:\n    rules:\n      - {name: a, action: ALLOW, to: {ports: [80, 65536, 8080, 70000]}}\n      - {name: b, action: ALOW}\n      - {name: c, action: ALLOW, to: {ports: [70001]}}\n";
        let errors = errors_of(&format!("{HEAD}{spec}"));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.authorization.rules[0].to.ports[1]",
                "spec.authorization.rules[0].to.ports[3]",
                "spec.authorization.rules[1].action",
                "spec.authorization.rules[2].to.ports[0]",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn a_syntax_error_is_reported_once_and_parsing_ends() {
        for bad in ["spec: {a: [}\n", "spec: a: b\n", "spec:\n\tmtls: STRICT\n", "metadata: {name: \"p\n"] {
            let text = format!("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\n{bad}");
            let (policies, errors) = parse_file(Path::new("p.yaml"), &text);
            assert!(policies.is_empty(), "{bad:?}");
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert!(errors[0].line.is_some_and(|l| l >= 3), "{bad:?}: {}", errors[0]);
        }
    }

    #[test]
    fn a_file_without_a_policy_is_an_error() {
        for text in ["", "# nothing yet\n", "---\n", "\n\n"] {
            let (policies, errors) = parse_file(Path::new("p.yaml"), text);
            assert!(policies.is_empty());
            assert_eq!(errors.len(), 1, "{text:?}");
            assert!(errors[0].message.contains("holds no SecurityPolicy"), "{}", errors[0]);
        }
    }

    #[test]
    fn duplicate_keys_and_tags_are_errors_at_their_line() {
        let (_, errors) =
            parse_file(Path::new("p.yaml"), &format!("{HEAD}  selector: {{matchLabels: {{app: a, app: b}}}}\n"));
        assert_eq!((errors.len(), errors[0].line), (1, Some(5)), "{errors:?}");
        assert!(errors[0].message.contains("duplicate key"), "{}", errors[0]);
        let (_, errors) = parse_file(Path::new("p.yaml"), &format!("{HEAD}  mtls: !Evil STRICT\n"));
        assert!(errors[0].message.contains("!Evil"), "{}", errors[0]);
    }

    #[test]
    fn a_policy_defined_twice_is_an_error_at_the_second() {
        let text = format!("{HEAD}  mtls: STRICT\n---\n{HEAD}  mtls: STRICT\n");
        let (policies, errors) = parse_file(Path::new("p.yaml"), &text);
        let (kept, twice) = unique(policies);
        assert!(errors.is_empty());
        assert_eq!(kept.len(), 1);
        assert_eq!(twice[0].line, Some(9), "{}", twice[0]);
        assert!(twice[0].message.contains("also defined in p.yaml:3"), "{}", twice[0]);
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
