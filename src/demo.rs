//! `palisade demo`: a whole mesh on loopback. A control plane process serving a policy directory,
//! two demo services each with its own sidecar process, a development PKI in a temporary
//! directory, traffic through the mesh, attacks that must fail, a live policy edit, and a
//! summary. Runs until Ctrl-C, or exits after the summary with `--once`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::TelemetryConfig;
use crate::identity::{DevCa, DevTokenIssuer, LeafSpec, WorkloadFiles, DEV_TOKEN_ISSUER};
use crate::lifecycle::StopSignals;
use crate::serve::{serve, ConnectionTracker, Transport};
use crate::telemetry::Telemetry;

const TRUST_DOMAIN: &str = "demo.local";
const ORDERS_AUTHORITY: &str = "orders.demo";
const IMPOSTOR_AUTHORITY: &str = "payments.demo";
const REQUESTS: usize = 20;

pub fn run(once: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the demo runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A `kill`, `timeout` or closed terminal stops the demo as Ctrl-C does: the demo's future is
    // dropped, and with it the control plane and sidecars it started (each stopped as it drops)
    // and its directory. Left to the signals' default action, the demo alone ended and its
    // children ran on, holding their ports.
    let outcome = runtime.block_on(async {
        let mut signals = StopSignals::install()?;
        // The checks' result once they are done: a signal at the "Press Ctrl-C" wait (the demo
        // awaits it too, but may still be tearing down when this branch sees it) ends with it.
        let checked = std::sync::OnceLock::new();
        tokio::select! {
            biased;
            outcome = demo(once, &checked) => outcome,
            signal = signals.next() => match checked.get() {
                Some(&all_good) => Ok(all_good),
                None => {
                    eprintln!("{signal}: stopped before the demo finished");
                    Ok(false)
                }
            }
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Ports {
    frontend_app: u16,
    orders_app: u16,
    a: [u16; 3],
    b: [u16; 3],
    /// The control plane's gRPC, admin and CA ports.
    control: [u16; 3],
}

/// The orders service's policy as the operator first writes it, and after the live edit.
fn orders_policy(also_closed: &[&str]) -> String {
    let mut closed = vec!["\"/admin*\"".to_string()];
    closed.extend(also_closed.iter().map(|p| format!("\"{p}*\"")));
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: orders-api, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  authorization:\n    rules:\n      - {{name: closed-paths, action: DENY, to: {{paths: [{}]}}}}\n      - {{name: frontend-calls, action: ALLOW, from: {{principals: [\"spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend\"]}}}}\n  rateLimits:\n    - {{name: per-caller, key: source.principal, rate: 100, per: 1s, burst: 200}}\n",
        closed.join(", ")
    )
}

/// A control plane child process; stopped with SIGTERM when dropped.
struct ControlProcess {
    child: Child,
    admin: SocketAddr,
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                eprintln!("stopped the control plane");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped the control plane (killed: it did not stop in 5 s)");
    }
}

fn spawn_control(dir: &Path, policies: &Path, [grpc, admin, ca]: [u16; 3]) -> anyhow::Result<ControlProcess> {
    let config = dir.join("control.yaml");
    // The control plane signs its own certificate and every sidecar's with the development CA;
    // it checks service-account tokens offline against the demo issuer's keys (in a cluster:
    // the API server's TokenReview). No API server here, so workloads' labels come from Hello.
    std::fs::write(
        &config,
        format!(
            "trustDomain: {TRUST_DOMAIN}\nidentity: {{files: null}}\n\
             grpc: {{listen: \"127.0.0.1:{grpc}\"}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\n\
             ca: {{listen: \"127.0.0.1:{ca}\", cert: \"{root}/ca/ca.crt\", key: \"{root}/ca/ca.key\", certTtl: 1h,\n\
             \x20     tokens: {{audience: palisade, jwks: {{file: \"{root}/sa-issuer.jwks\", issuer: \"{DEV_TOKEN_ISSUER}\"}}}}}}\n\
             policies: {{dir: \"{}\", pollInterval: 100ms, trustHelloLabels: true}}\nevents: {{sink: \"file:{}\"}}\n",
            policies.display(),
            dir.join("control.events.jsonl").display(),
            root = dir.display(),
        ),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .arg("control")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("control.log"))?)
        .spawn()?;
    Ok(ControlProcess { child, admin: loopback(admin) })
}

/// Reserves `N` distinct loopback ports by holding a listener on each until all are chosen: ports
/// taken one at a time and released in between can come back twice from the kernel, and two demo
/// processes sharing a port is a demo that fails for no reason of its own. They are drawn below
/// the kernel's ephemeral range, from which every outgoing connection takes its local port: one
/// taken from there is free when reserved and may be some connection's own by the time a child,
/// released into it, binds it (seen: a sidecar's outbound listener refused with EADDRINUSE while
/// other processes on the machine opened connections).
fn reserve_ports<const N: usize>() -> anyhow::Result<[std::net::TcpListener; N]> {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut held = Vec::with_capacity(N);
    if ephemeral > LOWEST + 1_000 {
        let mut state = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        for _ in 0..20_000 {
            if held.len() == N {
                break;
            }
            // xorshift: a different start in each process, so two demos rarely try the same ports.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let port = LOWEST + (state % u64::from(ephemeral - LOWEST)) as u16;
            // The sidecars listen on IPv6 loopback at the same port too: it must be free there.
            let v6_free = match std::net::TcpListener::bind(("::1", port)) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
            };
            if let (true, Ok(listener)) = (v6_free, std::net::TcpListener::bind(("127.0.0.1", port))) {
                held.push(listener);
            }
        }
    }
    // A machine whose ephemeral range starts low: the kernel's choice, as before.
    while held.len() < N {
        held.push(std::net::TcpListener::bind("127.0.0.1:0")?);
    }
    held.try_into().map_err(|_| anyhow::anyhow!("could not reserve {N} ports"))
}

fn port_of(listener: &std::net::TcpListener) -> anyhow::Result<u16> {
    Ok(listener.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A sidecar child process; asked to drain through its admin API when dropped.
struct SidecarProcess {
    name: &'static str,
    child: Child,
    admin: SocketAddr,
    events: PathBuf,
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        // Already gone: a terminal's Ctrl-C reaches the whole process group, and each sidecar
        // drains on its own SIGINT (or it ended earlier, which its status says).
        if let Ok(Some(status)) = self.child.try_wait() {
            return self.report(status);
        }
        let admin = self.admin;
        let asked = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
            std::io::Write::write_all(
                &mut stream,
                b"POST /shutdown HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .ok()
        })
        .join()
        .ok()
        .flatten()
        .is_some();
        // Past the sidecars' drainPeriod (2 s), with room for a busy machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        // Waited for when asked; looked at once more when not (it may have ended meanwhile).
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return self.report(status);
            }
            if !asked || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped sidecar {} (killed: it did not drain in 10 s)", self.name);
    }
}

impl SidecarProcess {
    fn report(&self, status: std::process::ExitStatus) {
        match status.success() {
            true => eprintln!("stopped sidecar {} (drained)", self.name),
            false => eprintln!("sidecar {} had ended: {status}", self.name),
        }
    }
}

fn sidecar_yaml(
    token: &Path,
    sa: &str,
    app: u16,
    [inbound, outbound, admin]: [u16; 3],
    routes: &str,
    [control, _, ca]: [u16; 3],
    anchors: &str,
) -> String {
    format!(
        r#"drainPeriod: 2s
identity:
  files: null
  controlPlane: {{address: "127.0.0.1:{ca}", tokenFile: "{}", trustAnchors: {anchors:?}}}
trustDomain: {TRUST_DOMAIN}
inbound: {{listen: "127.0.0.1:{inbound}", app: "127.0.0.1:{app}", mtls: STRICT}}
outbound:
  listen: "127.0.0.1:{outbound}"
  destinations: {routes}
admin: {{listen: "127.0.0.1:{admin}"}}
workload: {{namespace: demo, serviceAccount: {sa}, labels: {{app: {sa}}}}}
policy: {{controlPlane: "https://127.0.0.1:{control}", failMode: closed}}
telemetry: {{events: {{sink: stdout, format: ocsf}}, accessLog: false}}
"#,
        token.display()
    )
}

fn spawn_sidecar(name: &'static str, dir: &Path, yaml: &str, admin: u16) -> anyhow::Result<SidecarProcess> {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml)?;
    let events = dir.join(format!("{name}.events.jsonl"));
    let child = Command::new(std::env::current_exe()?)
        .arg("sidecar")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&events)?)
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .spawn()?;
    Ok(SidecarProcess { name, child, admin: loopback(admin), events })
}

/// The demo's private scratch directory (keys, configs, logs), removed when the demo ends unless
/// it is kept to show a failure's logs.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(prefix: &str) -> std::io::Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let mut suffix = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
            .map_err(|_| std::io::Error::other("no randomness for the demo's directory name"))?;
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("{prefix}{name}"));
        // 0700 and created fresh (fails if the name exists): the directory holds private keys.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(WorkDir { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) -> PathBuf {
        self.keep = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn demo(once: bool, checked: &std::sync::OnceLock<bool>) -> anyhow::Result<bool> {
    let dir = WorkDir::create("palisade-demo-")?;
    let started = Instant::now();

    // A PKI for the mesh, and one outside it.
    let ca = DevCa::generate(TRUST_DOMAIN)?;
    ca.write(&dir.path().join("ca"))?;
    let frontend_id = format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend");
    let orders_id = format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/orders");
    // Sidecars get their certificates from the control plane's CA, proving their service
    // account with a projected token, as in a cluster.
    let issuer = DevTokenIssuer::generate().map_err(anyhow::Error::msg)?;
    std::fs::write(dir.path().join("sa-issuer.jwks"), issuer.jwks())?;
    let token_of = |account: &str| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(format!("{account}.token"));
        std::fs::write(
            &path,
            issuer.token("demo", account, &format!("{account}-1"), 3600).map_err(anyhow::Error::msg)?,
        )?;
        Ok(path)
    };
    let (frontend_token, orders_token) = (token_of("frontend")?, token_of("orders")?);
    let anchors = ca.cert_pem().to_string();
    let rogue = DevCa::generate(TRUST_DOMAIN)?;
    let rogue_files = rogue.issue_to(&LeafSpec::workload(&frontend_id), &dir.path().join("rogue"))?;

    // The apps keep their listeners; the ports written into the children's configuration are
    // released just before the children start.
    let [frontend_listener, orders_listener, a0, a1, a2, b0, b1, b2, c0, c1, c2] = reserve_ports::<11>()?;
    let ports = Ports {
        frontend_app: port_of(&frontend_listener)?,
        orders_app: port_of(&orders_listener)?,
        a: [port_of(&a0)?, port_of(&a1)?, port_of(&a2)?],
        b: [port_of(&b0)?, port_of(&b1)?, port_of(&b2)?],
        control: [port_of(&c0)?, port_of(&c1)?, port_of(&c2)?],
    };
    drop([a0, a1, a2, b0, b1, b2, c0, c1, c2]);

    // The control plane and the directory it serves (a ConfigMap in Kubernetes).
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies)?;
    let policy_file = policies.join("orders.yaml");
    write_atomically(&policy_file, &orders_policy(&[]))?;
    let mut control = spawn_control(dir.path(), &policies, ports.control)?;
    if let Err(why) = wait_ready(control.admin, &mut control.child, Duration::from_secs(15)).await {
        anyhow::bail!("the control plane did not become ready: {why}; its log is kept in {}", dir.keep().display());
    }

    // The two demo services.
    let (stop, stop_rx) = watch::channel(false);
    let telemetry =
        Arc::new(Telemetry::new(&TelemetryConfig { access_log: false, ..TelemetryConfig::default() }, None)?);
    let apps = [
        (orders_listener, Arc::new(DemoApp::Orders) as Arc<DemoApp>),
        (frontend_listener, Arc::new(DemoApp::Frontend { outbound: loopback(ports.a[1]) })),
    ];
    for (listener, app) in apps {
        let listener = crate::lifecycle::Listener::try_from(listener)?.into_async();
        tokio::spawn(serve(
            listener,
            Transport::Plain,
            app,
            telemetry.clone(),
            ConnectionTracker::default(),
            stop_rx.clone(),
        ));
    }

    // Their sidecars, as separate processes.
    // payments.demo leads to a server of the mesh that is not payments (the control plane's
    // policy port, which answers mutual TLS as the control plane): sidecar A must refuse it.
    let routes_a = format!(
        "[{{authority: {ORDERS_AUTHORITY}, address: \"127.0.0.1:{b}\", identity: \"{orders_id}\"}}, \
         {{authority: {IMPOSTOR_AUTHORITY}, address: \"127.0.0.1:{impostor}\", identity: \"spiffe://{TRUST_DOMAIN}/ns/demo/sa/payments\"}}]",
        b = ports.b[0],
        impostor = ports.control[0],
    );
    let mut sidecar_b = spawn_sidecar(
        "sidecar-orders",
        dir.path(),
        &sidecar_yaml(&orders_token, "orders", ports.orders_app, ports.b, "[]", ports.control, &anchors),
        ports.b[2],
    )?;
    let mut sidecar_a = spawn_sidecar(
        "sidecar-frontend",
        dir.path(),
        &sidecar_yaml(&frontend_token, "frontend", ports.frontend_app, ports.a, &routes_a, ports.control, &anchors),
        ports.a[2],
    )?;
    for sidecar in [&mut sidecar_a, &mut sidecar_b] {
        if let Err(why) = wait_ready(sidecar.admin, &mut sidecar.child, Duration::from_secs(15)).await {
            let name = sidecar.name;
            anyhow::bail!("{name} did not become ready: {why}; its log is kept in {}", dir.keep().display());
        }
    }
    let ready_after = started.elapsed();

    println!(
        "Palisade demo: a two-service mesh on loopback, trust domain {TRUST_DOMAIN} (ready in {} ms)\n",
        ready_after.as_millis()
    );
    println!("  frontend app 127.0.0.1:{}  ->  sidecar A (outbound :{})  == mTLS, HTTP/2 ==>  sidecar B (inbound :{})  ->  orders app 127.0.0.1:{}",
        ports.frontend_app, ports.a[1], ports.b[0], ports.orders_app);
    println!(
        "  control plane (gRPC :{}, admin :{}, CA :{}) signs each sidecar's certificate and pushes it the policies that select it, from {}\n",
        ports.control[0],
        ports.control[1],
        ports.control[2],
        policies.display()
    );

    let mut all_good = true;
    let mut check = |ok: bool, line: String| {
        all_good &= ok;
        println!("  {} {line}", if ok { "ok  " } else { "FAIL" });
    };

    // 0. Identity: each sidecar holds a certificate the CA signed for exactly its account.
    for (sidecar, expected) in [(&sidecar_a, &frontend_id), (&sidecar_b, &orders_id)] {
        let dump = control_status_at(sidecar.admin, "/config_dump").await;
        let identity = &dump["identity"];
        check(
            identity["spiffeId"] == expected.as_str() && identity["source"]["controlPlane"]["issued"] == true,
            format!(
                "{} holds a certificate from the control plane's CA for {} (asked with its service-account token; key never left memory)",
                sidecar.name,
                identity["spiffeId"].as_str().unwrap_or("nothing")
            ),
        );
    }

    // 1. Traffic through the mesh.
    let mut latencies = Vec::with_capacity(REQUESTS);
    let mut successes = 0;
    let mut caller_seen = String::new();
    for _ in 0..REQUESTS {
        let t = Instant::now();
        if let Ok((200, body)) = http_get(loopback(ports.frontend_app), "localhost", "/").await {
            successes += 1;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                caller_seen = v["orders"]["caller"].as_str().unwrap_or_default().to_string();
            }
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();
    check(
        successes == REQUESTS,
        format!(
            "{successes}/{REQUESTS} requests frontend -> orders through both sidecars (p50 {:.2} ms, max {:.2} ms, app included)",
            latencies[REQUESTS / 2].as_secs_f64() * 1e3,
            latencies[REQUESTS - 1].as_secs_f64() * 1e3
        ),
    );
    check(
        caller_seen.contains(&frontend_id),
        format!("orders saw its caller as {frontend_id} (x-forwarded-client-cert: {caller_seen})"),
    );

    // 2. What must be refused.
    let plaintext = http_get(loopback(ports.b[0]), ORDERS_AUTHORITY, "/").await;
    check(plaintext.is_err(), format!("plaintext to sidecar B refused ({})", describe(&plaintext)));
    let foreign = tls_get(loopback(ports.b[0]), &rogue_files).await;
    check(
        foreign.is_err(),
        format!("a certificate from a foreign CA refused at the handshake ({})", describe(&foreign)),
    );
    let impostor = http_get(loopback(ports.a[1]), IMPOSTOR_AUTHORITY, "/").await;
    check(
        matches!(impostor, Ok((502, _))),
        format!("a server whose identity is not the expected one refused by sidecar A ({})", describe(&impostor)),
    );

    // 3. Policy from the control plane, and a live edit.
    let admin_path = http_get(loopback(ports.a[1]), ORDERS_AUTHORITY, "/admin/users").await;
    check(
        matches!(admin_path, Ok((403, _))),
        format!(
            "GET /admin/users refused by policy demo/orders-api, pushed by the control plane ({})",
            describe(&admin_path)
        ),
    );
    let status = control_status(control.admin).await;
    check(
        status["summary"]["synced"] == 2,
        format!(
            "control plane /status: {} sidecars connected, {} synced (version {})",
            status["summary"]["connected"], status["summary"]["synced"], status["policies"]["version"]
        ),
    );
    let before = http_get(loopback(ports.a[1]), ORDERS_AUTHORITY, "/orders/export").await;
    let edited = Instant::now();
    write_atomically(&policy_file, &orders_policy(&["/orders/export"]))?;
    let mut enforced = None;
    while edited.elapsed() < Duration::from_secs(5) {
        if let Ok((403, _)) = http_get(loopback(ports.a[1]), ORDERS_AUTHORITY, "/orders/export").await {
            enforced = Some(edited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check(
        matches!(before, Ok((200, _))) && enforced.is_some(),
        format!(
            "policy edit (close /orders/export) enforced by sidecar B {} after the file changed (before: {})",
            enforced.map_or("never".to_string(), |d| format!("{} ms", d.as_millis())),
            describe(&before)
        ),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = control_status(control.admin).await;
    let orders_entry =
        status["sidecars"].as_array().and_then(|all| all.iter().find(|s| s["identity"] == orders_id.as_str()));
    let frontend_entry =
        status["sidecars"].as_array().and_then(|all| all.iter().find(|s| s["identity"] == frontend_id.as_str()));
    check(
        orders_entry.is_some_and(|s| s["pushes"] == 2 && s["state"] == "synced")
            && frontend_entry.is_some_and(|s| s["pushes"] == 1),
        format!(
            "/status: orders ACKed version {} (2 pushes); frontend, not selected by the edit, got no push ({} push)",
            orders_entry.map_or(serde_json::Value::Null, |s| s["acked"]["version"].clone()),
            frontend_entry.map_or(serde_json::Value::Null, |s| s["pushes"].clone())
        ),
    );

    // 4. What the sidecars reported.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for sidecar in [&sidecar_a, &sidecar_b] {
        let metrics = http_get(sidecar.admin, "localhost", "/metrics").await.map(|(_, b)| b).unwrap_or_default();
        let interesting: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                (l.starts_with("palisade_requests_total") || l.starts_with("palisade_tls_handshakes_total"))
                    && !l.starts_with('#')
            })
            .collect();
        println!("\n  {} metrics (http://{}/metrics):", sidecar.name, sidecar.admin);
        for line in interesting {
            println!("    {line}");
        }
        let events = std::fs::read_to_string(&sidecar.events).unwrap_or_default();
        println!("  {} security events (OCSF, {}): {}", sidecar.name, sidecar.events.display(), events.lines().count());
        if let Some(last) = events.lines().last() {
            let v: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
            println!("    last: {}", v["message"].as_str().unwrap_or(last));
        }
    }

    println!(
        "\n  {} in {:.1} s",
        if all_good { "all checks passed" } else { "SOME CHECKS FAILED" },
        started.elapsed().as_secs_f64()
    );
    if !once {
        println!("\nThe mesh keeps running. Try:");
        println!(
            "  curl http://127.0.0.1:{}/                          # frontend -> orders through the mesh",
            ports.frontend_app
        );
        println!(
            "  curl -H 'Host: {ORDERS_AUTHORITY}' http://127.0.0.1:{}/   # straight into sidecar A's outbound listener",
            ports.a[1]
        );
        println!(
            "  curl http://127.0.0.1:{}/config_dump                # sidecar A's effective configuration",
            ports.a[2]
        );
        println!(
            "  curl http://127.0.0.1:{}/status                     # the control plane: every sidecar and the version it ACKed",
            ports.control[1]
        );
        println!(
            "  edit {} and watch /status              # the change is pushed to the sidecars it selects",
            policy_file.display()
        );
        println!("  files (certificates, configs, logs, events): {}", dir.path().display());
        let _ = checked.set(all_good);
        println!("Press Ctrl-C to stop.");
        StopSignals::install()?.next().await;
        println!();
    }
    stop.send_replace(true);
    drop(sidecar_a);
    drop(sidecar_b);
    drop(control);
    Ok(all_good)
}

async fn control_status(admin: SocketAddr) -> serde_json::Value {
    control_status_at(admin, "/status").await
}

/// An admin endpoint's JSON (`Null` when it cannot be read).
async fn control_status_at(admin: SocketAddr, path: &str) -> serde_json::Value {
    let body = http_get(admin, "localhost", path).await.map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_default()
}

/// Replaces a file in one step, as a ConfigMap update does.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn describe<T: std::fmt::Debug>(r: &Result<(u16, T), anyhow::Error>) -> String {
    match r {
        Ok((status, _)) => format!("HTTP {status}"),
        Err(e) => format!("{e:#}"),
    }
}

