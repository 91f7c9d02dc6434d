//! The `palisade` binary as a user runs it: commands, exit codes, config errors, SIGTERM drain,
//! admin shutdown and the demo.

mod support;

use std::process::{Command, Stdio};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn palisade(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn write_config(
    dir: &std::path::Path,
    files: &palisade::identity::WorkloadFiles,
    app: u16,
    ports: [u16; 3],
) -> std::path::PathBuf {
    let path = dir.join("sidecar.yaml");
    std::fs::write(
        &path,
        format!(
            "identity:\n  files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}\ntrustDomain: {TD}\n\
             inbound: {{listen: \"127.0.0.1:{}\", app: \"127.0.0.1:{app}\"}}\noutbound: {{listen: \"127.0.0.1:{}\"}}\n\
             admin: {{listen: \"127.0.0.1:{}\"}}\ndrainPeriod: 5s\n",
            files.cert.display(),
            files.key.display(),
            files.trust_bundle.display(),
            ports[0],
            ports[1],
            ports[2]
        ),
    )
    .unwrap();
    path
}

/// `palisade sidecar --config CONFIG`, once its admin port says it is ready; its log goes to
/// `sidecar.log` beside the configuration.
async fn spawn_ready(config: &std::path::Path, admin: u16) -> KillOnDrop {
    spawn_with_open_files(config, None, admin).await
}

/// As [`spawn_ready`], under the open-files limit `nofile` when given (`soft:hard`, as prlimit
/// takes it).
async fn spawn_with_open_files(config: &std::path::Path, nofile: Option<&str>, admin: u16) -> KillOnDrop {
    let log = std::fs::File::create(config.with_file_name("sidecar.log")).unwrap();
    let mut command = match nofile {
        Some(nofile) => {
            let mut prlimit = Command::new("prlimit");
            prlimit.args([&format!("--nofile={nofile}"), "--", BIN]);
            prlimit
        }
        None => Command::new(BIN),
    };
    let child = command
        .args(["sidecar", "--config"])
        .arg(config)
        .env("PALISADE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    wait_ready(admin).await;
    child
}

/// A sidecar for shop/orders with no app (port 9), its configuration written: the PKI (keep it
/// alive), the configuration's path and the ports (inbound, outbound, admin).
fn orders_sidecar() -> (Pki, std::path::PathBuf, [u16; 3]) {
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let ports = [free_port(), free_port(), free_port()];
    let config = write_config(pki.dir.path(), &server, 9, ports);
    (pki, config, ports)
}

async fn wait_ready(admin: u16) {
    let ready = eventually(async || {
        matches!(http_client().get(format!("http://127.0.0.1:{admin}/ready")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(ready, "sidecar became ready");
}

/// The exit status, once the process has ended (or the test's patience ran out: then killed).
fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let mut status = None;
    if !eventually_blocking(|| {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.kill();
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_refuses_new_ones_and_exits_zero() {
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let client = pki.workload("client", &id("shop", "frontend"));
    let app = HoldingApp::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let config = write_config(pki.dir.path(), &server, app.addr.port(), ports);
    let mut child = spawn_ready(&config, ports[2]).await;

    // Three requests in flight: the app holds them until the test lets go.
    let mut tls = client_tls(Some(&client));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let https = reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap();
    let held: Vec<_> =
        (0..3).map(|_| tokio::spawn(https.get(format!("https://127.0.0.1:{}/hold", ports[0])).send())).collect();
    app.wait_held(3).await;
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());

    // New connections are refused while the old requests are still running.
    let closed = eventually(async || tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.is_err()).await;
    assert!(closed, "the listener is closed during the drain");
    // The probe says why it is not ready: going away, not failing to come up.
    let ready = http_client().get(format!("http://127.0.0.1:{}/ready", ports[2])).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("draining"));
    app.release(3);
    for request in held {
        let response = request.await.unwrap().expect("in-flight request completes");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "held");
    }
    let status = wait_exit(&mut child).expect("the sidecar exits");
    assert!(status.success(), "exit status {status:?}");
    let log = std::fs::read_to_string(config.with_file_name("sidecar.log")).unwrap();
    assert!(log.contains("drained; exiting"), "exits once drained, not at the deadline: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_terminal_drains_the_sidecar_instead_of_killing_it() {
    let (_pki, config, ports) = orders_sidecar();
    let mut child = spawn_ready(&config, ports[2]).await;
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    let status = wait_exit(&mut child).expect("the sidecar exits");
    assert!(status.success(), "drained and exited 0, not ended by the signal: {status:?}");
    let log = std::fs::read_to_string(config.with_file_name("sidecar.log")).unwrap();
    assert!(log.contains("SIGHUP: draining"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_from_localhost_drains_and_exits_zero() {
    let (_pki, config, ports) = orders_sidecar();
    let mut child = spawn_ready(&config, ports[2]).await;
    let admin = format!("http://127.0.0.1:{}", ports[2]);
    let client = http_client();
    assert_eq!(client.get(format!("{admin}/live")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{admin}/shutdown")).send().await.unwrap().status(), 405);
    let dump = client.get(format!("{admin}/config_dump")).send().await.unwrap().text().await.unwrap();
    assert!(dump.contains(&id("shop", "orders")), "{dump}");
    assert!(!dump.contains("PRIVATE KEY"), "no key material in the dump");
    assert_eq!(client.post(format!("{admin}/shutdown")).send().await.unwrap().status(), 200);
    let status = wait_exit(&mut child).expect("the sidecar exits");
    assert!(status.success(), "exit status {status:?}");
}

/// A request that fails is logged with a summary of it: cut short, however long the path or
/// host the app sent (an app once wrote 60 KB lines, one per request, with a long host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_logged_in_a_short_line_whatever_its_path_and_host() {
    let (_pki, config, ports) = orders_sidecar();
    let mut child = spawn_ready(&config, ports[2]).await;
    // Nothing listens on port 9: the request fails with 502.
    let long = "p".repeat(6000);
    let answer = http_client()
        .get(format!("http://127.0.0.1:{}/{long}", ports[1]))
        .header("host", "127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    let log = config.with_file_name("sidecar.log");
    let logged = eventually(async || std::fs::read_to_string(&log).unwrap().contains("request failed: ")).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(logged, "the failure's line: {text}");
    let line = text.lines().find(|l| l.contains("request failed: ")).unwrap();
    assert!(line.len() < 500 && line.contains("pppp...") && line.contains("Host: 127.0.0.1:9"), "{line}");
    // A query may carry a credential: never written.
    let url = format!("http://127.0.0.1:{}/reset?access_token=SECRETQUERYTOKEN", ports[1]);
    assert_eq!(http_client().get(url).header("host", "127.0.0.1:9").send().await.unwrap().status(), 502);
    let logged = eventually(async || std::fs::read_to_string(&log).unwrap().contains("GET /reset?<query>")).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(logged && !text.contains("SECRETQUERYTOKEN"), "{text}");
    // A method is any token the parser takes: cut too.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", ports[1])).unwrap();
    let request = format!("{} / HTTP/1.1\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n", "X".repeat(6000));
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    let logged = eventually(async || {
        std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("request failed: ")).count() >= 2
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(logged, "{text}");
    assert!(text.lines().filter(|l| l.contains("request failed: ")).all(|l| l.len() < 500), "{text}");
    // A burst of failures is not a line each: past ten a second they are counted, and a later
    // line says how many went unlogged.
    let client = http_client();
    let burst = (0..200)
        .map(|_| client.get(format!("http://127.0.0.1:{}/burst", ports[1])).header("host", "127.0.0.1:9").send());
    assert!(futures::future::join_all(burst).await.into_iter().all(|r| r.unwrap().status() == 502));
    let counted = eventually(async || {
        let again = client.get(format!("http://127.0.0.1:{}/later", ports[1])).header("host", "127.0.0.1:9").send();
        assert_eq!(again.await.unwrap().status(), 502);
        std::fs::read_to_string(&log).unwrap().contains("failed requests before it were not logged")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(counted, "{text}");
    assert!(text.lines().filter(|l| l.contains("request failed: ")).count() < 200, "{text}");
    // The caller's own doing (a chunked body that does not parse) is answered and counted, but
    // is no ERROR of the sidecar's: the line of the failure after it comes, and none for it.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", ports[1])).unwrap();
    let broken = "POST /broken-body HTTP/1.1\r\nHost: 127.0.0.1:9\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n";
    std::io::Write::write_all(&mut stream, broken.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    let after = eventually(async || {
        // Past the second of the burst's lines, so this failure's line is due.
        let again =
            client.get(format!("http://127.0.0.1:{}/after-broken", ports[1])).header("host", "127.0.0.1:9").send();
        assert_eq!(again.await.unwrap().status(), 502);
        std::fs::read_to_string(&log).unwrap().contains("/after-broken")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(after, "{text}");
    assert!(!text.lines().any(|l| l.contains("request failed") && l.contains("/broken-body")), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A stderr nobody reads (a stalled log pipeline, a blocked container log driver): log and access
/// log lines are dropped and counted, and requests and `/live` go on. The log writer once held
/// stderr while it waited, and every worker thread that logged waited behind it, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_drops_log_lines_and_stops_nothing() {
    let (_pki, config, ports) = orders_sidecar();
    let child = Command::new(BIN)
        .args(["sidecar", "--config"])
        .arg(&config)
        .env("PALISADE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    // Held open and never read: the pipe fills (64 KiB) after some hundred lines.
    let _unread = child.stderr.take().unwrap();
    wait_ready(ports[2]).await;
    // Each fails (nothing listens on port 9): an error line and an access log line each.
    let long = "p".repeat(400);
    // More than the pipe and the writer's queue (1024 lines) hold.
    for i in 0..1600 {
        let answer = http_client()
            .get(format!("http://127.0.0.1:{}/{long}/{i}", ports[1]))
            .header("host", "127.0.0.1:9")
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(answer.status(), 502, "request {i}");
    }
    let live = http_client().get(format!("http://127.0.0.1:{}/live", ports[2])).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let metrics = http_client().get(format!("http://127.0.0.1:{}/metrics", ports[2])).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let dropped = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let lost = dropped("palisade_log_lines_dropped_total") + dropped("palisade_access_log_lines_dropped_total");
    assert!(lost > 0.0, "lines that could not be written are counted: {metrics}");
    // And it still stops when asked: the last lines are waited for a bounded time, not for ever.
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = wait_exit(&mut child).expect("it exits on SIGTERM with stderr stalled");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A slowloris flood closed at `limits.headerTimeout` is logged in aggregate, a line a second:
/// pingora's own error line for each connection whose head stopped coming is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_mid_head_are_logged_in_aggregate_not_one_line_each() {
    let (_pki, config, ports) = orders_sidecar();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("limits: {headerTimeout: 1s}\n");
    std::fs::write(&config, text).unwrap();
    let mut child = spawn_ready(&config, ports[2]).await;
    let mut held = Vec::new();
    for port in [ports[0], ports[1], ports[2]] {
        for _ in 0..10 {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /x HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            held.push(stream);
        }
    }
    let log = config.with_file_name("sidecar.log");
    let aggregated = eventually(async || {
        let text = std::fs::read_to_string(&log).unwrap();
        ["outbound", "admin"].iter().all(|side| text.contains(&format!("10 connections on {side} closed")))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(aggregated, "{text}");
    assert!(!text.contains("while reading request headers"), "one line per connection: {text}");
    assert!(text.contains("source=127.0.0.1"), "the source as an address: {text}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A container started with few open files (a soft 128 under a hard 256 here): the sidecar raises
/// its soft limit to the hard one, and holds each listener to what the files allow, so a flood of
/// idle connections to the data port is refused at its connection limit while the admin port
/// still answers. Before, the flood used up the files and no listener could accept, `/ready`
/// included (issue 16's outside finding at a limit of 256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_open_files_a_connection_flood_leaves_the_admin_port_answering() {
    let (_pki, config, ports) = orders_sidecar();
    let log_path = config.with_file_name("sidecar.log");
    let mut child = spawn_with_open_files(&config, Some("128:256"), ports[2]).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    assert_eq!(open_files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(), ["256", "256"], "{open_files}");
    // Log lines are written by a thread of their own: waited for, not read at once.
    let budget = eventually(async || {
        let log = std::fs::read_to_string(&log_path).unwrap();
        log.contains("data_connections=29") && log.contains("admin_connections=12")
    })
    .await;
    assert!(budget, "{}", std::fs::read_to_string(&log_path).unwrap());

    // Twice the files there are, held open (idle: closed only at the 10 s header timeout).
    let mut flood = Vec::new();
    for _ in 0..512 {
        flood.push(tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap());
    }
    let admin = format!("http://127.0.0.1:{}", ports[2]);
    let refused = async || {
        let text = http_client().get(format!("{admin}/metrics")).send().await.ok()?.text().await.ok()?;
        let series = "palisade_connections_closed_total{direction=\"inbound\",reason=\"connection_limit\"} ";
        text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert!(
        eventually(async || refused().await >= Some(512 - 29)).await,
        "refused at the limit: {:?}",
        refused().await
    );
    let ready = http_client().get(format!("{admin}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the admin port answers with the data port full");
    drop(flood);
    let _ = child.kill();
    let _ = child.wait();
}

/// One HTTP/2 connection whose streams each go to an HTTP/1.1 app holds a file per stream: with
/// few open files, requests in flight are held to the connections' budget (the rest shed with
/// 503), so one connection cannot take every file and the probes still connect. Before, 250
/// streams took all 256 files, and `/live` stopped answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_open_files_one_http2_connection_cannot_take_every_file() {
    let app = HoldingApp::start().await;
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let client = pki.workload("client", &id("shop", "frontend"));
    let ports = [free_port(), free_port(), free_port()];
    let config = write_config(pki.dir.path(), &server, app.addr.port(), ports);
    let text = std::fs::read_to_string(&config).unwrap().replace("inbound: {", "inbound: {appProtocol: http1, ");
    // The one client may hold every slot here (a source's share is tests/load_shedding.rs's).
    std::fs::write(&config, format!("{text}limits: {{maxInflightPerSource: 1000}}\n")).unwrap();
    let log_path = config.with_file_name("sidecar.log");
    let mut child = spawn_with_open_files(&config, Some("256:256"), ports[2]).await;
    // Log lines are written by a thread of their own: waited for, not read at once.
    let limited = eventually(async || std::fs::read_to_string(&log_path).unwrap().contains("max_inflight=29")).await;
    assert!(limited, "{}", std::fs::read_to_string(&log_path).unwrap());

    let mut tls = client_tls(Some(&client));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("orders.shop").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await.unwrap();
    let (h2, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut responses = Vec::new();
    for _ in 0..100 {
        let mut h2 = h2.clone().ready().await.unwrap();
        let request = http::Request::get("https://orders.shop/hold").body(()).unwrap();
        responses.push(h2.send_request(request, true).unwrap().0);
    }
    app.wait_held(29).await;
    let admin = format!("http://127.0.0.1:{}", ports[2]);
    let shed = async || {
        let text = http_client().get(format!("{admin}/metrics")).send().await.ok()?.text().await.ok()?;
        let series = "palisade_requests_shed_total{direction=\"inbound\"} ";
        text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert!(eventually(async || shed().await == Some(71)).await, "the rest shed: {:?}", shed().await);
    // The probes connect and answer while the 29 are held.
    let ready = http_client().get(format!("{admin}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // /config_dump has the limits in force, not the file's (outside tester j2).
    let dump: serde_json::Value =
        http_client().get(format!("{admin}/config_dump")).send().await.unwrap().json().await.unwrap();
    assert_eq!(dump["config"]["limits"]["maxInflight"], 29, "{}", dump["config"]["limits"]);
    assert_eq!(dump["config"]["limits"]["maxInflightPerSource"], 1000);
    assert!(dump["config"]["limits"]["maxConnections"].as_u64() < Some(10_000), "{}", dump["config"]["limits"]);
    app.release(29);
    let mut statuses = Vec::new();
    for response in responses {
        statuses.push(tokio::time::timeout(patience(), response).await.unwrap().unwrap().status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 29, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 71, "{statuses:?}");
    assert_eq!(app.held.load(std::sync::atomic::Ordering::SeqCst), 29, "no more reached the app");
    let _ = child.kill();
    let _ = child.wait();
}

/// `POST /log_level` applies a filter only when its body came whole: one cut short (the client
/// went before its Content-Length) used to be applied as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_filter_cut_short_is_not_applied() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pki, config, ports) = orders_sidecar();
    let mut child = spawn_ready(&config, ports[2]).await;
    let admin = format!("http://127.0.0.1:{}", ports[2]);
    let client = http_client();
    let level = async || {
        client.get(format!("{admin}/log_level")).send().await.unwrap().text().await.unwrap().trim().to_string()
    };
    assert_eq!(level().await, "info");

    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", ports[2])).await.unwrap();
    raw.write_all(b"POST /log_level HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 20\r\n\r\nwarn").await.unwrap();
    raw.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(level().await, "info", "the cut-short filter was applied");

    let whole = client.post(format!("{admin}/log_level")).body("warn").send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(level().await, "warn", "a whole one is");

    // Silencing the log leaves a line saying who did it, written before the filter went
    // (outside tester q2: `off` left no trace).
    let off = client.post(format!("{admin}/log_level")).body("off").send().await.unwrap();
    assert_eq!(off.status(), 200);
    let log = config.with_file_name("sidecar.log");
    let said = eventually(async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| l.contains("log level changing through the admin API") && l.contains("to=\"off\""))
    })
    .await;
    assert!(said, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a sidecar with these arguments and variables (and no log variables of the test's own),
/// shuts it down through its admin API and returns what it wrote on stderr.
async fn stderr_of_a_run(args: &[&str], env: &[(&str, &str)]) -> String {
    let (_pki, config, ports) = orders_sidecar();
    let log = config.with_file_name("sidecar.log");
    let mut child = Command::new(BIN)
        .args(["sidecar", "--config"])
        .arg(&config)
        .args(args)
        .env_remove("PALISADE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("PALISADE_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_ready(ports[2]).await;
    let shutdown = http_client().post(format!("http://127.0.0.1:{}/shutdown", ports[2])).send().await.unwrap();
    assert_eq!(shutdown.status(), 200);
    assert!(wait_exit(&mut child).expect("the sidecar exits").success());
    std::fs::read_to_string(log).unwrap()
}

/// Every line of `stderr` as a JSON object; fails on the first line that is not one.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|line| match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => v,
            _ => panic!("not a JSON object: {line:?}\nin:\n{stderr}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_when_asked_and_plain_text_without_colour_in_a_file() {
    // --log-format json, the filter from RUST_LOG alone.
    let stderr = stderr_of_a_run(&["--log-format", "json"], &[("RUST_LOG", "info")]).await;
    let lines = json_lines(&stderr);
    let drained = lines.iter().find(|l| l["message"] == "drained; exiting").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(drained["level"], "INFO");
    assert!(drained["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{drained}");
    assert!(!stderr.contains('\x1b'), "no colour codes: {stderr}");

    // PALISADE_LOG_FORMAT does the same, and PALISADE_LOG wins over RUST_LOG.
    let stderr =
        stderr_of_a_run(&[], &[("PALISADE_LOG_FORMAT", "json"), ("PALISADE_LOG", "warn"), ("RUST_LOG", "info")]).await;
    let lines = json_lines(&stderr);
    assert!(lines.iter().all(|l| l["level"] == "WARN" || l["level"] == "ERROR"), "{stderr}");

    // Text by default; stderr is a file here, so no ANSI escape sequences.
    let stderr = stderr_of_a_run(&[], &[("RUST_LOG", "info")]).await;
    let drained = stderr.lines().find(|l| l.contains("drained; exiting")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(drained.contains("INFO") && !drained.starts_with('{'), "{drained}");
    assert!(!stderr.contains('\x1b'), "no colour codes: {stderr}");
}

#[test]
fn bad_arguments_exit_64_and_help_exits_0() {
    for args in [&["sidecar", "--bogus"][..], &["check"][..], &["nope"][..]] {
        let out = palisade(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
    let help = palisade(&["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("sidecar"), "{help:?}");
}

#[test]
fn with_no_configuration_at_all_errors_name_the_defaults() {
    let out = Command::new(BIN)
        .args(["sidecar"])
        .env_remove("PALISADE_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: defaults (no --config, no PALISADE_CONFIG): identity.files"), "{stderr}");
}

/// Both a file and PALISADE_CONFIG: the file is read, and the variable is said to be ignored
/// (outside tester m3: `PALISADE_CONFIG='threads: 99'` beside --config went unmentioned).
#[test]
fn palisade_config_beside_a_config_file_is_said_to_be_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "threads: 0\n").unwrap();
    let out = Command::new(BIN)
        .args(["sidecar", "--config"])
        .arg(&file)
        .env("PALISADE_CONFIG", "threads: 99")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("warning: PALISADE_CONFIG is set and not read: --config {} is", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("c.yaml") && stderr.contains("threads"),
        "the file's mistake is what is reported: {stderr}"
    );
    let out =
        Command::new(BIN).args(["sidecar", "--config"]).arg(&file).env_remove("PALISADE_CONFIG").output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning: PALISADE_CONFIG"), "{out:?}");
}

/// A policy may name any path as its JWKS or HMAC secret: a FIFO (which would block the reader
/// for good) or /dev/zero (which never ends) is refused with the file named, at once.
#[test]
fn a_policy_naming_a_fifo_or_a_device_as_its_keys_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("jwks.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (what, source) in [
        ("a FIFO as JWKS", format!("jwks: {{file: \"{}\"}}", fifo.display())),
        ("/dev/zero as JWKS", "jwks: {file: /dev/zero}".to_string()),
        ("/dev/zero as the HMAC secret", "hmacSecret: {file: /dev/zero}".to_string()),
    ] {
        let policy = format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  authentication:\n    jwt:\n      - issuer: https://issuer.example\n        {source}\n"
        );
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, policy).unwrap();
        let mut child =
            Command::new(BIN).args(["check"]).arg(&file).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let status = wait_exit(&mut child).unwrap_or_else(|| panic!("{what}: check hung"));
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{what}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{what}: {stderr}");
    }
}

/// The Helm chart's `policies` value, checked before `helm upgrade` renders it: the example
/// values pass, a typo in them is named with the values file's line and the item's field (the
/// chart's schema checks types only, and the control plane would keep the last good version).
#[test]
fn check_reads_the_policies_of_a_helm_values_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/example/values.yaml");
    let good = palisade(&["check", "--values", example]);
    assert!(good.status.success(), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout).contains("shop/orders-api selects"), "{good:?}");

    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example).unwrap();
    let typo = dir.path().join("values.yaml");
    assert!(text.contains("default: DENY"), "the example names a default decision");
    std::fs::write(&typo, text.replacen("default: DENY", "default: DENI", 1)).unwrap();
    let line = text[..text.find("default: DENY").unwrap()].lines().count();
    let bad = palisade(&["check", "--values", typo.to_str().unwrap()]);
    assert!(!bad.status.success(), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(&format!("values.yaml:{line}:")), "line {line}: {stderr}");
    assert!(stderr.contains("policies[0].spec.authorization.default"), "{stderr}");

    // The chart's own defaults list none: nothing wrong.
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/palisade/values.yaml");
    let defaults = palisade(&["check", "--values", chart]);
    assert!(defaults.status.success(), "{defaults:?}");
    // A policy listed twice fails the chart's render: so here.
    let items = &text[text.find("policies:").unwrap() + "policies:".len()..];
    let twice = dir.path().join("twice.yaml");
    std::fs::write(&twice, format!("policies:{items}{items}")).unwrap();
    let refused = palisade(&["check", "--values", twice.to_str().unwrap()]);
    assert!(!refused.status.success(), "{refused:?}");

    let none = dir.path().join("none.yaml");
    std::fs::write(&none, "controlPlane: {replicas: 2}\n").unwrap();
    let nothing = palisade(&["check", "--values", none.to_str().unwrap()]);
    assert!(
        !nothing.status.success() && String::from_utf8_lossy(&nothing.stderr).contains("no policies value"),
        "{nothing:?}"
    );
}

/// `requireJwt` with no issuer: a sidecar selected refuses the policy, so `check` warns, unless
/// another policy of the namespace among those checked names an issuer.
#[test]
fn check_warns_of_a_required_token_no_policy_names_an_issuer_for() {
    let dir = tempfile::tempdir().unwrap();
    let head = "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\n";
    let require = dir.path().join("require.yaml");
    std::fs::write(
        &require,
        format!("{head}metadata: {{name: r, namespace: shop}}\nspec:\n  authentication: {{requireJwt: true}}\n"),
    )
    .unwrap();
    let issuer = dir.path().join("issuer.yaml");
    std::fs::write(&issuer, format!("{head}metadata: {{name: i, namespace: shop}}\nspec:\n  authentication:\n    jwt: [{{issuer: https://issuer.example, hmacSecret: {{inline: {}}}}}]\n", "s".repeat(32))).unwrap();
    // A warning, not a failure: a hook may check only the files that changed.
    let alone = palisade(&["check", require.to_str().unwrap()]);
    assert!(alone.status.success(), "{alone:?}");
    assert!(
        String::from_utf8_lossy(&alone.stderr).contains("warning: ")
            && String::from_utf8_lossy(&alone.stderr).contains("spec.authentication.requireJwt"),
        "{alone:?}"
    );
    let both = palisade(&["check", require.to_str().unwrap(), issuer.to_str().unwrap()]);
    assert!(both.status.success() && both.stderr.is_empty(), "{both:?}");
}

/// A `maxDelay` on a REJECT limit is not read (SPEC section 4 writes one in its example, so it
/// is no error): `check` warns with its line, so an operator who wanted throttling knows
/// (outside tester m3). Policies may come on standard input, as `inject -f -` takes pods.
#[test]
fn check_warns_of_a_max_delay_a_reject_limit_does_not_read_and_reads_standard_input() {
    let head = "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: r, namespace: shop}\nspec:\n  rateLimits:\n";
    let check_stdin = |text: String| {
        let mut child = Command::new(BIN)
            .args(["check", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let reject =
        check_stdin(format!("{head}    - name: slow\n      rate: 1\n      action: REJECT\n      maxDelay: 500ms\n"));
    let stderr = String::from_utf8_lossy(&reject.stderr);
    assert!(reject.status.success(), "{reject:?}");
    assert!(
        stderr.contains("warning: -:9:1: spec.rateLimits[0].maxDelay: limit slow is REJECT, which answers 429 at once"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&reject.stdout).contains("1 policy OK"), "{reject:?}");
    let delay = check_stdin(format!("{head}    - {{name: slow, rate: 1, action: DELAY, maxDelay: 500ms}}\n"));
    assert!(delay.status.success() && delay.stderr.is_empty(), "{delay:?}");
    let bad = check_stdin(format!("{head}    - {{name: slow, rate: 0}}\n"));
    assert!(!bad.status.success(), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error: -:6"), "{bad:?}");
}

/// A JWKS with a usable key and one left out (here an encryption key) passes, with a warning
/// that names the key: tokens signed with it are refused, and the operator can tell why.
#[test]
fn check_warns_of_a_jwks_key_it_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let keys = dir.path().join("jwks.json");
    std::fs::write(
        &keys,
        format!(
            r#"{{"keys": [
        {{"kty": "OKP", "crv": "Ed25519", "x": "{x}", "kid": "signing"}},
        {{"kty": "OKP", "crv": "Ed25519", "x": "{x}", "kid": "sealing", "use": "enc"}}]}}"#
        ),
    )
    .unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, format!("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  authentication:\n    jwt:\n      - {{issuer: https://a, jwks: {{file: {}}}}}\n", keys.display())).unwrap();
    let out = palisade(&["check", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr.contains("warning: ") && stderr.contains("jwt[0]") && stderr.contains("\"sealing\""), "{stderr}");
    assert!(!stderr.contains("\"signing\""), "{stderr}");
}

/// `check` judges what the control plane judges (tester m3): a key file that is in the sidecar's
/// pod, not here, is a warning, not an error (the control plane takes the policy); an inline
/// key set with no usable key is an error (every sidecar refuses it).
#[test]
fn check_leaves_a_key_file_not_on_this_host_to_the_sidecar_and_refuses_an_empty_inline_set() {
    let dir = tempfile::tempdir().unwrap();
    let doc = |jwks: &str| {
        format!("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  authentication:\n    jwt:\n      - {{issuer: https://a, jwks: {jwks}}}\n")
    };
    let in_the_pod = dir.path().join("pod.yaml");
    std::fs::write(&in_the_pod, doc("{file: /etc/palisade/not-on-this-host/jwks.json}")).unwrap();
    let out = palisade(&["check", in_the_pod.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr.contains("warning: ") && stderr.contains("not-on-this-host/jwks.json"), "{stderr}");
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, doc(r#"{inline: '{"keys":[]}'}"#)).unwrap();
    let out = palisade(&["check", empty.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no usable key"), "{out:?}");
}

/// A configuration without `workload` beside a certificate for shop/orders is shop/orders: a
/// deny-all policy for namespace shop, named in `policy.files`, is enforced (it was once
/// selected as default/default, and every request went through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_without_workload_is_the_workload_its_certificate_names() {
    let (pki, config, ports) = orders_sidecar();
    let policy = pki.path("deny-all.yaml");
    write_policy(
        &policy,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec:\n  authorization: {default: DENY}\n",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("policy: {{files: [\"{}\"]}}\n", policy.display()));
    assert!(!text.contains("workload"), "{text}");
    std::fs::write(&config, text).unwrap();
    let mut child = spawn_ready(&config, ports[2]).await;
    let frontend = pki.workload("frontend", &id("shop", "frontend"));
    let answer = https_client(Some(&frontend)).get(format!("https://127.0.0.1:{}/x", ports[0])).send().await.unwrap();
    assert_eq!(answer.status(), 403, "the deny-all policy for shop is in force");
    let _ = child.kill();
    let _ = child.wait();
}

/// A workload the certificate contradicts would be judged by peers as one workload while it
/// enforced another's policies: the start is refused, naming the field.
#[test]
fn a_workload_the_certificate_contradicts_is_a_configuration_error() {
    let (_pki, config, _ports) = orders_sidecar();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("workload: {namespace: default, serviceAccount: orders}\n");
    std::fs::write(&config, text).unwrap();
    let out = palisade(&["sidecar", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("workload.namespace") && stderr.contains("\"shop\""), "{stderr}");
    assert!(!stderr.contains("workload.serviceAccount"), "the service account agrees: {stderr}");
}

/// Errors found only when a policy is compiled (a JWT issuer's keys) point at their field's
/// line, not at the document's first.
#[test]
fn errors_found_while_compiling_point_at_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.yaml");
    std::fs::write(
        &file,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  authentication:\n    jwt:\n      - {issuer: \"https://a\", jwks: {inline: '{\"keys\": []}'}}\n",
    )
    .unwrap();
    let out = palisade(&["check", file.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:7:", file.display())) && stderr.contains("jwt[0]"), "{stderr}");
}

#[test]
fn a_log_filter_that_does_not_parse_is_a_configuration_error() {
    for var in ["PALISADE_LOG", "RUST_LOG"] {
        let out = Command::new(BIN)
            .args(["sidecar"])
            .env_remove("PALISADE_LOG")
            .env_remove("RUST_LOG")
            .env(var, "info,palisade=loud")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("error: {var}: bad log filter \"info,palisade=loud\"")), "{stderr}");
    }
}

#[test]
fn configuration_errors_name_file_line_and_field_and_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "trustDomain: cluster.local\ninbound:\n  listen: \"0.0.0.0:15006\"\n  mtls: STRIKT\n")
        .unwrap();
    let out = palisade(&["sidecar", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:4:", bad.display())), "{stderr}");
    assert!(stderr.contains("inbound.mtls"), "{stderr}");
    assert!(stderr.contains("STRICT") && stderr.contains("PERMISSIVE"), "{stderr}");

    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        "identity: {files: {cert: /nonexistent/tls.crt, key: /nonexistent/tls.key, trustBundle: /nonexistent/ca.crt}}\n",
    )
    .unwrap();
    let out = palisade(&["sidecar", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("identity.files") && stderr.contains("/nonexistent/tls.crt"), "{stderr}");

    let out = Command::new(BIN)
        .args(["sidecar", "--config", missing.to_str().unwrap()])
        .env("PALISADE_ADMIN_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PALISADE_ADMIN_LISTEN"));
}

#[test]
fn the_development_ca_issues_workload_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = palisade(&["ca", "init", "--trust-domain", "example.org", "--out", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The root is never replaced by accident: what it signed would stop being trusted.
    let key = std::fs::read(ca.join("ca.key")).unwrap();
    let again = palisade(&["ca", "init", "--trust-domain", "example.org", "--out", ca.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(64), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "{again:?}");
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), key, "the key is kept");
    let forced = palisade(&["ca", "init", "--trust-domain", "example.org", "--out", ca.to_str().unwrap(), "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(std::fs::read(ca.join("ca.key")).unwrap(), key, "--force replaces it");
    // The trust domain's own ID names no workload: refused, nothing issued.
    let domain_only = dir.path().join("domain");
    let out = palisade(
        &["ca", "issue", "--ca", ca.to_str().unwrap(), "--spiffe-id", "spiffe://example.org"]
            .into_iter()
            .chain(["--out", domain_only.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("names no workload"), "{out:?}");
    assert!(!domain_only.exists(), "nothing issued");
    let workload = dir.path().join("w");
    let out = palisade(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://example.org/ns/a/sa/b",
        "--dns",
        "b.a.svc",
        "--ttl",
        "2h",
        "--out",
        workload.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(workload.join(file).exists(), "{file}");
    }
    let out = palisade(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--spiffe-id",
        "spiffe://other.org/ns/a/sa/b",
        "--out",
        workload.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the CA's trust domain"));
    // A certificate expired when written, one that outlives its CA, a name that is no host name.
    let refused = dir.path().join("refused");
    for (extra, says) in [
        (&["--ttl", "0s"][..], "at least 1m"),
        (&["--ttl", "1000000h"], "would outlive the CA"),
        (&["--dns", "not a name!"], "is not valid"),
        (&["--dns=-x.shop"], "is not valid"),
    ] {
        let mut args =
            vec!["ca", "issue", "--ca", ca.to_str().unwrap(), "--spiffe-id", "spiffe://example.org/ns/a/sa/b"];
        args.extend_from_slice(extra);
        args.extend(["--out", refused.to_str().unwrap()]);
        let out = palisade(&args);
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{extra:?}: {out:?}");
        assert!(!refused.join("tls.crt").exists(), "{extra:?}: nothing issued");
    }
}

#[test]
fn every_command_has_help() {
    for command in ["sidecar", "control", "inject", "init-net", "check", "ca", "demo"] {
        let out = palisade(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{command} --help");
    }
    // The Kubernetes commands are built (tests/kubernetes.rs runs them): no longer exit 69.
    let out = palisade(&["init-net", "--dry-run", "--ipv6", "off"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A port already taken stops the sidecar before it serves, and before it tells the event log
/// that a policy is in force (a SIEM saw a policy in force on a sidecar that never ran).
#[test]
fn a_port_in_use_stops_the_sidecar_before_any_policy_is_reported_in_force() {
    let (pki, config, ports) = orders_sidecar();
    let taken = std::net::TcpListener::bind(("127.0.0.1", ports[2])).unwrap();
    let policy_file = pki.path("policy.yaml");
    write_policy(&policy_file, &policy("open", "  authorization: {default: ALLOW}\n"));
    let events = pki.path("events.jsonl");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "policy: {{files: [\"{}\"]}}\ntelemetry: {{events: {{sink: \"file:{}\"}}}}\n",
        policy_file.display(),
        events.display()
    ));
    std::fs::write(&config, text).unwrap();
    let out = palisade(&["sidecar", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(71), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.listen"), "{out:?}");
    let written = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(!written.contains("in force"), "{written}");
    drop(taken);
}

/// A sink file that cannot be opened is named, with its field.
#[test]
fn a_sink_that_cannot_be_opened_names_its_field_and_path() {
    let (_pki, config, _) = orders_sidecar();
    for (field, setting) in [
        ("telemetry.events.sink", "telemetry: {events: {sink: \"file:/nonexistent/dir/e.jsonl\"}}"),
        ("telemetry.accessLogSink", "telemetry: {accessLogSink: \"file:/nonexistent/dir/e.jsonl\"}"),
    ] {
        let mut text = std::fs::read_to_string(&config).unwrap();
        text = text.lines().filter(|l| !l.starts_with("telemetry:")).map(|l| format!("{l}\n")).collect();
        text.push_str(&format!("{setting}\n"));
        std::fs::write(&config, text).unwrap();
        let out = palisade(&["sidecar", "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(78), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{field}: file:/nonexistent/dir/e.jsonl: No such file")), "{stderr}");
    }
}

#[test]
fn control_plane_configuration_errors_exit_78_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.yaml");
    std::fs::write(&config, "grpc: {listen: \"127.0.0.1:0\"}\npolicies: {dir: /p, pollIntervall: 1s}\n").unwrap();
    let out = palisade(&["control", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("control.yaml:2:") && stderr.contains("unknown field `pollIntervall`"), "{stderr}");

    // A valid file whose policy directory does not exist.
    let pki = Pki::new();
    let files = pki.workload("control", "spiffe://cluster.local/ns/palisade-system/sa/palisade-control");
    std::fs::write(
        &config,
        format!(
            "identity: {{files: {{cert: \"{}\", key: \"{}\", trustBundle: \"{}\"}}}}\ngrpc: {{listen: \"127.0.0.1:0\"}}\n\
             admin: {{listen: \"127.0.0.1:0\"}}\npolicies: {{dir: \"{}\"}}\n",
            files.cert.display(),
            files.key.display(),
            files.trust_bundle.display(),
            dir.path().join("missing").display()
        ),
    )
    .unwrap();
    let out = palisade(&["control", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policies.dir: cannot read") && stderr.contains("missing"), "{stderr}");
}

#[test]
fn check_reports_every_error_with_its_line_or_summarises_good_policies() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: orders-api, namespace: shop}\nspec:\n  selector: {matchLabels: {app: orders}}\n  authorization:\n    default: DENY\n    rules:\n      - {name: reads, action: ALLOW, to: {methods: [GET]}}\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin*\"]}}\n  rateLimits:\n    - {name: per-caller, key: source.principal, rate: 100, per: 1s, burst: 200}\n",
    )
    .unwrap();
    let out = palisade(&["check", good.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("shop/orders-api selects workloads labelled app=orders in namespace shop"), "{stdout}");
    assert!(stdout.contains("default DENY: 1 DENY, 1 ALLOW rule(s) [reads, no-admin]"), "{stdout}");
    assert!(stdout.contains("rate limit per-caller 100/1s burst 200 by source.principal"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  authorization:\n    rules:\n      - {name: r, action: ALLOW, from: {ipBlocks: [\"10.0.0.0/99\"]}}\n---\napiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: b, namespace: shop}\nspec:\n  rateLimits:\n    - {name: r, rate: 0}\n",
    )
    .unwrap();
    let out = palisade(&["check", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:7:", bad.display())) && stderr.contains("ipBlocks"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:14:", bad.display())) && stderr.contains("spec.rateLimits[0].rate"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    // A directory is checked as the control plane reads it: `*.yaml` and `*.yml` in any case,
    // no dot-entries, nothing else.
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(&good, policies.join("orders.yaml")).unwrap();
    std::fs::copy(&bad, policies.join("billing.YAML")).unwrap();
    std::fs::write(policies.join("notes.txt"), "not a policy").unwrap();
    std::fs::write(policies.join(".hidden.yaml"), "not: [a policy").unwrap();
    let out = palisade(&["check", policies.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("billing.YAML:7:") && stderr.contains("2 error(s)"), "{stderr}");
    assert!(!stderr.contains("notes.txt") && !stderr.contains(".hidden"), "{stderr}");
    std::fs::remove_file(policies.join("billing.YAML")).unwrap();
    let out = palisade(&["check", policies.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 policy OK"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = palisade(&["check", empty.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no *.yaml or *.yml file"));
}

#[test]
fn the_demo_runs_a_mesh_and_passes_its_checks() {
    let _one = one_demo();
    let out = Command::new(BIN).args(["demo", "--once"]).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("20/20 requests"), "{stdout}");
    assert!(stdout.contains("plaintext to sidecar B refused"), "{stdout}");
    assert!(stdout.contains("pushed by the control plane (HTTP 403)"), "{stdout}");
    assert!(stdout.contains("2 sidecars connected, 2 synced"), "{stdout}");
    assert!(stdout.contains("policy edit (close /orders/export) enforced by sidecar B"), "{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// A process's `/proc/PID/stat` fields after its command name (state, parent pid, ...): the
/// name may hold spaces and parentheses, so they start after the last ')'.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let parent = pid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_fields(&child.to_string()).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// Running: not gone, and not a zombie waiting for its parent.
fn is_running(pid: u32) -> bool {
    stat_fields(&pid.to_string()).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// One demo at a time, as a user runs it.
fn one_demo() -> std::sync::MutexGuard<'static, ()> {
    static DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DEMO.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `palisade demo` in a process group of its own, once it waits for Ctrl-C: the process, its
/// directory and its three children (a control plane and two sidecars); its stderr goes to `log`.
fn demo_waiting(log: std::fs::File) -> (std::process::Child, std::path::PathBuf, Vec<u32>) {
    use std::os::unix::process::CommandExt;
    let mut demo = Command::new(BIN)
        .arg("demo")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    // Read to the end, so the demo never waits on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut seen = Vec::new();
    let waiting = eventually_blocking(|| {
        seen.extend(received.try_iter());
        seen.iter().any(|l| l.starts_with("Press Ctrl-C to stop"))
    });
    assert!(waiting, "the demo reached its wait: {seen:#?}");
    let dir = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("files (certificates, configs, logs, events): "))
        .map(std::path::PathBuf::from)
        .expect("the demo names its directory");
    assert!(dir.is_dir(), "{}", dir.display());
    let started = children_of(demo.id());
    assert_eq!(started.len(), 3, "a control plane and two sidecars: {started:?}");
    assert!(started.iter().all(|&pid| is_running(pid)));
    (demo, dir, started)
}

/// After `signal` (to the demo, or with `-` to its whole group): it ended itself, and nothing it
/// started or wrote is left.
fn demo_stops_on(signal: &[&str], mut demo: std::process::Child, dir: &std::path::Path, started: &[u32]) {
    let killed = Command::new("kill").args(signal).status().unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut demo).expect("the demo exits on the signal");
    assert!(status.code().is_some(), "it ended itself, not by the signal: {status:?}");
    // Its checks passed before it waited: stopped as the README says, it is no failure (one
    // run in three said "stopped before the demo finished" and exited 1).
    assert_eq!(status.code(), Some(0), "stopped after its checks passed: {status:?}");
    let running: Vec<u32> = started.iter().copied().filter(|&pid| is_running(pid)).collect();
    // Survivors would hold their ports for the rest of the suite.
    for pid in &running {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    assert!(running.is_empty(), "the demo's processes outlived it: {running:?}");
    assert!(!dir.exists(), "the demo's directory outlived it: {}", dir.display());
}

#[test]
fn sigterm_stops_the_demo_and_every_process_it_started() {
    let _one = one_demo();
    let (demo, dir, started) = demo_waiting(std::fs::File::create("/dev/null").unwrap());
    let pid = demo.id().to_string();
    demo_stops_on(&["-TERM", &pid], demo, &dir, &started);
}

/// A terminal's Ctrl-C signals the whole process group: the demo and everything it started stop,
/// and each sidecar is reported.
#[test]
fn ctrl_c_drains_the_demo_and_says_so() {
    let _one = one_demo();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (demo, dir, started) = demo_waiting(log.reopen().unwrap());
    let group = format!("-{}", demo.id());
    demo_stops_on(&["-INT", "--", &group], demo, &dir, &started);
    // Each sidecar is reported; whether it drained in time is its own (under two busy cores one
    // was seen to take longer than the demo waits: see the stop's note).
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(said.matches("stopped sidecar").count(), 2, "{said}");
}

/// A policy file the sidecar reads whose only policy is for another namespace (a typo): nothing
/// is enforced, and the log says so and why, at start and at each such reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_files_that_select_nothing_here_are_warned_about() {
    let (pki, config, ports) = orders_sidecar();
    let policy = pki.dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: orders, namespace: shopp}\n\
         spec:\n  authorization: {default: DENY}\n",
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "workload: {{namespace: shop, labels: {{app: orders}}}}\npolicy: {{files: [\"{}\"]}}\n",
        policy.display()
    ));
    std::fs::write(&config, text).unwrap();
    let _child = spawn_ready(&config, ports[2]).await;
    let log = config.with_file_name("sidecar.log");
    let warned = eventually(async || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.lines().any(|l| l.contains("WARN") && l.contains("selects this workload") && l.contains("shopp/orders"))
    })
    .await;
    assert!(warned, "{}", std::fs::read_to_string(&log).unwrap());
}

/// Refusals made while the sidecar drains, after its listeners stopped, are in the events file
/// when the process has exited: summed up in their aggregate and written before it ends (tester
/// u2: a flood's last aggregate was missing in 4 runs of 7). Bodies held back until after
/// SIGTERM make the WAF refuse them then, whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_made_while_draining_are_in_the_events_when_the_process_has_exited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let server = pki.workload("server", &id("shop", "orders"));
    let app = EchoApp::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let config = write_config(pki.dir.path(), &server, app.addr.port(), ports);
    let (policy_file, events) = (pki.dir.path().join("policy.yaml"), pki.dir.path().join("events.jsonl"));
    let spec = "  mtls: PERMISSIVE\n  authorization: {default: ALLOW}\n  inputValidation:\n    waf: {mode: BLOCK}\n";
    std::fs::write(&policy_file, policy("waf", spec)).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "workload: {{namespace: shop, serviceAccount: orders, labels: {{app: orders}}}}\npolicy: {{files: [\"{}\"]}}\n\
         telemetry: {{events: {{sink: \"file:{}\", format: ocsf}}}}\n",
        policy_file.display(),
        events.display()
    ));
    std::fs::write(&config, text).unwrap();
    let mut child = spawn_ready(&config, ports[2]).await;

    const HELD: usize = 40;
    let body = "q=1%27%20OR%20%271%27%3D%271";
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
        let head = format!(
            "POST /search HTTP/1.1\r\nhost: orders.shop\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{}",
            body.len(),
            &body[..4]
        );
        c.write_all(head.as_bytes()).await.unwrap();
        held.push(c);
    }
    // Every head was judged (its authorization decision counted) before the signal: each request
    // is in flight, its body awaited.
    let metrics = || async {
        http_client().get(format!("http://127.0.0.1:{}/metrics", ports[2])).send().await.unwrap().text().await.unwrap()
    };
    let decided = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("palisade_authz_decisions_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let all_in = eventually(async || decided(&metrics().await) >= HELD as f64).await;
    assert!(all_in, "{}", metrics().await);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let closed = eventually(async || tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.is_err()).await;
    assert!(closed, "the listener is closed during the drain");
    for mut c in held {
        c.write_all(&body.as_bytes()[4..]).await.unwrap();
        let mut answer = vec![0; 12];
        c.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 403", "{}", String::from_utf8_lossy(&answer));
    }
    let status = wait_exit(&mut child).expect("the sidecar exits");
    assert!(status.success(), "exit status {status:?}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&events).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let each =
        lines.iter().filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("blocked POST /search"))).count();
    let summed: u64 = lines
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains("blocked by the WAF (403): past 10")))
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(each as u64 + summed, HELD as u64, "{each} reported each, {summed} in aggregate: {lines:#?}");
}
