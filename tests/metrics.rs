//! /metrics as Prometheus sees it: `promtool check metrics` (Debian's prometheus package) finds
//! nothing to complain about, the series SPEC section 7 names are there with bounded labels, a
//! real Prometheus scrapes them (outbound ones by destination), and every panel of the Grafana
//! dashboard in deploy/ shows a sidecar's traffic.

#[path = "support/jwt.rs"]
mod jwt;
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_carry_the_spec_series() {
    let s = PolicedSidecar::start(&policy("metrics", DENY_ADMIN_LIMIT_ONE)).await;
    for (path, status) in [("/ok/1", 200), ("/ok/2?x=1", 200), ("/admin", 403), ("/limited", 200), ("/limited", 429)] {
        assert_eq!(s.send("frontend", "GET", path, &[]).await.status, status, "{path}");
    }
    let text = s.metrics().await;

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/setup.sh --test (Debian package prometheus)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for series in [
        r#"palisade_requests_total{code="200",decision="allow",destination="",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/shop/sa/frontend"} 3"#,
        r#"palisade_requests_total{code="403",decision="deny",destination="",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/shop/sa/frontend"} 1"#,
        r#"palisade_requests_total{code="429",decision="rate_limited",destination="",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/shop/sa/frontend"} 1"#,
        r#"palisade_authz_decisions_total{decision="deny",mode="ENFORCE",policy="shop/metrics",rule="no-admin"} 1"#,
        r#"palisade_ratelimit_decisions_total{limit="tight",policy="shop/metrics",result="limited"} 1"#,
        r#"palisade_tls_handshakes_total{direction="inbound",result="success"}"#,
        r#"palisade_policy_updates_total{result="applied"} 1"#,
        r#"palisade_policy_version_info{source="files",version=""#,
        r#"palisade_build_info{version=""#,
        "palisade_certificate_expiry_timestamp_seconds ",
        r#"palisade_request_duration_seconds_bucket{code="200",direction="inbound",le="0.0001"}"#,
        "process_resident_memory_bytes ",
        "palisade_memory_heap_bytes ",
        "palisade_memory_limit_bytes ",
        "palisade_memory_overloaded 0",
        // At 0 before their first count, so rate() and increase() see the first one.
        r#"palisade_policy_updates_total{result="rejected"} 0"#,
        r#"palisade_certificate_reloads_total{result="rejected"} 0"#,
        r#"palisade_tls_handshakes_total{direction="inbound",result="failure"} 0"#,
        "palisade_log_lines_dropped_total ",
    ] {
        assert!(text.contains(series), "missing {series}\n{text}");
    }
    // The heap as the memory guard measures it: a sidecar at rest holds a few megabytes.
    let gauge = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap()
    };
    let heap = gauge("palisade_memory_heap_bytes");
    assert!((100e3..1e9).contains(&heap), "{heap}");
    // No raw paths or request ids in labels.
    assert!(!text.contains("/ok/1") && !text.contains("/admin\""), "{text}");
    s.shutdown();
}

/// A real Prometheus server scraping sidecars' admin ports, as deploy/prometheus/scrape.yaml
/// labels them (job `palisade-sidecars`, `namespace`, `pod`, `app`), every second.
struct Prometheus {
    port: u16,
    dir: tempfile::TempDir,
    _process: KillOnDrop,
}

