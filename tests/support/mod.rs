//! Shared fixtures for the integration tests: a PKI made per test, a real HTTP app, in-process
//! sidecars on port 0, and real TLS clients. Nothing here mocks the data path.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use palisade::app::{RunOptions, Sidecar};
use palisade::config::{self, SidecarConfig};
use palisade::identity::{DevCa, LeafSpec, WorkloadFiles};
use palisade::telemetry::LogLevel;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpListener;

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// A trust domain's CA and a temp dir for the files it issues.
pub struct Pki {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Self::for_domain(TD)
    }

    pub fn for_domain(trust_domain: &str) -> Self {
        Pki { ca: DevCa::generate(trust_domain).unwrap(), dir: tempfile::tempdir().unwrap() }
    }

    pub fn workload(&self, name: &str, spiffe_id: &str) -> WorkloadFiles {
        self.issue(name, &LeafSpec::workload(spiffe_id))
    }

    pub fn issue(&self, name: &str, spec: &LeafSpec) -> WorkloadFiles {
        self.ca.issue_to(spec, &self.dir.path().join(name)).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A sidecar configuration on loopback, every port 0.
pub fn sidecar_config(files: &WorkloadFiles, app: SocketAddr) -> SidecarConfig {
    let yaml = format!(
        r#"
identity: {{files: {{cert: "{}", key: "{}", trustBundle: "{}", reloadInterval: 100ms}}}}
trustDomain: {TD}
inbound: {{listen: "127.0.0.1:0", app: "{app}", mtls: STRICT}}
outbound: {{listen: "127.0.0.1:0"}}
admin: {{listen: "127.0.0.1:0"}}
drainPeriod: 2s
"#,
        files.cert.display(),
        files.key.display(),
        files.trust_bundle.display()
    );
    config::parse_yaml(Path::new("test.yaml"), &yaml).unwrap()
}

pub fn start_sidecar(config: SidecarConfig) -> Sidecar {
    // Quiet unless PALISADE_LOG asks otherwise; security events go to a file, not the test output.
    let mut config = config;
    if config.telemetry.events.sink == palisade::config::EventSink::Stdout {
        let events = std::env::temp_dir().join(format!("palisade-test-events-{}.jsonl", std::process::id()));
        config.telemetry.events.sink = palisade::config::EventSink::File(events);
    }
    if config.telemetry.access_log_sink == palisade::config::EventSink::Stderr {
        let access = std::env::temp_dir().join(format!("palisade-test-access-{}.jsonl", std::process::id()));
        config.telemetry.access_log_sink = palisade::config::EventSink::File(access);
    }
    Sidecar::start(
        config,
        RunOptions {
            handle_signals: false,
            log_level: LogLevel::init_with("warn,pingora_core=error,pingora_proxy=error"),
        },
    )
    .unwrap()
}

pub fn route(authority: &str, address: SocketAddr, identity: Option<&str>) -> config::Destination {
    let yaml = match identity {
        Some(id) => {
            format!("{{authority: \"{authority}\", address: \"{address}\", identity: \"{id}\"}}")
        }
        None => format!("{{authority: \"{authority}\", address: \"{address}\"}}"),
    };
    config::parse_yaml(Path::new("route.yaml"), &yaml).unwrap()
}

/// What the echo app saw of a request.
#[derive(Debug, serde::Deserialize)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    /// An HTTP/2 request's `:authority` (HTTP/1.1 names the host in `headers`).
    #[serde(default)]
    pub authority: Option<String>,
    pub headers: BTreeMap<String, Vec<String>>,
    /// How many body bytes arrived.
    pub body_bytes: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

/// A real HTTP/1.1 and h2c server that answers with what it saw, as JSON.
/// `/slow/<ms>` waits before answering; `/status/<code>` answers with that status; `/bytes/<n>`
/// answers `n` bytes.
pub struct EchoApp {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoApp {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, hyper::service::service_fn(echo))
                        .await;
                });
            }
        });
        EchoApp { addr, task }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

