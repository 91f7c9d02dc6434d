//! The standard OpenTelemetry variables (`OTEL_*`) applied over `telemetry.otlp`: what traces
//! a sidecar exports and where. Read here, with the rest of the configuration, so a bad
//! variable is reported with every other mistake before anything starts.

use super::{Env, Invalid, OtlpConfig, OtlpProtocol, WorkloadConfig};

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
        workload: &WorkloadConfig,
    ) -> Result<Option<TraceSettings>, Vec<Invalid>> {
        let var = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let env_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
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
        let endpoint = env_endpoint.unwrap_or_else(|| config.endpoint.clone());
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
        if !errors.is_empty() {
            return Err(errors);
        }
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
        }))
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
        let workload =
            WorkloadConfig { namespace: "shop".into(), service_account: "orders".into(), ..Default::default() };
        TraceSettings::resolve(config.as_ref(), &env, &workload)
            .map_err(|errors| errors.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join("; "))
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
        };
        let s = resolve(Some(file.clone()), &[]).unwrap().unwrap();
        assert_eq!((s.endpoint.as_str(), s.protocol), ("http://file:4318", OtlpProtocol::HttpProtobuf));
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
            &WorkloadConfig::default(),
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
}
