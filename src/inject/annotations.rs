//! The per-pod annotations injection honours, read and checked before anything is added: a
//! value that would make a broken pod is refused with the annotation's name.

pub use crate::config::{is_log_filter, is_quantity};
use crate::config::{AppProtocol, IpBlock};

/// `enabled` / `disabled` (also as a label): opts a pod in or out.
pub const INJECT: &str = "palisade.dev/inject";
/// Set by injection to the injecting version: marks the result.
pub const INJECTED: &str = "palisade.dev/injected";
/// Inbound ports to capture (`8080,8443`); all by default (`*`).
pub const INBOUND_PORTS: &str = "palisade.dev/inbound-ports";
pub const EXCLUDE_INBOUND_PORTS: &str = "palisade.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "palisade.dev/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "palisade.dev/exclude-outbound-cidrs";
/// Added to `outbound.passthrough`: destinations outside the mesh the app reaches through its
/// sidecar (`10.20.0.0/16,203.0.113.7`).
pub const OUTBOUND_PASSTHROUGH: &str = "palisade.dev/outbound-passthrough";
/// Added to `outbound.opaquePorts` (ports where the server speaks first: not waited on for the
/// app's first bytes) and to `inbound.opaquePorts` (the pod's own ports that are not HTTP, whose
/// tunnels its sidecar relays): `3306,25`.
pub const OPAQUE_PORTS: &str = "palisade.dev/opaque-ports";
/// Taken out of both opaque lists, the defaults included (an app serving HTTP on 4444 or 5432):
/// `4444`.
pub const NOT_OPAQUE_PORTS: &str = "palisade.dev/not-opaque-ports";
/// `PALISADE_LOG` of this pod's sidecar.
pub const LOG_LEVEL: &str = "palisade.dev/log-level";
/// `inbound.appProtocol`: `auto`, `http1`, `http2` (gRPC servers without TLS).
pub const APP_PROTOCOL: &str = "palisade.dev/app-protocol";
pub const PROXY_CPU_REQUEST: &str = "palisade.dev/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "palisade.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "palisade.dev/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "palisade.dev/proxy-memory-limit";

/// The value of [`INJECT`] that opts a pod out.
pub const DISABLED: &str = "disabled";

/// A bad annotation value: which annotation and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {message}")]
pub struct BadAnnotation {
    pub key: &'static str,
    pub message: String,
}

/// What a pod's annotations ask of its sidecar.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodOptions {
    /// `None`: every inbound port.
    pub inbound_ports: Option<Vec<u16>>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
    pub outbound_passthrough: Vec<String>,
    pub opaque_ports: Vec<u16>,
    pub not_opaque_ports: Vec<u16>,
    pub log_level: Option<String>,
    pub app_protocol: Option<AppProtocol>,
    /// `(requests|limits, resource, quantity)`.
    pub resources: Vec<(&'static str, &'static str, String)>,
    /// Not an annotation: the app's probes its sidecar answers for (`admin.appProbes`), read from
    /// its containers when they are rewritten.
    pub app_probes: std::collections::BTreeMap<String, crate::config::AppProbe>,
}

