//! The standard OpenTelemetry variables (`OTEL_*`) applied over `telemetry.otlp`: what traces
//! a sidecar exports and where. Read here, with the rest of the configuration, so a bad
//! variable is reported with every other mistake before anything starts.

use std::path::{Path, PathBuf};

use super::{Env, Invalid, OtlpConfig, OtlpProtocol, Workload};

/// Where and how traces go, after the standard `OTEL_*` variables are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The sampler of `OTEL_TRACES_SAMPLER` (`parentbased_traceidratio` unless set).
    pub sampler: SamplerChoice,
    pub service_name: String,
    /// Resource attributes besides `service.name`: `k8s.namespace.name` (the workload's
    /// namespace), `k8s.pod.name` (`POD_NAME`, which injection sets from the downward API), then
    /// `OTEL_RESOURCE_ATTRIBUTES`, which wins over both.
    pub resource: Vec<(String, String)>,
    /// The trace-context formats read and written (`OTEL_PROPAGATORS`).
    pub propagators: Propagators,
    /// For an `https://` endpoint, the PEM file of the CA certificates the collector's
    /// certificate must chain to: `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, else
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, else `telemetry.otlp.trustBundle`, else the system's
    /// bundle (`SSL_CERT_FILE`, then the usual places). `None` for `http://`.
    pub tls_roots: Option<PathBuf>,
}

/// Where the system's CA bundle usually is (Debian and distroless, Fedora and RHEL, Alpine and
/// macOS, SUSE); the JWKS fetcher looks in the same places.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// Where a setting came from, for its error.
#[derive(Clone, Copy)]
enum Source {
    Var(&'static str),
    Field(&'static str),
}

impl Source {
    fn invalid(&self, message: String) -> Invalid {
        match self {
            Source::Var(name) => Invalid::Var { name: name.to_string(), message },
            Source::Field(field) => Invalid::field(field, message),
        }
    }
}

/// A PEM file holding at least one certificate, every one of them readable.
fn check_ca_file(path: &Path) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let why = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut count = 0;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| why(&e))? {
        cert.map_err(|e| why(&e))?;
        count += 1;
    }
    match count {
        0 => Err(why(&"no PEM certificate in it")),
        _ => Ok(()),
    }
}

/// Which trace-context headers a sidecar reads from a request (its parent) and writes for the
/// next hop. When a request carries several, W3C `traceparent` is the parent, then `b3`, then
/// `x-b3-*`. Headers of a format not in use pass through untouched, as an OpenTelemetry SDK
/// leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagators {
    /// W3C `traceparent` and `tracestate`.
    pub tracecontext: bool,
    /// The single `b3` header.
    pub b3: bool,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    pub b3multi: bool,
    /// B3 is written only in the form the caller sent it in (the default); otherwise every
    /// format in use is written.
    pub b3_as_received: bool,
}

impl Propagators {
    /// Without `OTEL_PROPAGATORS`: W3C read and written; B3 in either form read when no W3C
    /// parent came, and passed on in the form it came in.
    pub const DEFAULT: Propagators = Propagators { tracecontext: true, b3: true, b3multi: true, b3_as_received: true };
    /// `none`: every request starts a trace here, and nothing is written.
    pub const NONE: Propagators = Propagators { tracecontext: false, b3: false, b3multi: false, b3_as_received: false };
}

impl Default for Propagators {
    fn default() -> Self {
        Propagators::DEFAULT
    }
}

