//! The Kubernetes commands as a pod runs them: `palisade inject` on manifests, `palisade init-net`
//! in network namespaces made here, and a pod simulation: two "pods" (network namespaces on a
//! bridge), each with an app, the rules init-net installs and a sidecar running as uid 2102, and a
//! third namespace without a sidecar. Tests that need root say so and skip without it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod support;

use support::eventually_blocking;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn palisade(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        // A command that refuses its configuration exits without reading its input: the pipe
        // may be closed before the manifest is written (then its exit status tells).
        match child.stdin.take().unwrap().write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.unwrap(),
        }
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

// === palisade inject ===

const MANIFEST: &str = "# shop\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: orders  # the API\nspec:\n  template:\n    metadata: {labels: {app: orders}}\n    spec:\n      containers:\n      - name: app\n        image: orders:1\n---\napiVersion: v1\nkind: Service\nmetadata: {name: orders}\nspec: {ports: [{port: 80}]}\n";

#[test]
fn inject_without_trust_anchors_or_with_a_bad_manifest_fails_with_the_reason() {
    let out = palisade(&["inject"], Some(MANIFEST));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-anchors"), "{out:?}");
    // A workload's own certificate where the mesh's root belongs: no sidecar could check the CA.
    let dir = tempfile::tempdir().unwrap();
    let ca = palisade::identity::DevCa::generate("cluster.local").unwrap();
    let (leaf, _) =
        ca.issue(&palisade::identity::LeafSpec::workload("spiffe://cluster.local/ns/shop/sa/orders")).unwrap();
    let leaf_file = dir.path().join("tls.crt");
    std::fs::write(&leaf_file, leaf).unwrap();
    let out = palisade(&["inject", "--trust-anchors", leaf_file.to_str().unwrap()], Some(MANIFEST));
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("is not a CA certificate (the workload certificate of spiffe://cluster.local/ns/shop/sa/orders)"),
        "{stderr}"
    );
    let out = palisade(&["inject", "--identity-mode", "secret"], Some("kind: Pod\nspec: [\n"));
    assert_eq!(out.status.code(), Some(65));
    let out = palisade(&["inject", "-f", "/nonexistent.yaml", "--identity-mode", "secret"], None);
    assert_eq!(out.status.code(), Some(66));
}

#[test]
fn inject_adds_the_sidecar_keeps_comments_and_a_second_pass_changes_nothing() {
    let out = palisade(&["inject", "--identity-mode", "secret"], Some(MANIFEST));
    assert!(out.status.success(), "{out:?}");
    let once = String::from_utf8(out.stdout).unwrap();
    assert!(once.contains("- name: palisade-proxy") && once.contains("restartPolicy: Always"), "{once}");
    assert!(once.starts_with("# shop\n") && once.contains("  name: orders  # the API\n"), "{once}");
    assert!(
        once.ends_with("---\napiVersion: v1\nkind: Service\nmetadata: {name: orders}\nspec: {ports: [{port: 80}]}\n")
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deployment/orders injected") && stderr.contains("service/orders passed through"),
        "{stderr}"
    );
    let out = palisade(&["inject", "--identity-mode", "secret"], Some(&once));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), once);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already injected"));
}

#[test]
fn inject_reads_its_settings_from_the_control_planes_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let anchors = dir.path().join("ca.crt");
    std::fs::write(&anchors, palisade::identity::DevCa::generate("cluster.local").unwrap().cert_pem()).unwrap();
    let config = dir.path().join("control.yaml");
    std::fs::write(
        &config,
        format!(
            "webhook:\n  failurePolicy: Ignore\n  sidecar:\n    image: registry.example/palisade:test\n    identity: {{trustAnchorsFile: {}}}\n",
            anchors.display()
        ),
    )
    .unwrap();
    let out = palisade(&["inject", "--config", config.to_str().unwrap()], Some(MANIFEST));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("image: \"registry.example/palisade:test\"") && text.contains("trustAnchors:"), "{text}");
    std::fs::write(&config, "webhook:\n  sidecar:\n    proxyUid: 0\n    identity: {mode: secret}\n").unwrap();
    let out = palisade(&["inject", "--config", config.to_str().unwrap()], Some(MANIFEST));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhook.sidecar.proxyUid"), "{out:?}");
}

// === palisade init-net ===

