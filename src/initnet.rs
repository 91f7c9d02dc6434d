//! `palisade init-net`: what the pod's init container runs. It installs the nat rules that send
//! the pod's inbound TCP to the sidecar's inbound listener and its outbound TCP to the outbound
//! listener (SPEC section 9), for IPv4 and IPv6, with the iptables variant the node uses.
//!
//! The rules are made by a pure function ([`rules::restore_file`]) and applied atomically per
//! family with `iptables-restore --noflush`; running it twice leaves one set of rules.

pub mod rules;

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use clap::Args;

pub use rules::{Capture, Family, Installed};

/// EX_USAGE: a bad flag value.
const EXIT_USAGE: u8 = 64;
/// EX_UNAVAILABLE: no iptables in the image.
const EXIT_UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: iptables refused the rules.
const EXIT_FAILED: u8 = 70;
/// EX_NOPERM: the container lacks NET_ADMIN / NET_RAW.
const EXIT_NOPERM: u8 = 77;

#[derive(Args, Debug, Clone)]
pub struct InitNetArgs {
    /// The sidecar's uid; its own connections are not captured.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// The sidecar's inbound listener, where inbound TCP is redirected.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The sidecar's outbound listener, where outbound TCP is redirected.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The sidecar's admin port (probes reach it directly).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Inbound ports to capture, comma-separated; `*` (the default) captures every port.
    #[arg(long, default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports never captured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured: address blocks, comma-separated (10.96.0.0/12,fd00::/8).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Which iptables: `auto` (the one that already holds rules, else nft), `nft` or `legacy`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    pub mode: String,
    /// IPv6 rules too: `auto` (when the pod has an IPv6 address beyond loopback and link-local,
    /// as in a dual-stack or IPv6-only cluster), `on` or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub ipv6: String,
    /// Print the commands and their iptables-restore input instead of running them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InitNetError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "the container lacks {0}: iptables cannot change the pod's rules. Give the init container \
         securityContext.capabilities.add [NET_ADMIN, NET_RAW] (injection does), or run as root"
    )]
    NoPermission(&'static str),
    #[error("{0} not found: the init container's image needs iptables (the Dockerfile's `init` target has it)")]
    Missing(String),
    #[error("{command} failed ({status}): {stderr}")]
    Refused { command: String, status: String, stderr: String },
}

impl InitNetError {
    pub fn exit_code(&self) -> u8 {
        match self {
            InitNetError::Usage(_) => EXIT_USAGE,
            InitNetError::NoPermission(_) => EXIT_NOPERM,
            InitNetError::Missing(_) => EXIT_UNAVAILABLE,
            InitNetError::Refused { stderr, .. } if permission_words(stderr) => EXIT_NOPERM,
            InitNetError::Refused { .. } => EXIT_FAILED,
        }
    }
}

fn permission_words(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("permission denied") || s.contains("operation not permitted") || s.contains("you must be root")
}

/// The iptables variant whose tools are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// Only unsuffixed `iptables-restore` exists: whichever it is.
    Plain,
}

impl Backend {
    fn tool(self, family: Family, what: &str) -> String {
        let prefix = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self {
            Backend::Nft => format!("{prefix}-nft-{what}"),
            Backend::Legacy => format!("{prefix}-legacy-{what}"),
            Backend::Plain => format!("{prefix}-{what}"),
        }
    }
}

