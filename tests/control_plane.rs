//! The control plane as a user runs it: a `palisade control` process serving a directory of
//! policy files over mutual TLS, and sidecars that subscribe, apply, ACK or NACK, and keep
//! their last good policy through outages.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::{FailMode, SidecarConfig};
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const CONTROL_ID: &str = "spiffe://cluster.local/ns/palisade-system/sa/palisade-control";

/// A `palisade control` process on fixed loopback ports (so a restart is found at the same
/// address), serving `dir`.
struct ControlPlane {
    child: Option<Child>,
    config: PathBuf,
    grpc: u16,
    admin: u16,
    dir: PathBuf,
    events: PathBuf,
}

impl ControlPlane {
    async fn start(pki: &Pki, name: &str, dir: &Path) -> ControlPlane {
        Self::start_as(pki, name, dir, CONTROL_ID).await
    }

    /// A control plane whose certificate names `identity`.
    async fn start_as(pki: &Pki, name: &str, dir: &Path, identity: &str) -> ControlPlane {
        Self::start_with(pki, name, dir, identity, "").await
    }

    /// With `policies` settings added (`, revisionHold: 1s`).
    async fn start_with(pki: &Pki, name: &str, dir: &Path, identity: &str, policies: &str) -> ControlPlane {
        Self::start_with_files(pki, name, dir, &pki.workload(name, identity), policies).await
    }

    /// With its own certificate and key from `files`.
    async fn start_with_files(
        pki: &Pki,
        name: &str,
        dir: &Path,
        files: &palisade::identity::WorkloadFiles,
        policies: &str,
    ) -> ControlPlane {
        let (grpc, admin) = (free_port(), free_port());
        let events = pki.path(&format!("{name}-events.jsonl"));
        let config = pki.path(&format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "trustDomain: {TD}\nidentity: {{files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}}}\n\
                 grpc: {{listen: \"127.0.0.1:{grpc}\"}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\n\
                 policies: {{dir: \"{}\", pollInterval: 100ms, trustHelloLabels: true{policies}}}\nevents: {{sink: \"file:{}\"}}\n",
                files.cert.display(),
                files.key.display(),
                files.trust_bundle.display(),
                dir.display(),
                events.display()
            ),
        )
        .unwrap();
        let mut plane = ControlPlane { child: None, config, grpc, admin, dir: dir.to_path_buf(), events };
        plane.spawn().await;
        plane
    }

    async fn spawn(&mut self) {
        let child = Command::new(BIN)
            .args(["control", "--config"])
            .arg(&self.config)
            .env("PALISADE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let admin = self.admin;
        let ready = eventually(|| async move {
            matches!(http_client().get(format!("http://127.0.0.1:{admin}/ready")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ready, "control plane became ready");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc)
    }

    async fn status(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/status", self.admin);
        http_client().get(url).send().await.unwrap().json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        http_client().get(url).send().await.unwrap().text().await.unwrap()
    }

    /// The /status entry of the sidecar with this identity and node.
    async fn sidecar(&self, identity: &str, node_port: u16) -> Option<Value> {
        let status = self.status().await;
        status["sidecars"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["identity"] == identity && s["node"].as_str().is_some_and(|n| n.ends_with(&format!(":{node_port}")))
            })
            .cloned()
    }

    fn write(&self, file: &str, documents: &str) {
        write_policy(&self.dir.join(file), documents);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `SecurityPolicy` for `app: <app>` in namespace shop.
fn policy_for(app: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n{spec}"
    )
}

fn deny_paths(paths: &[&str]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("\"{p}*\"")).collect();
    format!(
        "  authorization:\n    default: ALLOW\n    rules:\n      - {{name: closed-paths, action: DENY, to: {{paths: [{}]}}}}\n",
        list.join(", ")
    )
}

/// A workload of namespace shop behind its own sidecar that takes its policy from `plane`.
struct Workload {
    sidecar: palisade::app::Sidecar,
    app: EchoApp,
    client: reqwest::Client,
}

impl Workload {
    async fn start(
        pki: &Pki,
        plane: &ControlPlane,
        app_label: &str,
        adjust: impl FnOnce(&mut SidecarConfig),
    ) -> Workload {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let files = pki.workload(&format!("{app_label}-{n}"), &id("shop", app_label));
        let app = EchoApp::start().await;
        let mut config = sidecar_config(&files, app.addr);
        config.workload.namespace = Some("shop".into());
        config.workload.service_account = Some(app_label.into());
        config.workload.labels = [("app".to_string(), app_label.to_string())].into();
        config.policy.control_plane = Some(plane.address().parse().unwrap());
        config.telemetry.events.sink =
            palisade::config::EventSink::File(pki.path(&format!("{app_label}-events.jsonl")));
        adjust(&mut config);
        let sidecar = start_sidecar(config);
        let caller = pki.workload(&format!("{app_label}-{n}-caller"), &id("shop", "frontend"));
        Workload { sidecar, app, client: https_client(Some(&caller)) }
    }

    async fn get(&self, path: &str) -> u16 {
        let url = format!("https://{}{path}", self.sidecar.inbound);
        self.client.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    }

    async fn admin(&self, path: &str) -> reqwest::Response {
        http_client().get(format!("http://{}{path}", self.sidecar.admin)).send().await.unwrap()
    }

    async fn ready(&self) -> bool {
        self.admin("/ready").await.status() == 200
    }

    async fn metrics(&self) -> String {
        self.admin("/metrics").await.text().await.unwrap()
    }

    async fn config_dump(&self) -> Value {
        self.admin("/config_dump").await.json().await.unwrap()
    }

    fn port(&self) -> u16 {
        self.sidecar.inbound.port()
    }

    fn stop(self) {
        self.sidecar.shutdown();
        self.app.stop();
    }
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok()))
}