#[test]
fn init_net_without_net_admin_is_a_clean_error() {
    let mut command = if support::is_root() {
        // The pod's init container without its capabilities: a user with none.
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let out = command.args(["init-net", "--ipv6", "off"]).output().unwrap();
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NET_ADMIN") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn init_net_dry_run_prints_the_restore_input_and_bad_flags_are_named() {
    let out = palisade(
        &["init-net", "--dry-run", "--ipv6", "on", "--mode", "legacy", "--exclude-outbound-cidrs", "10.96.0.0/12"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("iptables-legacy-restore --noflush <<'RULES'\n*nat\n"), "{text}");
    assert!(
        text.contains("ip6tables-legacy-restore --noflush") && text.contains("-d 10.96.0.0/12 -j RETURN"),
        "{text}"
    );
    let out = palisade(&["init-net", "--dry-run", "--exclude-outbound-cidrs", "10.0.0.0/40"], None);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exclude-outbound-cidrs"), "{out:?}");
    // The sidecar's ports are three listeners, and a port is from 1.
    for (args, words) in [
        (&["--inbound-port", "15001"][..], "--outbound-port: 15001 is also --inbound-port"),
        (&["--admin-port", "15006"][..], "--admin-port: 15006 is also --inbound-port"),
        (&["--exclude-outbound-ports", "0"][..], "--exclude-outbound-ports: ports are from 1"),
    ] {
        let out = palisade(&[&["init-net", "--dry-run"][..], args].concat(), None);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(words), "{out:?}");
    }
}

/// Network namespaces made for one test, removed (with what runs in them) however it ends.
struct Namespaces {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Namespaces {
    fn new(prefix: &str, names: &[&str]) -> Namespaces {
        let mut made = Namespaces { names: Vec::new(), children: Vec::new() };
        for name in names {
            let full = format!("{prefix}{}-{name}", std::process::id() % 100_000);
            sh(&["ip", "netns", "add", &full]);
            made.names.push(full.clone());
            sh(&["ip", "-n", &full, "link", "set", "lo", "up"]);
        }
        made
    }

    fn name(&self, short: &str) -> &str {
        self.names.iter().find(|n| n.ends_with(&format!("-{short}"))).unwrap()
    }

    /// A command in namespace `ns`, optionally as `uid`.
    fn command(&self, ns: &str, uid: Option<u32>, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(ns)]);
        if let Some(uid) = uid {
            c.args(["setpriv", "--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"]);
        }
        c.args(args);
        c
    }

    fn run(&self, ns: &str, uid: Option<u32>, args: &[&str]) -> Output {
        self.command(ns, uid, args).output().unwrap()
    }

    fn spawn(&mut self, ns: &str, uid: Option<u32>, args: &[&str], log: &Path) {
        let log = std::fs::File::create(log).unwrap();
        let child = self.command(ns, uid, args).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.children.push(child);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn nat_rules(ns: &Namespaces, tool: &str) -> Vec<String> {
    table_rules(ns, tool, "nat")
}

fn filter_rules(ns: &Namespaces, tool: &str) -> Vec<String> {
    table_rules(ns, tool, "filter")
}

/// The rules of one table in pod p, as `<tool> -t <table>` prints them.
fn table_rules(ns: &Namespaces, tool: &str, table: &str) -> Vec<String> {
    let out = ns.run("p", None, &[tool, "-t", table]);
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A")).map(str::to_string).collect()
}

#[test]
fn init_net_twice_leaves_one_set_of_rules_with_either_iptables() {
    if !support::is_root() {
        eprintln!("skipped: needs root to make a network namespace and change its iptables rules");
        return;
    }
    for mode in ["nft", "legacy"] {
        let ns = Namespaces::new("pin", &["p"]);
        let first = ns.run("p", None, &[BIN, "init-net", "--mode", mode]);
        assert!(first.status.success(), "{mode}: {}", String::from_utf8_lossy(&first.stderr));
        let after_one = nat_rules(&ns, &format!("iptables-{mode}-save"));
        let second = ns.run("p", None, &[BIN, "init-net", "--mode", mode]);
        assert!(second.status.success(), "{mode}: {}", String::from_utf8_lossy(&second.stderr));
        let after_two = nat_rules(&ns, &format!("iptables-{mode}-save"));
        assert_eq!(after_one, after_two, "{mode}: the second run changed the rules");
        let jumps = after_two
            .iter()
            .filter(|r| r.ends_with("-j PALISADE_INBOUND") || r.ends_with("-j PALISADE_OUTPUT"))
            .count();
        assert_eq!(jumps, 2, "{mode}: {after_two:#?}");
        assert!(after_two.iter().any(|r| r.contains("--uid-owner 2102 -j RETURN")), "{after_two:#?}");
        // `--ipv6 auto`: the namespace has no IPv6 address beyond ::1, so no IPv6 rules (a node
        // without IPv6 NAT would otherwise fail every pod); given one, the next run writes them.
        let v6 = nat_rules(&ns, &format!("ip6tables-{mode}-save"));
        // (Without a nat table, ip6tables-nft-save -t nat prints the filter table instead.)
        assert!(!v6.iter().any(|r| r.contains("PALISADE") && !r.contains("PALISADE_V6")), "{mode}: {v6:#?}");
        // Its IPv6 TCP is refused instead (the filter table, which every IPv6 kernel has).
        let filter = filter_rules(&ns, &format!("ip6tables-{mode}-save"));
        assert!(filter.contains(&"-A PALISADE_V6_INPUT -p tcp -j DROP".to_string()), "{mode}: {filter:#?}");
        sh(&["ip", "-n", ns.name("p"), "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
        sh(&["ip", "-n", ns.name("p"), "-6", "addr", "add", "fd00:198:19::1/64", "dev", "eth0", "nodad"]);
        sh(&["ip", "-n", ns.name("p"), "link", "set", "eth0", "up"]);
        let third = ns.run("p", None, &[BIN, "init-net", "--mode", mode]);
        assert!(third.status.success(), "{mode}: {}", String::from_utf8_lossy(&third.stderr));
        assert_eq!(nat_rules(&ns, &format!("iptables-{mode}-save")), after_two, "{mode}");
        let v6 = nat_rules(&ns, &format!("ip6tables-{mode}-save"));
        assert!(v6.iter().any(|r| r.contains("-d ::1/128 -j RETURN")), "{mode}: {v6:#?}");
        assert!(v6.iter().any(|r| r.contains("-d fe80::/10 -j RETURN")), "{mode}: {v6:#?}");
        // Captured now: the filter table refuses only the app's link-local destinations, once.
        let filter = filter_rules(&ns, &format!("ip6tables-{mode}-save"));
        let ours: Vec<&String> = filter.iter().filter(|r| r.contains("PALISADE_V6")).collect();
        assert_eq!(
            ours,
            [
                "-A INPUT -p tcp -j PALISADE_V6_INPUT",
                "-A OUTPUT -p tcp -j PALISADE_V6_OUTPUT",
                "-A PALISADE_V6_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A PALISADE_V6_OUTPUT -o lo -j RETURN",
                "-A PALISADE_V6_OUTPUT -d fe80::/10 -p tcp -j REJECT --reject-with tcp-reset",
            ],
            "{mode}"
        );
    }
}

#[test]
fn a_pod_without_ipv6_capture_is_neither_reached_nor_left_over_link_local() {
    if !support::is_root() {
        eprintln!("skipped: needs root to make network namespaces and change their iptables rules");
        return;
    }
    // Two pods of an IPv4-only cluster on one link: each still has a link-local IPv6 address,
    // and an app listening on `::` (Python's, Node's, Go's default) answers on it.
    let dir = tempfile::tempdir().unwrap();
    let mut ns = Namespaces::new("pll", &["p", "q"]);
    sh(&[
        "ip",
        "-n",
        ns.name("p"),
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name("q"),
    ]);
    for (pod, address) in [("p", "fe80::1/64"), ("q", "fe80::2/64")] {
        sh(&["ip", "-n", ns.name(pod), "-6", "addr", "add", address, "dev", "eth0", "nodad"]);
        sh(&["ip", "-n", ns.name(pod), "link", "set", "eth0", "up"]);
        let args =
            ["python3", "-m", "http.server", "--bind", "::", "--directory", dir.path().to_str().unwrap(), "18080"];
        ns.spawn(pod, None, &args, &dir.path().join(format!("{pod}.log")));
    }
    let get = |from: &str, to: &str| {
        let url = format!("http://[{to}%eth0]:18080/");
        ns.run(from, None, &["curl", "-g", "-s", "-o", "/dev/null", "--max-time", "2", &url]).status.code()
    };
    // Before the rules: both ways answer (the setup works, so the refusals below mean something).
    assert!(eventually_blocking(|| get("q", "fe80::1") == Some(0) && get("p", "fe80::2") == Some(0)));
    let out = ns.run("p", None, &[BIN, "init-net"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The neighbour's connection is dropped by p's rule (its counter says so: not a connection
    // a slow machine lost); p's app is refused at once by a reset (curl's 7).
    assert_ne!(get("q", "fe80::1"), Some(0), "a neighbour reached p's app over link-local");
    let counters = ns.run("p", None, &["ip6tables-nft-save", "-c", "-t", "filter"]);
    let counters = String::from_utf8_lossy(&counters.stdout);
    let dropped = counters.lines().find(|l| l.ends_with("-A PALISADE_V6_INPUT -p tcp -j DROP")).unwrap_or_default();
    assert!(dropped.starts_with('[') && !dropped.starts_with("[0:"), "{counters}");
    assert_eq!(get("p", "fe80::2"), Some(7), "p's app reached a neighbour over link-local");
    // Loopback still works inside the pod.
    let local = ns.run("p", None, &["curl", "-g", "-s", "-o", "/dev/null", "--max-time", "5", "http://[::1]:18080/"]);
    assert_eq!(local.status.code(), Some(0));
}

// === the pod simulation ===

const APP: &str = r#"
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # Where the sidecar reached the app: the address the caller reached.
        local = self.connection.getsockname()[0].removeprefix("::ffff:")
        body = ("pod=%s xfcc=%s local=%s\n" % (sys.argv[1], self.headers.get("x-forwarded-client-cert"), local)).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
# A database's port beside it: answers once the client has closed its half, naming the pod.
import threading
def database():
    s = socket.create_server(("::", 5432), family=socket.AF_INET6, dualstack_ipv6=True)
    while True:
        c, _ = s.accept()
        def answer(c=c):
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            try:
                c.sendall(b"pod=%s echo:%s" % (sys.argv[1].encode(), data))
            except OSError:
                pass
            c.close()
        threading.Thread(target=answer, daemon=True).start()
threading.Thread(target=database, daemon=True).start()
# Both families on one socket, as an app in a dual-stack pod listens.
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
S(("::", 8080), H).serve_forever()
"#;

/// A database client: sends a request (length-prefixed, as PostgreSQL's are: not HTTP from its
/// first byte), closes its half, prints what came back (or the error).
const DATABASE_CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"\x00\x00\x00\x0dSELECT 1;")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    print(got.replace(b"\x00\x00\x00\x0d", b"").decode(errors="replace"))
except OSError as e:
    print("error:", e)
"#;

/// What a pod may run for itself alone: bound to loopback (a debug port, an agent's local API).
const LOOPBACK_APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"loopback-only\n"
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9000), H).serve_forever()
"#;

const APP_UID: u32 = 1000;
const PROXY_UID: u32 = 2102;

struct Pod {
    short: &'static str,
    ip: &'static str,
    /// Dual-stack: each pod has an address of each family.
    ipv6: &'static str,
    sidecar: bool,
}

const PODS: [Pod; 3] = [
    Pod { short: "a", ip: "198.18.0.1", ipv6: "fd00:198:18::1", sidecar: true },
    Pod { short: "b", ip: "198.18.0.2", ipv6: "fd00:198:18::2", sidecar: true },
    // No sidecar, no rules: a workload outside the mesh.
    Pod { short: "c", ip: "198.18.0.3", ipv6: "fd00:198:18::3", sidecar: false },
];

fn sidecar_yaml(dir: &Path, pod: &str, policy: Option<&Path>) -> PathBuf {
    let files = dir.join(pod);
    let policy = policy.map_or(String::new(), |p| format!("policy: {{files: [\"{}\"]}}\n", p.display()));
    let yaml = format!(
        "identity: {{files: {{cert: \"{f}/tls.crt\", key: \"{f}/tls.key\", trustBundle: \"{f}/ca.crt\"}}}}\n\
         trustDomain: cluster.local\n\
         # As injected: the pod address the caller reached, at the port it addressed.\n\
         inbound: {{listen: \"0.0.0.0:15006\", app: \"0.0.0.0:0\", mtls: STRICT}}\n\
         outbound: {{listen: \"127.0.0.1:15001\"}}\n\
         admin: {{listen: \"0.0.0.0:15000\"}}\n\
         workload: {{namespace: {pod}, serviceAccount: {pod}, labels: {{app: {pod}}}}}\n\
         telemetry: {{events: {{sink: stderr}}, accessLog: false}}\n{policy}",
        f = files.display(),
    );
    let path = dir.join(format!("{pod}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// What pod A's sidecar uid gets from `url` with A's mesh certificate (its uid is not captured,
/// so curl speaks mTLS itself), then ` status=<code>`.
fn curl_with_mesh_certificate(ns: &Namespaces, certificate: &Path, url: &str) -> String {
    let (cert, key) = (certificate.join("tls.crt"), certificate.join("tls.key"));
    let args = ["curl", "-s", "-g", "-k", "--http1.1", "--max-time", "5", "--cert", cert.to_str().unwrap()];
    let args = [&args[..], &["--key", key.to_str().unwrap(), "-w", " status=%{http_code}", url]].concat();
    String::from_utf8_lossy(&ns.run("a", Some(PROXY_UID), &args).stdout).into_owned()
}

fn curl(ns: &Namespaces, pod: &str, uid: u32, url: &str) -> (bool, String) {
    // -g: brackets are an IPv6 address, not a curl glob.
    let out = ns.run(pod, Some(uid), &["curl", "-g", "-s", "--max-time", "5", "-w", " status=%{http_code}", url]);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn pods_call_each_other_by_plain_ip_and_port_and_the_mesh_adds_mtls_identity_and_policy() {
    if !support::is_root() {
        eprintln!("skipped: needs root for network namespaces, veth pairs, iptables and running as uid 2102");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // The sidecars run as uid 2102 and the apps as 1000: both must read what they use.
    sh(&["chmod", "0755", work.to_str().unwrap()]);
    let ca = work.join("ca");
    assert!(palisade(&["ca", "init", "--trust-domain", "cluster.local", "--out", ca.to_str().unwrap()], None)
        .status
        .success());
    for pod in ["a", "b"] {
        let id = format!("spiffe://cluster.local/ns/{pod}/sa/{pod}");
        let out = work.join(pod);
        let issued = palisade(
            &["ca", "issue", "--ca", ca.to_str().unwrap(), "--spiffe-id", &id, "--out", out.to_str().unwrap()],
            None,
        );
        assert!(issued.status.success(), "{issued:?}");
    }
    sh(&["chmod", "-R", "a+rX", work.to_str().unwrap()]);
    let policy = work.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: b-api, namespace: b}\nspec:\n  mtls: STRICT\n  authorization:\n    default: DENY\n    rules:\n      - {name: from-a, action: ALLOW, from: {principals: [\"spiffe://cluster.local/ns/a/sa/a\"]}, to: {paths: [\"/orders*\"]}}\n      - {name: a-database, action: ALLOW, from: {principals: [\"spiffe://cluster.local/ns/a/sa/a\"]}, to: {ports: [5432]}}\n",
    )
    .unwrap();
    std::fs::write(work.join("app.py"), APP).unwrap();
    std::fs::write(work.join("loopback_app.py"), LOOPBACK_APP).unwrap();
    sh(&["chmod", "-R", "a+rX", work.to_str().unwrap()]);

    // The node: a bridge in a namespace of its own; each pod's eth0 is a veth to it.
    let mut ns = Namespaces::new("psim", &["node", "a", "b", "c"]);
    let node = ns.name("node").to_string();
    sh(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &node, "link", "set", "br0", "up"]);
    for pod in &PODS {
        let host_end = format!("veth-{}", pod.short);
        sh(&[
            "ip",
            "-n",
            &node,
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(pod.short),
        ]);
        sh(&["ip", "-n", &node, "link", "set", &host_end, "master", "br0", "up"]);
        sh(&["ip", "-n", ns.name(pod.short), "addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"]);
        // nodad: usable at once, not after duplicate address detection's second.
        let ipv6 = format!("{}/64", pod.ipv6);
        sh(&["ip", "-n", ns.name(pod.short), "-6", "addr", "add", &ipv6, "dev", "eth0", "nodad"]);
        sh(&["ip", "-n", ns.name(pod.short), "link", "set", "eth0", "up"]);
    }

    let app = work.join("app.py");
    for pod in &PODS {
        if pod.sidecar {
            // The init container: the rules are in place before anything else of the pod runs.
            let out = ns.run(pod.short, None, &[BIN, "init-net"]);
            assert!(out.status.success(), "init-net in {}: {}", pod.short, String::from_utf8_lossy(&out.stderr));
            let config = sidecar_yaml(work, pod.short, (pod.short == "b").then_some(policy.as_path()));
            let log = work.join(format!("{}.log", pod.short));
            ns.spawn(pod.short, Some(PROXY_UID), &[BIN, "sidecar", "--config", config.to_str().unwrap()], &log);
        }
        let log = work.join(format!("{}-app.log", pod.short));
        // The app's own uid does not matter to the rules (only 2102's connections pass): root
        // here, so the interpreter is found wherever it is installed.
        ns.spawn(pod.short, None, &["python3", app.to_str().unwrap(), pod.short], &log);
    }
    let loopback_app = work.join("loopback_app.py");
    ns.spawn("b", None, &["python3", loopback_app.to_str().unwrap()], &work.join("b-loopback-app.log"));
    let loopback_up = eventually_blocking(|| {
        ns.run("b", None, &["curl", "-sf", "--max-time", "1", "http://127.0.0.1:9000/"]).status.success()
    });
    assert!(loopback_up, "B's loopback-only app started");
    let logs = || {
        ["a.log", "b.log", "a-app.log", "b-app.log", "c-app.log"]
            .iter()
            .map(|f| format!("== {f}\n{}", std::fs::read_to_string(work.join(f)).unwrap_or_default()))
            .collect::<String>()
    };
    for pod in &PODS {
        let ready = eventually_blocking(|| {
            let app_up =
                ns.run(pod.short, None, &["curl", "-sf", "--max-time", "1", "http://127.0.0.1:8080/"]).status.success();
            let sidecar_up = !pod.sidecar
                || ns
                    .run(pod.short, None, &["curl", "-sf", "--max-time", "1", "http://127.0.0.1:15000/ready"])
                    .status
                    .success();
            app_up && sidecar_up
        });
        assert!(ready, "pod {} became ready\n{}", pod.short, logs());
    }

    // 1. A's app calls B's plain address as if there were no mesh; B's app is told A's identity.
    let (ok, body) = curl(&ns, "a", APP_UID, "http://198.18.0.2:8080/orders");
    assert!(ok, "{body}\n{}", logs());
    assert!(
        body.contains("pod=b xfcc=By=spiffe://cluster.local/ns/b/sa/b;URI=spiffe://cluster.local/ns/a/sa/a")
            && body.ends_with("status=200"),
        "{body}\n{}",
        logs()
    );

    // 1a. HTTP/1.0 may leave Host out: the original destination names it, for B's sidecar.
    let out = ns.run(
        "a",
        Some(APP_UID),
        &[
            "curl",
            "-s",
            "--http1.0",
            "-H",
            "Host:",
            "--max-time",
            "5",
            "-w",
            " status=%{http_code}",
            "http://198.18.0.2:8080/orders",
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("pod=b") && body.ends_with("status=200"), "HTTP/1.0 without Host: {body}\n{}", logs());

    // 1b. What B's app serves on loopback only stays B's own: B's sidecar forwards to the pod
    //     address A reached, where nothing listens on that port (it forwarded to 127.0.0.1).
    let (_, body) = curl(&ns, "a", APP_UID, "http://198.18.0.2:9000/orders");
    assert!(!body.contains("loopback-only") && body.ends_with("status=502"), "{body}\n{}", logs());

    // 1c. A neighbour that routes another address through B (its next hop) reaches B's app, not
    //     that address: B's sidecar is no relay to C (or to B's own 127.0.0.1) for whoever holds
    //     a mesh certificate. A's uid 2102 is not captured, so its curl speaks mTLS itself.
    let a_cert = work.join("a");
    let via_b = ["route", "add", "198.18.0.3/32", "via", "198.18.0.2"];
    sh(&[&["ip", "-n", ns.name("a")][..], &via_b].concat());
    let body = curl_with_mesh_certificate(&ns, &a_cert, "https://198.18.0.3:8080/orders");
    assert!(body.contains("pod=b") && !body.contains("pod=c") && body.ends_with("status=200"), "{body}\n{}", logs());
    sh(&[&["ip", "-n", ns.name("a"), "route", "del"][..], &via_b[2..]].concat());

    // 1d. A caller that reaches B at its link-local address (every IPv6 interface has one): B's
    //     sidecar reaches B's app there too, on the interface the call came in on (it connected
    //     without the scope: 502, and an error line per request; outside tester l3).
    sh(&["ip", "-n", ns.name("b"), "-6", "addr", "add", "fe80::b/64", "dev", "eth0", "nodad"]);
    let body = curl_with_mesh_certificate(&ns, &a_cert, "https://[fe80::b%eth0]:8080/orders");
    assert!(
        body.contains("pod=b") && body.contains("local=fe80::b\n") && body.ends_with("status=200"),
        "{body}\n{}",
        logs()
    );

    // 2. A plaintext call from C, which has no sidecar, meets B's STRICT inbound: no HTTP at all.
    let (_, body) = curl(&ns, "c", APP_UID, "http://198.18.0.2:8080/orders");
    assert!(!body.contains("pod=b") && body.ends_with("status=000"), "{body}");

    // 2a. Nor through the sidecar's outbound port on the pod address: the sidecar holds it on
    //     loopback only, so a process of the pod could listen there; it is captured like any
    //     port, and C meets STRICT mTLS again, not that process.
    let squatter =
        ["python3", "-m", "http.server", "--bind", "198.18.0.2", "--directory", work.to_str().unwrap(), "15001"];
    ns.spawn("b", None, &squatter, &work.join("b-squatter.log"));
    let squatting =
        eventually_blocking(|| curl(&ns, "b", APP_UID, "http://198.18.0.2:15001/").1.ends_with("status=200"));
    assert!(squatting, "B's own process serves its pod address on 15001 (to B itself)");
    let (_, body) = curl(&ns, "c", APP_UID, "http://198.18.0.2:15001/");
    assert!(body.ends_with("status=000"), "a caller outside the mesh reached 15001 on B's address: {body}");

    // 3. The sidecar's own connections (uid 2102) leave uncaptured: as 2102, A reaches C's app
    //    directly in plaintext; the app's own call to C is captured and, C having no sidecar
    //    to answer mTLS, refused by A's sidecar.
    let (ok, body) = curl(&ns, "a", PROXY_UID, "http://198.18.0.3:8080/");
    assert!(ok && body.contains("pod=c xfcc=None") && body.ends_with("status=200"), "{body}");
    let (_, body) = curl(&ns, "a", APP_UID, "http://198.18.0.3:8080/");
    assert!(!body.contains("pod=c") && body.ends_with("status=502"), "{body}\n{}", logs());

    // 4. B's policy decides: A may read /orders only; anything else is denied with 403.
    let (_, body) = curl(&ns, "a", APP_UID, "http://198.18.0.2:8080/admin");
    assert!(!body.contains("pod=b") && body.contains("forbidden") && body.ends_with("status=403"), "{body}");

    // 5. B's admin port on the pod address serves the probes and the scrape to other pods (as it
    //    does to the kubelet); policies, the log level and shutdown only to B itself.
    for path in ["/live", "/ready", "/metrics"] {
        let (ok, body) = curl(&ns, "c", APP_UID, &format!("http://198.18.0.2:15000{path}"));
        assert!(ok && body.ends_with("status=200"), "{path} from another pod: {body}");
    }
    for (method, path) in
        [("GET", "/config_dump"), ("GET", "/log_level"), ("POST", "/log_level"), ("POST", "/shutdown")]
    {
        let url = format!("http://198.18.0.2:15000{path}");
        let out = ns.run(
            "c",
            Some(APP_UID),
            &["curl", "-s", "--max-time", "5", "-X", method, "-w", " status=%{http_code}", &url],
        );
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.ends_with("status=403") && body.contains("localhost only"),
            "{method} {path} from another pod: {body}"
        );
    }
    let (ok, body) = curl(&ns, "b", APP_UID, "http://127.0.0.1:15000/config_dump");
    assert!(ok && body.contains("\"policy\"") && body.ends_with("status=200"), "/config_dump from B itself: {body}");
    let (ok, body) = curl(&ns, "b", APP_UID, "http://198.18.0.2:15000/ready");
    assert!(ok && body.ends_with("status=200"), "B still serves after the refused shutdown: {body}\n{}", logs());

    // 6. The same pods over IPv6 (the init container captures both families): each listener has
    //    an IPv6 socket beside its IPv4 one, and the original destination is IPv6's.
    let b6 = |port: u16, path: &str| format!("http://[fd00:198:18::2]:{port}{path}");
    let (ok, body) = curl(&ns, "a", APP_UID, &b6(8080, "/orders"));
    assert!(ok, "{body}\n{}", logs());
    assert!(
        body.contains("pod=b xfcc=By=spiffe://cluster.local/ns/b/sa/b;URI=spiffe://cluster.local/ns/a/sa/a")
            && body.ends_with("status=200"),
        "A to B over IPv6: {body}\n{}",
        logs()
    );
    assert!(body.contains("local=fd00:198:18::2\n"), "{body}");
    // A pod may hold more than one address of a family; REDIRECT then lands the connection on
    // one of them, and the app is still reached at the one the caller addressed.
    sh(&["ip", "-n", ns.name("b"), "-6", "addr", "add", "fd00:198:18::22/64", "dev", "eth0", "nodad"]);
    sh(&["ip", "-n", ns.name("b"), "addr", "add", "198.18.0.22/24", "dev", "eth0"]);
    for address in ["[fd00:198:18::2]", "[fd00:198:18::22]", "198.18.0.2", "198.18.0.22"] {
        let (ok, body) = curl(&ns, "a", APP_UID, &format!("http://{address}:8080/orders"));
        let address = address.trim_matches(['[', ']']);
        assert!(ok && body.contains(&format!("local={address}\n")), "{address}: {body}\n{}", logs());
    }
    let (_, body) = curl(&ns, "a", APP_UID, &b6(8080, "/admin"));
    assert!(!body.contains("pod=b") && body.ends_with("status=403"), "policy over IPv6: {body}");
    let (_, body) = curl(&ns, "a", APP_UID, &b6(9000, "/orders"));
    assert!(!body.contains("loopback-only") && body.ends_with("status=502"), "loopback app over IPv6: {body}");
    let (_, body) = curl(&ns, "c", APP_UID, &b6(8080, "/orders"));
    assert!(!body.contains("pod=b") && body.ends_with("status=000"), "plaintext over IPv6: {body}");
    // A's app calling outside the mesh over IPv6 is captured too, and C cannot answer mTLS.
    let (_, body) = curl(&ns, "a", APP_UID, "http://[fd00:198:18::3]:8080/");
    assert!(!body.contains("pod=c") && body.ends_with("status=502"), "A to C over IPv6: {body}\n{}", logs());
    let (ok, body) = curl(&ns, "c", APP_UID, &b6(15000, "/ready"));
    assert!(ok && body.ends_with("status=200"), "the kubelet's probe over IPv6: {body}");
    let (_, body) = curl(&ns, "c", APP_UID, &b6(15000, "/config_dump"));
    assert!(body.ends_with("status=403") && body.contains("localhost only"), "/config_dump over IPv6: {body}");
    let (ok, body) = curl(&ns, "b", APP_UID, "http://[::1]:15000/config_dump");
    assert!(ok && body.ends_with("status=200"), "/config_dump from B itself over ::1: {body}");

    // 7. Not HTTP: A's app speaks a database's protocol to B's pod address. It crosses in a tunnel
    //    of mutual TLS to B's sidecar, whose policy allows A on 5432, over either family.
    let database = |pod: &str, address: &str, port: &str| {
        // As root, as the apps run (only 2102's connections pass the rules).
        let out = ns.run(pod, None, &["python3", "-c", DATABASE_CLIENT, address, port]);
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        said.trim().to_string()
    };
    for address in ["198.18.0.2", "fd00:198:18::2"] {
        let got = database("a", address, "5432");
        assert_eq!(got, "pod=b echo:SELECT 1;", "A to B's database at {address}\n{}", logs());
    }
    // The same bytes to B's HTTP port: B's sidecar takes no tunnel there (8080 is not one of its
    // inbound.opaquePorts; raw bytes would go around the HTTP pipeline), and its policy would
    // not have let A's connection in either (the app would have answered 400).
    let not_allowed = database("a", "198.18.0.2", "8080");
    assert_eq!(not_allowed, "", "A's TCP to B's HTTP port\n{}", logs());
    // C has no sidecar: its plaintext meets B's STRICT inbound and never reaches the app.
    let from_c = database("c", "198.18.0.2", "5432");
    assert!(!from_c.contains("pod=b"), "C to B's database: {from_c}");
    // C has no sidecar to answer the tunnel (and is not in outbound.passthrough): A's app is
    // refused, its bytes unsent.
    let to_c = database("a", "198.18.0.3", "5432");
    assert!(!to_c.contains("pod=c"), "A to C's database: {to_c}\n{}", logs());

    // 8. B turns PERMISSIVE to let C, not yet in the mesh, reach its database by its address:
    //    C's plaintext to the opaque port is judged without a principal and reaches the app;
    //    to B's HTTP port the same bytes are still HTTP's, and never reach the app.
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: b-api, namespace: b}\nspec:\n  mtls: PERMISSIVE\n  authorization:\n    default: DENY\n    rules:\n      - {name: from-a, action: ALLOW, from: {principals: [\"spiffe://cluster.local/ns/a/sa/a\"]}, to: {paths: [\"/orders*\"]}}\n      - {name: a-database, action: ALLOW, from: {principals: [\"spiffe://cluster.local/ns/a/sa/a\"]}, to: {ports: [5432]}}\n      - {name: c-database, action: ALLOW, from: {ipBlocks: [198.18.0.3/32, \"fd00:198:18::3/128\"]}, to: {ports: [5432]}}\n",
    )
    .unwrap();
    let from_c = eventually_blocking(|| database("c", "198.18.0.2", "5432") == "pod=b echo:SELECT 1;");
    assert!(from_c, "C's plaintext to B's database once B is PERMISSIVE\n{}", logs());
    let from_c6 = database("c", "fd00:198:18::2", "5432");
    assert_eq!(from_c6, "pod=b echo:SELECT 1;", "over IPv6\n{}", logs());
    // The app there (Python's HTTP server) would answer such bytes with its own error page.
    let to_http = database("c", "198.18.0.2", "8080");
    assert!(!to_http.contains("Error response") && !to_http.contains("pod=b"), "C's bytes to B's HTTP port: {to_http}");
    // A's tunnel is unchanged.
    assert_eq!(database("a", "198.18.0.2", "5432"), "pod=b echo:SELECT 1;", "{}", logs());
}

// === the webhook over HTTPS, as the API server calls it ===

/// A control plane's configuration with a webhook (and its files in `dir`): its admin port at
/// `admin`, `extra` after the policies line (a top-level setting, then the webhook's settings
/// indented), the webhook's serving certificate as `serving` leaves its spec.
fn control_with_webhook(
    dir: &Path,
    admin: &str,
    extra: &str,
    serving: impl FnOnce(&mut palisade::identity::LeafSpec),
) -> (String, palisade::identity::WorkloadFiles) {
    use palisade::identity::{DevCa, LeafSpec};
    let ca = DevCa::generate("cluster.local").unwrap();
    let control = ca
        .issue_to(
            &LeafSpec::workload("spiffe://cluster.local/ns/palisade-system/sa/palisade-control"),
            &dir.join("control"),
        )
        .unwrap();
    let mut spec = LeafSpec::workload("spiffe://cluster.local/ns/palisade-system/sa/palisade-webhook");
    spec.dns_names = vec!["palisade-control.palisade-system.svc".into()];
    serving(&mut spec);
    let webhook = ca.issue_to(&spec, &dir.join("webhook")).unwrap();
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).unwrap();
    let (top, hook) = extra.split_once('\n').unwrap_or((extra, ""));
    let yaml = format!(
        "identity: {{files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}}}\n\
         grpc: {{listen: \"127.0.0.1:0\"}}\nadmin: {{listen: \"{admin}\"}}\npolicies: {{dir: \"{}\"}}\n{top}\n\
         webhook:\n  listen: \"127.0.0.1:0\"\n  cert: \"{}\"\n  key: \"{}\"\n{hook}\n\
         \x20 sidecar: {{identity: {{trustAnchorsFile: \"{}\"}}}}\n",
        control.cert.display(),
        control.key.display(),
        control.trust_bundle.display(),
        policies.display(),
        webhook.cert.display(),
        webhook.key.display(),
        control.trust_bundle.display(),
    );
    (yaml, webhook)
}

/// A webhook certificate past its end (the chart's generated one lasts 825 days, and was never
/// renewed): the API server refuses to call the webhook, and with `failurePolicy: Fail` every
/// pod of a meshed namespace with it. The control plane served it with no word, no metric and a
/// ready /ready (outside tester o2); it says so in an error line, and its end is a metric.
#[test]
fn an_expired_webhook_certificate_is_said_and_measured() {
    let dir = tempfile::tempdir().unwrap();
    let admin = support::free_port();
    let mut ends = 0;
    let (yaml, _) = control_with_webhook(dir.path(), &format!("127.0.0.1:{admin}"), "", |serving| {
        serving.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(3);
        serving.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        ends = serving.not_after.unix_timestamp();
    });
    let config = dir.path().join("control.yaml");
    std::fs::write(&config, yaml).unwrap();
    let log = dir.path().join("control.log");
    let mut child = std::process::Command::new(BIN)
        .args(["control", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let said = eventually_blocking(|| {
        std::fs::read_to_string(&log).unwrap_or_default().contains("the injection webhook's certificate has expired")
    });
    let metrics = eventually_blocking(|| {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "2", &format!("http://127.0.0.1:{admin}/metrics")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().any(|l| {
            l.strip_prefix("palisade_webhook_certificate_expiry_timestamp_seconds ")
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| (v - ends as f64).abs() < 2.0)
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said, "{text}");
    assert!(metrics, "the webhook certificate's end is a metric\n{text}");
    assert_eq!(text.matches("certificate has expired").count(), 1, "said once\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_webhook_answers_admission_reviews_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, webhook) =
        control_with_webhook(dir.path(), "127.0.0.1:0", "events: {sink: stderr}\n  failurePolicy: Ignore", |_| {});
    let config: palisade::config::ControlConfig =
        palisade::config::parse_yaml(Path::new("control.yaml"), &yaml).unwrap();
    let plane = palisade::control::ControlPlane::start(config, false).unwrap();
    let address = plane.webhook.expect("the webhook listens");

    let root = reqwest::Certificate::from_pem(&std::fs::read(&webhook.trust_bundle).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve("palisade-control.palisade-system.svc", address)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://palisade-control.palisade-system.svc:{}/inject", address.port());
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"app": "orders"}},
        "spec": {"serviceAccountName": "orders", "containers": [{"name": "app", "image": "orders:1"}]}
    });
    let review = |uid: &str, pod: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": "CREATE", "object": pod}
        })
    };
    let pod_for_burst = pod.clone();
    let answer: serde_json::Value =
        client.post(&url).json(&review("u-1", pod.clone())).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    use base64::Engine;
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let patch = String::from_utf8(patch).unwrap();
    assert!(patch.contains("palisade-proxy") && patch.contains("palisade-init"), "{patch}");

    // An opted-out pod is allowed untouched; a body that is no review gets 400.
    let mut opted_out = pod;
    opted_out["metadata"]["annotations"] = serde_json::json!({"palisade.dev/inject": "disabled"});
    let answer: serde_json::Value =
        client.post(&url).json(&review("u-2", opted_out)).send().await.unwrap().json().await.unwrap();
    assert_eq!((answer["response"]["allowed"].clone(), answer["response"].get("patch")), (true.into(), None));
    let bad = client.post(&url).body("{\"kind\": \"Nope\"}").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    // A burst of reviews at once from one address (the API server scaling a Deployment): all
    // answered.
    let burst = futures::future::join_all((0..12).map(|n| {
        let (client, url, review) = (&client, &url, review(&format!("burst-{n}"), pod_for_burst.clone()));
        async move { client.post(url).json(&review).send().await.map(|r| r.status().as_u16()) }
    }))
    .await;
    assert!(burst.iter().all(|r| matches!(r, Ok(200))), "{burst:?}");
    // The API server only speaks TLS to a webhook; so does the webhook.
    let plain = reqwest::Client::new().post(format!("http://{address}/inject")).body("{}").send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // Any pod can reach the port: one address holds at most 32 connections and sends two
    // bodies at a time, and a body that does not arrive whole within 10 s is answered 408 and
    // let go, with its memory.
    use rustls::pki_types::ServerName;
    use std::sync::Arc;
    use support::{client_tls, patience};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // From addresses of their own, which the earlier clients' pooled connections do not share.
    let connect = |from: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(from.parse().unwrap())?;
        let tcp = socket.connect(address).await?;
        let tls = Arc::new(client_tls(None));
        tokio_rustls::TlsConnector::from(tls).connect(ServerName::try_from("x").unwrap(), tcp).await
    };
    let head = "POST /inject HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4000000\r\n\r\n{";
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(connect("127.0.0.3:0").await.expect("one of the first 32 connections"));
    }
    let mut buf = [0u8; 64];
    let closed = match connect("127.0.0.3:0").await {
        Err(_) => true,
        Ok(mut extra) => matches!(
            tokio::time::timeout(patience(), async {
                extra.write_all(head.as_bytes()).await?;
                extra.read(&mut buf).await
            })
            .await,
            Ok(Ok(0) | Err(_))
        ),
    };
    assert!(closed, "the 33rd connection from one address is closed");
    let mut sending = Vec::new();
    for n in 0..3 {
        let mut stream = connect("127.0.0.4:0").await.expect("a connection from another address");
        let sent = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&[b' '; 100_000]).await?;
            stream.flush().await
        };
        // The third may be answered and closed before its body is all sent (a broken pipe).
        match (n, sent.await) {
            (2, _) | (_, Ok(())) => {}
            (_, Err(e)) => panic!("body {n} could not be sent: {e}"),
        }
        sending.push(stream);
    }
    // Two bodies at a time from one address: a third is turned away at once.
    let mut third = [0u8; 12];
    let _ = tokio::time::timeout(patience(), sending[2].read_exact(&mut third)).await;
    assert_eq!(&third, b"HTTP/1.1 429", "{:?}", String::from_utf8_lossy(&third));
    let mut answer = String::new();
    let _ = tokio::time::timeout(patience() + Duration::from_secs(10), sending[0].read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "a body cut short: {answer:?}");
    assert!(answer.contains("within 10 s"), "{answer}");
    drop((held, sending));
    plane.shutdown();
}