pub fn run(args: InitNetArgs) -> ExitCode {
    match install(&args) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: palisade init-net: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The capture the flags ask for.
pub fn capture(args: &InitNetArgs) -> Result<Capture, InitNetError> {
    let inbound_ports = match args.inbound_ports.trim() {
        "*" => None,
        list => Some(
            list.split(',')
                .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| {
                    InitNetError::Usage(format!("--inbound-ports: expected * or ports such as 8080,9090, got {list:?}"))
                })?,
        ),
    };
    let mut cidrs = Vec::new();
    for cidr in &args.exclude_outbound_cidrs {
        cidrs.push(
            crate::inject::annotations::parse_cidr(cidr.trim())
                .map_err(|e| InitNetError::Usage(format!("--exclude-outbound-cidrs: {e}")))?,
        );
    }
    if args.proxy_uid == 0 {
        return Err(InitNetError::Usage(
            "--proxy-uid: must not be 0 (root's traffic would all leave uncaptured)".into(),
        ));
    }
    // The sidecar's three ports are three listeners: two the same would send captured traffic
    // into the wrong one (inbound into the outbound listener, say), which refuses all of it.
    let ports = [
        ("--inbound-port", args.inbound_port),
        ("--outbound-port", args.outbound_port),
        ("--admin-port", args.admin_port),
    ];
    for (i, (name, port)) in ports.iter().enumerate() {
        if *port == 0 {
            return Err(InitNetError::Usage(format!("{name}: must be from 1 to 65535")));
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            return Err(InitNetError::Usage(format!("{name}: {port} is also {other}; the sidecar's ports differ")));
        }
    }
    for (name, list) in [
        ("--exclude-inbound-ports", &args.exclude_inbound_ports),
        ("--exclude-outbound-ports", &args.exclude_outbound_ports),
    ] {
        if list.contains(&0) {
            return Err(InitNetError::Usage(format!("{name}: ports are from 1 to 65535, got 0")));
        }
    }
    Ok(Capture {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        inbound_ports,
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        exclude_outbound_cidrs: cidrs,
        // The init container's resolv.conf is the pod's: every container gets the same one.
        dns_servers: nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
    })
}

/// The `nameserver` addresses of a resolv.conf (one with a zone, `fe80::1%eth0`, cannot be
/// written as a rule's destination and is left out).
fn nameservers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Installs the rules (or, with `--dry-run`, says what it would run); returns what to print.
pub fn install(args: &InitNetArgs) -> Result<String, InitNetError> {
    let capture = capture(args)?;
    let if_inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    let families: Vec<Family> = match args.ipv6.as_str() {
        "off" => vec![Family::V4],
        "on" => vec![Family::V4, Family::V6],
        _ if has_routable_ipv6(&if_inet6) => vec![Family::V4, Family::V6],
        _ => vec![Family::V4],
    };
    // A kernel with IPv6 gives every interface a link-local address: the filter table keeps
    // IPv6 TCP from going around the sidecar (`--ipv6 off` writes no IPv6 rule at all).
    let v6_filter = args.ipv6 != "off" && !if_inet6.trim().is_empty();
    let v6_captured = families.contains(&Family::V6);
    if args.dry_run {
        // No privileges needed: assume a fresh pod when the current rules cannot be read.
        let backend = choose_backend(&args.mode, false);
        let mut out = String::new();
        for family in families {
            let installed = read_installed(backend, family).unwrap_or_default();
            let restore = backend.tool(family, "restore");
            out.push_str(&format!(
                "{restore} --noflush <<'RULES'\n{}RULES\n",
                rules::restore_file(&capture, family, installed)
            ));
        }
        if v6_filter {
            let installed = read_installed_filter(backend).unwrap_or_default();
            let restore = backend.tool(Family::V6, "restore");
            let file = rules::ipv6_filter_file(&capture, v6_captured, installed);
            out.push_str(&format!("{restore} --noflush <<'RULES'\n{file}RULES\n"));
        }
        return Ok(out);
    }
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(InitNetError::NoPermission(if missing.len() == 2 { "NET_ADMIN and NET_RAW" } else { missing[0] }));
    }
    let backend = choose_backend(&args.mode, true);
    let mut out = String::new();
    for family in families {
        let installed = read_installed(backend, family)?;
        let file = rules::restore_file(&capture, family, installed);
        let restore = backend.tool(family, "restore");
        run_with_input(&restore, &["--noflush"], &file)?;
        let count = file.lines().filter(|l| l.starts_with("-A")).count();
        out.push_str(&format!(
            "{restore}: {count} rules written to the nat table's PALISADE_* chains (the jumps to them added once)\n"
        ));
    }
    if v6_filter {
        let restore = backend.tool(Family::V6, "restore");
        let written = read_installed_filter(backend).and_then(|installed| {
            let file = rules::ipv6_filter_file(&capture, v6_captured, installed);
            run_with_input(&restore, &["--noflush"], &file).map(|()| file)
        });
        match written {
            Ok(file) => {
                let count = file.lines().filter(|l| l.starts_with("-A")).count();
                out.push_str(&format!(
                    "{restore}: {count} rules written to the filter table's PALISADE_V6_* chains (IPv6 TCP the nat rules do not capture is refused)\n"
                ));
            }
            // IPv6 captured, or a failure the node's kernel does not explain: fail the pod.
            Err(e) if v6_captured || !kernel_lacks_it(&e) => return Err(e),
            // An IPv4-only pod on a node whose kernel lacks the IPv6 filter table (or REJECT, or
            // the owner match), or whose image lacks ip6tables, starts as before these rules
            // existed, and says so loudly.
            Err(e) => {
                let warning = format!(
                    "warning: IPv6 TCP over link-local addresses is not refused (the pod's app can be reached, and reach its neighbours, around the sidecar that way): {e}\n"
                );
                eprint!("{warning}");
                out.push_str(&warning);
            }
        }
    }
    Ok(out)
}