/// `OTEL_PROPAGATORS`: a comma-separated list of `tracecontext`, `b3` (one header), `b3multi`
/// (`x-b3-*`), `baggage` (accepted: a `baggage` header passes through to the app as it is either
/// way) or `none` alone. Formats the sidecar does not speak are an error, not silently ignored.
fn propagators(text: &str) -> Result<Propagators, String> {
    let mut chosen = Propagators::NONE;
    let mut none = false;
    let mut others = false;
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        match () {
            _ if is("tracecontext") => chosen.tracecontext = true,
            _ if is("b3") => chosen.b3 = true,
            _ if is("b3multi") => chosen.b3multi = true,
            _ if is("baggage") => {}
            _ if is("none") => none = true,
            _ if ["jaeger", "xray", "ottrace"].iter().any(|n| is(n)) => {
                return Err(format!("{name:?} is not supported; use tracecontext, b3, b3multi, baggage or none"))
            }
            _ => return Err(format!("{name:?} is not one of tracecontext, baggage, b3, b3multi, none")),
        }
        others |= !is("none");
    }
    if none && others {
        return Err("none cannot be combined with other propagators".into());
    }
    Ok(chosen)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBased(ParentRoot),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentRoot {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl TraceSettings {
    /// Traces are on when `telemetry.otlp` is set or an OTLP endpoint variable is; the variables
    /// win over the file (as `PALISADE_*` ones do), and `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn traces off.
    pub fn resolve(
        config: Option<&OtlpConfig>,
        env: &dyn Env,
        workload: &Workload,
    ) -> Result<Option<TraceSettings>, Vec<Invalid>> {
        let var = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let env_endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .into_iter()
            .find_map(|name| var(name).map(|v| (name, v)));
        if config.is_none() && env_endpoint.is_none() {
            return Ok(None);
        }
        let defaults = OtlpConfig::default();
        let config = config.unwrap_or(&defaults);
        // Every bad variable is reported, not only the first.
        let mut errors = Vec::new();
        let mut bad = |name: &str, message: String| errors.push(Invalid::Var { name: name.to_string(), message });
        let protocol_var = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
            .into_iter()
            .find_map(|name| var(name).map(|v| (name, v)));
        let protocol = match protocol_var {
            Some((name, p)) => p.parse().unwrap_or_else(|e| {
                bad(name, e);
                config.protocol
            }),
            None => config.protocol,
        };
        let (endpoint_source, endpoint) = match env_endpoint {
            Some((name, endpoint)) => (Source::Var(name), endpoint.trim().to_string()),
            None => (Source::Field("telemetry.otlp.endpoint"), config.endpoint.clone()),
        };
        let ratio = match var("OTEL_TRACES_SAMPLER_ARG") {
            None => config.sampling,
            Some(a) => match a.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    bad("OTEL_TRACES_SAMPLER_ARG", format!("expected a ratio from 0 to 1, got {a:?}"));
                    config.sampling
                }
            },
        };
        let sampler = match var("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_traceidratio") => SamplerChoice::ParentBased(ParentRoot::Ratio(ratio)),
            Some("parentbased_always_on") => SamplerChoice::ParentBased(ParentRoot::AlwaysOn),
            Some("parentbased_always_off") => SamplerChoice::ParentBased(ParentRoot::AlwaysOff),
            Some("traceidratio") => SamplerChoice::Ratio(ratio),
            Some("always_on") => SamplerChoice::AlwaysOn,
            Some("always_off") => SamplerChoice::AlwaysOff,
            Some(other) => {
                bad(
                    "OTEL_TRACES_SAMPLER",
                    format!("{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"),
                );
                SamplerChoice::ParentBased(ParentRoot::Ratio(ratio))
            }
        };
        let propagators = match var("OTEL_PROPAGATORS") {
            None => Propagators::DEFAULT,
            Some(list) => propagators(&list).unwrap_or_else(|e| {
                bad("OTEL_PROPAGATORS", e);
                Propagators::DEFAULT
            }),
        };
        let mut resource = std::collections::BTreeMap::new();
        resource.insert("k8s.namespace.name".to_string(), workload.namespace.clone());
        if let Some(pod) = var("POD_NAME") {
            resource.insert("k8s.pod.name".to_string(), pod.trim().to_string());
        }
        if let Some(attributes) = var("OTEL_RESOURCE_ATTRIBUTES") {
            match resource_attributes(&attributes) {
                Ok(attributes) => resource.extend(attributes),
                Err(e) => bad("OTEL_RESOURCE_ATTRIBUTES", e),
            }
        }
        let tls_roots = tls_roots(config, &endpoint, endpoint_source, &var, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        // OTLP/HTTP: the traces variable names the whole URL, used as written; the generic
        // variable and the file name the collector, and the traces path is added (the OTel
        // exporter specification; a gateway on its own path answered 404 to every export).
        let endpoint = match (protocol, endpoint_source) {
            (OtlpProtocol::HttpProtobuf, Source::Var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) => endpoint,
            (OtlpProtocol::HttpProtobuf, _) => match endpoint.trim_end_matches('/') {
                e if e.ends_with("/v1/traces") => e.to_string(),
                e => format!("{e}/v1/traces"),
            },
            (OtlpProtocol::Grpc, _) => endpoint,
        };
        // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES (the OTel SDK
        // configuration spec), and both, being variables, over the file.
        let from_attributes = resource.remove("service.name");
        let service_name = var("OTEL_SERVICE_NAME")
            .or(from_attributes)
            .or_else(|| config.service_name.clone())
            .unwrap_or_else(|| format!("{}.{}", workload.service_account, workload.namespace));
        Ok(Some(TraceSettings {
            endpoint,
            protocol,
            sampler,
            service_name,
            resource: resource.into_iter().collect(),
            propagators,
            tls_roots,
        }))
    }
}

