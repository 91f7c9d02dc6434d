//! The command line (SPEC section 1): parses arguments and runs one command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{RunOptions, Sidecar, StartError};
use crate::config::{self, ControlConfig, ProcessEnv, SidecarConfig};
use crate::control::ControlPlane;
use crate::identity::{DevCa, LeafSpec, SpiffeId};
use crate::telemetry::{LogFormat, LogLevel};

/// Exit status for bad configuration (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit status for bad arguments to a command (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "palisade", version, about = "An API-security sidecar for service meshes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-pod proxy: inbound, outbound and admin listeners.
    Sidecar(ConfigArg),
    /// Run the control plane: the policy stream to every sidecar, the workload CA, the injection
    /// webhook and the status API.
    Control(ConfigArg),
    /// Add the sidecar to Kubernetes manifests (YAML in, YAML out): Pods, Deployments,
    /// StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, lists; comments kept.
    Inject(crate::inject::command::InjectArgs),
    /// Install the iptables rules that send the pod's traffic through the sidecar (what the
    /// injected init container runs; needs NET_ADMIN and NET_RAW).
    InitNet(crate::initnet::InitNetArgs),
    /// Validate policy files; exits non-zero with file, line and field of each error.
    Check {
        /// Policy files, or directories whose `*.yaml` and `*.yml` files are checked as the
        /// control plane reads them; `-` is standard input.
        #[arg(required_unless_present = "values")]
        files: Vec<PathBuf>,
        /// A Helm values file whose `policies` (the chart's SecurityPolicy documents) are
        /// checked as the control plane will check them; may be given more than once.
        #[arg(long, value_name = "VALUES_FILE")]
        values: Vec<PathBuf>,
    },
    /// A development PKI: a root for a trust domain, and SPIFFE workload certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run a whole local mesh on loopback, send traffic through it and summarise what happened.
    Demo {
        /// Exit after the summary instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// YAML configuration file; PALISADE_<SECTION>_<KEY> variables override its values. Without
    /// it, the configuration is the text of PALISADE_CONFIG, else every default.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// How diagnostic logs on stderr are written. The filter comes from PALISADE_LOG, else
    /// RUST_LOG (e.g. "info,palisade=debug").
    #[arg(long, value_enum, env = "PALISADE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root certificate and key for a trust domain (ca.crt, ca.key).
    Init {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Directory to write ca.crt and ca.key into.
        #[arg(long)]
        out: PathBuf,
        /// Replace a CA key already in --out (every certificate it signed stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate (tls.crt, tls.key, ca.crt) with a SPIFFE ID.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        spiffe_id: String,
        /// Extra DNS names (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// Validity, e.g. 24h or 90m.
        #[arg(long, default_value = "24h")]
        ttl: config::HumanDuration,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn main() -> ExitCode {
    // Bad arguments exit with 64 (EX_USAGE), as the README says, not clap's 2; help and version
    // print as usual and exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::from(64),
                false => ExitCode::SUCCESS,
            };
        }
    };
    let code = match cli.command {
        Command::Sidecar(arg) => run_sidecar(&arg),
        Command::Control(arg) => run_control(&arg),
        Command::Inject(args) => crate::inject::command::run(args),
        Command::InitNet(args) => crate::initnet::run(args),
        Command::Check { files, values } => check(&files, &values),
        Command::Ca(cmd) => ca(cmd),
        Command::Demo { once } => crate::demo::run(once),
    };
    crate::telemetry::flush_logs();
    code
}

/// `palisade check`: every error with file, line and field; or what each policy does.
fn check(paths: &[PathBuf], values: &[PathBuf]) -> ExitCode {
    // `-` is standard input, as `inject -f -` reads it (a pre-commit hook or `helm template |`).
    let stdin = paths.iter().any(|p| p.as_os_str() == "-");
    let on_disk: Vec<PathBuf> = paths.iter().filter(|p| p.as_os_str() != "-").cloned().collect();
    let mut files = match crate::policy::expand_directories(&on_disk) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut policies, mut errors) = crate::policy::load_files(&files);
    if stdin {
        let name = PathBuf::from("-");
        match read_stdin(crate::yaml::Limits::FILE.max_bytes) {
            Ok(text) => {
                let (found, wrong) = crate::policy::parse_file(&name, &text);
                policies.extend(found);
                errors.extend(wrong);
            }
            Err(e) => {
                errors.push(crate::config::ConfigError::new(&name, "", format!("cannot read standard input: {e}")))
            }
        }
        files.push(name);
    }
    for file in values {
        match crate::yaml::read_file(file, crate::yaml::Limits::FILE.max_bytes) {
            Ok(text) => {
                let (found, wrong) = crate::policy::parse_values_file(file, &text);
                policies.extend(found);
                errors.extend(wrong);
            }
            Err(e) => errors.push(crate::config::ConfigError::new(file, "", format!("cannot read it: {e}"))),
        }
    }
    let files = &[&files[..], values].concat()[..];
    let (authentication, left_out) = crate::policy::check_authentication(&policies);
    errors.extend(authentication);
    for w in crate::policy::check_warnings(&policies).iter().chain(&left_out) {
        eprintln!("warning: {w}");
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s) in {} file(s)", errors.len(), files.len());
        return ExitCode::FAILURE;
    }
    for located in &policies {
        println!("{}: {}", located.file.display(), describe_policy(&located.policy));
    }
    println!("{} polic{} OK", policies.len(), if policies.len() == 1 { "y" } else { "ies" });
    ExitCode::SUCCESS
}