type EchoBody = http_body_util::Either<
    Full<Bytes>,
    http_body_util::StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>>>,
>;

async fn echo(req: Request<hyper::body::Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok()) {
        // `n` bytes (rounded up to 64 KiB pieces), made as they are sent: a large answer costs
        // the app no memory.
        static PIECE: [u8; 65536] = [b'x'; 65536];
        let frames: Vec<_> =
            (0..n.div_ceil(PIECE.len())).map(|_| Ok(hyper::body::Frame::data(Bytes::from_static(&PIECE)))).collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        return Ok(Response::new(http_body_util::Either::Right(body)));
    }
    if path == "/trailers" {
        // A body followed by trailers, as gRPC answers.
        let frames = vec![
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"body"))),
            Ok(hyper::body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("x-checksum", http::HeaderValue::from_static("abc123"));
                t
            })),
        ];
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        return Ok(Response::new(http_body_util::Either::Right(body)));
    }
    let status = path.strip_prefix("/status/").and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers.entry(name.as_str().to_string()).or_default().push(value.to_str().unwrap_or("?").to_string());
    }
    let method = req.method().as_str().to_string();
    let version = format!("{:?}", req.version());
    let authority = req.uri().authority().map(|a| a.to_string());
    let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let seen = serde_json::json!({
        "method": method,
        "path": path,
        "version": version,
        "authority": authority,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Either::Left(Full::new(Bytes::from(serde_json::to_vec(&seen).unwrap()))))
        .unwrap())
}

/// Accepts any server certificate: these clients test the server's checks, not their own.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client config presenting `identity` (cert and key files), or no certificate.
pub fn client_tls(identity: Option<&WorkloadFiles>) -> rustls::ClientConfig {
    client_tls_of(identity, rustls::DEFAULT_VERSIONS)
}

/// [`client_tls`] offering only these TLS versions.
pub fn client_tls_of(
    identity: Option<&WorkloadFiles>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    match identity {
        Some(files) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&files.cert).unwrap().map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

/// An HTTPS client for the inbound listener (HTTP/1.1 unless the server picks h2 by ALPN).
pub fn https_client(identity: Option<&WorkloadFiles>) -> reqwest::Client {
    let mut tls = client_tls(identity);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(10)).build().unwrap()
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A TLS handshake with the given client identity; the error text when refused.
pub async fn handshake(addr: SocketAddr, identity: Option<&WorkloadFiles>) -> Result<(), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(identity)));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls =
        connector.connect(ServerName::try_from("sidecar.test").unwrap(), tcp).await.map_err(|e| e.to_string())?;
    // TLS 1.3 finishes the client's side before the server judged the client certificate:
    // a refusal arrives as an alert on the first read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf).await {
        Ok(_) if buf.starts_with(b"HTTP/1.1") => Ok(()),
        Ok(_) => Err(format!("no HTTP response: {:?}", String::from_utf8_lossy(&buf))),
        Err(e) => Err(e.to_string()),
    }
}

/// Two sidecars on loopback: `a` calls `b` at the authority `orders.shop`, expecting `b`'s identity.
pub struct Pair {
    pub pki: Pki,
    pub a: Sidecar,
    pub b: Sidecar,
    pub app: EchoApp,
}

pub const B_AUTHORITY: &str = "orders.shop";

impl Pair {
    pub async fn start() -> Pair {
        let app = EchoApp::start().await;
        Self::start_with_app(app).await
    }

    pub async fn start_with_app(app: EchoApp) -> Pair {
        Self::start_configured(app, |_| {}, |_| {}).await
    }

