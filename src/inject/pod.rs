//! One pod (or a workload's pod template): whether to inject it, and the JSON Patch that does.
//! Everything here works on JSON, so the webhook and `palisade inject` share it whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use super::annotations::{self as ann, PodOptions};
use super::patch::{escape, Op};
use crate::config::{AppProbe, GrpcProbe, IdentityMode, InjectSettings, ProbeHeader};
use crate::config::{ControlPlaneAddress, IdentityFromControlPlane, ListenAddr, SidecarConfig, SpiffeIdField};
use crate::identity::SpiffeId;

pub const PROXY_NAME: &str = "palisade-proxy";
pub const INIT_NAME: &str = "palisade-init";
/// Where the downward API writes the pod's labels for the sidecar.
pub const PODINFO_DIR: &str = "/var/run/palisade/podinfo";
/// The projected service-account token the sidecar shows the CA.
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade";
/// `secret` mode: the mounted Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub const IDENTITY_DIR: &str = "/var/run/palisade/identity";
/// The audience of the projected token, as the CA checks it (`ca.tokens.audience`).
pub const TOKEN_AUDIENCE: &str = "palisade";
const VOLUME_PODINFO: &str = "palisade-podinfo";
const VOLUME_TOKEN: &str = "palisade-token";
const VOLUME_IDENTITY: &str = "palisade-identity";
/// A writable /run for the init container: iptables-legacy takes its lock file there, and the
/// container's root filesystem is read-only.
const VOLUME_INIT_RUN: &str = "palisade-init-run";

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `kube-system`, the control plane's own, or one the settings exclude.
    ExcludedNamespace(String),
    /// `palisade.dev/inject: disabled` as an annotation or a label.
    OptedOut,
    /// The pod shares the node's network: rules installed there would capture the node's traffic.
    HostNetwork,
    /// It already has the sidecar: injecting again would change nothing.
    AlreadyInjected,
    /// A Windows pod (`spec.os.name`, or a `kubernetes.io/os` node selector): the capture rules
    /// are Linux's.
    Windows,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::ExcludedNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            Skip::OptedOut => write!(f, "{}: {}", ann::INJECT, ann::DISABLED),
            Skip::HostNetwork => f.write_str("hostNetwork: true (the rules would capture the node's traffic)"),
            Skip::AlreadyInjected => write!(f, "already injected (it has the {INIT_NAME} and {PROXY_NAME} containers)"),
            Skip::Windows => f.write_str("a Windows pod (the capture rules are Linux's)"),
        }
    }
}

/// A pod that cannot be injected as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Annotation(#[from] ann::BadAnnotation),
    #[error("{field}: {message}")]
    Shape { field: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The JSON Patch, and what the operator should hear of (see [`ann::warnings`]).
    Inject {
        ops: Vec<Op>,
        warnings: Vec<String>,
    },
    Skip(Skip),
}