impl Prometheus {
    fn start(targets: &[std::net::SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let static_configs: Vec<String> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{{targets: [\"{t}\"], labels: {{namespace: shop, pod: sidecar-{i}, app: orders}}}}"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: palisade-sidecars\n    static_configs: [{}]\n",
                static_configs.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let process = KillOnDrop(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
                .spawn()
                .expect("prometheus is installed by scripts/setup.sh --test (Debian package prometheus)"),
        );
        Prometheus { port, dir, _process: process }
    }

    /// The answer of `/api/v1/query` to `expr` (`Null` while the server is not up yet).
    async fn query(&self, expr: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        match http_client().get(&url).query(&[("query", expr)]).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// The result of `expr` once `done` holds for it; the test fails, with the last answer and
    /// the server's log, if it never does.
    async fn wait_for(&self, expr: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let last = std::sync::Mutex::new(serde_json::Value::Null);
        let held = eventually(async || {
            let answer = self.query(expr).await;
            let result = answer["data"]["result"].as_array().cloned().unwrap_or_default();
            *last.lock().unwrap() = answer;
            done(&result)
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(held, "{expr}: Prometheus answered {last}\n{}", self.log());
        last["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

/// A real Prometheus server scrapes the admin port; its query API returns the request counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scrapes_the_sidecar() {
    let s = PolicedSidecar::start(&policy("metrics", DENY_ADMIN_LIMIT_ONE)).await;
    for _ in 0..4 {
        assert_eq!(s.send("billing", "GET", "/ok", &[]).await.status, 200);
    }
    let prometheus = Prometheus::start(&[s.sidecar.admin]);
    let expr = format!("palisade_requests_total{{source_principal=\"{}\"}}", id("shop", "billing"));
    let result = prometheus.wait_for(&expr, |r| !r.is_empty()).await;
    let series = &result[0];
    assert_eq!(series["metric"]["direction"], "inbound");
    assert_eq!(series["metric"]["method"], "GET");
    assert_eq!(series["metric"]["code"], "200");
    assert_eq!(series["metric"]["decision"], "allow");
    assert!(series["metric"].get("destination").is_none(), "inbound series have no destination: {series}");
    assert_eq!(series["value"][1], "4");
    s.shutdown();
}

/// The PromQL of every panel of the Grafana dashboard in deploy/, with Grafana's own variables
/// given values as Grafana would (`$__rate_interval` a minute: at least four scrapes).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/palisade-dashboard.json").unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h");
            assert!(!expr.contains('$'), "a variable the test does not know: {expr}");
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

/// Every panel of the Grafana dashboard shows a sidecar's traffic: a real Prometheus scrapes a
/// sidecar that allows, denies, rate-limits, refuses JWTs and WAF findings inbound, reloads its
/// policy, and sends requests outbound to a mesh peer and to an address where nothing listens;
/// each panel's query then returns a series above zero (and none is an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_shows_the_traffic() {
    const ISS: &str = "https://auth.example.com";
    let signer = jwt::Signer::ec("ES256", "k1");
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), jwt::jwks(&[&signer])).unwrap();
    let api = |extra_rule: &str| {
        policy(
            "api",
            &format!(
                r#"  authentication:
    jwt:
      - {{issuer: "{ISS}", audiences: [orders], jwks: {{file: "{}"}}}}
  authorization:
    default: ALLOW
    rules: [{{name: fine, action: ALLOW, to: {{paths: ["/fine*"]}}}}{extra_rule}]
  inputValidation:
    waf: {{mode: BLOCK}}
"#,
                keys.path().display()
            ),
        )
    };
    let documents = |extra_rule: &str| format!("{}{}", policy("metrics", DENY_ADMIN_LIMIT_ONE), api(extra_rule));
    let s = PolicedSidecar::start(&documents("")).await;
    let prometheus = Prometheus::start(&[s.sidecar.admin]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = signer.token(&serde_json::json!({"iss": ISS, "sub": "a", "aud": "orders", "exp": now - 3600}));
    let bearer = format!("Bearer {expired}");
    // Outbound: to this sidecar's own inbound port (a mesh peer proving shop/orders), and to an
    // address where nothing listens.
    let (peer, nobody) = (s.sidecar.inbound.to_string(), format!("127.0.0.1:{}", free_port()));
    let traffic = async || {
        for (path, headers, status) in [
            ("/ok", vec![], 200),
            ("/admin", vec![], 403),
            ("/ok", vec![("authorization", bearer.as_str())], 401),
            ("/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--", vec![], 403),
        ] {
            assert_eq!(s.send("frontend", "GET", path, &headers).await.status, status, "{path}");
        }
        let limited =
            [s.send("frontend", "GET", "/limited", &[]).await, s.send("frontend", "GET", "/limited", &[]).await];
        assert_eq!(limited[1].status, 429);
        for (authority, status) in [(peer.as_str(), 200), (nobody.as_str(), 502)] {
            let url = format!("http://{}/ok", s.sidecar.outbound);
            let answer = http_client().get(url).header("host", authority).send().await.unwrap();
            assert_eq!(answer.status(), status, "outbound to {authority}");
        }
    };

    // A rate needs two samples: the traffic's series are scraped once, then the traffic comes
    // again (and the policy changes), so every series moves between two scrapes.
    traffic().await;
    let queries = dashboard_queries();
    assert!(queries.len() >= 13, "{queries:?}");
    for (title, expr) in &queries {
        let answer = prometheus.query(expr).await;
        assert_ne!(answer["status"], "error", "{title}: {expr}: {answer}");
        prometheus.wait_for(expr, |result| !result.is_empty()).await;
    }
    write_policy(&s.policy_file, &documents(r#", {name: also-fine, action: ALLOW, to: {paths: ["/also*"]}}"#));
    wait_for("the changed policy is applied", async || {
        s.metrics().await.contains(r#"palisade_policy_updates_total{result="applied"} 2"#)
    })
    .await;
    traffic().await;

    let exposed = s.metrics().await;
    for (title, expr) in &queries {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("palisade_") || w.starts_with("process_"))
        {
            assert!(
                exposed.contains(name.trim_end_matches("_bucket")),
                "{title}: {expr} uses {name}, which /metrics lacks"
            );
        }
        let above_zero = |result: &[serde_json::Value]| {
            result.iter().any(|series| {
                series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v.is_finite() && v > 0.0)
            })
        };
        prometheus.wait_for(expr, above_zero).await;
    }
    s.shutdown();
}

/// Outbound series name where each request went: the SPIFFE ID the peer sidecar proved, the
/// authority of a passthrough destination outside the mesh, or, when no peer answered, the
/// authority the app addressed. Scraped by a real Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_series_carry_the_destination() {
    // A web service outside the mesh, reached in plaintext through `outbound.passthrough`.
    let outside = EchoApp::start_on("127.0.0.2:0".parse().unwrap()).await;
    let pair = Pair::start_configured(
        EchoApp::start().await,
        |a| a.outbound.passthrough = vec!["127.0.0.2/32".parse().unwrap()],
        |_| {},
    )
    .await;
    let nobody = format!("127.0.0.1:{}", free_port());
    let b_by_address = pair.b.inbound.to_string();
    let outside_authority = outside.addr.to_string();
    let client = http_client();
    for (authority, count, status) in [
        (B_AUTHORITY, 3, 200),           // a configured route, expecting orders' identity
        (b_by_address.as_str(), 1, 200), // no route: any identity of the trust domain, the one proved is named
        (outside_authority.as_str(), 2, 200),
        (nobody.as_str(), 1, 502), // nothing answers: named by the authority
    ] {
        for _ in 0..count {
            let answer = client.get(pair.url("/orders")).header("host", authority).send().await.unwrap();
            assert_eq!(answer.status(), status, "{authority}");
        }
    }

    let prometheus = Prometheus::start(&[pair.a.admin]);
    let expr = r#"sum by (destination, code) (palisade_requests_total{direction="outbound"})"#;
    let expected =
        [(id("shop", "orders"), "200", "4"), (outside_authority.clone(), "200", "2"), (nobody.clone(), "502", "1")];
    let found = |result: &[serde_json::Value]| {
        let mut seen: Vec<(String, String, String)> = result
            .iter()
            .map(|s| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (text(&s["metric"]["destination"]), text(&s["metric"]["code"]), text(&s["value"][1]))
            })
            .collect();
        seen.sort();
        let mut want: Vec<(String, String, String)> =
            expected.iter().map(|(d, c, n)| (d.clone(), c.to_string(), n.to_string())).collect();
        want.sort();
        seen == want
    };
    prometheus.wait_for(expr, found).await;
    outside.stop();
    pair.shutdown();
}

#[test]
fn the_deploy_examples_are_valid() {
    // Debian's Prometheus is built without Kubernetes service discovery, so the check runs on a
    // copy that discovers no targets; the relabelling and everything else are checked as written.
    let scrape = std::fs::read_to_string("deploy/prometheus/scrape.yaml").unwrap();
    assert!(scrape.contains("kubernetes_sd_configs:\n      - role: pod\n"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("scrape.yaml");
    std::fs::write(
        &copy,
        scrape.replace("kubernetes_sd_configs:\n      - role: pod\n", "static_configs:\n      - targets: []\n"),
    )
    .unwrap();
    let out = Command::new("promtool").args(["check", "config"]).arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string("deploy/otel-collector/config.yaml").unwrap();
    let collector = palisade::yaml::parse(&text, &palisade::yaml::Limits::FILE).unwrap().remove(0).root.to_json();
    assert!(collector["receivers"]["otlp"]["protocols"]["grpc"].is_object());
    assert!(collector["receivers"]["otlp"]["protocols"]["http"].is_object());
    let pipeline = &collector["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"][0], "otlp");
    for exporter in pipeline["exporters"].as_array().unwrap() {
        assert!(collector["exporters"][exporter.as_str().unwrap()].is_object(), "{exporter:?} is defined");
    }
}