    /// As [`Pair::start_with_app`], with a last word on each sidecar's configuration.
    pub async fn start_configured(
        app: EchoApp,
        adjust_a: impl FnOnce(&mut SidecarConfig),
        adjust_b: impl FnOnce(&mut SidecarConfig),
    ) -> Pair {
        let pki = Pki::new();
        let files_a = pki.workload("a", &id("shop", "frontend"));
        let files_b = pki.workload("b", &id("shop", "orders"));
        let mut config_b = sidecar_config(&files_b, app.addr);
        config_b.workload.namespace = Some("shop".into());
        config_b.workload.service_account = Some("orders".into());
        adjust_b(&mut config_b);
        let b = start_sidecar(config_b);
        let mut config_a = sidecar_config(&files_a, "127.0.0.1:9".parse().unwrap());
        config_a.outbound.destinations = vec![route(B_AUTHORITY, b.inbound, Some(&id("shop", "orders")))];
        config_a.workload.namespace = Some("shop".into());
        config_a.workload.service_account = Some("frontend".into());
        adjust_a(&mut config_a);
        let a = start_sidecar(config_a);
        Pair { pki, a, b, app }
    }

    /// A URL that goes app -> a (outbound) -> b (inbound) -> app, with `Host: orders.shop`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.a.outbound)
    }

    pub fn shutdown(self) {
        self.a.shutdown();
        self.b.shutdown();
    }
}

/// How long a test waits for a positive signal before it gives up: `PALISADE_TEST_PATIENCE`
/// seconds (default 30), so a slow or busy machine can be given more without editing tests.
pub fn patience() -> Duration {
    let seconds = std::env::var("PALISADE_TEST_PATIENCE").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    Duration::from_secs(seconds)
}

/// Waits for a positive signal: polls `check` until it holds, or the test's [`patience`] runs
/// out (then false, and the caller's assertion says what did not happen). The one way tests
/// wait; none sleeps for a fixed time and then assumes.
pub async fn eventually(check: impl AsyncFnMut() -> bool) -> bool {
    eventually_within(Duration::ZERO, check).await
}

/// [`eventually`] for a signal that takes `expected` to come even on a fast machine (a number of
/// certificate rotations, say): patience on top of it.
pub async fn eventually_within(expected: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + expected + patience();
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

/// [`eventually`], or the test fails saying `what` did not happen.
pub async fn wait_for(what: &str, check: impl AsyncFnMut() -> bool) {
    assert!(eventually(check).await, "{what} within {:?}", patience());
}

/// [`eventually`] for tests that wait on processes and commands without a runtime.
pub fn eventually_blocking(mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + patience();
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// One JSON value per finished line of the file at `path` (none while it does not exist); a
/// line still being written is left for the next read.
pub fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let finished = text.rfind('\n').map_or("", |end| &text[..end]);
    finished.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// The events of `read` that `wanted` picks, once at least `count` of them are written: the
/// event writer works after the answer has gone, so a test that reads at once races it. When
/// they do not come, the test fails saying `what` was awaited and showing every event there is
/// ([`wait_for`] cannot show them).
pub async fn events_where(
    what: &str,
    count: usize,
    read: impl Fn() -> Vec<serde_json::Value>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let came = eventually(async || read().iter().filter(|e| wanted(e)).count() >= count).await;
    let events = read();
    assert!(came, "{what}: fewer than {count} such events within {:?} in {events:?}", patience());
    events.into_iter().filter(|e| wanted(e)).collect()
}

/// How often a condition is looked at again: often enough that waiting costs little.
const POLL: Duration = Duration::from_millis(25);

/// A free loopback port (for processes that need one written in their config), never one this
/// test process was handed before: the kernel may give a just-released port out again, and two
/// listeners of one test written to the same port fail for a reason that is not the test's.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Writes `documents` (YAML) to `path` atomically, as a ConfigMap update or an editor would.
pub fn write_policy(path: &Path, documents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, documents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A `SecurityPolicy` for workloads labelled `app: orders` in namespace `shop`, with `spec`
/// given as indented YAML (two spaces).
pub fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n{spec}"
    )
}

/// The orders workload's sidecar with the given policy documents (PERMISSIVE, so plaintext
/// callers without a principal can be tested too).
pub struct PolicedSidecar {
    pub pki: Pki,
    pub sidecar: Sidecar,
    pub app: EchoApp,
    pub policy_file: PathBuf,
    /// Where this sidecar's security events go (one JSON object per line).
    pub events: PathBuf,
    /// Where this sidecar's access log goes.
    pub access_log: PathBuf,
    identities: BTreeMap<&'static str, WorkloadFiles>,
}

/// A response read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn seen(&self) -> Seen {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn raw_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("response in time");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    // Undo chunked transfer coding for the JSON bodies the echo app sends.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Answer { status, head: head.to_string(), body }
}