/// Decides for the pod `pod` (an object with `metadata` and `spec`) found at JSON Pointer
/// `base` of its document, in `namespace` when known; the operations' paths start at `base`.
pub fn plan(pod: &Value, base: &str, namespace: Option<&str>, settings: &InjectSettings) -> Result<Decision, PodError> {
    let shape =
        |field: &str, message: &str| PodError::Shape { field: format!("{base}{field}"), message: message.into() };
    let metadata = pod.get("metadata").filter(|m| !m.is_null());
    if metadata.is_some_and(|m| !m.is_object()) {
        return Err(shape("/metadata", "expected a mapping"));
    }
    let member = |name: &str| -> Result<Option<&Map<String, Value>>, PodError> {
        match metadata.and_then(|m| m.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(shape(&format!("/metadata/{name}"), "expected a mapping")),
        }
    };
    let annotations = member("annotations")?;
    let labels = member("labels")?;
    let says_disabled = |map: Option<&Map<String, Value>>| {
        map.and_then(|m| m.get(ann::INJECT)).and_then(Value::as_str).is_some_and(|v| v.trim() == ann::DISABLED)
    };
    if let Some(ns) = namespace {
        // kube-system whatever the list says: its pods run the cluster (DNS, CNI) and must
        // start when the control plane is down.
        let excluded = ns == "kube-system" || settings.excluded_namespaces.iter().any(|n| n == ns);
        if ns == settings.control_plane.namespace || excluded {
            return Ok(Decision::Skip(Skip::ExcludedNamespace(ns.to_string())));
        }
    }
    if says_disabled(annotations) || says_disabled(labels) {
        return Ok(Decision::Skip(Skip::OptedOut));
    }
    let spec = pod.get("spec").and_then(Value::as_object).ok_or_else(|| shape("/spec", "expected the pod's spec"))?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Decision::Skip(Skip::HostNetwork));
    }
    // Told by spec.os (1.25+) or, as most Windows workloads still are, by a node selector.
    let os_name = spec.get("os").and_then(|os| os.get("name")).and_then(Value::as_str);
    let os_selected = spec.get("nodeSelector").and_then(|n| n.get("kubernetes.io/os")).and_then(Value::as_str);
    let beta_selected = spec.get("nodeSelector").and_then(|n| n.get("beta.kubernetes.io/os")).and_then(Value::as_str);
    if os_name == Some("windows")
        || os_selected == Some("windows")
        || beta_selected == Some("windows")
        || windows_by_affinity(spec)
    {
        return Ok(Decision::Skip(Skip::Windows));
    }
    let list = |name: &str| -> Result<Option<&Vec<Value>>, PodError> {
        match spec.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(shape(&format!("/spec/{name}"), "expected a list")),
        }
    };
    let containers = list("containers")?.ok_or_else(|| shape("/spec/containers", "expected the pod's containers"))?;
    let init_containers = list("initContainers")?;
    // Injected already: both of the sidecar's containers and the mark. One of their names
    // alone (a do-nothing container called palisade-init) would otherwise skip injection and
    // pass the pod, uncaptured, as injected.
    let named = |name: &str| {
        let lists = [("containers", Some(containers)), ("initContainers", init_containers)];
        lists.into_iter().find_map(|(list, items)| {
            let i = items?.iter().position(|c| c.get("name").and_then(Value::as_str) == Some(name))?;
            Some(format!("/spec/{list}/{i}/name"))
        })
    };
    let marked = annotations.is_some_and(|a| a.contains_key(ann::INJECTED));
    match (named(INIT_NAME), named(PROXY_NAME)) {
        (Some(_), Some(_)) if marked => return Ok(Decision::Skip(Skip::AlreadyInjected)),
        (Some(field), _) | (None, Some(field)) => {
            let message = format!(
                "{INIT_NAME} and {PROXY_NAME} are the sidecar's own container names; rename it (a pod counts as injected only with both and the {} annotation)",
                ann::INJECTED
            );
            return Err(shape(&field, &message));
        }
        (None, None) => {}
    }
    // Another mesh's sidecar: two sets of capture rules in one pod send each other's traffic in
    // circles, and the pod's networking breaks in ways its author cannot trace to either mesh.
    let lists = [("containers", Some(containers)), ("initContainers", init_containers)];
    for (list, items) in lists {
        for (i, container) in items.into_iter().flatten().enumerate() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some((_, mesh, opt_out)) = OTHER_MESHES.iter().find(|(n, _, _)| *n == name) {
                return Err(shape(
                    &format!("/spec/{list}/{i}/name"),
                    &format!("{name} is {mesh}'s sidecar: two meshes' capture rules cannot share a pod; take it out of one ({opt_out}, or {}: {})", ann::INJECT, ann::DISABLED),
                ));
            }
        }
    }
    check_collisions(spec, &containers[..], init_containers.map(|c| &c[..]).unwrap_or_default(), settings)
        .map_err(|(field, message)| shape(&field, &message))?;
    let mut options = PodOptions::read(annotations)?;
    check_options(&options, settings)?;
    let (probe_ops, app_probes, probe_warnings) =
        rewrite_app_probes(containers, init_containers.map(|c| &c[..]), base, &options, settings);
    options.app_probes = app_probes;
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");

    let mut ops = Vec::new();
    let version = Value::String(env!("CARGO_PKG_VERSION").into());
    match (metadata, annotations) {
        (None, _) => ops.push(add(format!("{base}/metadata"), json!({"annotations": {ann::INJECTED: version}}))),
        (Some(_), None) => ops.push(add(format!("{base}/metadata/annotations"), json!({ann::INJECTED: version}))),
        (Some(_), Some(a)) => {
            let path = format!("{base}/metadata/annotations/{}", escape(ann::INJECTED));
            ops.push(match a.contains_key(ann::INJECTED) {
                true => Op::Replace { path, value: version },
                false => add(path, version),
            })
        }
    }
    let added: [Value; INJECTED_INIT_CONTAINERS] =
        [init_container(settings, &options), proxy_container(settings, &options)];
    for container in &added {
        fits_exec(container).map_err(|message| shape("/spec/initContainers", &message))?;
    }
    match init_containers {
        None => ops.push(add(format!("{base}/spec/initContainers"), Value::Array(added.to_vec()))),
        // First: the capture is in place, and the sidecar ready, before any other container runs.
        Some(_) => {
            ops.extend(added.into_iter().enumerate().map(|(i, c)| add(format!("{base}/spec/initContainers/{i}"), c)))
        }
    }
    ops.extend(probe_ops);
    let volumes = volumes(settings, service_account);
    match list("volumes")? {
        None => ops.push(add(format!("{base}/spec/volumes"), Value::Array(volumes))),
        Some(_) => ops.extend(volumes.into_iter().enumerate().map(|(i, v)| add(format!("{base}/spec/volumes/{i}"), v))),
    }
    let mut warnings = ann::warnings(annotations, labels);
    warnings.extend(probe_warnings);
    Ok(Decision::Inject { ops, warnings })
}

