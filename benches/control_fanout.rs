//! Issue 4's measure: one `palisade control` process (the release binary) and N sidecar streams
//! (real gRPC clients over mutual TLS, one connection each, in this process), then the time
//! from a policy file change to the last ACK, and the control plane's CPU and memory.
//!
//! Run: `cargo bench --bench control_fanout` (N = 1, 100, 1000), or with the counts to run:
//! `cargo bench --bench control_fanout -- 1000`.
//!
//! Each count runs twice: sidecars with certificates from files, then (issue 13) sidecars that
//! first ask the control plane's CA for their certificate (a fresh P-256 key, a CSR and a
//! service-account token checked offline) and open their policy stream with it. The CA's line
//! gives its signing rate on the control plane's one thread and each request's latency, TLS
//! handshake to the CA included.
//!
//! Each client parses the snapshot's documents as a sidecar does before it ACKs, so the time
//! includes the sidecar's own validation. The control plane reads its directory every 250 ms (its
//! default), which is most of the latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::identity::{DevCa, DevTokenIssuer, LeafSpec, SpiffeId, DEV_TOKEN_ISSUER};
use palisade::proto::identity::certificates_client::CertificatesClient;
use palisade::proto::identity::SignRequest;
use palisade::proto::policy_discovery_client::PolicyDiscoveryClient;
use palisade::proto::{control_message, sidecar_message, Ack, Hello, SidecarMessage};
use palisade::tls::{Credentials, IdentityFiles, TlsStore, TrustDomains};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const CONTROL_ID: &str = "spiffe://cluster.local/ns/palisade-system/sa/palisade-control";
/// Policy changes timed per run (`cargo bench`); a smoke run (`cargo test --benches`) does 3.
const ROUNDS: usize = 20;
const SMOKE_ROUNDS: usize = 3;
/// Set when a run is over and its control plane stopped: streams ending then is no news.
static RUN_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// When each version was ACKed, by how many streams, and the last of them.
#[derive(Default)]
struct Acks {
    seen: Mutex<HashMap<String, (usize, Instant)>>,
    changed: Notify,
}

