//! `palisade inject`: manifests in, manifests out (like `linkerd inject`), with the settings the
//! control plane's webhook uses.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::config::{FailurePolicy, IdentityMode, InjectSettings};

/// EX_DATAERR: a manifest that cannot be injected.
const EXIT_DATA: u8 = 65;
/// EX_NOINPUT: the manifest file cannot be read.
const EXIT_NOINPUT: u8 = 66;
/// EX_CONFIG: bad settings.
const EXIT_CONFIG: u8 = 78;

#[derive(Args, Debug, Clone)]
pub struct InjectArgs {
    /// Manifest file (YAML or JSON; several documents and `kind: List` welcome), or - for
    /// standard input. The result goes to standard output; what was done, to standard error.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub file: String,
    /// The control plane's configuration file: its `webhook.sidecar` section gives the settings
    /// (image, identity mode, trust anchors, resources...), so the result is what the webhook
    /// would make.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where certificates come from: `controlPlane` (the CA; needs --trust-anchors or the
    /// settings' identity.trustAnchors) or `secret` (a cert-manager-style Secret per service account).
    #[arg(long, value_parser = ["controlPlane", "secret"])]
    pub identity_mode: Option<String>,
    /// A PEM file of the mesh's root certificates (controlPlane mode).
    #[arg(long)]
    pub trust_anchors: Option<PathBuf>,
    /// The sidecar image.
    #[arg(long)]
    pub image: Option<String>,
    /// The init container's image (with iptables).
    #[arg(long)]
    pub init_image: Option<String>,
    /// Read one AdmissionReview v1 (JSON) and print the webhook's answer instead: the webhook's
    /// logic without a cluster.
    #[arg(long, hide = true)]
    pub admission_review: bool,
}

pub fn run(args: InjectArgs) -> ExitCode {
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let input = match read_input(&args.file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file);
            return ExitCode::from(EXIT_NOINPUT);
        }
    };
    if args.admission_review {
        let outcome = super::webhook::decide(input.as_bytes(), &settings.0, settings.1);
        println!("{}", String::from_utf8_lossy(&outcome.body));
        return if outcome.status == 200 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_DATA) };
    }
    match super::inject(&input, &settings.0) {
        Ok((text, reports)) => {
            print!("{text}");
            for report in &reports {
                eprintln!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", if args.file == "-" { "<stdin>" } else { &args.file });
            ExitCode::from(EXIT_DATA)
        }
    }
}

fn read_input(file: &str) -> std::io::Result<String> {
    let max = crate::yaml::Limits::MANIFESTS.max_bytes;
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().take(max as u64 + 1).read_to_string(&mut text)?;
        if text.len() > max {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("more than {max} bytes")));
        }
        return Ok(text);
    }
    crate::yaml::read_file(Path::new(file), max)
}

/// The settings: the control plane's file (not its other checks: only `webhook` matters
/// here), then the flags; every mistake reported.
fn settings(args: &InjectArgs) -> Result<(InjectSettings, FailurePolicy), Vec<String>> {
    let (mut settings, policy, source) = match &args.config {
        Some(path) => {
            let text = crate::yaml::read_file(path, crate::yaml::Limits::FILE.max_bytes)
                .map_err(|e| vec![format!("{}: cannot read the file: {e}", path.display())])?;
            let config: crate::config::ControlConfig =
                crate::config::parse_yaml(path, &text).map_err(|e| vec![e.to_string()])?;
            let webhook = config.webhook.unwrap_or_default();
            (webhook.sidecar, webhook.failure_policy, format!("{}: webhook.sidecar.", path.display()))
        }
        None => (InjectSettings::default(), FailurePolicy::default(), "settings: ".to_string()),
    };
    settings = settings.resolve_files().map_err(|(field, message)| vec![format!("{source}{field}: {message}")])?;
    if let Some(mode) = &args.identity_mode {
        settings.identity.mode = if mode == "secret" { IdentityMode::Secret } else { IdentityMode::ControlPlane };
    }
    if let Some(path) = &args.trust_anchors {
        let pem = crate::yaml::read_file(path, 1 << 20)
            .map_err(|e| vec![format!("--trust-anchors {}: {e}", path.display())])?;
        settings.identity.trust_anchors = Some(pem);
    }
    if let Some(image) = &args.image {
        settings.image = image.clone();
    }
    if let Some(image) = &args.init_image {
        settings.init_image = image.clone();
    }
    let errors: Vec<String> = settings
        .check()
        .into_iter()
        .map(|(field, message)| match field.as_str() {
            "identity.trustAnchors" if args.config.is_none() => {
                format!("{message} (--trust-anchors FILE, --identity-mode secret, or --config with webhook.sidecar)")
            }
            _ => format!("{source}{field}: {message}"),
        })
        .collect();
    if errors.is_empty() {
        Ok((settings, policy))
    } else {
        Err(errors)
    }
}