/// Callers by short name: `frontend`, `billing` (namespace shop), `admin` (namespace ops),
/// `ui` (namespace web); `plain` has no certificate and no principal.
pub const CALLERS: &[(&str, &str, &str)] =
    &[("frontend", "shop", "frontend"), ("billing", "shop", "billing"), ("admin", "ops", "admin"), ("ui", "web", "ui")];

/// A request without a body, closing its connection after the answer.
fn bodyless(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("{method} {target} HTTP/1.1\r\nhost: orders.shop\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("content-length: 0\r\n\r\n");
    request
}

impl PolicedSidecar {
    pub async fn start(documents: &str) -> Self {
        Self::start_with(documents, |_| {}).await
    }

    /// As [`PolicedSidecar::start`], with a last word on the configuration.
    pub async fn start_with(documents: &str, adjust: impl FnOnce(&mut SidecarConfig)) -> Self {
        let pki = Pki::new();
        let app = EchoApp::start().await;
        let server = pki.workload("orders", &id("shop", "orders"));
        let policy_file = pki.path("policy.yaml");
        write_policy(&policy_file, documents);
        let mut config = sidecar_config(&server, app.addr);
        config.inbound.mtls = palisade::config::MtlsMode::PERMISSIVE;
        config.policy.files = vec![policy_file.clone()];
        config.workload.namespace = Some("shop".into());
        config.workload.service_account = Some("orders".into());
        config.workload.labels = [("app".to_string(), "orders".to_string())].into();
        let events = pki.path("events.jsonl");
        config.telemetry.events.sink = palisade::config::EventSink::File(events.clone());
        let access_log = pki.path("access.jsonl");
        config.telemetry.access_log_sink = palisade::config::EventSink::File(access_log.clone());
        adjust(&mut config);
        let sidecar = start_sidecar(config);
        let identities = CALLERS.iter().map(|(name, ns, sa)| (*name, pki.workload(name, &id(ns, sa)))).collect();
        PolicedSidecar { pki, sidecar, app, policy_file, events, access_log, identities }
    }

    /// Sends one HTTP/1.1 request as `caller`, the request target byte for byte as written
    /// (HTTP client libraries clean up `..` and `//`, which is what attacks rely on).
    pub async fn send(&self, caller: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.sidecar.inbound).await.unwrap();
        self.exchange_over(tcp, caller, bodyless(method, target, headers).as_bytes()).await
    }

    /// [`PolicedSidecar::send`] from another loopback address (`127.0.0.2`): another source.
    pub async fn send_from(
        &self,
        source: std::net::IpAddr,
        caller: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = socket.connect(self.sidecar.inbound).await.unwrap();
        self.exchange_over(tcp, caller, bodyless(method, target, headers).as_bytes()).await
    }

    /// Sends `request` (a whole HTTP/1.1 request, head and body, as written) as `caller`.
    pub async fn exchange(&self, caller: &str, request: impl AsRef<[u8]>) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.sidecar.inbound).await.unwrap();
        self.exchange_over(tcp, caller, request.as_ref()).await
    }

    async fn exchange_over(&self, tcp: tokio::net::TcpStream, caller: &str, request: &[u8]) -> Answer {
        match self.identities.get(caller) {
            None => raw_exchange(tcp, request).await,
            Some(files) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(Some(files))));
                let tls = connector.connect(ServerName::try_from("orders.shop").unwrap(), tcp).await.unwrap();
                raw_exchange(tls, request).await
            }
        }
    }

    /// An mTLS connection as `caller` speaking HTTP/1.1, left open for the test to write to.
    pub async fn http1_connection(&self, caller: &str) -> MtlsStream {
        mtls_stream(self.sidecar.inbound, &self.identities[caller], b"http/1.1").await.unwrap()
    }

    /// A real HTTPS client presenting `caller`'s certificate, for [`PolicedSidecar::url`].
    pub fn https(&self, caller: &str) -> reqwest::Client {
        https_client(self.identities.get(caller))
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.sidecar.inbound)
    }

    pub async fn metrics(&self) -> String {
        http_client().get(format!("http://{}/metrics", self.sidecar.admin)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn config_dump(&self) -> serde_json::Value {
        self.admin_json("/config_dump").await
    }

    /// A JSON answer of the admin listener (`/config_dump`, `/inventory`).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        http_client().get(format!("http://{}{path}", self.sidecar.admin)).send().await.unwrap().json().await.unwrap()
    }

    pub fn shutdown(self) {
        self.sidecar.shutdown();
    }

    /// The security events written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.events)
    }

    /// The events `wanted` picks, once at least `count` of them are written (see [`events_where`]).
    pub async fn events_where(
        &self,
        what: &str,
        count: usize,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        events_where(what, count, || self.events(), wanted).await
    }
}

