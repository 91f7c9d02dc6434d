//! Security events from real requests, checked field by field: OCSF HTTP Activity (class 4002)
//! by default, ECS as the alternative.

mod support;

use serde_json::Value;
use support::*;

const AUDIT: &str = "  authorization:\n    mode: AUDIT\n    default: DENY\n";

/// The attributes OCSF requires of every HTTP Activity event.
fn assert_ocsf_base(e: &Value) {
    assert_eq!(e["class_uid"], 4002, "{e}");
    assert_eq!(e["category_uid"], 4, "{e}");
    let activity = e["activity_id"].as_u64().expect("activity_id");
    assert_eq!(e["type_uid"].as_u64(), Some(4002 * 100 + activity), "{e}");
    assert!(e["time"].as_u64().is_some_and(|t| t > 1_700_000_000_000), "time in ms: {e}");
    assert!(e["severity_id"].as_u64().is_some(), "{e}");
    assert_eq!(e["metadata"]["product"]["name"], "Palisade", "{e}");
    assert!(e["metadata"]["product"]["version"].is_string(), "{e}");
    assert!(e["metadata"]["version"].is_string(), "{e}");
    assert!(e["message"].is_string(), "{e}");
}

async fn events_eventually(s: &PolicedSidecar, count: usize) -> Vec<Value> {
    let mut events = Vec::new();
    eventually(|| {
        events = s.events();
        let n = events.len();
        async move { n >= count }
    })
    .await;
    s.events()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_events_for_denials_limits_tls_failures_and_policy_changes() {
    let s = PolicedSidecar::start(&policy("events", DENY_ADMIN_LIMIT_ONE)).await;
    assert_eq!(s.send("frontend", "GET", "/admin/x", &[]).await.status, 403);
    assert_eq!(s.send("frontend", "POST", "/limited", &[]).await.status, 200);
    assert_eq!(s.send("frontend", "POST", "/limited", &[]).await.status, 429);
    let rogue = Pki::new();
    assert!(handshake(s.sidecar.inbound, Some(&rogue.workload("rogue", &id("shop", "frontend")))).await.is_err());
    let version = s.config_dump().await["policy"]["version"].clone();
    write_policy(&s.policy_file, &policy("events", AUDIT));
    assert!(eventually(|| async { s.config_dump().await["policy"]["version"] != version }).await);
    assert_eq!(s.send("plain", "PUT", "/x", &[]).await.status, 200, "AUDIT never blocks");
    write_policy(&s.policy_file, "apiVersion: palisade.dev/v1alpha1\nkind: Nonsense\n");

    let events = events_eventually(&s, 7).await;
    for e in &events {
        assert_ocsf_base(e);
    }
    let by = |needle: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().unwrap_or("").contains(needle))
            .unwrap_or_else(|| panic!("no event with {needle:?} in {events:#?}"))
    };

    let denied = by("rule no-admin");
    assert_eq!(denied["activity_id"], 3, "GET");
    assert_eq!(denied["action_id"], 2, "denied");
    assert_eq!(denied["disposition_id"], 2, "blocked");
    assert_eq!(denied["firewall_rule"]["uid"], "shop/events/no-admin");
    assert_eq!(denied["firewall_rule"]["name"], "no-admin");
    assert_eq!(denied["http_request"]["http_method"], "GET");
    assert_eq!(denied["http_request"]["url"]["path"], "/admin/x");
    assert_eq!(denied["http_response"]["code"], 403);
    assert_eq!(denied["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(denied["actor"]["user"]["uid"], id("shop", "frontend").as_str());
    assert_eq!(denied["http_request"]["uid"].as_str().map(str::len), Some(32), "the request id");

    let limited = by("rule tight");
    assert_eq!(limited["activity_id"], 6, "POST");
    assert_eq!(limited["http_response"]["code"], 429);
    assert_eq!(limited["firewall_rule"]["uid"], "shop/events/tight");

    let tls = by("inbound TLS handshake refused");
    assert_eq!(tls["action_id"], 2);
    assert_eq!(tls["src_endpoint"]["ip"], "127.0.0.1");

    let audit = by("audit, would deny");
    assert_eq!(audit["action_id"], 1, "allowed: AUDIT never blocks");
    assert_eq!(audit["firewall_rule"]["name"], "default");

    let applied: Vec<&Value> =
        events.iter().filter(|e| e["message"].as_str().unwrap_or("").contains("in force")).collect();
    assert!(applied.len() >= 2, "the first policy and the AUDIT one: {applied:?}");
    let rejected = by("policy update rejected");
    assert!(rejected["unmapped"]["errors"][0].as_str().unwrap().contains("Nonsense"), "{rejected}");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_events_carry_the_same_facts() {
    let s = PolicedSidecar::start_with(&policy("events", DENY_ADMIN_LIMIT_ONE), |c| {
        c.telemetry.events.format = palisade::config::EventFormat::Ecs
    })
    .await;
    assert_eq!(s.send("billing", "DELETE", "/admin", &[]).await.status, 403);
    let events = events_eventually(&s, 2).await;
    let denied =
        events.iter().find(|e| e["event"]["action"] == "request-denied").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(denied["event"]["kind"], "event");
    assert_eq!(denied["event"]["outcome"], "failure");
    assert!(denied["event"]["category"].is_array());
    assert!(denied["@timestamp"].is_u64());
    assert_eq!(denied["ecs"]["version"], "8.11.0");
    assert_eq!(denied["rule"]["id"], "shop/events/no-admin");
    assert_eq!(denied["rule"]["ruleset"], "shop/events");
    assert_eq!(denied["source"]["ip"], "127.0.0.1");
    assert_eq!(denied["user"]["name"], id("shop", "billing").as_str());
    assert_eq!(denied["http"]["request"]["method"], "DELETE");
    assert_eq!(denied["http"]["response"]["status_code"], 403);
    assert_eq!(denied["url"]["path"], "/admin");
    assert!(events.iter().any(|e| e["event"]["action"] == "policy-applied"));
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request_apart_from_the_events() {
    let s = PolicedSidecar::start(&policy("events", DENY_ADMIN_LIMIT_ONE)).await;
    assert_eq!(s.send("frontend", "GET", "/orders/1", &[]).await.status, 200);
    assert_eq!(s.send("plain", "GET", "/admin", &[]).await.status, 403);
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&s.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert!(
        eventually(|| {
            let n = lines().len();
            async move { n >= 2 }
        })
        .await
    );
    let lines = lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["path"], "/orders/1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["direction"], "inbound");
    assert_eq!(lines[0]["principal"], id("shop", "frontend").as_str());
    assert_eq!(lines[1]["status"], 403);
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["principal"], "");
    assert!(lines[1]["duration_ms"].as_f64().is_some());
    assert!(s.events().iter().all(|e| e.get("duration_ms").is_none()), "access lines stay out of the event stream");
    s.shutdown();

    let quiet =
        PolicedSidecar::start_with(&policy("events", DENY_ADMIN_LIMIT_ONE), |c| c.telemetry.access_log = false).await;
    assert_eq!(quiet.send("frontend", "GET", "/orders/1", &[]).await.status, 200);
    // The request is recorded where its access line would be written...
    let counted = eventually(async || quiet.metrics().await.contains("palisade_requests_total{code=\"200\"")).await;
    assert!(counted, "the request is counted");
    // ...and with accessLog: false no access log is even opened.
    assert!(!quiet.access_log.exists(), "accessLog: false writes nothing");
    quiet.shutdown();
}
