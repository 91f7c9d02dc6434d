//! Every loader of policy and configuration against hostile or broken input, with the process
//! under test limited to 256 MB of address space: `palisade check`, the sidecar's configuration,
//! a running sidecar reloading its policy file, and the control plane scanning its directory.
//! Each input is refused with its place, memory stays flat, the last good policy stays in force,
//! and SIGTERM still ends the process.
//!
//! glibc reserves 64 MB of address space per thread arena; `MALLOC_ARENA_MAX=2` keeps that
//! reservation from eating the cap, so the cap limits what the loaders allocate.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
/// 256 MB of address space, in the KiB `ulimit -v` takes.
const ADDRESS_SPACE_KIB: u32 = 256 * 1024;

/// `palisade ARGS` with its address space capped.
fn capped(args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .env("MALLOC_ARENA_MAX", "2")
        .env("PALISADE_LOG", "warn");
    command
}

/// Runs to the end, or is killed when it outlasts the test's patience (a hang is a failure, not
/// a wait); how long it took.
fn run(mut command: Command) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if !eventually_blocking(|| child.try_wait().unwrap().is_some()) {
        child.kill().unwrap();
        panic!("{command:?} still running after {:?}", patience());
    }
    let took = started.elapsed();
    (child.wait_with_output().unwrap(), took)
}

const HEAD: &str =
    "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: guard, namespace: shop}\n";

/// A good policy: nothing under /admin, everything else allowed.
fn guard() -> String {
    format!("{HEAD}spec:\n  authorization:\n    rules:\n      - {{name: no-admin, action: DENY, to: {{paths: [\"/admin*\"]}}}}\n")
}

/// Each hostile or broken input: a name, how to put it at `path`, what the error must say, and
/// the line it must name (0: the whole file).
type Hostile = (&'static str, fn(&Path), &'static str, usize);

fn write(path: &Path, text: &str) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).unwrap();
}

fn hostile_inputs() -> Vec<Hostile> {
    vec![
        ("a TAB in the indentation", |p| write(p, &format!("{HEAD}spec:\n\tmtls: STRICT\n")), "", 5),
        ("an unclosed flow sequence", |p| write(p, &format!("{HEAD}spec: {{a: [}}\n")), "", 4),
        ("a mapping in a plain value", |p| write(p, &format!("{HEAD}spec: a: b\n")), "", 4),
        ("an unterminated quote", |p| write(p, &format!("{HEAD}spec:\n  mtls: \"STRICT\n")), "", 5),
        ("an empty file", |p| write(p, ""), "holds no SecurityPolicy", 0),
        ("only a comment", |p| write(p, "# policies come later\n"), "holds no SecurityPolicy", 0),
        (
            "a duplicate key",
            |p| write(p, &format!("{HEAD}spec:\n  selector: {{matchLabels: {{app: a, app: b}}}}\n")),
            "duplicate key \"app\"",
            5,
        ),
        ("a custom tag", |p| write(p, &format!("{HEAD}spec: !Evil {{}}\n")), "!Evil", 4),
        ("100k levels of nesting", |p| write(p, &"[".repeat(100_000)), "", 1),
        ("a 50 MB file", |p| write(p, &format!("{}{}", guard(), "#".repeat(50 << 20))), "more than the limit", 0),
        (
            "a FIFO",
            |p| {
                let _ = std::fs::remove_file(p);
                assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
            },
            "not a regular file",
            0,
        ),
    ]
}