/// What in the pod as written would break it, or the capture, once the sidecar is in: a volume
/// named as one of the sidecar's (the API server refuses the pod, naming no sidecar), an app
/// port that is one of the sidecar's (one of the two cannot listen), or an app container running
/// as the sidecar's uid (its traffic is never captured: the rules let that uid's out as the
/// sidecar's own). Refused with the field and why, rather than injected into a pod that fails
/// later for reasons its author cannot see. Returns the field (under `/spec`) and the message.
fn check_collisions(
    spec: &Map<String, Value>,
    containers: &[Value],
    init_containers: &[Value],
    settings: &InjectSettings,
) -> Result<(), (String, String)> {
    let ours = [VOLUME_PODINFO, VOLUME_TOKEN, VOLUME_IDENTITY, VOLUME_INIT_RUN];
    for (i, volume) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(name) = volume.get("name").and_then(Value::as_str).filter(|n| ours.contains(n)) {
            return Err((format!("/spec/volumes/{i}/name"), format!("{name} is the sidecar's own volume; rename it")));
        }
    }
    let ports = &settings.ports;
    let sidecar_ports = [ports.inbound, ports.outbound, ports.admin];
    let uid = |context: Option<&Value>| context.and_then(|c| c.get("runAsUser")).and_then(Value::as_u64);
    let pod_uid = uid(spec.get("securityContext"));
    let lists = [("containers", containers), ("initContainers", init_containers)];
    for (list, containers) in lists {
        for (i, container) in containers.iter().enumerate() {
            let at = format!("/spec/{list}/{i}");
            for (j, port) in container.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                // The sidecar's listeners are TCP; a UDP or SCTP port of the same number is no clash.
                let tcp = port.get("protocol").and_then(Value::as_str).is_none_or(|p| p == "TCP");
                let number = port.get("containerPort").and_then(Value::as_u64).filter(|_| tcp);
                if let Some(n) = number.filter(|n| sidecar_ports.iter().any(|p| u64::from(*p) == *n)) {
                    return Err((
                        format!("{at}/ports/{j}/containerPort"),
                        format!("{n} is one of the sidecar's ports (inbound {}, outbound {}, admin {}): move the app, or the sidecar's ports in the injector's settings", ports.inbound, ports.outbound, ports.admin),
                    ));
                }
            }
            let own = uid(container.get("securityContext"));
            if own.or(pod_uid) == Some(u64::from(settings.proxy_uid)) {
                let field = match own {
                    Some(_) => format!("{at}/securityContext/runAsUser"),
                    None => "/spec/securityContext/runAsUser".to_string(),
                };
                return Err((
                    field,
                    format!(
                        "{} is the sidecar's uid, whose traffic is never captured: run the app as another user",
                        settings.proxy_uid
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Containers of other meshes' sidecars, the mesh, and how a pod opts out of it.
const OTHER_MESHES: [(&str, &str, &str); 5] = [
    ("istio-proxy", "Istio", "sidecar.istio.io/inject: \"false\""),
    ("istio-init", "Istio", "sidecar.istio.io/inject: \"false\""),
    ("istio-validation", "Istio", "sidecar.istio.io/inject: \"false\""),
    ("linkerd-proxy", "Linkerd", "linkerd.io/inject: disabled"),
    ("linkerd-init", "Linkerd", "linkerd.io/inject: disabled"),
];

/// A pod whose required node affinity admits Windows nodes only: every term asks for the OS
/// label (`kubernetes.io/os` or its beta name) to be in a list without `linux`.
fn windows_by_affinity(spec: &Map<String, Value>) -> bool {
    let terms = spec
        .get("affinity")
        .and_then(|a| a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"))
        .and_then(Value::as_array);
    let Some(terms) = terms.filter(|t| !t.is_empty()) else { return false };
    terms.iter().all(|term| {
        let expressions = term.get("matchExpressions").and_then(Value::as_array).into_iter().flatten();
        expressions.into_iter().any(|e| {
            let key = e.get("key").and_then(Value::as_str);
            let values: Vec<&str> =
                e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            matches!(key, Some("kubernetes.io/os" | "beta.kubernetes.io/os"))
                && e.get("operator").and_then(Value::as_str) == Some("In")
                && values.contains(&"windows")
                && !values.contains(&"linux")
        })
    })
}

/// What a probe asks of a port the sidecar captures, as the sidecar would ask it: its handler
/// (`httpGet`, `tcpSocket`, `grpc`) and the app probe; `None` for an `exec` probe, a port not
/// captured, or another host (`host` set: not this pod).
fn probe_of_captured_port(
    probe: &Value,
    port_of: &impl Fn(&Value) -> Option<u16>,
    captured: &impl Fn(u16) -> bool,
) -> Option<(&'static str, AppProbe)> {
    let timeout_seconds =
        probe.get("timeoutSeconds").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()).unwrap_or(1);
    let (handler, written) =
        ["httpGet", "tcpSocket", "grpc"].into_iter().find_map(|handler| Some((handler, probe.get(handler)?)))?;
    let elsewhere = written.get("host").and_then(Value::as_str).is_some_and(|h| !h.is_empty());
    let port = written.get("port").and_then(port_of).filter(|p| captured(*p) && !elsewhere)?;
    let probe = AppProbe { port, path: None, grpc: None, headers: vec![], timeout_seconds };
    let probe = match handler {
        "tcpSocket" => probe,
        "grpc" => {
            let service = written.get("service").and_then(Value::as_str).unwrap_or_default();
            AppProbe { grpc: Some(GrpcProbe { service: service.to_string() }), ..probe }
        }
        _ => {
            let headers = written.get("httpHeaders").and_then(Value::as_array).into_iter().flatten();
            let headers = headers
                .filter_map(|h| {
                    let (name, value) = (h.get("name")?.as_str()?, h.get("value")?.as_str()?);
                    Some(ProbeHeader { name: name.to_string(), value: value.to_string() })
                })
                .collect();
            let path = written.get("path").and_then(Value::as_str).filter(|p| !p.is_empty()).unwrap_or("/");
            AppProbe { path: Some(path.to_string()), headers, ..probe }
        }
    };
    Some((handler, probe))
}

/// The init containers injection puts first: `palisade-init`, then `palisade-proxy`.
const INJECTED_INIT_CONTAINERS: usize = 2;

/// The app's HTTP, TCP and gRPC probes of ports the sidecar captures, pointed at the sidecar's
/// admin port (`/app-health/<container>/<kind>`), which asks the app as the kubelet would have:
/// the kubelet's plaintext HTTP or gRPC probe of a captured port meets the inbound port's mTLS
/// and fails, and its TCP probe is accepted by the sidecar whether the app listens or not (Istio
/// rewrites probes so too). An HTTP probe keeps all but its `port` and `path`; a TCP or gRPC
/// probe becomes an HTTP GET (its handler renamed, a gRPC `service` moved to the sidecar's
/// configuration), its timings kept: edits `palisade inject` makes in the manifest's own text.
/// Left as written: probes of ports not captured, exec probes, HTTPS probes (the app's own TLS,
/// warned about) and probes with a `host` (not this pod).
/// Native sidecars (`initContainers` with `restartPolicy: Always`) are app containers too: their
/// probes are rewritten, at the index they have once the sidecar's two init containers are in.
/// Returns the operations, what the sidecar's configuration needs, and warnings for probes of
/// captured ports that cannot work as written.
fn rewrite_app_probes(
    containers: &[Value],
    init_containers: Option<&[Value]>,
    base: &str,
    options: &PodOptions,
    settings: &InjectSettings,
) -> (Vec<Op>, BTreeMap<String, AppProbe>, Vec<String>) {
    let captured = |port: u16| captures_inbound(port, options, settings);
    let mut ops = Vec::new();
    let mut probes = BTreeMap::new();
    let mut warnings = Vec::new();
    let native = |c: &Value| c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
    let app_containers = containers.iter().enumerate().map(|(i, c)| (format!("containers/{i}"), c));
    let sidecars = init_containers.into_iter().flatten().enumerate().filter(|(_, c)| native(c));
    let sidecars = sidecars.map(|(i, c)| (format!("initContainers/{}", i + INJECTED_INIT_CONTAINERS), c));
    for (at_in_spec, container) in app_containers.chain(sidecars) {
        let Some(name) = container.get("name").and_then(Value::as_str) else { continue };
        // A named port is the container's own `ports[].name`.
        let port_of = |port: &Value| -> Option<u16> {
            match port {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                Value::String(s) => container.get("ports")?.as_array()?.iter().find_map(|p| {
                    (p.get("name")?.as_str()? == s).then(|| p.get("containerPort")?.as_u64()?.try_into().ok())?
                }),
                _ => None,
            }
        };
        for (field, kind) in
            [("livenessProbe", "liveness"), ("readinessProbe", "readiness"), ("startupProbe", "startup")]
        {
            let Some(probe) = container.get(field) else { continue };
            let warn = |why: String| format!("{field} of container {name}: {why}");
            let Some((handler, app_probe)) = probe_of_captured_port(probe, &port_of, &captured) else { continue };
            let port = app_probe.port;
            let https =
                probe[handler].get("scheme").and_then(Value::as_str).is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"));
            if https {
                warnings.push(warn(format!("an HTTPS probe of captured port {port} fails: the sidecar takes its TLS for the mesh's; exclude the port (palisade.dev/exclude-inbound-ports)")));
                continue;
            }
            if let Some(problem) = app_probe.problem() {
                warnings.push(warn(format!("not rewritten through the sidecar ({problem}), so the kubelet's plaintext probe of captured port {port} fails; fix the probe or exclude the port")));
                continue;
            }
            let key = format!("{name}/{kind}");
            let at = format!("{base}/spec/{at_in_spec}/{field}");
            ops.push(Op::Replace { path: format!("{at}/{handler}/port"), value: json!(settings.ports.admin) });
            let to_admin = json!(format!("/app-health/{key}"));
            let written = &probe[handler];
            ops.push(match written.get("path") {
                Some(_) => Op::Replace { path: format!("{at}/{handler}/path"), value: to_admin },
                None => add(format!("{at}/{handler}/path"), to_admin),
            });
            // A TCP or gRPC probe becomes the HTTP GET the sidecar answers: what an HTTP GET has
            // no field for goes, and the handler is renamed.
            if handler != "httpGet" {
                if written.get("service").is_some() {
                    ops.push(Op::Remove { path: format!("{at}/{handler}/service") });
                }
                ops.push(Op::Move { from: format!("{at}/{handler}"), path: format!("{at}/httpGet") });
            }
            probes.insert(key, app_probe);
        }
    }
    (ops, probes, warnings)
}

fn add(path: String, value: Value) -> Op {
    Op::Add { path, value }
}

fn joined(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn merged<T: Clone + Ord>(a: &[T], b: &[T]) -> Vec<T> {
    let mut all: Vec<T> = a.iter().chain(b).cloned().collect();
    all.sort();
    all.dedup();
    all
}

/// Linux's limit on one argument or one `NAME=value` of a program's environment, with its NUL
/// (`MAX_ARG_STRLEN`, 32 pages): past it the container cannot start (`E2BIG`), and the runtime's
/// error names neither the annotation nor the field.
const MAX_EXEC_STRING: usize = 32 * 4096;

/// Whether each argument and environment value of an injected container can reach its program;
/// if not, the field and what to do.
fn fits_exec(container: &Value) -> Result<(), String> {
    let name = container["name"].as_str().unwrap_or_default();
    let too_long = |what: String, bytes: usize| {
        Err(format!(
            "{what} would be {bytes} bytes, more than Linux passes to a program in one string ({MAX_EXEC_STRING} bytes): \
             the container could not start. Name fewer, wider address blocks in {} and {} (or in the injector's settings)",
            ann::OUTBOUND_PASSTHROUGH,
            ann::EXCLUDE_OUTBOUND_CIDRS
        ))
    };
    for arg in container["args"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if arg.len() + 1 > MAX_EXEC_STRING {
            return too_long(format!("an argument of {name}"), arg.len());
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let (key, value) = (var["name"].as_str().unwrap_or_default(), var["value"].as_str().unwrap_or_default());
        if key.len() + value.len() + 2 > MAX_EXEC_STRING {
            return too_long(format!("{name}'s {key}"), value.len());
        }
    }
    Ok(())
}

fn init_container(settings: &InjectSettings, options: &PodOptions) -> Value {
    let ports = &settings.ports;
    let mut args: Vec<String> = vec![
        "init-net".into(),
        "--proxy-uid".into(),
        settings.proxy_uid.to_string(),
        "--inbound-port".into(),
        ports.inbound.to_string(),
        "--outbound-port".into(),
        ports.outbound.to_string(),
        "--admin-port".into(),
        ports.admin.to_string(),
    ];
    if let Some(inbound) = &options.inbound_ports {
        args.extend(["--inbound-ports".into(), joined(inbound)]);
    }
    let mut flag = |name: &str, value: String| {
        if !value.is_empty() {
            args.extend([name.to_string(), value]);
        }
    };
    flag("--exclude-inbound-ports", joined(&merged(&settings.exclude_inbound_ports, &options.exclude_inbound_ports)));
    flag(
        "--exclude-outbound-ports",
        joined(&merged(&settings.exclude_outbound_ports, &options.exclude_outbound_ports)),
    );
    flag(
        "--exclude-outbound-cidrs",
        merged(&settings.exclude_outbound_cidrs, &options.exclude_outbound_cidrs).join(","),
    );
    json!({
        "name": INIT_NAME,
        "image": settings.init_image,
        "imagePullPolicy": settings.image_pull_policy.as_str(),
        "args": args,
        "resources": resources(&settings.init_resources, &[]),
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": VOLUME_INIT_RUN, "mountPath": "/run"}],
    })
}

fn proxy_container(settings: &InjectSettings, options: &PodOptions) -> Value {
    let ports = &settings.ports;
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": ports.admin}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 1});
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut mounts = vec![
        json!({"name": VOLUME_PODINFO, "mountPath": PODINFO_DIR, "readOnly": true}),
        json!({"name": VOLUME_TOKEN, "mountPath": TOKEN_DIR, "readOnly": true}),
    ];
    if settings.identity.mode == IdentityMode::Secret {
        mounts.push(json!({"name": VOLUME_IDENTITY, "mountPath": IDENTITY_DIR, "readOnly": true}));
    }
    json!({
        "name": PROXY_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy.as_str(),
        "args": ["sidecar"],
        // A native sidecar: started before the app and kept running beside it; a Job's pod
        // completes when its app containers do.
        "restartPolicy": "Always",
        "ports": [
            {"name": "palisade-admin", "containerPort": ports.admin, "protocol": "TCP"},
            {"name": "palisade-in", "containerPort": ports.inbound, "protocol": "TCP"},
        ],
        "env": [
            {"name": crate::config::CONFIG_VAR, "value": sidecar_config(settings, options)},
            {"name": "PALISADE_WORKLOAD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "PALISADE_WORKLOAD_SERVICEACCOUNT", "valueFrom": field("spec.serviceAccountName")},
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "PALISADE_LOG", "value": crate::config::log_filter_text(options.log_level.as_deref().unwrap_or(&settings.log_level))},
        ],
        "resources": resources(&settings.resources, &options.resources),
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // The app starts only once this passes: the sidecar has its identity and policy.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": mounts,
    })
}

/// What the annotations ask that cannot work with these settings: capture that would take
/// nothing in (every listed port is the sidecar's own, or excluded), or a sidecar whose request
/// is over its limit.
/// Whether the init container's rules send the pod's inbound `port` to the sidecar: chosen (every
/// port by default), not one of the sidecar's own, and excluded neither by the pod nor by the
/// injector's settings (the init container gets both lists).
fn captures_inbound(port: u16, options: &PodOptions, settings: &InjectSettings) -> bool {
    let ports = &settings.ports;
    options.inbound_ports.as_ref().is_none_or(|chosen| chosen.contains(&port))
        && ![ports.inbound, ports.outbound, ports.admin].contains(&port)
        && !options.exclude_inbound_ports.contains(&port)
        && !settings.exclude_inbound_ports.contains(&port)
}

fn check_options(options: &PodOptions, settings: &InjectSettings) -> Result<(), ann::BadAnnotation> {
    if let Some(inbound) = &options.inbound_ports {
        let ports = &settings.ports;
        if !inbound.iter().any(|p| captures_inbound(*p, options, settings)) {
            return Err(ann::BadAnnotation {
                key: ann::INBOUND_PORTS,
                message: format!(
                    "captures no port: each one named is the sidecar's own ({}, {}, {}) or in {}",
                    ports.inbound,
                    ports.outbound,
                    ports.admin,
                    ann::EXCLUDE_INBOUND_PORTS
                ),
            });
        }
    }
    let merged = merged_resources(&settings.resources, &options.resources);
    if let Some((name, request, limit)) = merged.request_over_limit() {
        let (request_key, limit_key) = match name {
            "cpu" => (ann::PROXY_CPU_REQUEST, ann::PROXY_CPU_LIMIT),
            _ => (ann::PROXY_MEMORY_REQUEST, ann::PROXY_MEMORY_LIMIT),
        };
        // The annotation that made it so: the request when the pod set one, else the limit.
        let set_request = options.resources.iter().any(|(kind, resource, _)| *kind == "requests" && *resource == name);
        let key = if set_request { request_key } else { limit_key };
        return Err(ann::BadAnnotation {
            key,
            message: format!("the sidecar's {name} request {request} would be more than its limit {limit}: Kubernetes refuses the pod"),
        });
    }
    Ok(())
}

fn merged_resources(base: &crate::config::Resources, overrides: &[(&str, &str, String)]) -> crate::config::Resources {
    let mut merged = base.clone();
    for (kind, name, quantity) in overrides {
        let map = if *kind == "requests" { &mut merged.requests } else { &mut merged.limits };
        map.insert(name.to_string(), quantity.clone());
    }
    merged
}

fn resources(base: &crate::config::Resources, overrides: &[(&str, &str, String)]) -> Value {
    let crate::config::Resources { requests, limits } = merged_resources(base, overrides);
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), json!(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), json!(limits));
    }
    Value::Object(out)
}

fn volumes(settings: &InjectSettings, service_account: &str) -> Vec<Value> {
    let mut volumes = vec![
        json!({"name": VOLUME_PODINFO, "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        ]}}),
        // Readable by the sidecar's uid; no other container of the pod mounts it.
        json!({"name": VOLUME_TOKEN, "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": {"audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"}},
        ]}}),
        json!({"name": VOLUME_INIT_RUN, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ];
    if settings.identity.mode == IdentityMode::Secret {
        let name = settings.identity.secret_name.replace("{serviceAccount}", service_account);
        volumes.push(json!({"name": VOLUME_IDENTITY, "secret": {"secretName": name, "defaultMode": 0o444}}));
    }
    volumes
}

/// The sidecar's configuration as YAML, made from the sidecar's own configuration type (so it
/// always reads back) and written as what differs from the defaults (so a newer sidecar's
/// defaults still apply to everything the injector did not choose).
pub fn sidecar_config(settings: &InjectSettings, options: &PodOptions) -> String {
    let ports = &settings.ports;
    let any = |port: u16| ListenAddr(SocketAddr::from(([0, 0, 0, 0], port)));
    let local = |port: u16| ListenAddr(SocketAddr::from(([127, 0, 0, 1], port)));
    let host = settings.control_plane.host();
    let mut config = SidecarConfig { trust_domain: settings.trust_domain.clone(), ..SidecarConfig::default() };
    config.inbound.listen = any(ports.inbound);
    // Port 0: the port the caller addressed (the original destination of the redirect); the
    // unspecified address: the pod address the caller reached, so what the app bound to
    // loopback only is not forwarded to.
    config.inbound.app = any(0);
    if let Some(protocol) = options.app_protocol {
        config.inbound.app_protocol = protocol;
    }
    config.outbound.listen = local(ports.outbound);
    // Both lists were checked (the settings when loaded, the annotations at admission).
    config.outbound.passthrough = merged(&settings.outbound_passthrough, &options.outbound_passthrough)
        .iter()
        .filter_map(|cidr| cidr.parse().ok())
        .collect();
    let opaque =
        |ports: Vec<u16>| -> Vec<u16> { ports.into_iter().filter(|p| !options.not_opaque_ports.contains(p)).collect() };
    // Linkerd's well-known opaque ports on both sides: a server-first protocol (MySQL, SMTP) to a
    // meshed pod would otherwise wait for the app's first bytes, which never come, until
    // `limits.headerTimeout` closed it, although the server's side relays those ports.
    let chosen = merged(&settings.opaque_ports, &options.opaque_ports);
    config.outbound.opaque_ports = opaque(merged(&crate::config::DEFAULT_OPAQUE_PORTS, &chosen));
    // The same ports, on a server's side, are the ones whose tunnels its sidecar relays.
    config.inbound.opaque_ports = config.outbound.opaque_ports.clone();
    config.admin.listen = any(ports.admin);
    config.admin.app_probes = options.app_probes.clone();
    config.telemetry = settings.telemetry.clone();
    let cp = &settings.control_plane;
    config.policy.control_plane = Some(ControlPlaneAddress { host: host.clone(), port: cp.grpc_port });
    // Named even when it is the default, so a control plane in another namespace is still verified.
    config.policy.control_plane_identity =
        SpiffeId::for_workload(&settings.trust_domain.0, &cp.namespace, &cp.service_account).ok().map(SpiffeIdField);
    config.workload.labels_file = Some(format!("{PODINFO_DIR}/labels").into());
    match settings.identity.mode {
        IdentityMode::ControlPlane => {
            config.identity.files = None;
            config.identity.control_plane = Some(IdentityFromControlPlane {
                address: format!("{host}:{}", settings.control_plane.ca_port),
                token_file: format!("{TOKEN_DIR}/token").into(),
                trust_anchors: settings.identity.trust_anchors.clone(),
                ..IdentityFromControlPlane::default()
            });
        }
        IdentityMode::Secret => {
            // Without the CA's token to fall back on, the policy stream needs its own: the
            // control plane reads the pod's labels for the account the token proves.
            config.policy.token_file = Some(format!("{TOKEN_DIR}/token").into());
            if let Some(files) = config.identity.files.as_mut() {
                files.cert = format!("{IDENTITY_DIR}/tls.crt").into();
                files.key = format!("{IDENTITY_DIR}/tls.key").into();
                files.trust_bundle = format!("{IDENTITY_DIR}/ca.crt").into();
            }
        }
    }
    let defaults = serde_json::to_value(SidecarConfig::default()).unwrap_or(Value::Null);
    let chosen = serde_json::to_value(&config).unwrap_or(Value::Null);
    let text = crate::yaml::to_string(&difference(&chosen, &defaults).unwrap_or_else(|| json!({})));
    text.unwrap_or_default()
}

/// What of `value` differs from `base`: objects member by member, anything else whole.
fn difference(value: &Value, base: &Value) -> Option<Value> {
    match (value, base) {
        (Value::Object(v), Value::Object(b)) => {
            let out: Map<String, Value> = v
                .iter()
                .filter_map(|(k, x)| match b.get(k) {
                    Some(y) => difference(x, y).map(|d| (k.clone(), d)),
                    None => Some((k.clone(), x.clone())),
                })
                .collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ if value == base => None,
        _ => Some(value.clone()),
    }
}