impl TraceSettings {
    /// What `/config_dump` shows of the tracing in force: the file's `telemetry.otlp` after the
    /// `OTEL_*` variables, which win over it.
    pub fn dump(&self) -> serde_json::Value {
        let ratio = |r: &f64| serde_json::json!({"ratio": r});
        let sampler = match &self.sampler {
            SamplerChoice::AlwaysOn => serde_json::json!("always_on"),
            SamplerChoice::AlwaysOff => serde_json::json!("always_off"),
            SamplerChoice::Ratio(r) => serde_json::json!({"traceidratio": ratio(r)}),
            SamplerChoice::ParentBased(ParentRoot::AlwaysOn) => serde_json::json!("parentbased_always_on"),
            SamplerChoice::ParentBased(ParentRoot::AlwaysOff) => serde_json::json!("parentbased_always_off"),
            SamplerChoice::ParentBased(ParentRoot::Ratio(r)) => {
                serde_json::json!({"parentbased_traceidratio": ratio(r)})
            }
        };
        let p = &self.propagators;
        let propagators: Vec<&str> = [(p.tracecontext, "tracecontext"), (p.b3, "b3"), (p.b3multi, "b3multi")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        serde_json::json!({
            "endpoint": crate::files::uri_without_credentials(&self.endpoint),
            "protocol": self.protocol,
            "sampler": sampler,
            "serviceName": self.service_name,
            "resource": self.resource.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "propagators": propagators,
            "trustBundle": self.tls_roots,
        })
    }
}

/// The CA file for the collector's certificate (see [`TraceSettings::tls_roots`]). The endpoint
/// must say `http://` or `https://` (the exporter would otherwise guess), CA certificates are
/// only for `https://`, and a CA file must hold certificates.
fn tls_roots(
    config: &OtlpConfig,
    endpoint: &str,
    endpoint_source: Source,
    var: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Invalid>,
) -> Option<PathBuf> {
    let scheme = endpoint.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    // The exporter sends neither user information nor a query: a password written there is not
    // sent (and would be shown by /config_dump), a query is glued in front of `/v1/traces`.
    let authority = endpoint.split_once("://").map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    if authority.contains('@') || endpoint.contains('?') {
        errors.push(endpoint_source.invalid(format!(
            "{}: credentials and query parameters in the endpoint are not sent to the collector; give them as headers (OTEL_EXPORTER_OTLP_HEADERS, or OTEL_EXPORTER_OTLP_TRACES_HEADERS)",
            crate::files::uri_without_credentials(endpoint)
        )));
        return None;
    }
    let https = match scheme.as_deref() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            errors.push(endpoint_source.invalid(format!("expected an http:// or https:// URL, got {endpoint:?}")));
            return None;
        }
    };
    // Sending no client certificate where one was asked for would only fail at the collector.
    for name in [
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    ] {
        if var(name).is_some() {
            errors.push(Source::Var(name).invalid("client certificates for the collector are not supported".into()));
        }
    }
    let given = ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"]
        .into_iter()
        .find_map(|name| var(name).map(|path| (Source::Var(name), PathBuf::from(path.trim()))))
        .or_else(|| config.trust_bundle.clone().map(|path| (Source::Field("telemetry.otlp.trustBundle"), path)));
    match (https, given) {
        (false, None) => None,
        (false, Some((source, _))) => {
            errors.push(source.invalid(format!(
                "CA certificates verify an https:// collector, and the endpoint in use is {endpoint}"
            )));
            None
        }
        (true, Some((source, path))) => {
            if let Err(e) = check_ca_file(&path) {
                errors.push(source.invalid(e));
            }
            Some(path)
        }
        (true, None) => {
            let system = var("SSL_CERT_FILE")
                .map(|p| PathBuf::from(p.trim()))
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .find(|p| p.is_file());
            if system.is_none() {
                errors.push(endpoint_source.invalid(format!(
                    "{endpoint} is https, and no CA certificates were given to verify the collector \
                     (OTEL_EXPORTER_OTLP_CERTIFICATE, telemetry.otlp.trustBundle) nor found \
                     (SSL_CERT_FILE, {})",
                    SYSTEM_BUNDLES.join(", ")
                )));
            }
            system
        }
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values percent-encoded
/// (the OTel SDK configuration spec, W3C Baggage's syntax). A pair that does not parse makes the
/// whole variable an error: silently dropping part of it would mislabel every span.
fn resource_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut attributes = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{pair:?} has no key"));
        }
        attributes.push((key.to_string(), percent_decode(value.trim()).map_err(|e| format!("{pair:?}: {e}"))?));
    }
    Ok(attributes)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a % without two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("%{hex} is not a hex escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn resolve(config: Option<OtlpConfig>, env: &[(&str, &str)]) -> Result<Option<TraceSettings>, String> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let workload = Workload { namespace: "shop".into(), service_account: "orders".into(), ..Default::default() };
        TraceSettings::resolve(config.as_ref(), &env, &workload)
            .map_err(|errors| errors.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join("; "))
    }

    #[test]
    fn an_http_endpoint_gets_the_traces_path_unless_the_traces_variable_names_it() {
        let http = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        let endpoint = |env: &[(&str, &str)]| resolve(None, env).unwrap().unwrap().endpoint;
        assert_eq!(
            endpoint(&[http, ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://gw:4318/custom/path")]),
            "http://gw:4318/custom/path",
            "the signal's own variable is the whole URL"
        );
        assert_eq!(
            endpoint(&[http, ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:4318/base/")]),
            "http://gw:4318/base/v1/traces"
        );
        assert_eq!(
            endpoint(&[http, ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:4318/v1/traces")]),
            "http://gw:4318/v1/traces"
        );
        let file = OtlpConfig {
            endpoint: "http://collector:4318".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            ..OtlpConfig::default()
        };
        assert_eq!(resolve(Some(file), &[]).unwrap().unwrap().endpoint, "http://collector:4318/v1/traces");
        assert_eq!(
            endpoint(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]),
            "http://c:4317",
            "gRPC has no path"
        );
    }

    #[test]
    fn the_dump_shows_what_the_variables_made_of_the_file() {
        let file = OtlpConfig { endpoint: "http://file:4317".into(), sampling: 1.0, ..OtlpConfig::default() };
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"), ("OTEL_TRACES_SAMPLER", "always_off")];
        let dump = resolve(Some(file), &env).unwrap().unwrap().dump();
        assert_eq!(dump["endpoint"], "http://env:4317");
        assert_eq!(dump["sampler"], "always_off");
        assert_eq!(dump["protocol"], "grpc");
        assert_eq!(dump["propagators"], serde_json::json!(["tracecontext", "b3", "b3multi"]), "{dump}");
    }

    #[test]
    fn otel_variables_turn_traces_on_override_the_file_and_are_checked() {
        assert_eq!(resolve(None, &[]).unwrap(), None);
        let on = resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap().unwrap();
        assert_eq!(on.endpoint, "http://collector:4317");
        assert_eq!(on.service_name, "orders.shop");
        assert_eq!(on.sampler, SamplerChoice::ParentBased(ParentRoot::Ratio(0.01)));

        let file = OtlpConfig {
            endpoint: "http://file:4318".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            sampling: 0.5,
            service_name: None,
            trust_bundle: None,
        };
        let s = resolve(Some(file.clone()), &[]).unwrap().unwrap();
        assert_eq!((s.endpoint.as_str(), s.protocol), ("http://file:4318/v1/traces", OtlpProtocol::HttpProtobuf));
        assert_eq!(s.sampler, SamplerChoice::ParentBased(ParentRoot::Ratio(0.5)));
        let s = resolve(
            Some(file.clone()),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "orders-sidecar"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!((s.endpoint.as_str(), s.protocol), ("http://env:4317", OtlpProtocol::Grpc));
        assert_eq!((s.service_name.as_str(), s.sampler), ("orders-sidecar", SamplerChoice::Ratio(0.25)));
        assert_eq!(resolve(Some(file.clone()), &[("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(resolve(Some(file.clone()), &[("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
        assert!(resolve(Some(file.clone()), &[("OTEL_TRACES_SAMPLER", "sometimes")])
            .unwrap_err()
            .contains("OTEL_TRACES_SAMPLER"));
        assert!(resolve(Some(file), &[("OTEL_TRACES_SAMPLER_ARG", "2")]).unwrap_err().contains("0 to 1"));
    }

    #[test]
    fn credentials_or_a_query_in_the_endpoint_are_refused_and_never_shown() {
        for endpoint in ["http://user:S3cret@collector:4318", "http://collector:4318/?api_key=KEY123"] {
            let config = OtlpConfig { endpoint: endpoint.into(), ..Default::default() };
            let e = resolve(Some(config), &[]).unwrap_err();
            assert!(e.contains("OTEL_EXPORTER_OTLP_HEADERS") && !e.contains("S3cret") && !e.contains("KEY123"), "{e}");
            let e = resolve(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]).unwrap_err();
            assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && !e.contains("S3cret") && !e.contains("KEY123"), "{e}");
        }
        assert_eq!(crate::files::uri_without_credentials("https://u:p@h:1/x?y"), "https://***@h:1/x?***");
        assert_eq!(crate::files::uri_without_credentials("https://h/x?a@b=1"), "https://h/x?***");
        assert_eq!(crate::files::uri_without_credentials("https://h/a@b"), "https://h/a@b");
    }

    #[test]
    fn every_bad_otel_variable_is_reported() {
        let errors = TraceSettings::resolve(
            Some(&OtlpConfig::default()),
            &[
                ("OTEL_TRACES_SAMPLER", "sometimes"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "smoke"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<String, String>>(),
            &Workload::default(),
        )
        .unwrap_err();
        let names: Vec<&str> = errors
            .iter()
            .map(|e| match e {
                Invalid::Var { name, .. } => name.as_str(),
                Invalid::Field { field, .. } => field.as_str(),
            })
            .collect();
        assert_eq!(names, ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_SAMPLER"]);
    }

    #[test]
    fn resource_attributes_come_from_the_workload_pod_name_and_otel_resource_attributes() {
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")];
        let settings = resolve(None, &on).unwrap().unwrap();
        assert_eq!(settings.resource, [("k8s.namespace.name".to_string(), "shop".to_string())]);

        let settings = resolve(
            None,
            &[
                on[0],
                ("POD_NAME", "orders-7d9f"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, team=a%2Cb%3Dc ,service.name=from-attrs"),
            ],
        )
        .unwrap()
        .unwrap();
        let resource: BTreeMap<_, _> = settings.resource.into_iter().collect();
        assert_eq!(resource["k8s.pod.name"], "orders-7d9f");
        assert_eq!(resource["deployment.environment"], "prod");
        assert_eq!(resource["team"], "a,b=c", "values are percent-decoded");
        assert!(!resource.contains_key("service.name"), "service.name is the service name, not an extra");
        assert_eq!(settings.service_name, "from-attrs");
        let named = resolve(None, &[on[0], ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x"), ("OTEL_SERVICE_NAME", "y")]);
        assert_eq!(named.unwrap().unwrap().service_name, "y", "OTEL_SERVICE_NAME wins");
        let overridden = resolve(None, &[on[0], ("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=other")]);
        assert_eq!(overridden.unwrap().unwrap().resource, [("k8s.namespace.name".to_string(), "other".to_string())]);

        for bad in ["novalue", "=x", "k=%zz", "k=%4"] {
            let e = resolve(None, &[on[0], ("OTEL_RESOURCE_ATTRIBUTES", bad)]).unwrap_err();
            assert!(e.contains("OTEL_RESOURCE_ATTRIBUTES"), "{bad}: {e}");
        }
    }

    #[test]
    fn otel_propagators_choose_the_trace_context_formats() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let with = |list: &str| resolve(None, &[on, ("OTEL_PROPAGATORS", list)]).map(|s| s.unwrap().propagators);
        assert_eq!(resolve(None, &[on]).unwrap().unwrap().propagators, Propagators::DEFAULT);
        let only = |tracecontext, b3, b3multi| Propagators { tracecontext, b3, b3multi, b3_as_received: false };
        assert_eq!(with("tracecontext").unwrap(), only(true, false, false));
        assert_eq!(with("b3multi").unwrap(), only(false, false, true));
        assert_eq!(with(" tracecontext , baggage,B3 ").unwrap(), only(true, true, false), "spaces and case");
        assert_eq!(with("baggage").unwrap(), Propagators::NONE, "baggage passes through either way");
        assert_eq!(with("none").unwrap(), Propagators::NONE);
        assert_eq!(with("  ").unwrap(), Propagators::DEFAULT, "empty is unset");
        for (bad, says) in [
            ("tracecontext,w3c", "not one of"),
            ("jaeger", "not supported"),
            ("xray", "not supported"),
            ("none,b3", "none cannot be combined"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.contains("OTEL_PROPAGATORS") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn an_https_collector_is_verified_with_the_ca_file_given_or_the_systems() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, crate::identity::DevCa::generate("collector.test").unwrap().cert_pem()).unwrap();
        let other = dir.path().join("other.pem");
        std::fs::write(&other, crate::identity::DevCa::generate("other.test").unwrap().cert_pem()).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let (ca, other, junk) = (ca.to_str().unwrap(), other.to_str().unwrap(), junk.to_str().unwrap());
        let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317");
        let roots =
            |config: Option<OtlpConfig>, env: &[(&str, &str)]| resolve(config, env).map(|s| s.unwrap().tls_roots);

        assert_eq!(roots(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap(), None);
        assert_eq!(roots(None, &[https, ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)]).unwrap(), Some(ca.into()));
        let file = OtlpConfig {
            endpoint: "https://collector:4318".into(),
            trust_bundle: Some(other.into()),
            ..OtlpConfig::default()
        };
        assert_eq!(roots(Some(file.clone()), &[]).unwrap(), Some(other.into()), "the file's trustBundle");
        assert_eq!(
            roots(
                Some(file.clone()),
                &[("OTEL_EXPORTER_OTLP_CERTIFICATE", junk), ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca)]
            )
            .unwrap(),
            Some(ca.into()),
            "the traces variable wins over the general one, which wins over the file"
        );
        assert_eq!(roots(None, &[https, ("SSL_CERT_FILE", ca)]).unwrap(), Some(ca.into()), "the system's bundle");

        for (env, names) in [
            (vec![https, ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")], "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            (vec![https, ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", junk)], "no PEM certificate"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)],
                "verify an https:// collector",
            ),
            (vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317")], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            (vec![https, ("SSL_CERT_FILE", ca), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", ca)], "not supported"),
        ] {
            let e = roots(None, &env).unwrap_err();
            assert!(e.contains(names), "{env:?}: {e}");
        }
        let plain = OtlpConfig { endpoint: "http://collector:4318".into(), ..file };
        let e = roots(Some(plain), &[]).unwrap_err();
        assert!(e.contains("telemetry.otlp.trustBundle") && e.contains("http://collector:4318"), "{e}");
    }
}