/// Whether `/proc/net/if_inet6` lists an address the pod can reach others with: scope global or
/// site, on an interface other than loopback. Every kernel with IPv6 lists `::1` and each
/// interface's link-local address; an IPv4-only pod has nothing more, and writing IPv6 rules there
/// would only fail the pod on a node without IPv6 NAT.
fn has_routable_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let scope = fields.get(3).and_then(|s| u8::from_str_radix(s, 16).ok());
        matches!(scope, Some(0x00 | 0x40)) && fields.get(5).is_some_and(|name| *name != "lo")
    })
}

/// Like Istio: the variant that already holds rules in this network namespace (what the node's
/// tools put there), else nft; an explicit `--mode` wins.
fn choose_backend(mode: &str, probe: bool) -> Backend {
    let exists = |tool: &str| find_tool(tool).is_some();
    match mode {
        "nft" => return Backend::Nft,
        "legacy" => return Backend::Legacy,
        _ => {}
    }
    let (nft, legacy) = (exists("iptables-nft-restore"), exists("iptables-legacy-restore"));
    match (nft, legacy) {
        (false, false) => Backend::Plain,
        (true, false) => Backend::Nft,
        (false, true) => Backend::Legacy,
        (true, true) => {
            let rules_in = |b: Backend| {
                probe
                    .then(|| output(&b.tool(Family::V4, "save"), &[]).ok())
                    .flatten()
                    .map_or(0, |s| s.lines().filter(|l| l.starts_with("-A")).count())
            };
            if rules_in(Backend::Legacy) > 0 && rules_in(Backend::Nft) == 0 {
                Backend::Legacy
            } else {
                Backend::Nft
            }
        }
    }
}

/// Whether `e` says that the node (its kernel's IPv6 netfilter) or the image (its ip6tables)
/// lacks what the rules need, as opposed to any other failure.
fn kernel_lacks_it(e: &InitNetError) -> bool {
    const LACKING: [&str; 6] = [
        "does not exist",
        "couldn't load",
        "no chain/target/match",
        "not supported",
        "unknown option",
        "can't initialize",
    ];
    match e {
        InitNetError::Missing(_) => true,
        InitNetError::Refused { stderr, .. } => {
            let stderr = stderr.to_ascii_lowercase();
            LACKING.iter().any(|words| stderr.contains(words))
        }
        _ => false,
    }
}

