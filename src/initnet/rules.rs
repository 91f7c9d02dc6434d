//! The capture rules as `iptables-restore` input: a pure function of the options, one file per
//! address family, tested as text.
//!
//! Everything lives in Palisade's own chains (nat; for IPv6 that is not captured, filter), which
//! each file declares (so applying it with `--noflush` empties and refills them and leaves every
//! other rule alone); the two jumps from the built-in chains are added only when they are not
//! there yet, so a second run leaves one set of rules.

use std::net::IpAddr;

use crate::config::IpBlock;

pub const CHAIN_INBOUND: &str = "PALISADE_INBOUND";
pub const CHAIN_IN_REDIRECT: &str = "PALISADE_IN_REDIRECT";
pub const CHAIN_OUTPUT: &str = "PALISADE_OUTPUT";
pub const CHAIN_REDIRECT: &str = "PALISADE_REDIRECT";

/// The jumps into Palisade's chains, as `iptables-save` prints them.
pub const JUMP_PREROUTING: &str = "-A PREROUTING -p tcp -j PALISADE_INBOUND";
pub const JUMP_OUTPUT: &str = "-A OUTPUT -p tcp -j PALISADE_OUTPUT";

/// The filter table's chains that keep IPv6 TCP from going around the sidecar.
pub const CHAIN_V6_INPUT: &str = "PALISADE_V6_INPUT";
pub const CHAIN_V6_OUTPUT: &str = "PALISADE_V6_OUTPUT";
pub const JUMP_V6_INPUT: &str = "-A INPUT -p tcp -j PALISADE_V6_INPUT";
pub const JUMP_V6_OUTPUT: &str = "-A OUTPUT -p tcp -j PALISADE_V6_OUTPUT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The sidecar's uid: its own connections leave uncaptured.
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    /// Inbound ports sent to the sidecar; `None`: every port.
    pub inbound_ports: Option<Vec<u16>>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<IpBlock>,
    /// The pod's resolvers (its resolv.conf): DNS over TCP to them leaves uncaptured.
    pub dns_servers: Vec<IpAddr>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            proxy_uid: 2102,
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            inbound_ports: None,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            dns_servers: Vec::new(),
        }
    }
}

/// One table's share of the rules: Palisade's own chains in it, and the two jumps into them
/// from the built-in chains (for connections coming in, and going out).
struct Table {
    name: &'static str,
    chains: &'static [&'static str],
    jumps: [&'static str; 2],
}

const NAT: Table = Table {
    name: "nat",
    chains: &[CHAIN_INBOUND, CHAIN_IN_REDIRECT, CHAIN_OUTPUT, CHAIN_REDIRECT],
    jumps: [JUMP_PREROUTING, JUMP_OUTPUT],
};

const V6_FILTER: Table =
    Table { name: "filter", chains: &[CHAIN_V6_INPUT, CHAIN_V6_OUTPUT], jumps: [JUMP_V6_INPUT, JUMP_V6_OUTPUT] };

/// Which of a table's two jumps are installed already, read from `iptables-save -t <table>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Installed([bool; 2]);

impl Installed {
    /// The nat table's jumps.
    pub fn from_save(save: &str) -> Installed {
        Installed::read(save, &NAT)
    }

    /// The IPv6 filter table's jumps.
    pub fn from_filter_save(save: &str) -> Installed {
        Installed::read(save, &V6_FILTER)
    }

    fn read(save: &str, table: &Table) -> Installed {
        Installed(table.jumps.map(|jump| save.lines().any(|l| l.trim_end() == jump)))
    }
}

