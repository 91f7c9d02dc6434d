//! The admin listener under the issue 16 findings: a web page must not be able to change state
//! through it (DNS rebinding: a foreign `Host`; a foreign `Origin`), and `/config_dump` must not
//! show policy condition values or secrets. Real sidecar, real admin listener, reqwest.

mod support;

use reqwest::StatusCode;
use support::*;

const SECRET_VALUE: &str = "sk-live-condition-value-4711";
const HMAC: &str = "hmac-secret-value-0123456789abcdef";

fn documents() -> String {
    policy(
        "guarded",
        &format!(
            r#"  authentication:
    jwt:
      - issuer: https://issuer.example
        hmacSecret: {{inline: "{HMAC}"}}
  authorization:
    default: ALLOW
    rules:
      - name: key-holder
        action: ALLOW
        when: [{{key: "request.headers[x-api-key]", values: ["{SECRET_VALUE}"]}}]
"#
        ),
    )
}

async fn post(s: &PolicedSidecar, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut request = http_client().post(format!("http://{}{path}", s.sidecar.admin)).body("debug");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn live(s: &PolicedSidecar) -> bool {
    let url = format!("http://{}/live", s.sidecar.admin);
    http_client().get(url).send().await.is_ok_and(|r| r.status() == StatusCode::OK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_from_a_foreign_origin_or_host_are_refused_and_own_ones_accepted() {
    let s = PolicedSidecar::start(&documents()).await;
    let port = s.sidecar.admin.port();
    let evil_host = format!("evil.example:{port}");
    let evil_origin = format!("http://evil.example:{port}");
    let other_port_origin = format!("http://127.0.0.1:{}", port.wrapping_add(1));

    // Refused: what a page on evil.example sends once its name resolves to 127.0.0.1.
    for (path, headers) in [
        ("/shutdown", vec![("origin", evil_origin.as_str())]),
        ("/shutdown", vec![("host", evil_host.as_str())]),
        ("/shutdown", vec![("host", evil_host.as_str()), ("origin", evil_origin.as_str())]),
        // Own host, but a page of another origin (another local port, or a sandboxed page).
        ("/shutdown", vec![("origin", other_port_origin.as_str())]),
        ("/shutdown", vec![("origin", "null")]),
        ("/log_level", vec![("host", evil_host.as_str())]),
        ("/log_level", vec![("origin", "https://evil.example")]),
    ] {
        let (status, body) = post(&s, path, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path} {headers:?}: {body}");
        assert!(live(&s).await, "{path} {headers:?} shut the sidecar down");
    }
    // Past the guard, /log_level answers for itself: 200, or 400 when the test process's log
    // filter belongs to another sidecar in it. Either way, not the guard's 403.
    let (status, body) = post(&s, "/log_level", &[]).await;
    assert_ne!(status, StatusCode::FORBIDDEN, "{body}");

    // Accepted: the admin's own origin, localhost by name, no Origin (curl, kubelet hooks).
    let own_origin = format!("http://127.0.0.1:{port}");
    let (status, body) = post(&s, "/log_level", &[("origin", own_origin.as_str())]).await;
    assert_ne!(status, StatusCode::FORBIDDEN, "{body}");
    let localhost = format!("localhost:{port}");
    let localhost_origin = format!("http://localhost:{port}");
    let (status, body) =
        post(&s, "/shutdown", &[("host", localhost.as_str()), ("origin", localhost_origin.as_str())]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(eventually(async || !live(&s).await).await, "the accepted /shutdown stopped the sidecar");
}

/// What only the pod may read is refused to a foreign Host too: a page whose name rebinds to
/// 127.0.0.1 is same-origin to its browser, which would hand it the answer. The probes and the
/// scrape answer whatever the Host (kubelet sends the pod IP, a scraper its target's name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_only_the_pod_may_make_are_refused_to_a_foreign_host_and_probes_answer_any() {
    let s = PolicedSidecar::start(&documents()).await;
    let port = s.sidecar.admin.port();
    let get = async |path: &str, host: &str| {
        let url = format!("http://{}{path}", s.sidecar.admin);
        let response = http_client().get(url).header("host", host).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    };
    let evil_host = format!("evil.example:{port}");
    for path in ["/config_dump", "/log_level"] {
        let (status, body) = get(path, &evil_host).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(!body.contains(SECRET_VALUE) && !body.contains("guarded"), "{path}: {body}");
        let (status, body) = get(path, &format!("localhost:{port}")).await;
        assert_eq!(status, StatusCode::OK, "{path}, own host: {body}");
    }
    for path in ["/live", "/ready", "/metrics"] {
        let (status, body) = get(path, "10.1.2.3:15000").await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_redacts_condition_values_and_secrets() {
    let s = PolicedSidecar::start(&documents()).await;
    let dump = s.config_dump().await;
    let text = dump.to_string();
    assert!(!text.contains(SECRET_VALUE), "a `when` value shows: {text}");
    assert!(!text.contains(HMAC), "the HMAC secret shows: {text}");
    let rule = &dump["policy"]["policies"][0]["policy"]["spec"]["authorization"]["rules"][0];
    assert_eq!(rule["when"][0]["key"], "request.headers[x-api-key]", "the condition's key stays: {rule}");
    assert_eq!(rule["when"][0]["values"], "<redacted>", "{rule}");
    // Still there: what is not secret.
    assert_eq!(rule["name"], "key-holder");
    s.shutdown();
}

/// The app's own probes, rewritten by injection to `/app-health/<container>/<kind>`, are asked
/// of the app by the sidecar: its status comes back (200-399 as 200), a TCP probe is a connect,
/// and a port where nothing listens or a name not configured is not healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_probes_are_asked_of_the_app_for_the_kubelet() {
    use palisade::config::{AppProbe, ProbeHeader};
    // A port where nothing listens: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = PolicedSidecar::start_with(&documents(), |c| {
        let app = c.inbound.app.0.port();
        let http = |path: &str| AppProbe {
            port: app,
            path: Some(path.into()),
            grpc: None,
            headers: vec![ProbeHeader { name: "x-probe".into(), value: "kubelet".into() }],
            timeout_seconds: 5,
        };
        let tcp = |port| AppProbe { port, path: None, grpc: None, headers: vec![], timeout_seconds: 5 };
        c.admin.app_probes = [
            ("app/readiness".to_string(), http("/healthz")),
            ("app/liveness".to_string(), http("/status/500")),
            ("app/startup".to_string(), http("/status/302")),
            ("db/readiness".to_string(), tcp(app)),
            ("gone/liveness".to_string(), tcp(closed)),
        ]
        .into();
    })
    .await;
    let probe = async |name: &str| {
        let response = http_client().get(format!("http://{}/app-health/{name}", s.sidecar.admin)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap().trim_end().to_string())
    };
    assert_eq!(probe("app/readiness").await, (200, "the app answered 200".to_string()));
    assert_eq!(probe("app/liveness").await, (500, "the app answered 500".to_string()));
    assert_eq!(probe("app/startup").await, (200, "the app answered 302".to_string()));
    assert_eq!(probe("db/readiness").await.0, 200);
    let (status, why) = probe("gone/liveness").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains(&format!("127.0.0.1:{closed}")), "{why}");
    assert_eq!(probe("app/nothing").await.0, 404);
    // Only GET: a probe changes nothing, and nothing else is served there.
    let post = http_client().post(format!("http://{}/app-health/app/readiness", s.sidecar.admin)).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    s.shutdown();
}

/// The kubelet's gRPC probe, rewritten by injection, is asked of a real gRPC server's standard
/// health service: healthy only while it says SERVING, whatever the reason it does not (a
/// service it does not know, one marked NOT_SERVING, a server that is not gRPC at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_app_probes_ask_the_apps_health_service() {
    use palisade::config::{AppProbe, GrpcProbe};
    let (reporter, grpc_app) = grpc_health_app(&["shop.Orders"]).await;
    reporter.set_service_status("shop.Refunds", tonic_health::ServingStatus::NotServing).await;
    let grpc_port = grpc_app.port();
    let s = PolicedSidecar::start_with(&documents(), |c| {
        let grpc = |port, service: &str| AppProbe {
            port,
            path: None,
            grpc: Some(GrpcProbe { service: service.into() }),
            headers: vec![],
            timeout_seconds: 5,
        };
        c.admin.app_probes = [
            ("orders/liveness".to_string(), grpc(grpc_port, "shop.Orders")),
            ("orders/readiness".to_string(), grpc(grpc_port, "")),
            ("refunds/readiness".to_string(), grpc(grpc_port, "shop.Refunds")),
            ("unknown/readiness".to_string(), grpc(grpc_port, "shop.Nothing")),
            ("http/readiness".to_string(), grpc(c.inbound.app.0.port(), "")),
        ]
        .into();
    })
    .await;
    let probe = async |name: &str| {
        let response = http_client().get(format!("http://{}/app-health/{name}", s.sidecar.admin)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap().trim_end().to_string())
    };
    let (status, why) = probe("orders/liveness").await;
    assert_eq!((status, why.ends_with("the app's health service says SERVING")), (200, true), "{why}");
    // The server as a whole ("") is SERVING in tonic's reporter.
    assert_eq!(probe("orders/readiness").await.0, 200);
    let (status, why) = probe("refunds/readiness").await;
    assert_eq!((status, why.ends_with("says NOT_SERVING")), (503, true), "{why}");
    let (status, why) = probe("unknown/readiness").await;
    assert_eq!((status, why.contains("grpc-status 5")), (503, true), "NOT_FOUND: {why}");
    // An HTTP/1.1 app is not a gRPC server: no answer the probe can take as healthy.
    let (status, why) = probe("http/readiness").await;
    assert_eq!(status, 503, "{why}");
    // A service that stops serving is told at the next probe.
    reporter.set_service_status("shop.Orders", tonic_health::ServingStatus::NotServing).await;
    assert_eq!(probe("orders/liveness").await.0, 503);
    s.shutdown();
}

