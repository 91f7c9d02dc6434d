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
        if !errors.is_empty() {
            return Err(errors);
        }
        let service_name = var("OTEL_SERVICE_NAME")
            .or_else(|| config.service_name.clone())
            .unwrap_or_else(|| format!("{}.{}", workload.service_account, workload.namespace));
        Ok(Some(TraceSettings { endpoint, protocol, sampler, service_name }))
    }
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
}