/// The `-restore --noflush` input for `table`: its chains declared (so they are emptied and
/// refilled, and every other rule left alone), `rules`, and the jumps not installed yet.
fn restore_input(table: &Table, rules: Vec<String>, installed: Installed) -> String {
    let mut lines = vec![format!("*{}", table.name)];
    lines.extend(table.chains.iter().map(|chain| format!(":{chain} - [0:0]")));
    lines.extend(rules);
    for (jump, there) in table.jumps.iter().zip(installed.0) {
        if !there {
            lines.push(jump.to_string());
        }
    }
    lines.push("COMMIT".into());
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

const DNS_PORT: u16 = 53;

/// The `iptables-restore --noflush` input for one family.
pub fn restore_file(capture: &Capture, family: Family, installed: Installed) -> String {
    let mut lines = Vec::new();
    lines.push(format!("-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}", capture.inbound_port));
    lines.push(format!("-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {}", capture.outbound_port));

    // Inbound: the sidecar's own ports that it holds on every address (admin for the kubelet's
    // probes, inbound) and the excluded ones pass; then the chosen ports, or all, go to the
    // inbound listener. The outbound port is held on loopback only: passed, any process of the
    // pod could serve `<pod IP>:15001` to callers outside the mesh, past mTLS and policy.
    let mut passing = vec![capture.admin_port, capture.inbound_port];
    passing.extend(&capture.exclude_inbound_ports);
    passing.sort_unstable();
    passing.dedup();
    for port in &passing {
        lines.push(format!("-A {CHAIN_INBOUND} -p tcp --dport {port} -j RETURN"));
    }
    match &capture.inbound_ports {
        None => lines.push(format!("-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}")),
        Some(ports) => {
            for port in ports.iter().filter(|p| !passing.contains(p)) {
                lines.push(format!("-A {CHAIN_INBOUND} -p tcp --dport {port} -j {CHAIN_IN_REDIRECT}"));
            }
        }
    }

    // Outbound: the sidecar's own connections, loopback and the exclusions leave as they are;
    // every other TCP connection goes to the outbound listener.
    lines.push(format!("-A {CHAIN_OUTPUT} -m owner --uid-owner {} -j RETURN", capture.proxy_uid));
    lines.push(format!("-A {CHAIN_OUTPUT} -o lo -j RETURN"));
    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    lines.push(format!("-A {CHAIN_OUTPUT} -d {loopback} -j RETURN"));
    // IPv6 link-local addresses are only meaningful with their interface, which the original
    // destination does not carry: the sidecar could not reach them, and a redirected connection
    // to one never arrives.
    if family == Family::V6 {
        lines.push(format!("-A {CHAIN_OUTPUT} -d fe80::/10 -j RETURN"));
    }
    for block in &capture.exclude_outbound_cidrs {
        if block.network().is_ipv4() == (family == Family::V4) {
            lines.push(format!("-A {CHAIN_OUTPUT} -d {block} -j RETURN"));
        }
    }
    // DNS over TCP (what resolvers fall back to for an answer too long for UDP) to the pod's own
    // resolvers: the outbound listener could not carry it. To them only: port 53 to anywhere
    // would be a way out for any TCP at all.
    for server in capture.dns_servers.iter().filter(|s| s.is_ipv4() == (family == Family::V4)) {
        let bits = if server.is_ipv4() { 32 } else { 128 };
        lines.push(format!("-A {CHAIN_OUTPUT} -d {server}/{bits} -p tcp --dport {DNS_PORT} -j RETURN"));
    }
    for port in &capture.exclude_outbound_ports {
        lines.push(format!("-A {CHAIN_OUTPUT} -p tcp --dport {port} -j RETURN"));
    }
    lines.push(format!("-A {CHAIN_OUTPUT} -p tcp -j {CHAIN_REDIRECT}"));
    restore_input(&NAT, lines, installed)
}

/// The `ip6tables-restore --noflush` input for the filter table, so IPv6 TCP cannot go around
/// the sidecar where the nat rules do not send it through. `captured`: the nat table captures
/// IPv6 (a pod with a routable IPv6 address). Without that, every IPv6 TCP connection but
/// loopback's is refused both ways: the pod's link-local address would otherwise let a
/// neighbour reach the app in plaintext, past STRICT and every policy, and the app reach
/// neighbours past `outbound.passthrough`. With it, what the nat rules let pass for want of an
/// interface (link-local destinations) is refused to the app; the sidecar's own pass.
pub fn ipv6_filter_file(capture: &Capture, captured: bool, installed: Installed) -> String {
    let mut lines = Vec::new();
    const REFUSE: &str = "-j REJECT --reject-with tcp-reset";
    if captured {
        lines.push(format!("-A {CHAIN_V6_OUTPUT} -m owner --uid-owner {} -j RETURN", capture.proxy_uid));
        lines.push(format!("-A {CHAIN_V6_OUTPUT} -o lo -j RETURN"));
        lines.push(format!("-A {CHAIN_V6_OUTPUT} -d fe80::/10 -p tcp {REFUSE}"));
    } else {
        // Dropped, not reset: the only addresses here are link-local, and the kernel finds no
        // route for a reset to one.
        lines.push(format!("-A {CHAIN_V6_INPUT} -i lo -j RETURN"));
        lines.push(format!("-A {CHAIN_V6_INPUT} -p tcp -j DROP"));
        lines.push(format!("-A {CHAIN_V6_OUTPUT} -o lo -j RETURN"));
        lines.push(format!("-A {CHAIN_V6_OUTPUT} -p tcp {REFUSE}"));
    }
    restore_input(&V6_FILTER, lines, installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with("-A")).collect()
    }

    #[test]
    fn a_second_run_adds_no_second_jump() {
        let first = restore_file(&Capture::default(), Family::V4, Installed::default());
        let save = format!("*nat\n:PREROUTING ACCEPT [0:0]\n{JUMP_PREROUTING}\n{JUMP_OUTPUT}\nCOMMIT\n");
        let second = restore_file(&Capture::default(), Family::V4, Installed::from_save(&save));
        assert!(first.contains(JUMP_PREROUTING) && first.contains(JUMP_OUTPUT), "{first}");
        assert!(!second.contains("-A PREROUTING") && !second.contains("-A OUTPUT "), "{second}");
        // The own chains are declared every time: --noflush empties and refills them.
        assert_eq!(second.lines().filter(|l| l.starts_with(':')).count(), 4);
    }

    #[test]
    fn the_default_rules_capture_every_tcp_port_except_the_sidecars_own() {
        let text = restore_file(&Capture::default(), Family::V4, Installed::default());
        assert_eq!(
            rules(&text),
            [
                "-A PALISADE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A PALISADE_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A PALISADE_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A PALISADE_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A PALISADE_INBOUND -p tcp -j PALISADE_IN_REDIRECT",
                "-A PALISADE_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A PALISADE_OUTPUT -o lo -j RETURN",
                "-A PALISADE_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A PALISADE_OUTPUT -p tcp -j PALISADE_REDIRECT",
                "-A PREROUTING -p tcp -j PALISADE_INBOUND",
                "-A OUTPUT -p tcp -j PALISADE_OUTPUT",
            ]
        );
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"), "{text}");
    }

    #[test]
    fn exclusions_and_chosen_ports_become_rules_of_their_family() {
        let capture = Capture {
            proxy_uid: 1337,
            inbound_ports: Some(vec![8080, 15000, 9090]),
            exclude_inbound_ports: vec![9090],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: ["10.96.0.0/12", "fd00::/8", "169.254.169.254"]
                .map(|b| b.parse().unwrap())
                .to_vec(),
            dns_servers: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
            ..Capture::default()
        };
        let v4 = restore_file(&capture, Family::V4, Installed::default());
        let v4 = rules(&v4);
        assert!(v4.contains(&"-A PALISADE_INBOUND -p tcp --dport 8080 -j PALISADE_IN_REDIRECT"), "{v4:#?}");
        assert!(v4.contains(&"-A PALISADE_INBOUND -p tcp --dport 9090 -j RETURN"), "{v4:#?}");
        // A port both chosen and excluded (or the admin port) is not captured.
        assert!(!v4.iter().any(|r| r.contains("9090 -j PALISADE_IN_REDIRECT") || r.contains("15000 -j PALISADE_IN")));
        assert!(!v4.contains(&"-A PALISADE_INBOUND -p tcp -j PALISADE_IN_REDIRECT"));
        assert!(v4.contains(&"-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(v4.contains(&"-A PALISADE_OUTPUT -d 10.96.0.0/12 -j RETURN"), "{v4:#?}");
        assert!(v4.contains(&"-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN"));
        assert!(v4.contains(&"-A PALISADE_OUTPUT -p tcp --dport 5432 -j RETURN"));
        // DNS over TCP leaves uncaptured to the pod's resolvers only, each in its family.
        assert!(v4.contains(&"-A PALISADE_OUTPUT -d 10.96.0.10/32 -p tcp --dport 53 -j RETURN"), "{v4:#?}");
        assert!(!v4.iter().any(|r| r.contains("--dport 53") && !r.contains("10.96.0.10")), "{v4:#?}");
        assert!(!v4.iter().any(|r| r.contains("fd00") || r.contains("fe80")));
        let v6 = restore_file(&capture, Family::V6, Installed::default());
        let v6 = rules(&v6);
        assert!(v6.contains(&"-A PALISADE_OUTPUT -d ::1/128 -j RETURN"));
        assert!(v6.contains(&"-A PALISADE_OUTPUT -d fe80::/10 -j RETURN"));
        assert!(v6.contains(&"-A PALISADE_OUTPUT -d fd00::/8 -j RETURN"), "{v6:#?}");
        assert!(v6.contains(&"-A PALISADE_OUTPUT -d fd00::a/128 -p tcp --dport 53 -j RETURN"), "{v6:#?}");
        assert!(!v6.iter().any(|r| r.contains("10.96") || r.contains("127.0.0.0")));
        // The last outbound rule captures what no exclusion let pass.
        let last_output = v6.iter().rposition(|r| r.starts_with("-A PALISADE_OUTPUT")).unwrap();
        assert_eq!(v6[last_output], "-A PALISADE_OUTPUT -p tcp -j PALISADE_REDIRECT");
    }

    #[test]
    fn ipv6_tcp_that_the_nat_rules_let_pass_is_refused_in_the_filter_table() {
        // No IPv6 capture (no routable address): every IPv6 TCP connection but loopback's.
        let text = ipv6_filter_file(&Capture::default(), false, Installed::default());
        assert_eq!(
            rules(&text),
            [
                "-A PALISADE_V6_INPUT -i lo -j RETURN",
                "-A PALISADE_V6_INPUT -p tcp -j DROP",
                "-A PALISADE_V6_OUTPUT -o lo -j RETURN",
                "-A PALISADE_V6_OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
                "-A INPUT -p tcp -j PALISADE_V6_INPUT",
                "-A OUTPUT -p tcp -j PALISADE_V6_OUTPUT",
            ]
        );
        assert!(text.starts_with("*filter\n") && text.ends_with("COMMIT\n"), "{text}");
        // Captured: only the app's link-local destinations, which the nat rules cannot redirect.
        let save = format!("*filter\n{JUMP_V6_INPUT}\n{JUMP_V6_OUTPUT}\nCOMMIT\n");
        let text = ipv6_filter_file(&Capture::default(), true, Installed::from_filter_save(&save));
        assert_eq!(
            rules(&text),
            [
                "-A PALISADE_V6_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A PALISADE_V6_OUTPUT -o lo -j RETURN",
                "-A PALISADE_V6_OUTPUT -d fe80::/10 -p tcp -j REJECT --reject-with tcp-reset",
            ]
        );
    }
}
