//! /metrics as Prometheus sees it: `promtool check metrics` (Debian's prometheus package) finds
//! nothing to complain about, and the series SPEC section 7 names are there with bounded labels.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

const POLICY: &str = r#"  authorization:
    default: ALLOW
    rules:
      - {name: no-admin, action: DENY, to: {paths: ["/admin*"]}}
  rateLimits:
    - {name: tight, match: {paths: ["/limited"]}, key: global, rate: 1, per: 60s, burst: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_carry_the_spec_series() {
    let s = PolicedSidecar::start(&policy("metrics", POLICY)).await;
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
        r#"palisade_requests_total{code="200",decision="allow",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/shop/sa/frontend"} 3"#,
        r#"palisade_requests_total{code="403",decision="deny",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/shop/sa/frontend"} 1"#,
        r#"palisade_requests_total{code="429",decision="rate_limited",direction="inbound",method="GET",source_principal="spiffe://cluster.local/ns/shop/sa/frontend"} 1"#,
        r#"palisade_authz_decisions_total{decision="deny",mode="ENFORCE",policy="shop/metrics",rule="no-admin"} 1"#,
        r#"palisade_ratelimit_decisions_total{limit="tight",policy="shop/metrics",result="limited"} 1"#,
        r#"palisade_tls_handshakes_total{direction="inbound",result="success"}"#,
        r#"palisade_policy_updates_total{result="applied"} 1"#,
        r#"palisade_policy_version_info{source="files",version=""#,
        r#"palisade_build_info{version=""#,
        "palisade_certificate_expiry_timestamp_seconds ",
        r#"palisade_request_duration_seconds_bucket{code="200",direction="inbound",le="0.0001"}"#,
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(series), "missing {series}\n{text}");
    }
    // No raw paths or request ids in labels.
    assert!(!text.contains("/ok/1") && !text.contains("/admin\""), "{text}");
    s.shutdown();
}