impl PodOptions {
    /// Reads the annotations (a JSON object, or none).
    pub fn read(annotations: Option<&serde_json::Map<String, serde_json::Value>>) -> Result<PodOptions, BadAnnotation> {
        let get = |key: &'static str| -> Result<Option<&str>, BadAnnotation> {
            match annotations.and_then(|a| a.get(key)) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.trim())),
                Some(other) => Err(BadAnnotation { key, message: format!("expected a string, got {other}") }),
            }
        };
        let mut options = PodOptions::default();
        if let Some(v) = get(INBOUND_PORTS)? {
            if v != "*" {
                let chosen = ports(INBOUND_PORTS, v)?;
                // No port at all would leave the init container nothing to capture and fail the
                // pod at start; said here, at admission, with the annotation named.
                if chosen.is_empty() {
                    return Err(BadAnnotation {
                        key: INBOUND_PORTS,
                        message: "names no port (\"*\" captures every port)".into(),
                    });
                }
                options.inbound_ports = Some(chosen);
            }
        }
        if let Some(v) = get(EXCLUDE_INBOUND_PORTS)? {
            options.exclude_inbound_ports = ports(EXCLUDE_INBOUND_PORTS, v)?;
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_PORTS)? {
            options.exclude_outbound_ports = ports(EXCLUDE_OUTBOUND_PORTS, v)?;
        }
        for (key, cidrs) in [
            (EXCLUDE_OUTBOUND_CIDRS, &mut options.exclude_outbound_cidrs),
            (OUTBOUND_PASSTHROUGH, &mut options.outbound_passthrough),
        ] {
            if let Some(v) = get(key)? {
                for cidr in list(v) {
                    parse_cidr(cidr).map_err(|message| BadAnnotation { key, message })?;
                    cidrs.push(cidr.to_string());
                }
            }
        }
        if let Some(v) = get(OPAQUE_PORTS)? {
            options.opaque_ports = ports(OPAQUE_PORTS, v)?;
        }
        if let Some(v) = get(NOT_OPAQUE_PORTS)? {
            options.not_opaque_ports = ports(NOT_OPAQUE_PORTS, v)?;
            if let Some(both) = options.opaque_ports.iter().find(|p| options.not_opaque_ports.contains(p)) {
                return Err(BadAnnotation {
                    key: NOT_OPAQUE_PORTS,
                    message: format!("{both} is also in {OPAQUE_PORTS}; name a port in one of them"),
                });
            }
        }
        if let Some(v) = get(LOG_LEVEL)? {
            if !is_log_filter(v) {
                return Err(BadAnnotation {
                    key: LOG_LEVEL,
                    message: format!("expected a log filter such as debug or palisade=trace,info, got {v:?}"),
                });
            }
            options.log_level = Some(v.to_string());
        }
        if let Some(v) = get(APP_PROTOCOL)? {
            options.app_protocol = Some(match v {
                "auto" => AppProtocol::Auto,
                "http1" => AppProtocol::Http1,
                "http2" => AppProtocol::Http2,
                _ => {
                    return Err(BadAnnotation {
                        key: APP_PROTOCOL,
                        message: format!("expected auto, http1 or http2, got {v:?}"),
                    })
                }
            });
        }
        for (key, kind, resource) in [
            (PROXY_CPU_REQUEST, "requests", "cpu"),
            (PROXY_CPU_LIMIT, "limits", "cpu"),
            (PROXY_MEMORY_REQUEST, "requests", "memory"),
            (PROXY_MEMORY_LIMIT, "limits", "memory"),
        ] {
            if let Some(v) = get(key)? {
                if !is_quantity(v) {
                    return Err(BadAnnotation {
                        key,
                        message: format!("expected a Kubernetes quantity such as 100m, 1 or 64Mi, got {v:?}"),
                    });
                }
                options.resources.push((kind, resource, v.to_string()));
            }
        }
        Ok(options)
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `8080,9090` or ranges `9000-9010` (expanded; at most 1,000 ports in all, so a typo such as
/// `1-65535` in an exclude list is still fine but cannot make a huge rule set).
fn ports(key: &'static str, value: &str) -> Result<Vec<u16>, BadAnnotation> {
    let bad = |what: &str| BadAnnotation {
        key,
        message: format!("expected ports such as 8080,9090 or 9000-9010, got {what:?}"),
    };
    let mut out = Vec::new();
    for item in list(value) {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (item, item),
        };
        let (lo, hi): (u16, u16) = match (lo.parse(), hi.parse()) {
            (Ok(lo), Ok(hi)) if lo > 0 && lo <= hi => (lo, hi),
            _ => return Err(bad(item)),
        };
        if out.len() + usize::from(hi - lo) >= 1000 {
            return Err(BadAnnotation { key, message: "more than 1000 ports; list fewer".into() });
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Every annotation under `palisade.dev/` that injection reads or writes.
const KNOWN: [&str; 15] = [
    INJECT,
    INJECTED,
    INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    OUTBOUND_PASSTHROUGH,
    OPAQUE_PORTS,
    NOT_OPAQUE_PORTS,
    LOG_LEVEL,
    APP_PROTOCOL,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
];

/// What injection goes on without but the operator should hear of: an annotation under
/// `palisade.dev/` that nothing reads (a misspelt exclusion leaves its port captured, and the
/// pod starts as if it were never written), and an `inject` value that is neither `enabled` nor
/// `disabled` (Istio's `"false"` opts nothing out here).
pub fn warnings(
    annotations: Option<&serde_json::Map<String, serde_json::Value>>,
    labels: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Vec<String> {
    type Map = serde_json::Map<String, serde_json::Value>;
    fn value<'a>(map: Option<&'a Map>, key: &str) -> Option<&'a str> {
        map?.get(key)?.as_str().map(str::trim)
    }
    let mut warnings = Vec::new();
    for key in annotations.into_iter().flat_map(Map::keys) {
        if !key.starts_with("palisade.dev/") || KNOWN.contains(&key.as_str()) {
            continue;
        }
        let nearest = KNOWN.iter().map(|known| (edit_distance(key, known), known)).min().filter(|(d, _)| *d <= 3);
        warnings.push(match nearest {
            Some((_, known)) => {
                format!("annotation {key} is not one Palisade reads (did you mean {known}?); it has no effect")
            }
            None => format!("annotation {key} is not one Palisade reads; it has no effect"),
        });
    }
    // As a label or an annotation, `inject` opts a pod in (`enabled`) or out; another value does
    // neither.
    for (what, map) in [("label", labels), ("annotation", annotations)] {
        if let Some(other) = value(map, INJECT).filter(|v| !["enabled", DISABLED].contains(v)) {
            warnings.push(format!(
                "{what} {INJECT}: {other:?} is neither enabled nor disabled; the pod is injected (write {DISABLED} to opt out)"
            ));
        }
    }
    // An operator moving from another mesh: its opt-out does not opt out of this one.
    for (key, off) in [("sidecar.istio.io/inject", "false"), ("linkerd.io/inject", "disabled")] {
        if value(annotations, key) == Some(off) || value(labels, key) == Some(off) {
            warnings.push(format!(
                "{key}: {off} opts the pod out of that mesh, not of Palisade, which injects it (write {INJECT}: {DISABLED} to opt out)"
            ));
        }
    }
    warnings
}

/// Levenshtein distance, for the "did you mean" of a misspelt annotation.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
pub fn parse_cidr(value: &str) -> Result<IpBlock, String> {
    value.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: serde_json::Value) -> Result<PodOptions, BadAnnotation> {
        PodOptions::read(value.as_object())
    }

    #[test]
    fn bad_values_are_refused_with_the_annotation_named() {
        for (key, value) in [
            (INBOUND_PORTS, "http"),
            (INBOUND_PORTS, "0"),
            (INBOUND_PORTS, ""),
            (INBOUND_PORTS, ","),
            (EXCLUDE_INBOUND_PORTS, "70000"),
            (EXCLUDE_OUTBOUND_PORTS, "9-3"),
            (EXCLUDE_OUTBOUND_PORTS, "1-5000"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_CIDRS, "example.com"),
            (LOG_LEVEL, "debug; rm -rf /"),
            (LOG_LEVEL, "verbose"),
            (LOG_LEVEL, "info,palisade=loud"),
            (APP_PROTOCOL, "grpc"),
            (PROXY_MEMORY_LIMIT, "lots"),
            (PROXY_CPU_REQUEST, "1.5.2"),
        ] {
            let err = read(json!({ key: value })).expect_err(value);
            assert_eq!(err.key, key, "{value}");
        }
        let err = read(json!({ LOG_LEVEL: 3 })).unwrap_err();
        assert!(err.message.contains("a string"), "{err}");
    }

    #[test]
    fn an_annotation_nothing_reads_is_warned_of_with_the_one_meant() {
        let warnings = warnings(
            json!({
                "palisade.dev/exclude-outbound-port": "5432", "palisade.dev/frobnicate": "x",
                "team.example/owner": "a", INJECT: "false", EXCLUDE_INBOUND_PORTS: "9090"
            })
            .as_object(),
            None,
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("palisade.dev/exclude-outbound-port is not")
                && warnings[0].contains(&format!("did you mean {EXCLUDE_OUTBOUND_PORTS}?")),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("palisade.dev/frobnicate is not") && !warnings[1].contains("did you mean"),
            "{warnings:?}"
        );
        assert!(warnings[2].contains("\"false\" is neither enabled nor disabled"), "{warnings:?}");
        for fine in [
            json!({INJECT: "enabled", INJECTED: "0.1.0", OPAQUE_PORTS: "25"}),
            json!({INJECT: " disabled "}),
            json!({}),
        ] {
            assert_eq!(super::warnings(fine.as_object(), fine.as_object()), Vec::<String>::new(), "{fine}");
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        // A label that opts nothing in or out, and another mesh's opt-out.
        let warnings = super::warnings(
            json!({"sidecar.istio.io/inject": "false"}).as_object(),
            json!({INJECT: "false", "linkerd.io/inject": "disabled"}).as_object(),
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("label palisade.dev/inject: \"false\""), "{warnings:?}");
        assert!(
            warnings[1].starts_with("sidecar.istio.io/inject: false opts the pod out of that mesh"),
            "{warnings:?}"
        );
        assert!(warnings[2].starts_with("linkerd.io/inject: disabled"), "{warnings:?}");
    }

    #[test]
    fn a_log_filter_is_levels_and_targets_that_log() {
        for good in [
            "info",
            "WARN",
            "palisade=debug,info",
            "info, palisade=debug",
            "warn,h2=off",
            "pingora_core::protocols=trace",
            "palisade",
        ] {
            assert!(is_log_filter(good), "{good}");
            // What the validator takes, the sidecar's filter parser takes too.
            let text = crate::config::log_filter_text(good);
            assert!(tracing_subscriber::EnvFilter::builder().parse(&text).is_ok(), "{good} as {text}");
        }
        // A bare word names a module: "verbose" would silence every line.
        for bad in ["verbose", "loud,info", "palisade=verbose", "=debug", "", "info;x"] {
            assert!(!is_log_filter(bad), "{bad}");
        }
    }

    #[test]
    fn good_values_are_read() {
        let options = read(json!({
            INBOUND_PORTS: "8080, 9000-9002", EXCLUDE_INBOUND_PORTS: "9090", EXCLUDE_OUTBOUND_PORTS: "5432,5432",
            EXCLUDE_OUTBOUND_CIDRS: "10.96.0.0/12, fd00::/8, 169.254.169.254", LOG_LEVEL: "palisade=debug,info",
            APP_PROTOCOL: "http2", PROXY_CPU_LIMIT: "500m", PROXY_MEMORY_REQUEST: "64Mi"
        }))
        .unwrap();
        assert_eq!(options.inbound_ports, Some(vec![8080, 9000, 9001, 9002]));
        assert_eq!(options.exclude_inbound_ports, [9090]);
        assert_eq!(options.exclude_outbound_ports, [5432]);
        assert_eq!(options.exclude_outbound_cidrs, ["10.96.0.0/12", "fd00::/8", "169.254.169.254"]);
        assert_eq!(options.app_protocol, Some(AppProtocol::Http2));
        assert_eq!(options.resources.len(), 2);
        assert_eq!(read(json!({ INBOUND_PORTS: "*" })).unwrap().inbound_ports, None);
        assert_eq!(read(json!(null)).unwrap(), PodOptions::default());
    }

    #[test]
    fn quantities() {
        for good in ["1", "100m", "0.5", "64Mi", "1Gi", "2k"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.", ".5", "-1", "1 Gi", "1gb"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