/// Waits for `child` to answer ready on its admin port. A child that exited is not ready, whatever
/// else may be listening there now.
async fn wait_ready(admin: SocketAddr, child: &mut Child, patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => return Err(format!("it exited ({status})")),
            Err(e) => return Err(format!("its state is unknown ({e})")),
        }
        if let Ok((200, body)) = http_get(admin, "localhost", "/ready").await {
            if body.trim() == "ready" {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("no ready answer on {admin} within {} s", patience.as_secs()))
}

/// A one-shot HTTP/1.1 GET, enough for the demo's own calls.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    exchange(stream, host, path).await
}

async fn tls_get(addr: SocketAddr, client: &WorkloadFiles) -> anyhow::Result<(u16, String)> {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&client.cert)?.collect::<Result<_, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&client.key)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(chain, key)?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from("orders.demo")?.to_owned(), tcp)
        .await?;
    exchange(tls, ORDERS_AUTHORITY, "/").await
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("connection closed without an HTTP response"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The demo's rogue client skips server verification: the point is the server's refusal.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The demo's two services, served by pingora's HTTP server app.
enum DemoApp {
    /// Answers with who called it, as its sidecar told it.
    Orders,
    /// Calls orders through its sidecar's outbound listener and returns both answers.
    Frontend { outbound: SocketAddr },
}

#[async_trait]
impl ServeHttp for DemoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let header =
            |name: &str| session.req_header().headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (status, body) = match self {
            DemoApp::Orders => {
                let xfcc = header("x-forwarded-client-cert");
                let caller = xfcc.split(';').find_map(|part| part.strip_prefix("URI=")).unwrap_or("").to_string();
                (
                    StatusCode::OK,
                    serde_json::json!({"service": "orders", "caller": caller, "request_id": header("x-request-id")}),
                )
            }
            DemoApp::Frontend { outbound } => match http_get(*outbound, ORDERS_AUTHORITY, "/orders").await {
                Ok((200, body)) => {
                    let orders: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    (StatusCode::OK, serde_json::json!({"service": "frontend", "orders": orders}))
                }
                Ok((status, body)) => (
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({"service": "frontend", "orders_status": status, "orders_body": body}),
                ),
                Err(e) => (StatusCode::BAD_GATEWAY, serde_json::json!({"service": "frontend", "error": e.to_string()})),
            },
        };
        let body = serde_json::to_vec(&body).expect("json");
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body)
            .expect("response")
    }
}