/// The sidecar's /status entry once its stream has looked at the catalog in force: whatever that
/// catalog asked for has been sent by then.
async fn evaluated(plane: &ControlPlane, identity: &str, port: u16) -> Value {
    let mut found = Value::Null;
    wait_for("the stream looked at the catalog in force", async || {
        let generation = plane.status().await["policies"]["generation"].clone();
        match plane.sidecar(identity, port).await {
            Some(s) if s["evaluated"] == generation => {
                found = s;
                true
            }
            _ => false,
        }
    })
    .await;
    found
}

async fn synced(plane: &ControlPlane, identity: &str, port: u16) -> Value {
    let mut found = Value::Null;
    wait_for("the sidecar synced", async || match plane.sidecar(identity, port).await {
        Some(s) if s["state"] == "synced" => {
            found = s;
            true
        }
        _ => false,
    })
    .await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reaches_exactly_the_selected_sidecars_and_status_shows_every_ack() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    write_policy(&dir.join("billing.yaml"), &policy_for("billing", "billing-api", &deny_paths(&["/internal"])));
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    let billing = Workload::start(&pki, &plane, "billing", |_| {}).await;

    let first_orders = synced(&plane, &id("shop", "orders"), orders.port()).await;
    let first_billing = synced(&plane, &id("shop", "billing"), billing.port()).await;
    assert_eq!(first_orders["pushes"], 1);
    assert_eq!(first_orders["acked"]["version"], first_orders["sent"]["version"]);
    assert_ne!(first_orders["acked"]["version"], first_billing["acked"]["version"]);
    assert!(orders.ready().await && billing.ready().await);
    assert_eq!((orders.get("/admin/x").await, orders.get("/secret").await), (403, 200));
    assert_eq!((billing.get("/admin/x").await, billing.get("/internal").await), (200, 403));

    // The operator edits the orders policy once.
    let edited = Instant::now();
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/admin", "/secret"])));
    wait_for("orders enforces the edit", async || orders.get("/secret").await == 403).await;
    eprintln!("file change -> enforced by the sidecar: {:?}", edited.elapsed());
    let after = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(after["pushes"], 2);
    assert_ne!(after["acked"]["version"], first_orders["acked"]["version"]);
    let version = after["acked"]["version"].as_str().unwrap().to_string();
    assert!(orders
        .metrics()
        .await
        .contains(&format!("palisade_policy_version_info{{source=\"controlPlane\",version=\"{version}\"}} 1")));
    assert_eq!(orders.config_dump().await["policy"]["source"], "controlPlane");

    // The unrelated sidecar was not sent anything, once its stream has looked at the new catalog.
    let billing_now = evaluated(&plane, &id("shop", "billing"), billing.port()).await;
    assert_eq!(billing_now["pushes"], 1, "{billing_now}");
    assert_eq!(billing_now["acked"], first_billing["acked"]);
    assert_eq!(billing.get("/secret").await, 200);

    let status = plane.status().await;
    assert_eq!(status["summary"]["connected"], 2);
    assert_eq!(status["summary"]["synced"], 2);
    // Never to a web page whose name was rebound to this address: its Host or Origin is foreign.
    let status_url = format!("http://127.0.0.1:{}/status", plane.admin);
    for (header, value) in [("host", "evil.example"), ("host", "127.0.0.1.nip.io"), ("origin", "http://evil.example")] {
        let answer = http_client().get(&status_url).header(header, value).send().await.unwrap();
        assert_eq!(answer.status(), 403, "{header}: {value}");
        assert!(!answer.text().await.unwrap().contains("spiffe://"), "{header}: {value}");
    }
    let metrics = plane.metrics().await;
    assert_eq!(metric(&metrics, "palisade_control_connected_sidecars"), Some(2.0));
    assert_eq!(metric(&metrics, "palisade_control_pushes_total"), Some(3.0));
    assert_eq!(metric(&metrics, "palisade_control_acks_total"), Some(3.0));
    assert_eq!(metric(&metrics, "palisade_control_push_latency_seconds_count"), Some(3.0));
    assert_eq!(metric(&orders.metrics().await, "palisade_control_plane_connected"), Some(1.0));
    orders.stop();
    billing.stop();
}