/// One sidecar for `shop/orders` in front of an echo app, and a client identity `shop/frontend`.
pub struct Single {
    pub pki: Pki,
    pub client: WorkloadFiles,
    pub app: EchoApp,
    pub sidecar: Sidecar,
}

impl Single {
    pub async fn start(adjust: impl FnOnce(&mut SidecarConfig)) -> Single {
        let pki = Pki::new();
        let server = pki.workload("server", &id("shop", "orders"));
        let client = pki.workload("client", &id("shop", "frontend"));
        let app = EchoApp::start().await;
        let mut config = sidecar_config(&server, app.addr);
        adjust(&mut config);
        let sidecar = start_sidecar(config);
        Single { pki, client, app, sidecar }
    }

    pub fn https(&self) -> reqwest::Client {
        https_client(Some(&self.client))
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.sidecar.inbound)
    }
}

/// A policy spec (two-space indented) that denies `/admin*` and allows one request to `/limited`
/// per minute.
pub const DENY_ADMIN_LIMIT_ONE: &str = r#"  authorization:
    default: ALLOW
    rules:
      - {name: no-admin, action: DENY, to: {paths: ["/admin*"]}}
  rateLimits:
    - {name: tight, match: {paths: ["/limited"]}, key: global, rate: 1, per: 60s, burst: 1}
"#;

/// An HTTP/1.1 keep-alive app that answers at once with 200 "ok", except `GET /hold`, which it
/// answers ("held") only when the test hands out a permit: so a test knows a request is in
/// flight, and decides when it ends, without timing anything.
pub struct HoldingApp {
    pub addr: SocketAddr,
    /// `/hold` requests that reached the app.
    pub held: Arc<std::sync::atomic::AtomicUsize>,
    release: Arc<tokio::sync::Semaphore>,
}

impl HoldingApp {
    pub async fn start() -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (counter, gate) = (held.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (counter, gate) = (counter.clone(), gate.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let hold = line.starts_with("GET /hold ");
                        loop {
                            let mut header = String::new();
                            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                        }
                        if hold {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            gate.acquire().await.unwrap().forget();
                        }
                        let body = if hold { "held" } else { "ok" };
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HoldingApp { addr, held, release }
    }

    /// Lets `n` held requests be answered.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }

    pub async fn wait_held(&self, n: usize) {
        wait_for("requests held by the app", async || self.held.load(std::sync::atomic::Ordering::SeqCst) >= n).await;
    }
}

pub type MtlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An mTLS connection to `addr` as `identity` for `orders.shop`, offering `alpn`; the error when
/// there is none (refused, or closed at accept before the handshake).
pub async fn mtls_stream(addr: SocketAddr, identity: &WorkloadFiles, alpn: &[u8]) -> std::io::Result<MtlsStream> {
    let mut tls = client_tls(Some(identity));
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(ServerName::try_from("orders.shop").unwrap(), tcp).await
}

/// What an HTTP/2 client with prior knowledge, or after ALPN, sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame, as raw-frame tests write it: its 9-byte header, then the payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The last stream id and error code of the first GOAWAY among the HTTP/2 frames a server sent
/// (its bytes from the start of the connection); `None` without a whole one.
pub fn h2_goaway(mut frames: &[u8]) -> Option<(u32, u32)> {
    while frames.len() >= 9 {
        let length = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        let payload = frames.get(9..9 + length)?;
        if frames[3] == 0x7 {
            let last = u32::from_be_bytes(payload.get(..4)?.try_into().unwrap()) & 0x7fff_ffff;
            return Some((last, u32::from_be_bytes(payload.get(4..8)?.try_into().unwrap())));
        }
        frames = &frames[9 + length..];
    }
    None
}

pub fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n")
}