impl Acks {
    fn record(&self, version: &str) {
        let mut seen = self.seen.lock().unwrap();
        let entry = seen.entry(version.to_string()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
        drop(seen);
        self.changed.notify_waiters();
    }

    /// Forgets every ACK so far.
    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// Waits until `count` streams ACKed one version; returns it and when its last ACK came.
    async fn all_acked(&self, count: usize, patience: Duration) -> (String, Instant) {
        let deadline = Instant::now() + patience;
        loop {
            let notified = self.changed.notified();
            if let Some((v, (_, at))) = self.seen.lock().unwrap().iter().find(|(_, (n, _))| *n >= count) {
                return (v.clone(), *at);
            }
            let left = deadline.checked_duration_since(Instant::now()).expect("every stream ACKed in time");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

fn policy(round: usize) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: orders-api, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  authorization:\n    default: ALLOW\n    rules:\n      - {{name: closed, action: DENY, to: {{paths: [\"/round-{round}*\"]}}}}\n  rateLimits:\n    - {{name: per-caller, key: source.principal, rate: 100, per: 1s, burst: 200}}\n"
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn stream_client(
    tls: Arc<TlsStore>,
    addr: SocketAddr,
    acks: Arc<Acks>,
    index: usize,
    mut first_ack: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let expected = SpiffeId::parse(CONTROL_ID).unwrap();
    let connector = palisade::channel::connector(addr.ip().to_string(), addr.port(), expected, tls);
    let channel = tonic::transport::Endpoint::from_static("http://palisade-control")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let (sender, receiver) = mpsc::channel(4);
    let hello = Hello {
        token: String::new(),
        namespace: "shop".into(),
        labels: [("app".to_string(), "orders".to_string())].into(),
        version: String::new(),
        node: format!("bench-{index}"),
        revision: 0,
    };
    sender.send(SidecarMessage { kind: Some(sidecar_message::Kind::Hello(hello)) }).await.unwrap();
    let mut inbound = PolicyDiscoveryClient::new(channel)
        .stream_policies(ReceiverStream::new(receiver))
        .await
        .map_err(|s| format!("stream: {s}"))?
        .into_inner();
    while let Some(message) = inbound.message().await.map_err(|s| format!("receive: {s}"))? {
        let Some(control_message::Kind::Snapshot(snapshot)) = message.kind else { continue };
        for p in &snapshot.policies {
            let text = std::str::from_utf8(&p.document).expect("UTF-8");
            let (_, errors) = palisade::policy::parse_file(Path::new(&p.source), text);
            assert!(errors.is_empty(), "{errors:?}");
        }
        let ack = SidecarMessage { kind: Some(sidecar_message::Kind::Ack(Ack { version: snapshot.version.clone() })) };
        if sender.send(ack).await.is_err() {
            break;
        }
        acks.record(&snapshot.version);
        if let Some(first) = first_ack.take() {
            let _ = first.send(());
        }
    }
    Ok(())
}

/// A sidecar's start: a key in memory, a CSR for its identity, the token, and the signed
/// certificate put in a store of its own.
async fn certificate_from_ca(ca_port: u16, ca_pem: &str, token: &str) -> Arc<TlsStore> {
    use rustls::pki_types::pem::PemObject;
    let own = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
    let roots: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()).map(Result::unwrap).collect();
    let store = TlsStore::bootstrap(&own, roots, TrustDomains::new(["cluster.local"])).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(own.as_str().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let store = Arc::new(store);
    let connector =
        palisade::channel::connector("127.0.0.1".into(), ca_port, SpiffeId::parse(CONTROL_ID).unwrap(), store.clone());
    let channel = tonic::transport::Endpoint::from_static("http://palisade-ca")
        .connect_with_connector(connector)
        .await
        .expect("the CA answers");
    let answer = CertificatesClient::new(channel)
        .sign(SignRequest { csr, token: token.into() })
        .await
        .expect("the CA signs")
        .into_inner();
    let chain = answer.chain.into_iter().map(rustls::pki_types::CertificateDer::from).collect();
    let bundle = answer.trust_bundle.into_iter().map(rustls::pki_types::CertificateDer::from).collect();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let credentials = Credentials::from_memory(chain, key, bundle, "cluster.local", Path::new("bench")).unwrap();
    store.install(credentials).unwrap();
    store
}

/// utime + stime in seconds, and VmRSS / VmHWM in MB, from /proc.
fn usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Plane(Child);

impl Drop for Plane {
    /// SIGTERM first (a profiler wrapping it writes its report then), SIGKILL after 30 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the simulated sidecars get their certificates.
#[derive(Clone, Copy, PartialEq)]
enum Identity {
    Files,
    FromCa,
}

async fn run(n: usize, rounds: usize, dir: &Path, pki: &Path, ca: &DevCa, identity: Identity) {
    let tag = match identity {
        Identity::Files => format!("files-{n}"),
        Identity::FromCa => format!("ca-{n}"),
    };
    let policies = dir.join(format!("policies-{tag}"));
    std::fs::create_dir_all(&policies).unwrap();
    let file = policies.join("orders.yaml");
    write_atomically(&file, &policy(0));
    // All held until all are chosen, so the kernel cannot hand the same port out twice.
    let held = [0; 3].map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let [port, admin, ca_port] = held.each_ref().map(|l| l.local_addr().unwrap().port());
    drop(held);
    let issuer = DevTokenIssuer::generate().unwrap();
    let own_identity = match identity {
        Identity::Files => {
            let control = ca.issue_to(&LeafSpec::workload(CONTROL_ID), &pki.join("control")).unwrap();
            format!(
                "identity: {{files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}}}\n",
                control.cert.display(),
                control.key.display(),
                control.trust_bundle.display()
            )
        }
        Identity::FromCa => {
            let files = ca.write(&pki.join("ca")).unwrap();
            let jwks = dir.join(format!("issuer-{tag}.jwks"));
            std::fs::write(&jwks, issuer.jwks()).unwrap();
            format!(
                "identity: {{files: null}}\nca: {{listen: \"127.0.0.1:{ca_port}\", cert: \"{}\", key: \"{}\", certTtl: 24h, \
                 tokens: {{audience: palisade, jwks: {{file: \"{}\", issuer: \"{DEV_TOKEN_ISSUER}\"}}}}}}\n",
                files.cert.display(),
                files.key.display(),
                jwks.display()
            )
        }
    };
    let config = dir.join(format!("control-{tag}.yaml"));
    std::fs::write(
        &config,
        format!(
            "{own_identity}grpc: {{listen: \"127.0.0.1:{port}\"}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\npolicies: {{dir: \"{}\", trustHelloLabels: true}}\nevents: {{sink: \"file:{}\"}}\n",
            policies.display(),
            dir.join("events.jsonl").display()
        ),
    )
    .unwrap();
    // PALISADE_BENCH_WRAPPER runs the control plane under a profiler, e.g. "valgrind --tool=massif".
    let wrapper = std::env::var("PALISADE_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace().chain([BIN]);
    let child = Command::new(words.next().unwrap())
        .args(words)
        .args(["control", "--config"])
        .arg(&config)
        .env("PALISADE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let plane = Plane(child);
    let pid = plane.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "control plane listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, idle_rss, _) = usage(pid);

    RUN_OVER.store(false, std::sync::atomic::Ordering::Release);
    let client =
        ca.issue_to(&LeafSpec::workload("spiffe://cluster.local/ns/shop/sa/orders"), &pki.join("client")).unwrap();
    let files = IdentityFiles { cert: client.cert, key: client.key, trust_bundle: client.trust_bundle };
    let shared = Arc::new(TlsStore::load(files, "cluster.local", TrustDomains::new(["cluster.local"])).unwrap());
    let issuer = Arc::new(issuer);
    let signing: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let acks = Arc::new(Acks::default());
    let connecting = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..n {
        let (shared, acks, limit, issuer, signing) =
            (shared.clone(), acks.clone(), limit.clone(), issuer.clone(), signing.clone());
        let ca_pem = ca.cert_pem().to_string();
        tokio::spawn(async move {
            // Connect at most 64 at a time, as sidecars of a rolling deployment would.
            let permit = limit.acquire_owned().await.unwrap();
            let tls = match identity {
                Identity::Files => shared,
                Identity::FromCa => {
                    let token = issuer.token("shop", "orders", &format!("orders-{i}"), 3600).unwrap();
                    let started = Instant::now();
                    let store = certificate_from_ca(ca_port, &ca_pem, &token).await;
                    signing.lock().unwrap().push(started.elapsed());
                    store
                }
            };
            let (first, acked) = tokio::sync::oneshot::channel();
            let client = tokio::spawn(stream_client(tls, addr, acks, i, Some(first)));
            let _ = acked.await;
            drop(permit);
            let client = async { client.await.unwrap() };
            if let Err(e) = client.await {
                if !RUN_OVER.load(std::sync::atomic::Ordering::Acquire) {
                    panic!("stream {i} broke during the run: {e}");
                }
            }
        });
    }
    let (mut version, _) = acks.all_acked(n, Duration::from_secs(120)).await;
    let connect_time = connecting.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu_before, connected_rss, _) = usage(pid);

    let mut latencies = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        acks.clear();
        let changed = Instant::now();
        write_atomically(&file, &policy(round));
        let (next, last_ack) = acks.all_acked(n, Duration::from_secs(30)).await;
        assert_ne!(next, version);
        latencies.push(last_ack.duration_since(changed));
        version = next;
        // Spread the changes so each starts at a random point of the directory poll.
        tokio::time::sleep(Duration::from_millis(97 + (round as u64 * 37) % 150)).await;
    }
    let (cpu_after, rss, peak) = usage(pid);
    RUN_OVER.store(true, std::sync::atomic::Ordering::Release);
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{admin}/status")).await.unwrap().json().await.unwrap();
    assert_eq!(status["summary"]["connected"], n, "every stream is still connected");
    assert_eq!(status["summary"]["synced"], n, "and synced");
    latencies.sort();
    let per_thousand = 1000.0 / n as f64;
    let mut signed = signing.lock().unwrap().clone();
    if !signed.is_empty() {
        signed.sort();
        println!(
            "N={n:>5}  CA: {} certificates (key, CSR, token check, signature) in {:.0} ms of connecting = {:.0}/s; per request p50 {:.2} ms p99 {:.2} ms (new TLS connection each)",
            signed.len(),
            connect_time.as_secs_f64() * 1e3,
            signed.len() as f64 / connect_time.as_secs_f64(),
            percentile(&signed, 0.5).as_secs_f64() * 1e3,
            percentile(&signed, 0.99).as_secs_f64() * 1e3,
        );
    }
    println!(
        "N={n:>5} {tag:>8}  file change -> last ACK: p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms | connect all {:>6.0} ms | control plane: RSS idle {idle_rss:.1} MB, with streams {connected_rss:.1} MB (now {rss:.1}, peak {peak:.1}); CPU {:.3} s for {rounds} pushes to every stream ({:.4} s per push round per 1,000 streams)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        connect_time.as_secs_f64() * 1e3,
        cpu_after - cpu_before,
        (cpu_after - cpu_before) / rounds as f64 * per_thousand,
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once as a smoke test.
    let measuring = std::env::args().any(|a| a == "--bench");
    let counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (counts, rounds) = match (measuring, counts.is_empty()) {
        (true, true) => (vec![1, 100, 1000], ROUNDS),
        (true, false) => (counts, ROUNDS),
        (false, _) => (vec![1, 10], SMOKE_ROUNDS),
    };
    let dir = tempfile::tempdir().unwrap();
    let pki: PathBuf = dir.path().join("pki");
    let ca = DevCa::generate("cluster.local").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for n in counts {
        runtime.block_on(run(n, rounds, dir.path(), &pki, &ca, Identity::Files));
        runtime.block_on(run(n, rounds, dir.path(), &pki, &ca, Identity::FromCa));
    }
}