/// An IPv6-only cluster: the control plane's Service has an IPv6 address, and the sidecar finds
/// it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_reaches_the_control_plane_over_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback (lifecycle's unit tests cover the IPv4-only bind)");
        return;
    }
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    // Configured on 127.0.0.1, it listens on ::1 at the same ports too.
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let ipv6 = format!("https://[::1]:{}", plane.grpc);
    let orders =
        Workload::start(&pki, &plane, "orders", |c| c.policy.control_plane = Some(ipv6.parse().unwrap())).await;
    let synced = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(synced["pushes"], 1, "{synced}");
    assert_eq!(orders.get("/admin/x").await, 403);
    let ready = http_client().get(format!("http://[::1]:{}/ready", plane.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_whose_own_certificate_has_expired_is_not_ready() {
    // No sidecar can complete a handshake with it: its Service must send them to another replica.
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    let mut spec = palisade::identity::LeafSpec::workload(CONTROL_ID);
    // Long enough to be ready first on a busy machine.
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let files = pki.issue("control", &spec);
    let plane = ControlPlane::start_with_files(&pki, "control", &dir, &files, "").await;
    let admin = plane.admin;
    let unready = eventually(|| async move {
        let answer = http_client().get(format!("http://127.0.0.1:{admin}/ready")).send().await.unwrap();
        answer.status() == 503 && answer.text().await.unwrap().contains("certificate")
    })
    .await;
    assert!(unready, "still ready with an expired certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_at_the_control_plane_and_nothing_changes() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    let good = policy_for("orders", "orders-api", &deny_paths(&["/admin"]));
    write_policy(&dir.join("orders.yaml"), &good);
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    let before = synced(&plane, &id("shop", "orders"), orders.port()).await;

    let broken = good.replace("default: ALLOW", "default: ALLOW\n    mode: SOMETIMES");
    plane.write("orders.yaml", &broken);
    let mut source = Value::Null;
    wait_for("the control plane reports the error", async || {
        let status = plane.status().await;
        source = status["policies"]["sources"][0].clone();
        source["errors"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let error = source["errors"][0].as_str().unwrap();
    assert!(error.contains("orders.yaml:8:") && error.contains("spec.authorization.mode"), "{error}");
    assert_eq!(source["policies"], serde_json::json!(["shop/orders-api"]), "the last good version stays");
    assert!(plane.metrics().await.contains("palisade_policy_updates_total{result=\"rejected\"} 1"));
    let events = std::fs::read_to_string(&plane.events).unwrap();
    assert!(events.contains("policy update rejected") && events.contains("spec.authorization.mode"), "{events}");

    let after = evaluated(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(after["pushes"], 1, "nothing was pushed: {after}");
    assert_eq!(after["acked"], before["acked"]);
    assert_eq!(orders.get("/admin").await, 403, "the old policy is in force");
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restarted_with_a_refused_file_sends_nothing_until_it_is_fixed() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    let good = policy_for("orders", "orders-api", &deny_paths(&["/admin"]));
    write_policy(&dir.join("orders.yaml"), &good);
    let mut plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(orders.get("/admin").await, 403);
    // The file turns bad (the running replica keeps its last good version), then the replica
    // restarts: it has no good version of that file, so it cannot tell what orders must get.
    plane.write("orders.yaml", &good.replace("default: ALLOW", "default: ALOW"));
    wait_for("the refusal", async || {
        !plane.status().await["policies"]["sources"][0]["errors"].as_array().unwrap().is_empty()
    })
    .await;
    plane.kill();
    let events_before = std::fs::read_to_string(&plane.events).unwrap_or_default().lines().count();
    let events_file = plane.events.clone();
    let events_since = || -> Vec<String> {
        let text = std::fs::read_to_string(&events_file).unwrap_or_default();
        text.lines().skip(events_before).map(str::to_string).collect()
    };
    // Still ready: its CA and webhook serve; its policy streams are put off.
    plane.spawn().await;
    let status = plane.status().await;
    assert_eq!(status["policies"]["servable"], false, "{status}");
    // Its events say what is so: nothing in force yet, and no policy set "in force" that is sent
    // nowhere (a SIEM would read an empty one as every policy removed).
    wait_for("the refusal's event", async || {
        events_since().iter().any(|l| l.contains("policy update rejected; version none stays in force"))
    })
    .await;
    assert!(
        !events_since().iter().any(|l| l.contains(" in force\"") && l.contains("policy version")),
        "{:?}",
        events_since()
    );
    assert!(status["policies"]["unservableBecause"].as_str().unwrap().contains("orders.yaml refused"), "{status}");
    assert!(plane.metrics().await.contains("palisade_control_policy_servable 0"));
    // The sidecar comes back and is put off (UNAVAILABLE, so it retries, maybe elsewhere):
    // nothing was sent, and the DENY still holds (the empty set would have lifted it).
    wait_for("the sidecar's stream is put off", async || {
        metric(&plane.metrics().await, "palisade_control_subscriptions_refused_total{reason=\"unservable\"}")
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert_eq!(orders.get("/admin").await, 403);
    assert!(orders.ready().await, "the sidecar keeps its policy and stays ready");
    // Fixed: the replica sends again.
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/admin", "/secret"])));
    assert!(eventually(|| async { orders.get("/secret").await == 403 }).await);
    assert!(plane.metrics().await.contains("palisade_control_policy_servable 1"));
    assert!(
        events_since().iter().any(|l| l.contains("policy version") && l.contains("orders-api")),
        "{:?}",
        events_since()
    );
    orders.stop();
}

/// The orders sidecar's /status record once the replica says the sidecar is ahead of it (a later
/// revision than its own).
async fn ahead(plane: &ControlPlane, orders: &Workload) -> Value {
    orders_in_state(plane, orders, "ahead").await
}

/// The orders sidecar's /status record once it shows a NACK.
async fn rejected(plane: &ControlPlane, orders: &Workload) -> Value {
    orders_in_state(plane, orders, "rejected").await
}

/// The orders sidecar's /status record once its `state` is `state`.
async fn orders_in_state(plane: &ControlPlane, orders: &Workload, state: &str) -> Value {
    let mut record = Value::Null;
    wait_for(&format!("the orders sidecar's state is {state}"), async || {
        record = plane.sidecar(&id("shop", "orders"), orders.port()).await.unwrap_or_default();
        record["state"] == state
    })
    .await;
    record
}

/// A control plane serving orders-api (DENY /admin) and an orders sidecar pinned to STRICT
/// (`allowPermissive: false`, which the control plane cannot know), synced: the PKI, the
/// control plane, the sidecar and its first /status record.
async fn pinned_strict_orders() -> (Pki, ControlPlane, Workload, Value) {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |c| c.inbound.allow_permissive = false).await;
    let before = synced(&plane, &id("shop", "orders"), orders.port()).await;
    (pki, plane, orders, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_sidecar_refuses_is_nacked_with_the_reason_and_the_old_policy_stays() {
    let (_pki, plane, orders, before) = pinned_strict_orders().await;

    let permissive = format!("  mtls: PERMISSIVE\n{}", deny_paths(&["/admin", "/secret"]));
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &permissive));
    let record = rejected(&plane, &orders).await;
    let reason = record["nacked"]["reason"].as_str().unwrap();
    assert!(reason.contains("allowPermissive") && reason.contains("orders-api"), "{reason}");
    assert_eq!(record["nacked"]["version"], record["sent"]["version"]);
    assert_eq!(record["acked"], before["acked"], "the last ACK is still the old version");
    assert_eq!(metric(&plane.metrics().await, "palisade_control_nacks_total"), Some(1.0));

    assert_eq!(orders.get("/secret").await, 200, "the old policy is in force");
    assert_eq!(orders.get("/admin").await, 403);
    let plaintext = http_client().get(format!("http://{}/", orders.sidecar.inbound)).send().await;
    assert!(plaintext.is_err(), "still STRICT: {plaintext:?}");
    assert!(orders.metrics().await.contains("palisade_policy_updates_total{result=\"rejected\"} 1"));
    orders.stop();
}

/// A snapshot with hundreds of errors: its NACK's reason is cut to fit a message the control plane
/// takes. Whole, it ran past 64 KiB: the control plane could not read it, the stream ended, the
/// sidecar reconnected and was refused again, for ever, with nothing in /status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_hundreds_of_reasons_still_reaches_the_control_plane() {
    let (_pki, plane, orders, _) = pinned_strict_orders().await;

    let permissive = format!("  mtls: PERMISSIVE\n{}", deny_paths(&["/admin"]));
    let many: Vec<String> =
        (0..800).map(|i| policy_for("orders", &format!("permissive-policy-number-{i:04}"), &permissive)).collect();
    plane.write("orders.yaml", &many.join("---\n"));
    let record = rejected(&plane, &orders).await;
    let reason = record["nacked"]["reason"].as_str().unwrap();
    assert!(reason.contains("allowPermissive") && reason.contains("more bytes)"), "{:.300}", reason);
    assert!(reason.len() <= 4096, "{} bytes", reason.len());
    assert_eq!(metric(&plane.metrics().await, "palisade_control_nacks_total"), Some(1.0));
    let attempts = orders.config_dump().await["policy"]["controlPlane"]["attempts"].clone();
    assert_eq!(attempts, 1, "on the stream it opened first, not after reconnecting");
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_ride_out_a_control_plane_outage_under_load_and_resync() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    let mut plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Arc::new(Workload::start(&pki, &plane, "orders", |_| {}).await);
    let first = synced(&plane, &id("shop", "orders"), orders.port()).await;

    // A steady load, bounded in count and time, for the whole outage.
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (orders, sent, failed, stop) = (orders.clone(), sent.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let status = orders.get("/orders").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                // Pacing, so the load stays a load and not a flood; nothing waits on it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Down and up again with nothing changed: the sidecar resumes without a push.
    plane.kill();
    wait_for("the sidecar sees the outage", async || {
        metric(&orders.metrics().await, "palisade_control_plane_connected") == Some(0.0)
    })
    .await;
    assert_eq!(orders.get("/admin").await, 403, "the last good policy stays in force");
    assert!(orders.ready().await, "a sidecar with a policy stays ready without its control plane");
    let during = sent.load(Ordering::Relaxed);
    wait_for("requests flowed while the control plane was down", async || sent.load(Ordering::Relaxed) > during + 20)
        .await;
    plane.spawn().await;
    let resumed = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(resumed["pushes"], 0, "same version, nothing to send: {resumed}");
    assert_eq!(resumed["acked"]["version"], first["acked"]["version"]);

    // Down; the policy changes meanwhile; up: the sidecar resyncs to the new version.
    plane.kill();
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/admin", "/secret"])));
    // The control plane is gone (kill waited for it): the sidecar has no way to learn of it.
    assert_eq!(orders.get("/secret").await, 200);
    plane.spawn().await;
    wait_for("the resynced policy is enforced", async || orders.get("/secret").await == 403).await;
    let resynced = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(resynced["pushes"], 1);
    assert_ne!(resynced["acked"]["version"], first["acked"]["version"]);

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{sent} requests during two outages, {failed} failed");
    assert!(sent > 20, "the load ran (and, above, ran during the outage): {sent}");
    assert_eq!(failed, 0);
    let orders = Arc::into_inner(orders).unwrap();
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_has_not_read_the_latest_revision_never_takes_a_sidecar_back() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    // Revision 5 of the chart's ConfigMap closes /secret.
    std::fs::write(dir.join("revision"), "5\n").unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/secret"])));
    let mut plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    let first = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(orders.get("/secret").await, 403);
    assert_eq!(orders.config_dump().await["policy"]["controlPlane"]["revision"], 5);

    // The Service now reaches a replica whose kubelet still has revision 4 (/secret open), at
    // the same address: it must hold back, and say so.
    plane.kill();
    std::fs::write(dir.join("revision"), "4\n").unwrap();
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    plane.spawn().await;
    let held = ahead(&plane, &orders).await;
    assert_eq!(held["pushes"], 0, "{held}");
    let status = plane.status().await;
    assert_eq!((&status["summary"]["ahead"], &status["policies"]["revision"]), (&1.into(), &4.into()), "{status}");
    assert_eq!(held["acked"]["version"], first["acked"]["version"], "{held}");
    assert_eq!(orders.get("/secret").await, 403, "revision 5 stays in force");
    assert_eq!(orders.get("/admin").await, 200, "revision 4's policy was never taken");

    // That replica's kubelet catches up, with revision 6 by now: pushed and taken. (The policy
    // first: a scan between the two writes then sees it at revision 4 and holds it, where the
    // other order could push revision 6 with revision 4's policy, which a ConfigMap swap never
    // shows.)
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/secret", "/admin"])));
    std::fs::write(dir.join("revision"), "6\n").unwrap();
    wait_for("revision 6 is enforced", async || orders.get("/admin").await == 403).await;
    let caught_up = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(caught_up["pushes"], 1, "{caught_up}");
    assert_eq!(orders.get("/secret").await, 403);
    assert_eq!(orders.config_dump().await["policy"]["controlPlane"]["revision"], 6);
    assert_eq!(metric(&plane.metrics().await, "palisade_control_nacks_total"), Some(0.0));

    // A revision that is not a number is reported, and snapshots carry none.
    std::fs::write(dir.join("revision"), "seven\n").unwrap();
    wait_for("the bad revision is reported", async || plane.status().await.to_string().contains("not a revision"))
        .await;
    orders.stop();
}

/// The sidecar's revision as its /config_dump shows it.
async fn revision_of(workload: &Workload) -> Value {
    workload.config_dump().await["policy"]["controlPlane"]["revision"].clone()
}

/// A sidecar learns every revision its control plane reaches, also when nothing is sent to it (a
/// resumed stream, a revision that leaves its set as it was). It used to learn one only inside
/// a snapshot: resumed at revision 7 it still said 5, so a replica still at revision 6 (a
/// rollback to an allow-all policy that revision 7 undid) passed the hold and pushed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_learnt_without_a_snapshot_still_holds_back_an_older_replica() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    // Replica A, revision 5: policy X closes /secret.
    let closed = policy_for("orders", "orders-api", &deny_paths(&["/secret"]));
    std::fs::write(dir.join("revision"), "5\n").unwrap();
    write_policy(&dir.join("orders.yaml"), &closed);
    let mut plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    let first = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(orders.get("/secret").await, 403);
    assert_eq!(revision_of(&orders).await, 5);

    // A restarts at revision 7 with the same content (revision 6, never read by A, opened
    // everything): the sidecar resumes, is sent no snapshot, and still learns revision 7.
    plane.kill();
    std::fs::write(dir.join("revision"), "7\n").unwrap();
    plane.spawn().await;
    let resumed = evaluated(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!((&resumed["state"], &resumed["pushes"]), (&"synced".into(), &0.into()), "{resumed}");
    wait_for("the resumed sidecar learns revision 7", async || revision_of(&orders).await == 7).await;
    assert_eq!(metric(&plane.metrics().await, "palisade_control_acks_total"), Some(0.0), "a revision is not ACKed");

    // Replica B, still at revision 6 (policy Y: everything allowed), takes A's place.
    plane.kill();
    std::fs::write(dir.join("revision"), "6\n").unwrap();
    plane.write("orders.yaml", &policy_for("orders", "orders-api", "  authorization:\n    default: ALLOW\n"));
    plane.spawn().await;
    let held = ahead(&plane, &orders).await;
    assert_eq!(held["pushes"], 0, "{held}");
    assert_eq!(held["acked"]["version"], first["acked"]["version"], "{held}");
    assert_eq!(orders.get("/secret").await, 403, "revision 7's content stays in force");
    assert_eq!(revision_of(&orders).await, 7);

    // B reads revision 8, which leaves the orders set as revision 7 had it and adds another
    // workload's policy: nothing to push to orders, and revision 8 is learnt on the open stream.
    plane.write("orders.yaml", &closed);
    plane.write("billing.yaml", &policy_for("billing", "billing-api", &deny_paths(&["/internal"])));
    std::fs::write(dir.join("revision"), "8\n").unwrap();
    wait_for("the open stream learns revision 8", async || revision_of(&orders).await == 8).await;
    let caught_up = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(caught_up["pushes"], 0, "{caught_up}");
    assert_eq!(caught_up["acked"]["version"], first["acked"]["version"], "{caught_up}");
    assert_eq!(orders.get("/secret").await, 403);
    let metrics = plane.metrics().await;
    assert_eq!(metric(&metrics, "palisade_control_pushes_total"), Some(0.0));
    assert_eq!(metric(&metrics, "palisade_control_nacks_total"), Some(0.0));
    orders.stop();
}

/// `helm rollback` re-applies the old revision's manifest as it was rendered, its revision
/// number too: the ConfigMap goes from revision 2 back to 1. A replica that read revision 2
/// itself knows 1 is no news it lags behind and sends it at once (outside tester o2: the rolled
/// back rule stayed in force for the whole revisionHold, 3 minutes, and the log called it a new
/// install).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_revision_the_replica_read_before_is_taken_at_once() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    let open = policy_for("orders", "orders-api", "  authorization:\n    default: ALLOW\n");
    std::fs::write(dir.join("revision"), "1\n").unwrap();
    write_policy(&dir.join("orders.yaml"), &open);
    // The default hold (3 minutes): the rollback must not wait for it.
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(orders.get("/admin").await, 200);
    // helm upgrade: revision 2 closes /admin.
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    std::fs::write(dir.join("revision"), "2\n").unwrap();
    wait_for("revision 2 is enforced", async || orders.get("/admin").await == 403).await;
    wait_for("the sidecar holds revision 2", async || revision_of(&orders).await == 2).await;
    // helm rollback to 1: the revision first, so a scan between the two writes sees revision 1
    // with revision 2's policy (nothing to send), then revision 1's policy at revision 1.
    std::fs::write(dir.join("revision"), "1\n").unwrap();
    plane.write("orders.yaml", &open);
    wait_for("the rollback is enforced", async || orders.get("/admin").await == 200).await;
    assert_eq!(revision_of(&orders).await, 1);
    let status = plane.status().await;
    assert_eq!(status["summary"]["ahead"], 0, "{status}");
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_went_back_for_good_is_taken_after_the_hold() {
    // The chart uninstalled and installed again: its revision starts at 1 once more. Running
    // sidecars hold 5; past policies.revisionHold the replica sends revision 1 anyway.
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("revision"), "5").unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/secret"])));
    let mut plane = ControlPlane::start_with(&pki, "control", &dir, CONTROL_ID, ", revisionHold: 2s").await;
    let orders = Workload::start(&pki, &plane, "orders", |_| {}).await;
    synced(&plane, &id("shop", "orders"), orders.port()).await;
    plane.kill();
    std::fs::write(dir.join("revision"), "1").unwrap();
    plane.write("orders.yaml", &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    plane.spawn().await;
    wait_for("revision 1 is taken once the hold is over", async || orders.get("/admin").await == 403).await;
    let taken = synced(&plane, &id("shop", "orders"), orders.port()).await;
    assert_eq!(taken["pushes"], 1, "{taken}");
    assert_eq!(orders.get("/secret").await, 200);
    assert_eq!(orders.config_dump().await["policy"]["controlPlane"]["revision"], 1);
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_one_namespace_cannot_subscribe_as_another_and_a_fake_control_plane_is_refused() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    let plane = ControlPlane::start(&pki, "control", &dir).await;

    // Its certificate names namespace `a`; it claims to be a workload of `shop`. A sidecar
    // refuses such a configuration at start (workload.namespace), so the claim is made by hand,
    // as a misbehaving client would.
    let hello = orders_hello("impostor-1");
    let refused = subscribe(&pki, &plane, &id("a", "orders"), hello).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("may not subscribe as a workload of namespace \"shop\""), "{refused:?}");
    assert!(plane.status().await["sidecars"].as_array().unwrap().is_empty());
    assert!(plane.metrics().await.contains("palisade_control_subscriptions_refused_total{reason=\"namespace\"}"));
    let events = std::fs::read_to_string(&plane.events).unwrap();
    assert!(events.contains("\"name\":\"namespace\"") || events.contains("namespace"), "{events}");
    let files = pki.workload("impostor", &id("a", "orders"));
    let mut config = sidecar_config(&files, "127.0.0.1:9".parse().unwrap());
    config.workload.namespace = Some("shop".into());
    let options = palisade::app::RunOptions {
        handle_signals: false,
        log_level: palisade::telemetry::LogLevel::init_with("error"),
    };
    // Started off the test's runtime: a sidecar that fails to start drops its own.
    let error = tokio::task::spawn_blocking(move || palisade::app::Sidecar::start(config, options).err())
        .await
        .unwrap()
        .expect("refused at start");
    assert!(error.to_string().contains("workload.namespace"), "{error}");

    // A server with a valid mesh certificate that is not the control plane's identity.
    let fake_dir = pki.path("fake-policies");
    std::fs::create_dir(&fake_dir).unwrap();
    let fake = ControlPlane::start_as(&pki, "fake", &fake_dir, &id("palisade-system", "not-control")).await;
    let orders = Workload::start(&pki, &fake, "orders", |c| c.policy.fail_mode = FailMode::Closed).await;
    let admin = orders.sidecar.admin;
    wait_for("the fake control plane is refused", async || {
        let url = format!("http://{admin}/config_dump");
        let dump: Value = http_client().get(url).send().await.unwrap().json().await.unwrap();
        dump["policy"]["controlPlane"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("expected {CONTROL_ID}")))
    })
    .await;
    assert!(fake.status().await["sidecars"].as_array().unwrap().is_empty());
    assert!(!orders.ready().await);
    // No policy ever loaded, failMode closed: every request is refused as by a sidecar not ready
    // yet, 503 with Retry-After (it was 403, which clients neither retry nor tell from a denial).
    let answer = orders.client.get(format!("https://{}/orders", orders.sidecar.inbound)).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    orders.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_serves_without_a_policy_and_replicas_agree_on_versions() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));

    // failMode open, control plane unreachable: ready, and traffic passes.
    let nowhere = ControlPlane::start(&pki, "nowhere", &dir).await;
    let open = Workload::start(&pki, &nowhere, "orders", |c| c.policy.fail_mode = FailMode::Open).await;
    drop(nowhere);
    let open_admin = open.sidecar.admin;
    wait_for("disconnected", async || {
        let url = format!("http://{open_admin}/metrics");
        let text = http_client().get(url).send().await.unwrap().text().await.unwrap();
        metric(&text, "palisade_control_plane_connected") == Some(0.0)
    })
    .await;
    assert!(open.ready().await);
    assert_eq!(open.get("/admin").await, 200, "open: no policy, nothing denied");
    open.stop();

    // Two replicas of the control plane on the same directory; a sidecar on each.
    let one = ControlPlane::start(&pki, "replica-1", &dir).await;
    let two = ControlPlane::start(&pki, "replica-2", &dir).await;
    let a = Workload::start(&pki, &one, "orders", |_| {}).await;
    let b = Workload::start(&pki, &two, "orders", |_| {}).await;
    let on_one = synced(&one, &id("shop", "orders"), a.port()).await;
    let on_two = synced(&two, &id("shop", "orders"), b.port()).await;
    assert_eq!(on_one["acked"]["version"], on_two["acked"]["version"]);
    assert_eq!((a.get("/admin").await, b.get("/admin").await), (403, 403));
    a.stop();
    b.stop();
}

#[test]
fn a_local_strict_pin_contradicting_a_local_permissive_mode_is_refused_at_start() {
    let pki = Pki::new();
    let files = pki.workload("orders", &id("shop", "orders"));
    let mut config = sidecar_config(&files, "127.0.0.1:9".parse().unwrap());
    config.inbound.mtls = palisade::config::MtlsMode::PERMISSIVE;
    config.inbound.allow_permissive = false;
    let options = palisade::app::RunOptions {
        handle_signals: false,
        log_level: palisade::telemetry::LogLevel::init_with("error"),
    };
    let error = palisade::app::Sidecar::start(config, options).err().expect("refused");
    assert!(error.to_string().contains("inbound.allowPermissive"), "{error}");
}

/// The Hello of a workload of `shop` labelled `app: orders`, holding no policy yet.
fn orders_hello(node: &str) -> palisade::proto::Hello {
    palisade::proto::Hello {
        namespace: "shop".into(),
        labels: [("app".to_string(), "orders".to_string())].into(),
        version: String::new(),
        node: node.into(),
        token: String::new(),
        revision: 0,
    }
}

/// A raw subscription as `identity` (no sidecar behind it), as a misbehaving client would make.
async fn subscribe(
    pki: &Pki,
    plane: &ControlPlane,
    identity: &str,
    hello: palisade::proto::Hello,
) -> Result<(), tonic::Status> {
    let (_sender, mut stream) = raw_stream(pki, plane, identity, hello).await?;
    stream.message().await.map(|_| ())
}

/// A stream opened by hand, as a misbehaving client would: what it sends after its Hello, and
/// what the control plane sends it.
async fn raw_stream(
    pki: &Pki,
    plane: &ControlPlane,
    identity: &str,
    hello: palisade::proto::Hello,
) -> Result<
    (tokio::sync::mpsc::Sender<palisade::proto::SidecarMessage>, tonic::Streaming<palisade::proto::ControlMessage>),
    tonic::Status,
> {
    use palisade::proto::policy_discovery_client::PolicyDiscoveryClient;
    use palisade::proto::{sidecar_message, SidecarMessage};
    let files = pki.workload("raw-client", identity);
    let tls = Arc::new(
        palisade::tls::TlsStore::load(
            palisade::tls::IdentityFiles { cert: files.cert, key: files.key, trust_bundle: files.trust_bundle },
            TD,
            palisade::tls::TrustDomains::new([TD]),
        )
        .unwrap(),
    );
    let expected = palisade::identity::SpiffeId::parse(CONTROL_ID).unwrap();
    let connector = palisade::channel::connector("127.0.0.1".into(), plane.grpc, expected, tls);
    let channel =
        tonic::transport::Endpoint::from_static("http://control").connect_with_connector(connector).await.unwrap();
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    sender.send(SidecarMessage { kind: Some(sidecar_message::Kind::Hello(hello)) }).await.unwrap();
    let stream = PolicyDiscoveryClient::new(channel)
        .stream_policies(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((sender, stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_or_nack_for_a_version_never_sent_is_not_recorded_as_applied() {
    // /status recorded whatever a stream acknowledged: `deadbeef0000`, never sent, as applied.
    use palisade::proto::{control_message, sidecar_message, Ack, Nack, SidecarMessage};
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    write_policy(&dir.join("orders.yaml"), &policy_for("orders", "orders-api", &deny_paths(&["/admin"])));
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let hello = orders_hello("forger-1");
    let (sender, mut stream) = raw_stream(&pki, &plane, &id("shop", "orders"), hello).await.unwrap();
    let sent = loop {
        match stream.message().await.unwrap().and_then(|m| m.kind) {
            Some(control_message::Kind::Snapshot(snapshot)) => break snapshot.version,
            Some(_) => continue,
            None => panic!("no snapshot"),
        }
    };
    let record = || async {
        let status = plane.status().await;
        status["sidecars"].as_array().unwrap().iter().find(|s| s["node"] == "forger-1").cloned().unwrap()
    };
    let send = |kind| SidecarMessage { kind: Some(kind) };
    sender.send(send(sidecar_message::Kind::Ack(Ack { version: "deadbeef0000".into() }))).await.unwrap();
    sender
        .send(send(sidecar_message::Kind::Nack(Nack { version: "0badc0ffee00".into(), reason: "forged".into() })))
        .await
        .unwrap();
    // The answer for the version sent comes after both: once it is recorded, so would they be.
    sender.send(send(sidecar_message::Kind::Ack(Ack { version: sent.clone() }))).await.unwrap();
    wait_for("the ACK of what was sent", async || record().await["state"] == "synced").await;
    let record = record().await;
    assert_eq!(record["acked"]["version"], sent.as_str(), "{record}");
    assert!(record["nacked"].is_null(), "{record}");
    let metrics = plane.metrics().await;
    assert!(metrics.contains("palisade_control_acks_total 1\n"), "one ACK counted: {metrics}");
    assert!(metrics.contains("palisade_control_nacks_total 0\n"), "{metrics}");
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hellos_are_refused_without_being_kept() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    let plane = ControlPlane::start(&pki, "control", &dir).await;
    let hello = |node: String| orders_hello(&node);
    let ok = subscribe(&pki, &plane, &id("shop", "orders"), hello("orders-1".into())).await;
    assert!(ok.is_ok(), "{ok:?}");
    let long = subscribe(&pki, &plane, &id("shop", "orders"), hello("n".repeat(300))).await.unwrap_err();
    assert_eq!(long.code(), tonic::Code::PermissionDenied, "{long:?}");
    let huge = subscribe(&pki, &plane, &id("shop", "orders"), hello("n".repeat(100_000))).await.unwrap_err();
    assert_ne!(huge.code(), tonic::Code::Ok, "{huge:?}");
    wait_for("nothing kept of the refused streams (the good one ended too)", async || {
        plane.status().await["sidecars"].as_array().unwrap().is_empty()
    })
    .await;
    assert!(plane.metrics().await.contains("palisade_control_subscriptions_refused_total{reason=\"hello\"} 1"));
}

/// The control plane's own certificate files replaced: `/status` names the identity it now
/// proves, the rotation is a security event, and its end is a metric to alert on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_own_rotation_shows_in_status_events_and_metrics() {
    let pki = Pki::new();
    let dir = pki.path("policies");
    std::fs::create_dir(&dir).unwrap();
    let mut plane = ControlPlane::start(&pki, "control", &dir).await;
    assert_eq!(plane.status().await["controlPlane"]["identity"], CONTROL_ID);
    assert!(plane.metrics().await.contains("palisade_certificate_expiry_timestamp_seconds "));
    let other = "spiffe://cluster.local/ns/palisade-system/sa/other";
    let next = pki.workload("control-next", other);
    let own = pki.path("control");
    // The key first, then the certificate, each replaced whole, as a Secret's update does.
    for (from, to) in [(&next.key, own.join("tls.key")), (&next.cert, own.join("tls.crt"))] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, &to).unwrap();
    }
    wait_for("the new identity in /status", async || plane.status().await["controlPlane"]["identity"] == other).await;
    let status = plane.status().await;
    assert!(status["controlPlane"]["certificateNotAfter"].as_i64().is_some_and(|t| t > 0), "{status}");
    wait_for("the rotation's event", async || {
        std::fs::read_to_string(&plane.events).unwrap_or_default().contains(&format!("certificate rotated for {other}"))
    })
    .await;
    plane.kill();
}