#[test]
fn check_refuses_each_hostile_input_quickly_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    for (what, put, words, line) in hostile_inputs() {
        put(&file);
        let (out, took) = run(capped(&["check", file.to_str().unwrap()]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("check, {what}: refused in {took:?}");
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(words), "{what}: {stderr}");
        if line > 0 {
            assert!(stderr.contains(&format!("{}:{line}:", file.display())), "{what}: {stderr}");
        }
        assert!(!stderr.contains("memory allocation"), "{what}: {stderr}");
    }
    let (out, _) = run(capped(&["check", "/dev/zero"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn a_broken_sidecar_configuration_is_refused_quickly_with_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    let cases: [(&str, &str, &str); 4] = [
        ("a syntax error", "inbound:\n\tmtls: STRICT\n", ":2:"),
        ("impossible threads", "threads: 100000\n", "threads: must be from 1 to 64, got 100000"),
        ("a duplicate key", "admin: {listen: \"127.0.0.1:1\", listen: \"127.0.0.1:2\"}\n", "duplicate key"),
        ("deep nesting", &"[".repeat(100_000), ":1:"),
    ];
    for (what, text, words) in cases {
        write(&config, text);
        let (out, took) = run(capped(&["sidecar", "--config", config.to_str().unwrap()]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("sidecar config, {what}: refused in {took:?}");
        assert_eq!(out.status.code(), Some(78), "{what}: {stderr}");
        assert!(stderr.contains(words), "{what}: {stderr}");
    }
    let (out, _) = run(capped(&["sidecar", "--config", "/dev/zero"]));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

/// A `palisade sidecar` process (capped) for `shop/orders`, PERMISSIVE, in front of `app`.
struct SidecarProcess {
    child: Child,
    inbound: u16,
    admin: u16,
}

impl SidecarProcess {
    async fn start(pki: &Pki, app: std::net::SocketAddr, policy: Option<&Path>, control: Option<String>) -> Self {
        let files = pki.workload("orders", &id("shop", "orders"));
        let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
        let config = pki.path("sidecar.yaml");
        let policy_section = match (policy, control) {
            (Some(file), _) => format!("policy: {{files: [\"{}\"]}}\n", file.display()),
            (None, Some(address)) => format!("policy: {{controlPlane: \"{address}\"}}\n"),
            (None, None) => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "identity: {{files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\", reloadInterval: 100ms}}}}\n\
                 inbound: {{listen: \"127.0.0.1:{inbound}\", app: \"{app}\", mtls: PERMISSIVE}}\n\
                 outbound: {{listen: \"127.0.0.1:{outbound}\"}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\n\
                 workload: {{namespace: shop, serviceAccount: orders, labels: {{app: orders}}}}\n\
                 telemetry: {{accessLog: false, events: {{sink: stderr}}}}\n{policy_section}",
                files.cert.display(),
                files.key.display(),
                files.trust_bundle.display(),
            ),
        )
        .unwrap();
        let child = capped(&["sidecar", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ready = eventually(|| async move {
            matches!(http_client().get(format!("http://127.0.0.1:{admin}/ready")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ready, "the sidecar became ready");
        SidecarProcess { child, inbound, admin }
    }

    async fn status_of(&self, path: &str) -> u16 {
        http_client().get(format!("http://127.0.0.1:{}{path}", self.inbound)).send().await.unwrap().status().as_u16()
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = http_client()
            .get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    fn resident_kib(&self) -> u64 {
        resident_kib(self.child.id())
    }

    /// SIGTERM, and the exit status once it ended.
    fn terminate(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut status = None;
    if !eventually_blocking(|| {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        child.kill().unwrap();
        panic!("still running {:?} after SIGTERM", patience());
    }
    status.unwrap()
}

/// Growth of resident memory that means a loader kept what it read (50 MB inputs are part of
/// the set): more than this, and memory is not flat.
const FLAT_KIB: u64 = 24 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sidecar_keeps_its_policy_through_every_hostile_rewrite() {
    let pki = Pki::new();
    let app = EchoApp::start().await;
    let policy = pki.path("policy.yaml");
    write(&policy, &guard());
    let sidecar = SidecarProcess::start(&pki, app.addr, Some(&policy), None).await;
    assert_eq!(sidecar.status_of("/admin").await, 403);
    assert_eq!(sidecar.status_of("/orders").await, 200);
    let before = sidecar.resident_kib();
    let rejected = r#"palisade_policy_updates_total{result="rejected"}"#;
    for (what, put, _, _) in hostile_inputs() {
        let count = sidecar.metric(rejected).await;
        let started = Instant::now();
        put(&policy);
        let seen = eventually(|| async { sidecar.metric(rejected).await > count }).await;
        eprintln!("sidecar reload, {what}: rejected in {:?}", started.elapsed());
        assert!(seen, "{what}: the update is rejected");
        assert_eq!(sidecar.status_of("/admin").await, 403, "{what}: the last good policy stays in force");
        assert_eq!(sidecar.status_of("/orders").await, 200, "{what}");
    }
    let after = sidecar.resident_kib();
    eprintln!("sidecar resident memory: {before} KiB before, {after} KiB after");
    assert!(after < before + FLAT_KIB, "memory stays flat: {before} KiB -> {after} KiB");
    // A good file is taken again, and SIGTERM ends the process.
    write(&policy, &guard().replace("/admin*", "/secret*"));
    assert!(eventually(|| async { sidecar.status_of("/secret").await == 403 }).await);
    assert!(sidecar.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_refuses_hostile_files_keeps_serving_and_exits_on_sigterm() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write(&dir.join("guard.yaml"), &format!("{}  selector: {{matchLabels: {{app: orders}}}}\n", guard()));
    let control = pki.workload("control", "spiffe://cluster.local/ns/palisade-system/sa/palisade-control");
    let (grpc, admin) = (free_port(), free_port());
    let config = pki.path("control.yaml");
    std::fs::write(
        &config,
        format!(
            "identity: {{files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}}}\n\
             grpc: {{listen: \"127.0.0.1:{grpc}\"}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\n\
             policies: {{dir: \"{}\", pollInterval: 100ms, trustHelloLabels: true}}\nevents: {{sink: stderr}}\n",
            control.cert.display(),
            control.key.display(),
            control.trust_bundle.display(),
            dir.display()
        ),
    )
    .unwrap();
    let mut plane = capped(&["control", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = || async move {
        http_client().get(format!("http://127.0.0.1:{admin}/metrics")).send().await.map(|r| r.text()).ok()?.await.ok()
    };
    let metric = |text: &str, series: &str| {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
    };
    assert!(eventually(|| async { metrics().await.is_some() }).await, "the control plane is up");

    let app = EchoApp::start().await;
    let sidecar = SidecarProcess::start(&pki, app.addr, None, Some(format!("https://127.0.0.1:{grpc}"))).await;
    assert_eq!(sidecar.status_of("/admin").await, 403, "the served policy is in force");
    let before = resident_kib(plane.id());
    let rejected = r#"palisade_policy_updates_total{result="rejected"}"#;
    for (what, put, _, _) in hostile_inputs() {
        let count = metric(&metrics().await.unwrap(), rejected);
        let started = Instant::now();
        put(&dir.join("hostile.yaml"));
        let seen = eventually(|| async { metric(&metrics().await.unwrap_or_default(), rejected) > count }).await;
        eprintln!("control plane, {what}: rejected in {:?}", started.elapsed());
        assert!(seen, "{what}: the file is rejected");
        assert_eq!(sidecar.status_of("/admin").await, 403, "{what}: the sidecar keeps its policy");
    }
    let after = resident_kib(plane.id());
    eprintln!("control plane resident memory: {before} KiB before, {after} KiB after");
    assert!(after < before + FLAT_KIB, "memory stays flat: {before} KiB -> {after} KiB");

    // With a broken file still in the directory and a sidecar connected, SIGTERM ends it within
    // its drain period (5 s).
    write(&dir.join("hostile.yaml"), &format!("{HEAD}spec: {{a: [}}\n"));
    let started = Instant::now();
    let status = terminate(&mut plane);
    eprintln!("control plane exit after SIGTERM: {:?}", started.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(sidecar.terminate().success());
}