fn read_installed(backend: Backend, family: Family) -> Result<Installed, InitNetError> {
    output(&backend.tool(family, "save"), &["-t", "nat"]).map(|s| Installed::from_save(&s))
}

fn read_installed_filter(backend: Backend) -> Result<Installed, InitNetError> {
    output(&backend.tool(Family::V6, "save"), &["-t", "filter"]).map(|s| Installed::from_filter_save(&s))
}

fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn output(tool: &str, args: &[&str]) -> Result<String, InitNetError> {
    let path = find_tool(tool).ok_or_else(|| InitNetError::Missing(tool.to_string()))?;
    let out = Command::new(path).args(args).stdin(Stdio::null()).output().map_err(|e| InitNetError::Refused {
        command: tool.to_string(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(InitNetError::Refused {
            command: format!("{tool} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_input(tool: &str, args: &[&str], input: &str) -> Result<(), InitNetError> {
    let path = find_tool(tool).ok_or_else(|| InitNetError::Missing(tool.to_string()))?;
    let refused = |status: String, stderr: String| InitNetError::Refused {
        command: format!("{tool} {}", args.join(" ")),
        status,
        stderr,
    };
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| refused("not started".into(), e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows up as the tool's own failure below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| refused("lost".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(refused(out.status.to_string(), String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// The capabilities iptables needs that this process's effective set lacks (from
/// /proc/self/status: CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13).
fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        // Unknown: let iptables itself say.
        return Vec::new();
    };
    [(12, "NET_ADMIN"), (13, "NET_RAW")]
        .into_iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, n)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{has_routable_ipv6, nameservers};

    #[test]
    fn only_what_the_node_lacks_lets_an_ipv4_only_pod_start_without_ipv6_rules() {
        use super::{kernel_lacks_it, InitNetError};
        let refused = |stderr: &str| InitNetError::Refused {
            command: "ip6tables-restore --noflush".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        assert!(kernel_lacks_it(&InitNetError::Missing("ip6tables-nft-restore".into())));
        assert!(kernel_lacks_it(&refused("ip6tables-restore v1.8.9 (legacy): can't initialize ip6tables table `filter': Table does not exist (do you need to insmod?)")));
        assert!(kernel_lacks_it(&refused(
            "ip6tables-restore: line 6 failed: Couldn't load target `REJECT':No such file or directory"
        )));
        assert!(!kernel_lacks_it(&refused("Another app is currently holding the xtables lock.")));
        assert!(!kernel_lacks_it(&refused("ip6tables-restore: line 3 failed")));
        assert!(!kernel_lacks_it(&InitNetError::NoPermission("NET_ADMIN")));
    }

    #[test]
    fn the_resolvers_are_read_from_resolv_conf() {
        let conf = "search shop.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n# nameserver 1.1.1.1\nnameserver  fd00::a \nnameserver fe80::1%eth0\noptions ndots:5\n";
        let servers: Vec<String> = nameservers(conf).iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["10.96.0.10", "fd00::a"]);
        assert!(nameservers("").is_empty());
    }

    #[test]
    fn ipv6_rules_only_for_a_pod_with_an_ipv6_address_beyond_loopback_and_link_local() {
        let ipv4_only_pod = "00000000000000000000000000000001 01 80 10 80       lo\n\
                             fe8000000000000000fc00fffe000001 02 40 20 80     eth0\n";
        let dual_stack_pod = format!("{ipv4_only_pod}fd000000000000000000000000000002 02 40 00 80     eth0\n");
        assert!(!has_routable_ipv6(ipv4_only_pod));
        assert!(!has_routable_ipv6(""), "a kernel without IPv6 lists nothing");
        assert!(has_routable_ipv6(&dual_stack_pod));
        // A global address on loopback alone reaches nobody.
        assert!(!has_routable_ipv6("20010db8000000000000000000000001 01 80 00 80       lo\n"));
    }
}