/// What a shell scenario run in a network namespace of its own printed.
pub struct Scenario {
    pub stdout: String,
    /// stdout, stderr and the files named, for failure messages.
    pub context: String,
}

/// What every scenario starts with: strict bash, everything it starts stopped when it ends (a
/// failed step, the timeout) so the test is not left waiting on their output, loopback up, and
/// a mesh CA in `$WORK/ca` (trust domain cluster.local).
const SCENARIO_PRELUDE: &str = r#"
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
trap 'exit 143' TERM
ip link set lo up
cd "$WORK"
"$BIN" ca init --trust-domain cluster.local --out ca >/dev/null
"#;

/// Runs `script` (after [`SCENARIO_PRELUDE`]) with bash as root in a new network namespace
/// (`unshare -n`), `BIN` the palisade binary and `WORK` a temp dir, for at most `seconds`;
/// asserts it succeeded. `None` (the test skips) when not root: namespaces and iptables need it.
pub fn netns_scenario(script: &str, seconds: u32, logs: &[&str]) -> Option<Scenario> {
    if !is_root() {
        eprintln!("skipped: needs root for a network namespace and iptables");
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("timeout")
        .args([&seconds.to_string(), "unshare", "-n", "bash", "-c", &format!("{SCENARIO_PRELUDE}{script}")])
        .env("BIN", env!("CARGO_BIN_EXE_palisade"))
        .env("WORK", work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<String> =
        logs.iter().map(|f| std::fs::read_to_string(work.path().join(f)).unwrap_or_default()).collect();
    let context = format!("stdout: {stdout}\nstderr: {stderr}\nlogs: {}", logs.join("\n"));
    assert!(out.status.success(), "scenario failed\n{context}");
    Some(Scenario { stdout, context })
}

/// A child process killed when the test ends, whether it passed or panicked: a failed test must
/// not leave a sidecar running for the rest of the suite.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real gRPC app: tonic's standard health service on a loopback port, each of `services`
/// reported `SERVING`; the reporter changes what it reports.
/// A gRPC channel (h2c, as an app in the pod speaks to its sidecar) to `to`, calling
/// `authority`.
pub async fn grpc_channel(to: SocketAddr, authority: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{to}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap()
}

pub async fn grpc_health_app(services: &[&str]) -> (tonic_health::server::HealthReporter, std::net::SocketAddr) {
    grpc_health_app_serving(services, false).await
}

/// [`grpc_health_app`] serving gRPC-Web too (tonic-web), over HTTP/1.1 as browsers' clients
/// reach it.
pub async fn grpc_web_health_app(services: &[&str]) -> (tonic_health::server::HealthReporter, std::net::SocketAddr) {
    grpc_health_app_serving(services, true).await
}

async fn grpc_health_app_serving(
    services: &[&str],
    web: bool,
) -> (tonic_health::server::HealthReporter, std::net::SocketAddr) {
    let (reporter, health) = tonic_health::server::health_reporter();
    for service in services {
        reporter.set_service_status(*service, tonic_health::ServingStatus::Serving).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    match web {
        false => tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming)),
        true => tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .layer(tonic_web::GrpcWebLayer::new())
                .add_service(health)
                .serve_with_incoming(incoming),
        ),
    };
    (reporter, addr)
}