/// Standard input as UTF-8 text, refused past `max_bytes` as a file of that size would be.
fn read_stdin(max_bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin().lock().take(max_bytes as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max_bytes {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("more than {max_bytes} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

fn describe_policy(p: &crate::policy::SecurityPolicy) -> String {
    use crate::policy::{Action, Mode};
    let meta = &p.metadata;
    let selects = match &p.spec.selector {
        Some(s) if !s.match_labels.is_empty() => {
            let labels: Vec<String> = s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("workloads labelled {} in namespace {}", labels.join(","), meta.namespace)
        }
        _ => format!("every workload in namespace {}", meta.namespace),
    };
    let mut parts = vec![format!("{}/{} selects {selects}", meta.namespace, meta.name)];
    if let Some(mtls) = p.spec.mtls {
        parts.push(format!("mtls {mtls:?}"));
    }
    if !p.spec.port_level_mtls.is_empty() {
        let ports: Vec<String> =
            p.spec.port_level_mtls.iter().map(|(port, e)| format!("{port} {:?}", e.mode)).collect();
        parts.push(format!("port mtls {}", ports.join(", ")));
    }
    if let Some(authz) = &p.spec.authorization {
        let count = |action: Action| authz.rules.iter().filter(|r| r.action == action).count();
        let default = authz.default.unwrap_or(if count(Action::ALLOW) > 0 { Action::DENY } else { Action::ALLOW });
        let names: Vec<&str> = authz.rules.iter().map(|r| r.name.0.as_str()).collect();
        parts.push(format!(
            "authorization {} default {default:?}: {} DENY, {} ALLOW rule(s) [{}]",
            if authz.mode == Mode::AUDIT { "AUDIT" } else { "ENFORCE" },
            count(Action::DENY),
            count(Action::ALLOW),
            names.join(", ")
        ));
    }
    for l in p.spec.rate_limits.iter() {
        let burst = l.burst.unwrap_or(l.rate);
        let delay = match l.action {
            crate::policy::LimitAction::DELAY => format!(", delayed up to {:?}", l.max_wait()),
            crate::policy::LimitAction::REJECT => String::new(),
        };
        parts.push(format!("rate limit {} {}/{} burst {burst} by {}{delay}", l.name.0, l.rate, l.per, l.key));
    }
    if let Some(v) = &p.spec.input_validation {
        let limits: Vec<String> = [
            ("maxUriBytes", v.max_uri_bytes),
            ("maxHeaderBytes", v.max_header_bytes),
            ("maxBodyBytes", v.max_body_bytes),
        ]
        .iter()
        .filter_map(|(k, n)| n.map(|n| format!("{k} {n}")))
        .collect();
        if !limits.is_empty() {
            parts.push(limits.join(", "));
        }
        if let Some(waf) = v.waf.as_ref().filter(|w| w.mode != crate::policy::WafMode::OFF) {
            let detectors = if waf.detectors.is_empty() {
                "every detector".to_string()
            } else {
                waf.detectors.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(",")
            };
            parts.push(format!(
                "waf {:?} paranoia {} ({detectors}), {} exclusion(s), bodies up to {} bytes else {:?}",
                waf.mode,
                waf.paranoia.0,
                waf.exclusions.len(),
                waf.inspect_body_bytes.0,
                waf.body_over_limit
            ));
        }
    }
    if let Some(authn) = p.spec.authentication.as_ref().filter(|a| !a.jwt.is_empty()) {
        let issuers: Vec<&str> = authn.jwt.iter().map(|j| j.issuer.as_str()).collect();
        parts.push(format!(
            "jwt from {} ({})",
            issuers.join(", "),
            if authn.require_jwt { "required" } else { "optional" }
        ));
    }
    parts.join("; ")
}

/// Logging first, so that everything after it is logged as asked; a bad filter is a mistake in
/// the configuration like any other.
fn init_logs(arg: &ConfigArg) -> Result<LogLevel, ExitCode> {
    LogLevel::init(arg.log_format).map_err(|e| {
        eprintln!("error: {e}");
        eprintln!("1 error(s) in the configuration; nothing was started");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run_sidecar(arg: &ConfigArg) -> ExitCode {
    let log_level = match init_logs(arg) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some((path, config)) = load_config::<SidecarConfig>(arg.config.as_deref()) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let path = path.as_path();
    match Sidecar::start(config, RunOptions { handle_signals: true, log_level }) {
        Ok(mut sidecar) => {
            sidecar.wait();
            ExitCode::SUCCESS
        }
        Err(e) => start_failed(path, &e),
    }
}

fn run_control(arg: &ConfigArg) -> ExitCode {
    let log_level = match init_logs(arg) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some((path, config)) = load_config::<ControlConfig>(arg.config.as_deref()) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let path = path.as_path();
    let _ = log_level;
    match ControlPlane::start(config, true) {
        Ok(mut plane) => {
            plane.wait();
            ExitCode::SUCCESS
        }
        Err(e) => start_failed(path, &e),
    }
}

/// Reads a configuration (the file, else PALISADE_CONFIG, else the defaults), printing every
/// mistake in it; also where it came from, for later messages.
fn load_config<T>(file: Option<&std::path::Path>) -> Option<(PathBuf, T)>
where
    T: serde::de::DeserializeOwned + serde::Serialize + config::Validate,
{
    let loaded = match file {
        Some(path) => {
            // Said because the variable is what an injected pod sets: an operator adding
            // --config by hand would otherwise not know which of the two is in force.
            if std::env::var_os(config::CONFIG_VAR).is_some() {
                eprintln!("warning: {} is set and not read: --config {} is", config::CONFIG_VAR, path.display());
            }
            config::load(path, &ProcessEnv).map(|c| (path.to_path_buf(), c))
        }
        None => {
            // Errors name where the configuration came from: the variable, or, with neither it
            // nor --config, the defaults (a missing certificate is not the variable's fault).
            let text = std::env::var(config::CONFIG_VAR).ok();
            let source = PathBuf::from(match text {
                Some(_) => config::CONFIG_VAR,
                None => "defaults (no --config, no PALISADE_CONFIG)",
            });
            let text = text.unwrap_or_default();
            config::load_text(&source, &text, &ProcessEnv).map(|c| (source, c))
        }
    };
    match loaded {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in the configuration; nothing was started", errors.len());
            None
        }
    }
}

fn start_failed(path: &std::path::Path, e: &StartError) -> ExitCode {
    match e {
        StartError::Config(errors) => {
            for e in errors {
                eprintln!("error: {}: {e}", path.display());
            }
        }
        StartError::System(e) => eprintln!("error: {}: {e:#}", path.display()),
    }
    ExitCode::from(e.exit_code())
}

fn ca(cmd: CaCommand) -> ExitCode {
    match run_ca(cmd) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// A key already written is kept unless `--force` says otherwise: pointed at a control plane's
/// CA directory, `ca init` would silently replace the mesh's root.
fn refuse_to_replace(key: &std::path::Path, force: bool) -> Result<(), String> {
    match key.exists() && !force {
        true => {
            Err(format!("{} exists; give --force to replace it (what it signed stops being trusted)", key.display()))
        }
        false => Ok(()),
    }
}

fn run_ca(cmd: CaCommand) -> Result<String, String> {
    match cmd {
        CaCommand::Init { trust_domain, out, force } => {
            refuse_to_replace(&out.join("ca.key"), force)?;
            let files = DevCa::generate(&trust_domain).and_then(|ca| ca.write(&out)).map_err(|e| e.to_string())?;
            Ok(format!("wrote {} and {} for trust domain {trust_domain}", files.cert.display(), files.key.display()))
        }
        CaCommand::Issue { ca, spiffe_id, dns, ttl, out } => {
            let ca = DevCa::load(&ca).map_err(|e| e.to_string())?;
            let id = SpiffeId::parse(&spiffe_id).map_err(|e| format!("--spiffe-id: {e}"))?;
            if id.path().is_empty() {
                return Err(format!("--spiffe-id {id} is the trust domain's own ID and names no workload (add a path: {id}/ns/<namespace>/sa/<account>)"));
            }
            if id.trust_domain() != ca.trust_domain() {
                return Err(format!("--spiffe-id {id} is outside the CA's trust domain {:?}", ca.trust_domain()));
            }
            let mut spec = LeafSpec::workload(&spiffe_id);
            spec.dns_names = dns;
            let now = time::OffsetDateTime::now_utc();
            if ttl.0 < std::time::Duration::from_secs(60) {
                return Err(format!("--ttl {ttl}: at least 1m (a certificate must be valid when it is written)"));
            }
            // Compared as spans, so a TTL past time's range is refused, not added.
            let left = ca.not_after() - now;
            match time::Duration::try_from(ttl.0) {
                Ok(span) if span <= left => spec.not_after = now + span,
                _ => {
                    return Err(format!(
                        "--ttl {ttl} would outlive the CA, which ends {}: at most {}h",
                        ca.not_after().date(),
                        left.whole_hours().max(0)
                    ))
                }
            }
            let files = ca.issue_to(&spec, &out).map_err(|e| e.to_string())?;
            Ok(format!(
                "issued {id}: wrote {}, {} and {}",
                files.cert.display(),
                files.key.display(),
                files.trust_bundle.display()
            ))
        }
    }
}