/// The API inventory (OWASP API9): the routes the app served, with identifiers as `{id}`, who
/// called them and how they answered; what the sidecar refused, and what the app does not serve,
/// are no routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_lists_the_routes_the_app_served_and_who_called_them() {
    let s = PolicedSidecar::start(&policy(
        "inventory",
        "  authorization:\n    default: ALLOW\n    rules:\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin*\"]}}\n  inputValidation:\n    waf: {mode: BLOCK}\n",
    ))
    .await;
    for path in ["/orders/1", "/orders/2", "/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/api/v1/health"] {
        assert_eq!(s.send("frontend", "GET", path, &[]).await.status, 200, "{path}");
    }
    assert_eq!(s.send("frontend", "POST", "/orders", &[]).await.status, 200);
    // Refused before the app saw them: no route.
    assert_eq!(s.send("frontend", "GET", "/admin/users", &[]).await.status, 403);
    assert_eq!(s.send("frontend", "GET", "/search?q=1%27%20OR%20%271%27%3D%271", &[]).await.status, 403);
    let counted = |inventory: &serde_json::Value| {
        inventory["routes"].as_array().map_or(0, |r| r.iter().map(|r| r["requests"].as_u64().unwrap_or(0)).sum())
    };
    assert!(eventually(async || counted(&s.admin_json("/inventory").await) == 5).await);
    let inventory = s.admin_json("/inventory").await;
    let routes: Vec<(String, String, u64)> = inventory["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["method"].as_str().unwrap().into(), r["route"].as_str().unwrap().into(), r["requests"].as_u64().unwrap())
        })
        .collect();
    let expected = [("GET", "/api/v1/health", 1), ("POST", "/orders", 1), ("GET", "/orders/{id}", 3)];
    assert_eq!(routes, expected.map(|(m, r, n)| (m.to_string(), r.to_string(), n)), "{inventory:#}");
    let orders = &inventory["routes"][2];
    assert_eq!(orders["status"]["2xx"], 3, "{orders}");
    assert_eq!(orders["callers"], serde_json::json!([id("shop", "frontend")]), "{orders}");
    assert_eq!((orders["plaintext"].as_u64(), orders["authenticated"].as_u64()), (Some(0), Some(0)));
    assert_eq!(inventory["dropped_requests"], 0);
    s.shutdown();
}
