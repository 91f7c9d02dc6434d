//! Security events from real requests, checked field by field: OCSF by default, ECS as the
//! alternative; and one event of every kind written for the schema check of
//! tests/k8s/test_events.py.

mod support;

use palisade::config::{EventFormat, EventSink, EventsConfig};
use palisade::telemetry::{
    DeniedConnection, DeniedRequest, DosRefusal, EventWriter, RequestFacts, RuleId, SecurityEvent, TlsSession, WafEvent,
};
use serde_json::Value;
use support::*;

const AUDIT: &str = "  authorization:\n    mode: AUDIT\n    default: DENY\n";

/// The attributes OCSF requires of every event (the whole schema is checked by
/// tests/k8s/test_events.py).
fn assert_ocsf_base(e: &Value) {
    let class = e["class_uid"].as_u64().expect("class_uid");
    assert!([4002, 4001, 3004].contains(&class), "{e}");
    assert_eq!(e["category_uid"].as_u64(), Some(class / 1000), "{e}");
    let activity = e["activity_id"].as_u64().expect("activity_id");
    assert_eq!(e["type_uid"].as_u64(), Some(class * 100 + activity), "{e}");
    assert!(e["status_id"].as_u64().is_some(), "{e}");
    assert!(e["time"].as_u64().is_some_and(|t| t > 1_700_000_000_000), "time in ms: {e}");
    assert!(e["severity_id"].as_u64().is_some(), "{e}");
    assert_eq!(e["metadata"]["product"]["name"], "Palisade", "{e}");
    assert!(e["metadata"]["product"]["version"].is_string(), "{e}");
    assert!(e["metadata"]["version"].is_string(), "{e}");
    assert!(e["message"].is_string(), "{e}");
}

/// Requests refused before any policy judged them (a path escaping the root, a target over
/// `maxUriBytes`, a body over `maxBodyBytes`) are probes a SIEM must see too: each is an event,
/// up to 10 a second, the rest in aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_as_invalid_are_events_too() {
    let limits = "  inputValidation: {maxBodyBytes: 100, maxUriBytes: 512}\n";
    let s = PolicedSidecar::start(&policy("events", &format!("{DENY_ADMIN_LIMIT_ONE}{limits}"))).await;
    assert_eq!(
        s.exchange("frontend", "GET /a/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nhost: orders\r\n\r\n").await.status,
        400
    );
    let long = format!("GET /{} HTTP/1.1\r\nhost: orders\r\n\r\n", "a".repeat(600));
    assert_eq!(s.exchange("frontend", long).await.status, 414);
    let big = format!("POST /x HTTP/1.1\r\nhost: orders\r\ncontent-length: 200\r\n\r\n{}", "b".repeat(200));
    assert_eq!(s.exchange("frontend", big).await.status, 413);
    let refused = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").starts_with("refused ");
    let events = s.events_where("the three invalid requests", 3, refused).await;
    let status: Vec<_> = events.iter().map(|e| e["http_response"]["code"].as_u64().unwrap_or(0)).collect();
    assert_eq!(status, [400, 414, 413], "{events:#?}");
    assert!(events[0]["message"].as_str().unwrap().contains("/etc/passwd"), "{}", events[0]);
    assert_eq!(events[0]["actor"]["user"]["uid"], id("shop", "frontend").as_str(), "who probed");
    // No policy decided: each names a stable rule for a SIEM to match, and says it in words.
    let rules: Vec<_> = events.iter().map(|e| e["firewall_rule"]["uid"].as_str().unwrap_or("")).collect();
    assert_eq!(rules, ["-/path-escapes-root", "-/inputValidation.maxUriBytes", "-/inputValidation.maxBodyBytes"]);
    assert_eq!(events[0]["status_detail"], "path climbs above the root", "{}", events[0]);
    assert_eq!(events[0]["firewall_rule"]["desc"], "path climbs above the root", "{}", events[0]);

    // Smuggling probes that the HTTP/1 parser refuses before any phase of the sidecar's runs,
    // and a chunk that does not parse: events too.
    let probes = [
        "GET /a HTTP/1.1\r\nhost: orders\r\nhost: evil\r\n\r\n",
        "GET /a HTTP/1.1\r\nhost: orders\r\nx: a\rb\r\n\r\n",
        "POST /a HTTP/1.1\r\nhost: orders\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n\r\n",
    ];
    for probe in probes {
        assert_eq!(s.exchange("frontend", probe).await.status, 400, "{probe:?}");
    }
    let events = s.events_where("the three probes", 6, refused).await;
    let messages: Vec<&str> = events[3..].iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages.iter().filter(|m| m.contains("the HTTP/1 parser refuses")).count(), 2, "{messages:?}");
    assert!(messages[2].starts_with("refused POST /a (400): the request could not be read"), "{messages:?}");
    let rules: Vec<_> = events[3..].iter().map(|e| e["firewall_rule"]["name"].as_str().unwrap_or("")).collect();
    assert_eq!(rules, ["h1-malformed", "h1-malformed", "body-unreadable"]);
    for e in &events[3..] {
        assert_eq!(e["actor"]["user"]["uid"], id("shop", "frontend").as_str(), "who probed: {e}");
    }

    // A body of no declared length crosses the limit as it streams: the same refusal, reported.
    let chunked = format!(
        "POST /y HTTP/1.1\r\nhost: orders\r\ntransfer-encoding: chunked\r\n\r\nc8\r\n{}\r\n0\r\n\r\n",
        "c".repeat(200)
    );
    assert_eq!(s.exchange("frontend", chunked).await.status, 413);
    let events = s.events_where("the body over the limit as it streamed", 7, refused).await;
    assert_eq!(events[6]["http_response"]["code"], 413, "{}", events[6]);
    assert_eq!(events[6]["firewall_rule"]["uid"], "-/inputValidation.maxBodyBytes", "{}", events[6]);
    assert!(events[6]["message"].as_str().unwrap().starts_with("refused POST /y (413)"), "{}", events[6]);

    // A flood: 10 a second each, the rest counted in aggregate; none unaccounted.
    const FLOOD: u64 = 40;
    for _ in 0..FLOOD {
        assert_eq!(s.exchange("plain", "GET /../x HTTP/1.1\r\nhost: orders\r\n\r\n").await.status, 400);
    }
    let in_aggregate = |e: &serde_json::Value| {
        e["message"].as_str().unwrap_or("").contains("refused as malformed or over a size limit")
    };
    let probe = |e: &serde_json::Value| refused(e) && e["message"].as_str().unwrap_or("").contains("/../x");
    assert!(all_accounted(&s, FLOOD, probe, in_aggregate).await, "{:#?}", s.events());
    // The ones counted in aggregate are requests answered, as the ones reported each are.
    let events = s.events();
    let aggregate = events.iter().find(|e| in_aggregate(e)).unwrap();
    assert_eq!(
        (aggregate["class_uid"].as_u64(), aggregate["activity_id"].as_u64()),
        (Some(4002), Some(0)),
        "{aggregate}"
    );
    s.shutdown();
}

/// Whether, eventually, the events reported one by one (`each`) and the counts of the aggregate
/// ones (`in_aggregate`) add up to `flood`, some of them in aggregate.
async fn all_accounted(
    s: &PolicedSidecar,
    flood: u64,
    each: impl Fn(&serde_json::Value) -> bool,
    in_aggregate: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    eventually(async || {
        let events = s.events();
        let one_by_one = events.iter().filter(|e| each(e)).count() as u64;
        let counted: u64 = events.iter().filter(|e| in_aggregate(e)).map(|e| e["count"].as_u64().unwrap_or(0)).sum();
        one_by_one + counted == flood && counted > 0
    })
    .await
}

/// A flood of rate-limited requests: each of the first 10 a second is an event, the rest are
/// summed up in one event a second with their count (outside tester j2: 20,000 429s had written
/// 19 MB of events in 1.6 s); none unaccounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rate_limited_requests_is_reported_in_aggregate() {
    let s = PolicedSidecar::start(&policy("events", DENY_ADMIN_LIMIT_ONE)).await;
    assert_eq!(s.send("frontend", "POST", "/limited", &[]).await.status, 200);
    const FLOOD: u64 = 40;
    for _ in 0..FLOOD {
        assert_eq!(s.send("frontend", "POST", "/limited", &[]).await.status, 429);
    }
    let each = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").starts_with("rate limited POST /limited");
    let in_aggregate =
        |e: &serde_json::Value| e["message"].as_str().unwrap_or("").contains("rate limited (429): past 10 a second");
    assert!(all_accounted(&s, FLOOD, each, in_aggregate).await, "{:#?}", s.events());
    let events = s.events();
    let aggregate = events.iter().find(|e| in_aggregate(e)).unwrap();
    assert_eq!(
        (aggregate["class_uid"].as_u64(), aggregate["http_response"]["code"].as_u64()),
        (Some(4002), Some(429)),
        "{aggregate}"
    );
    // The limit that refused them, as its requests reported each name it (outside tester q2).
    let each_one = events.iter().find(|e| each(e)).unwrap();
    assert_eq!(aggregate["firewall_rule"]["uid"], each_one["firewall_rule"]["uid"], "{aggregate}");
    assert!(aggregate["firewall_rule"]["uid"].as_str().unwrap().ends_with("/tight"), "{aggregate}");
    assert!(aggregate["firewall_rule"].get("category").is_none(), "a policy's limit, not a DoS defence: {aggregate}");
    s.shutdown();
}

/// Forged tokens, denied paths and attacks the WAF refuses cost a caller nothing either: each
/// kind is reported each only up to 10 a second, the rest summed up per rule in one event a
/// second, filed under the rule each request's own event names (outside tester q2: a flood of
/// bad tokens wrote about 1 KB of events a request). None goes unaccounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_forged_tokens_denied_requests_and_waf_attacks_are_reported_in_aggregate_per_rule() {
    let protections = format!(
        "{DENY_ADMIN_LIMIT_ONE}  inputValidation:\n    waf: {{mode: BLOCK}}\n  authentication:\n    jwt:\n      - issuer: https://auth.example.com\n        audiences: [orders]\n        hmacSecret: {{inline: \"0123456789abcdef0123456789abcdef\"}}\n"
    );
    let s = PolicedSidecar::start(&policy("events", &protections)).await;
    const FLOOD: u64 = 40;
    let forged = [("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.Zm9yZ2Vk")];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let kinds: [(&str, Headers, u16, &str, &str); 3] = [
        ("/orders/1", &forged, 401, "unauthenticated GET /orders/1", "refused as unauthenticated (401): past 10"),
        ("/admin/users", &[], 403, "denied GET /admin/users", "denied by authorization (403): past 10"),
        (
            "/orders?id=1%27%20OR%20%271%27%3D%271",
            &[],
            403,
            "blocked GET /orders: sqli",
            "blocked by the WAF (403): past 10",
        ),
    ];
    for (target, headers, status, _, _) in kinds {
        for _ in 0..FLOOD {
            assert_eq!(s.send("frontend", "GET", target, headers).await.status, status, "{target}");
        }
    }
    // Another caller's attack in the same second, on the same rules: reported on its own, with
    // its path, whatever the flood from 127.0.0.1 used up (tester u2: ten junk refusals a
    // second took the details from every other caller's).
    let elsewhere: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let attacks: [(&str, Headers, &str); 3] = [
        ("/orders/victim", &forged, "unauthenticated GET /orders/victim"),
        ("/admin/delete-all", &[], "denied GET /admin/delete-all"),
        ("/reports?id=1%27%20OR%20%271%27%3D%271", &[], "blocked GET /reports: sqli"),
    ];
    for (target, headers, said) in attacks {
        assert!(s.send_from(elsewhere, "frontend", "GET", target, headers).await.status >= 400, "{target}");
        let found = s.events_where(said, 1, |e| e["message"].as_str().is_some_and(|m| m.starts_with(said))).await;
        assert_eq!(found[0]["src_endpoint"]["ip"], "127.0.0.2", "{}", found[0]);
    }
    for (target, _, status, each_says, aggregate_says) in kinds {
        let each = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").starts_with(each_says);
        let in_aggregate = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").contains(aggregate_says);
        assert!(all_accounted(&s, FLOOD, each, in_aggregate).await, "{target}: {:#?}", s.events());
        let events = s.events();
        let aggregates: Vec<&serde_json::Value> = events.iter().filter(|e| in_aggregate(e)).collect();
        // At most 10 a second from one source: the seconds the events reported each were made in
        // (one more for an event stamped just past the second its refusal was counted in).
        let each_time: Vec<u64> = events.iter().filter(|e| each(e)).filter_map(|e| e["time"].as_u64()).collect();
        let seconds = each_time.iter().map(|t| t / 1000).collect::<std::collections::BTreeSet<_>>().len();
        assert!(each_time.len() <= 10 * (seconds + 1), "{target}: {} reported each in {seconds} s", each_time.len());
        let (aggregate, each_one) = (aggregates[0], events.iter().find(|e| each(e)).unwrap());
        // Filed as each of its requests is, so a SIEM rule written from one finds the rest.
        assert_eq!(filing(aggregate), filing(each_one), "{aggregate}\n{each_one}");
        assert_eq!(aggregate["http_response"]["code"].as_u64(), Some(u64::from(status)), "{aggregate}");
        assert_eq!(aggregate["src_endpoint"]["ip"], "127.0.0.1", "one source: named: {aggregate}");
        assert_eq!(aggregate["dst_endpoint"]["port"], s.sidecar.inbound.port(), "the listener: {aggregate}");
        assert_ocsf_base(aggregate);
    }
    s.shutdown();
}

/// How a SIEM files an event: its class, outcome, severity and rule.
fn filing(e: &serde_json::Value) -> [serde_json::Value; 7] {
    let rule = &e["firewall_rule"];
    [
        &e["class_uid"],
        &e["status_id"],
        &e["disposition_id"],
        &e["severity_id"],
        &rule["uid"],
        &rule["name"],
        &rule["category"],
    ]
    .map(Clone::clone)
}

/// What DETECT and AUDIT let through under a flood is summed up as the refusals are (the
/// review: a flood against a DETECT WAF, the mode a rollout starts in, wrote about 1 KB of
/// events a request), and filed as each of its requests is: a success, not a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_detect_findings_and_audit_denials_are_reported_in_aggregate() {
    let spec = "  authorization:\n    mode: AUDIT\n    default: ALLOW\n    rules:\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin*\"]}}\n  inputValidation:\n    waf: {mode: DETECT}\n";
    let s = PolicedSidecar::start(&policy("events", spec)).await;
    const FLOOD: u64 = 40;
    let kinds = [
        ("/orders?id=1%27%20OR%20%271%27%3D%271", "detected GET /orders: sqli", "in DETECT mode (forwarded): past 10"),
        ("/admin/users", "audit, would deny GET /admin/users", "an AUDIT policy would deny (forwarded): past 10"),
    ];
    for (target, _, _) in kinds {
        for _ in 0..FLOOD {
            assert_eq!(s.send("frontend", "GET", target, &[]).await.status, 200, "{target}");
        }
    }
    for (target, each_says, aggregate_says) in kinds {
        let each = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").starts_with(each_says);
        let in_aggregate = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").contains(aggregate_says);
        assert!(all_accounted(&s, FLOOD, each, in_aggregate).await, "{target}: {:#?}", s.events());
        let events = s.events();
        let (aggregate, each_one) =
            (events.iter().find(|e| in_aggregate(e)).unwrap(), events.iter().find(|e| each(e)).unwrap());
        assert_eq!(filing(aggregate), filing(each_one), "{aggregate}\n{each_one}");
        assert_eq!(aggregate["http_request"]["url"]["port"], s.sidecar.inbound.port(), "{aggregate}");
        assert_ocsf_base(aggregate);
    }
    keep_for_the_schema_check("ocsf-sidecar-detect-audit-aggregates.jsonl", &s.events());
    s.shutdown();
}

/// A handshake needs no credential: refused ones are each reported only up to 10 a second,
/// and the rest in that second's aggregate event with their count, so a flood of them cannot
/// write an event per connection. None goes unaccounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_handshakes_is_reported_in_aggregate() {
    let s = PolicedSidecar::start(&policy("events", DENY_ADMIN_LIMIT_ONE)).await;
    let rogue = Pki::new();
    let stranger = rogue.workload("rogue", &id("shop", "frontend"));
    const FLOOD: u64 = 60;
    for _ in 0..FLOOD {
        assert!(handshake(s.sidecar.inbound, Some(&stranger)).await.is_err());
    }
    let one_by_one =
        |e: &serde_json::Value| e["message"].as_str().unwrap_or("").contains("inbound TLS handshake refused");
    let in_aggregate = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").contains("more TLS handshake");
    let accounted = |events: &[serde_json::Value]| {
        let each = events.iter().filter(|e| one_by_one(e)).count() as u64;
        let counted: u64 = events.iter().filter(|e| in_aggregate(e)).map(|e| e["count"].as_u64().unwrap_or(0)).sum();
        (each, counted)
    };
    let all_there = eventually(async || {
        let (each, counted) = accounted(&s.events());
        each + counted == FLOOD
    })
    .await;
    let events = s.events();
    let (each, counted) = accounted(&events);
    assert!(all_there, "{each} reported each and {counted} in aggregate, of {FLOOD}");
    let seconds = events.iter().filter(|e| in_aggregate(e)).count() as u64 + 1;
    assert!(each <= 10 * seconds, "at most 10 a second reported each: {each} over about {seconds} s");
    assert!(counted > 0, "the rest came in aggregate");
    let aggregate = events.iter().find(|e| in_aggregate(e)).unwrap();
    assert_eq!(aggregate["src_endpoint"]["ip"], "127.0.0.1", "one source: named");
    // Filed as each refusal is, so a SIEM rule written from one finds the rest of a scan (the
    // aggregate was a Close, under another rule id, in the dos category).
    let single = events.iter().find(|e| one_by_one(e)).unwrap();
    let filed = |e: &serde_json::Value| {
        (
            e["class_uid"].clone(),
            e["activity_id"].clone(),
            e["firewall_rule"]["uid"].clone(),
            e["firewall_rule"]["name"].clone(),
        )
    };
    assert_eq!(filed(aggregate), filed(single), "{aggregate}\n{single}");
    assert_eq!(filed(single), (4001.into(), 5.into(), "mtls".into(), "inbound-mtls".into()));
    // Where the caller came: the listener that refused it.
    assert_eq!(single["dst_endpoint"]["port"], s.sidecar.inbound.port(), "{single}");
    assert!(aggregate["firewall_rule"].get("category").is_none(), "{aggregate}");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_events_for_denials_limits_tls_failures_and_policy_changes() {
    // Outbound, `impostor.shop` is this sidecar's own inbound port, which proves shop/orders
    // where shop/payments is expected.
    let inbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let s = PolicedSidecar::start_with(&policy("events", DENY_ADMIN_LIMIT_ONE), |c| {
        c.inbound.listen = palisade::config::ListenAddr(inbound);
        c.outbound.destinations = vec![route("impostor.shop", inbound, Some(&id("shop", "payments")))];
    })
    .await;
    let impostor =
        http_client().get(format!("http://{}/", s.sidecar.outbound)).header("host", "impostor.shop").send().await;
    assert_eq!(impostor.unwrap().status(), 502);
    assert_eq!(s.send("frontend", "GET", "/admin/x", &[]).await.status, 403);
    let evasion = "GET /x/../admin/y HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n";
    assert_eq!(s.exchange("frontend", evasion).await.status, 403);
    assert_eq!(s.send("frontend", "POST", "/limited", &[]).await.status, 200);
    assert_eq!(s.send("frontend", "POST", "/limited", &[]).await.status, 429);
    let rogue = Pki::new();
    assert!(handshake(s.sidecar.inbound, Some(&rogue.workload("rogue", &id("shop", "frontend")))).await.is_err());
    let version = s.config_dump().await["policy"]["version"].clone();
    write_policy(&s.policy_file, &policy("events", AUDIT));
    assert!(eventually(|| async { s.config_dump().await["policy"]["version"] != version }).await);
    assert_eq!(s.send("plain", "PUT", "/x", &[]).await.status, 200, "AUDIT never blocks");
    write_policy(&s.policy_file, "apiVersion: palisade.dev/v1alpha1\nkind: Nonsense\n");

    let events = s.events_where("the events of the requests above", 9, |_| true).await;
    keep_for_the_schema_check("ocsf-sidecar-denials.jsonl", &events);
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
    assert_eq!(denied["dst_endpoint"]["port"], s.sidecar.inbound.port(), "the sidecar's inbound listener");
    assert_eq!(denied["status_id"], 2, "failure");
    assert_eq!(denied["metadata"]["profiles"], serde_json::json!(["security_control", "host"]));
    assert_eq!(denied["actor"]["user"]["uid"], id("shop", "frontend").as_str());
    assert_eq!(denied["http_request"]["uid"].as_str().map(str::len), Some(32), "the request id");
    assert!(denied.get("unmapped").is_none_or(|u| u.get("normalized_path").is_none()), "{denied}");
    // The raw path is the evidence; the path the rule judged is beside it, for a search on
    // `/admin*` to find the evasions (outside tester q2).
    let evaded = by("GET /x/../admin/y");
    assert_eq!(evaded["http_request"]["url"]["path"], "/x/../admin/y");
    assert_eq!(evaded["unmapped"]["normalized_path"], "/admin/y", "{evaded}");

    let limited = by("rule tight");
    assert_eq!(limited["activity_id"], 6, "POST");
    assert_eq!(limited["http_response"]["code"], 429);
    assert_eq!(limited["firewall_rule"]["uid"], "shop/events/tight");

    let tls = by("inbound TLS handshake refused");
    assert_eq!(
        (tls["class_uid"].clone(), tls["activity_id"].clone()),
        (4001.into(), 5.into()),
        "Network Activity: Refuse"
    );
    assert_eq!(tls["action_id"], 2);
    assert_eq!(tls["src_endpoint"]["ip"], "127.0.0.1");
    assert!(tls.get("tls").is_none(), "refused inside the handshake: its version is not known, so no tls object");

    // Outbound, the handshake completed before the identity was compared: what it negotiated.
    let outbound = by("outbound TLS handshake refused");
    assert_eq!(outbound["dst_endpoint"]["port"], inbound.port());
    assert_eq!(outbound["unmapped"]["expected_identity"], id("shop", "payments").as_str());
    assert_eq!(outbound["tls"]["version"], "1.3", "{outbound}");
    assert!(outbound["tls"]["cipher"].as_str().is_some_and(|c| c.starts_with("TLS13_")), "{outbound}");
    assert_eq!(outbound["tls"]["sans"], serde_json::json!([{"name": id("shop", "orders"), "type": "URI"}]));

    let audit = by("audit, would deny");
    assert_eq!(audit["action_id"], 1, "allowed: AUDIT never blocks");
    assert_eq!(audit["firewall_rule"]["name"], "default");

    let applied: Vec<&Value> =
        events.iter().filter(|e| e["message"].as_str().unwrap_or("").contains("in force")).collect();
    assert!(applied.len() >= 2, "the first policy and the AUDIT one: {applied:?}");
    assert_eq!(applied[0]["class_uid"], 3004, "Entity Management");
    assert_eq!(applied[0]["entity"]["type"], "Policy");
    assert_eq!(applied[0]["entity"]["data"]["policies"][0], "shop/events");
    let rejected = by("policy update rejected");
    assert_eq!(rejected["status_id"], 2);
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
    assert_eq!(s.send("billing", "GET", "/limited", &[]).await.status, 200);
    assert_eq!(s.send("billing", "GET", "/limited", &[]).await.status, 429);
    let limited = s.events_where("the 429", 1, |e| e["event"]["action"] == "request-rate-limited").await;
    assert!(limited[0]["message"].as_str().unwrap().starts_with("rate limited GET /limited"), "{}", limited[0]);
    let events = s.events_where("the events of the requests above", 2, |_| true).await;
    let denied =
        events.iter().find(|e| e["event"]["action"] == "request-denied").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(denied["event"]["kind"], "event");
    assert_eq!(denied["event"]["outcome"], "failure");
    assert_eq!(denied["event"]["category"], serde_json::json!(["network", "web"]));
    assert_eq!(denied["event"]["type"], serde_json::json!(["denied", "access"]));
    assert_rfc3339_millis(&denied["@timestamp"]);
    assert_eq!(denied["ecs"]["version"], "8.11.0");
    assert_eq!(denied["rule"]["id"], "shop/events/no-admin");
    assert_eq!(denied["rule"]["ruleset"], "shop/events");
    assert_eq!(denied["source"]["ip"], "127.0.0.1");
    assert_eq!(denied["user"]["name"], id("shop", "billing").as_str());
    assert_eq!(denied["http"]["request"]["method"], "DELETE");
    assert_eq!(denied["http"]["response"]["status_code"], 403);
    assert_eq!(denied["url"]["path"], "/admin");
    assert!(events.iter().any(|e| e["event"]["action"] == "policy-applied"));

    // AUDIT answers as if nothing denied: the would-deny names no 403 a dashboard would count.
    let version = s.config_dump().await["policy"]["version"].clone();
    write_policy(&s.policy_file, &policy("events", AUDIT));
    assert!(eventually(|| async { s.config_dump().await["policy"]["version"] != version }).await);
    assert_eq!(s.send("plain", "PUT", "/x", &[]).await.status, 200, "AUDIT never blocks");
    let audits = s.events_where("the audit event", 1, |e| e["event"]["action"] == "request-audit-deny").await;
    assert_eq!(audits[0]["event"]["outcome"], "success");
    assert_eq!(audits[0]["http"]["request"]["method"], "PUT");
    assert!(audits[0]["http"].get("response").is_none(), "{}", audits[0]);
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_access_line_names_who_was_called() {
    // It named nobody: `principal` is the caller's, empty outbound, and the metrics' destination
    // was not there.
    let log = tempfile::NamedTempFile::new().unwrap().into_temp_path().keep().unwrap();
    let sink = log.clone();
    let pair = Pair::start_configured(
        EchoApp::start().await,
        move |a| a.telemetry.access_log_sink = palisade::config::EventSink::File(sink),
        |_| {},
    )
    .await;
    let answer = http_client().get(pair.url("/orders/1")).header("host", B_AUTHORITY).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    wait_for("the outbound access line", async || !read_jsonl(&log).is_empty()).await;
    let line = read_jsonl(&log).remove(0);
    assert_eq!((line["direction"].as_str(), line["status"].as_u64()), (Some("outbound"), Some(200)), "{line}");
    assert_eq!(line["destination"], id("shop", "orders").as_str(), "{line}");
    pair.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request_apart_from_the_events() {
    let s = PolicedSidecar::start(&policy("events", DENY_ADMIN_LIMIT_ONE)).await;
    assert_eq!(s.send("frontend", "GET", "/orders/1", &[]).await.status, 200);
    assert_eq!(s.send("plain", "GET", "/admin", &[]).await.status, 403);
    let lines = || read_jsonl(&s.access_log);
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
    assert!(lines[0].get("destination").is_none(), "inbound: the sidecar is the destination: {}", lines[0]);
    assert_eq!(lines[1]["status"], 403);
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["principal"], "");
    assert!(lines[1]["duration_ms"].as_f64().is_some());
    assert!(s.events().iter().all(|e| e.get("duration_ms").is_none()), "access lines stay out of the event stream");

    // A long path is cut in the access log and the event, marked with how much was left out:
    // a refused request does not write many times its own size.
    let long = format!("/admin/{}", "A".repeat(8000));
    assert_eq!(s.send("plain", "GET", &long, &[]).await.status, 403);
    let cut = format!("{}...[{} more bytes]", &long[..1024], long.len() - 1024);
    wait_for("the long path's access line", async || read_jsonl(&s.access_log).len() >= 3).await;
    assert_eq!(read_jsonl(&s.access_log)[2]["path"], cut.as_str());
    wait_for("the long path's event", async || s.events().iter().any(|e| e.to_string().contains("more bytes]"))).await;
    let event = s.events().into_iter().find(|e| e.to_string().contains("more bytes]")).unwrap();
    assert!(event.to_string().len() < 4000, "{event}");
    assert_eq!(event["http_request"]["url"]["path"], cut.as_str());
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

/// `2026-12-02T16:04:05.123Z`: RFC 3339, UTC, milliseconds, as ECS `@timestamp` wants it.
fn assert_rfc3339_millis(t: &Value) {
    let t = t.as_str().unwrap_or_else(|| panic!("@timestamp is a string: {t}"));
    let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{t}");
    assert_eq!(t.len(), "2026-12-02T16:04:05.123Z".len(), "milliseconds: {t}");
    let age = time::OffsetDateTime::now_utc() - parsed;
    assert!(age.whole_seconds().abs() < 300, "now-ish: {t}");
}

/// One event of every kind the code can emit.
fn every_kind() -> Vec<SecurityEvent> {
    let request = |method: &str| RequestFacts {
        principal: Some(id("shop", "frontend")),
        source: Some("10.0.0.7:41234".parse().unwrap()),
        destination: Some("10.0.0.9:15006".parse().unwrap()),
        method: method.into(),
        path: "/orders/x/../1".into(),
        request_id: "0af7651916cd43dd8448eb211c80319c".into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        request_principal: Some("https://auth.example.com/alice".into()),
        normalized_path: Some("/orders/1".into()),
    };
    let waf = |blocked: bool| {
        SecurityEvent::WafFinding(WafEvent {
            policy: "shop/orders".into(),
            detector: "sqli",
            location: "query",
            name: "id".into(),
            paranoia: 1,
            fragment: "1' OR '1'='1".into(),
            blocked,
            request: request("GET"),
        })
    };
    let denied = |status: u16, method: &str, audit: bool| {
        SecurityEvent::RequestDenied(DeniedRequest {
            status,
            policy: "shop/orders".into(),
            rule: "no-admin".into(),
            detail: None,
            audit,
            request: request(method),
        })
    };
    let connection = |audit: bool| {
        SecurityEvent::ConnectionDenied(DeniedConnection {
            policy: "shop/orders".into(),
            rule: "default".into(),
            audit,
            principal: Some(id("shop", "frontend")),
            source: "10.0.0.7:41234".parse().unwrap(),
            destination: "10.0.0.9:5432".parse().unwrap(),
        })
    };
    // A PERMISSIVE port's plaintext, closed when the workload became STRICT: no principal.
    let plaintext = SecurityEvent::ConnectionDenied(DeniedConnection {
        policy: "-".into(),
        rule: "plaintext after its port became STRICT".into(),
        audit: false,
        principal: None,
        source: "10.0.0.8:41234".parse().unwrap(),
        destination: "10.0.0.9:3306".parse().unwrap(),
    });
    vec![
        connection(false),
        connection(true),
        plaintext,
        SecurityEvent::TlsFailure {
            direction: "inbound",
            peer: Some("10.0.0.7:41234".parse().unwrap()),
            listener: Some("10.0.0.9:15006".parse().unwrap()),
            expected: None,
            reason: "certificate from an unknown CA".into(),
            tls: None,
        },
        SecurityEvent::TlsFailure {
            direction: "outbound",
            peer: Some("10.0.0.9:15006".parse().unwrap()),
            listener: None,
            expected: Some(id("shop", "orders")),
            reason: "10.0.0.9:15006 presented spiffe://cluster.local/ns/shop/sa/other".into(),
            tls: Some(TlsSession {
                version: "1.3",
                cipher: Some("TLS13_AES_128_GCM_SHA256"),
                presented: Some(id("shop", "other")),
            }),
        },
        SecurityEvent::CertificateRotated {
            identity: id("shop", "orders"),
            serial: "1a2b".into(),
            not_after: 1_900_000_000,
        },
        SecurityEvent::CertificateReloadFailed { reason: "certificate not signed by the trust bundle".into() },
        SecurityEvent::CertificateExpired {
            identity: id("shop", "orders"),
            serial: "1a2b".into(),
            not_after: 1_900_000_000,
        },
        SecurityEvent::PolicyApplied { version: "v7".into(), policies: vec!["shop/orders".into()] },
        SecurityEvent::PolicyRejected {
            kept_version: "v7".into(),
            errors: vec!["orders.yaml:3: kind: Nonsense".into()],
        },
        denied(403, "GET", false),
        denied(429, "POST", false),
        denied(403, "PATCH", false),
        denied(403, "DELETE", true),
        SecurityEvent::RequestDenied(DeniedRequest {
            status: 400,
            policy: "-".into(),
            rule: "path-double-encoded".into(),
            detail: Some("path is double percent-encoded".into()),
            audit: false,
            request: request("GET"),
        }),
        SecurityEvent::CertificateIssued {
            identity: id("shop", "orders"),
            serial: "1a2b".into(),
            not_after: 1_900_000_000,
            peer: Some("10.0.0.9:40000".parse().unwrap()),
            pod: Some("orders-7d9f".into()),
        },
        SecurityEvent::CertificateRefused {
            identity: Some(id("shop", "orders")),
            peer: Some("10.0.0.9:40000".parse().unwrap()),
            reason: "token audience".into(),
        },
        SecurityEvent::CertificateRefused { identity: None, peer: None, reason: "no token".into() },
        SecurityEvent::LabelsMismatch {
            identity: id("shop", "orders"),
            pod: "orders-7d9f".into(),
            claimed: "app=admin".into(),
            actual: "app=orders".into(),
        },
        SecurityEvent::AuthenticationFailed {
            reason: "expired",
            description: "the token has expired",
            policy: Some("shop/orders".into()),
            detail: Some("exp 1700000000 is past (now 1700000600, skew 60 s)".into()),
            request: request("POST"),
        },
        SecurityEvent::AuthenticationFailed {
            reason: "missing",
            description: "a token is required",
            policy: None,
            detail: None,
            request: RequestFacts { principal: None, ..request("PUT") },
        },
        waf(true),
        waf(false),
        dos("inbound", "connection_limit", "limits.maxConnections", "10000", Some("10.0.0.66"), false),
        dos("inbound", "source_limit", "limits.maxConnectionsPerSource", "1000", Some("10.0.0.66"), false),
        dos("outbound", "header_timeout", "limits.headerTimeout", "10s", None, true),
        dos("inbound", "idle_timeout", "limits.idleTimeout", "300s", Some("10.0.0.7"), false),
        dos("inbound", "body_timeout", "limits.bodyTimeout", "60s", Some("10.0.0.7"), false),
        dos("outbound", "send_timeout", "limits.sendTimeout", "60s", None, true),
        dos("inbound", "shed", "limits.maxInflight", "5000", None, true),
        dos("inbound", "memory_shed", "limits.maxMemoryBytes", "201326592", None, true),
        dos("inbound", "memory_cut", "limits.maxMemoryBytes", "201326592", Some("10.0.0.66"), false),
        dos("inbound", "memory_limit", "limits.maxMemoryBytes", "201326592", None, true),
        dos("inbound", "memory_idle", "limits.maxMemoryBytes", "201326592", Some("10.0.0.66"), false),
        dos("inbound", "rapid_reset", "limits.http2.maxResetsPerSecond", "200", Some("10.0.0.66"), false),
        dos("outbound", "not_http", "outbound.passthrough", "10.20.0.0/16", Some("127.0.0.1"), false),
        dos("inbound", "rate_limited", "rateLimits", "10", Some("10.0.0.66"), false),
        dos("inbound", "unauthenticated", "authentication", "10", Some("10.0.0.66"), false),
        dos("inbound", "forbidden", "authorization", "10", None, true),
        dos("inbound", "waf_blocked", "inputValidation.waf", "10", Some("10.0.0.66"), false),
        dos("inbound", "waf_detected", "inputValidation.waf", "10", Some("10.0.0.66"), false),
        dos("inbound", "audit_denied", "authorization", "10", None, true),
    ]
}

fn dos(
    direction: &'static str,
    reason: &'static str,
    setting: &'static str,
    limit: &str,
    source: Option<&str>,
    several_sources: bool,
) -> SecurityEvent {
    SecurityEvent::DosRefused(DosRefusal {
        direction,
        reason,
        setting,
        limit: limit.into(),
        count: 1234,
        start_ms: 1_796_000_000_000,
        end_ms: 1_796_000_001_000,
        listener: Some("10.0.0.9:15006".parse().unwrap()),
        source: source.map(|s| s.parse().unwrap()),
        several_sources,
        // Refusals a policy's rule made are summed up per rule, named as each request's event names it.
        rule: match reason {
            "rate_limited" => Some("per-caller"),
            "unauthenticated" => Some("jwt"),
            "forbidden" => Some("deny-admin"),
            "waf_blocked" | "waf_detected" => Some("waf:sqli"),
            "audit_denied" => Some("deny-admin"),
            _ => None,
        }
        .map(|rule| RuleId { policy: "shop/orders-api".into(), rule: rule.into() }),
    })
}

/// The name of an event's kind; a new kind does not compile here until it is named, and
/// [`KINDS`] makes the test fail until [`every_kind`] emits one.
fn kind(event: &SecurityEvent) -> &'static str {
    match event {
        SecurityEvent::TlsFailure { .. } => "TlsFailure",
        SecurityEvent::CertificateRotated { .. } => "CertificateRotated",
        SecurityEvent::CertificateReloadFailed { .. } => "CertificateReloadFailed",
        SecurityEvent::CertificateExpired { .. } => "CertificateExpired",
        SecurityEvent::PolicyApplied { .. } => "PolicyApplied",
        SecurityEvent::PolicyRejected { .. } => "PolicyRejected",
        SecurityEvent::RequestDenied(_) => "RequestDenied",
        SecurityEvent::ConnectionDenied(_) => "ConnectionDenied",
        SecurityEvent::CertificateIssued { .. } => "CertificateIssued",
        SecurityEvent::CertificateRefused { .. } => "CertificateRefused",
        SecurityEvent::LabelsMismatch { .. } => "LabelsMismatch",
        SecurityEvent::AuthenticationFailed { .. } => "AuthenticationFailed",
        SecurityEvent::WafFinding(_) => "WafFinding",
        SecurityEvent::DosRefused(_) => "DosRefused",
    }
}

const KINDS: usize = 14;

/// Where [`every_event_kind_written_through_the_event_writer`] leaves its files for
/// tests/k8s/test_events.py: `<target dir>/tmp/event-samples`.
fn samples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("event-samples")
}

#[test]
fn every_event_kind_written_through_the_event_writer() {
    let events = every_kind();
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(kind).collect();
    assert_eq!(kinds.len(), KINDS, "every kind has a sample: {kinds:?}");
    let dir = samples_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (format, file) in [(EventFormat::Ocsf, "ocsf.jsonl"), (EventFormat::Ecs, "ecs.jsonl")] {
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
        let writer =
            EventWriter::start(&EventsConfig { sink: EventSink::File(path.clone()), format }, dropped).unwrap();
        for e in events.iter().cloned() {
            writer.emit(e);
        }
        let read = || read_jsonl(&path);
        assert!(eventually_blocking(|| read().len() == events.len()), "{file}: {} lines", read().len());
        let lines = read();
        for (event, line) in events.iter().zip(&lines) {
            assert!(!line.to_string().contains("null"), "absent facts are left out: {line}");
            match format {
                EventFormat::Ocsf => assert_ocsf_base(line),
                EventFormat::Ecs => {
                    assert_rfc3339_millis(&line["@timestamp"]);
                    let types = line["event"]["type"].as_array().unwrap_or_else(|| panic!("{line}"));
                    assert!(!types.is_empty() && line["event"]["category"].as_array().is_some_and(|c| !c.is_empty()));
                    // A WAF's blocks in aggregate are alerts as each is.
                    let reason = &line["labels"]["reason"];
                    let waf = kind(event) == "WafFinding" || reason == "waf_blocked" || reason == "waf_detected";
                    let expected = if waf { "alert" } else { "event" };
                    assert_eq!(line["event"]["kind"], expected, "{line}");
                    if kind(event) == "TlsFailure" && line["labels"]["direction"] == "outbound" {
                        assert_eq!(line["tls"]["version"], "1.3", "{line}");
                        assert_eq!(line["tls"]["version_protocol"], "tls", "{line}");
                        assert_eq!(line["tls"]["server"]["x509"]["alternative_names"][0], id("shop", "other").as_str());
                    }
                }
            }
        }
        if format == EventFormat::Ocsf {
            let patch = lines.iter().find(|l| l["http_request"]["http_method"] == "PATCH").unwrap();
            assert_eq!((patch["activity_id"].clone(), patch["activity_name"].clone()), (99.into(), "Patch".into()));
            let tls_refusal = |direction: &str| {
                let mut refusals = events.iter().zip(&lines).filter(|(e, _)| kind(e) == "TlsFailure").map(|(_, l)| l);
                refusals.find(|l| l["unmapped"]["direction"] == direction).unwrap()
            };
            let outbound = tls_refusal("outbound");
            assert_eq!(outbound["dst_endpoint"]["port"], 15006, "outbound refuses the server it called");
            assert_eq!(outbound["unmapped"]["expected_identity"], id("shop", "orders").as_str());
            assert_eq!(outbound["tls"]["version"], "1.3", "after a completed handshake: {outbound}");
            let plaintext = lines.iter().find(|l| l["dst_endpoint"]["port"] == 3306).unwrap();
            assert!(plaintext.get("actor").is_none(), "plaintext proves no workload: {plaintext}");
            assert_eq!(
                plaintext["message"],
                "denied TCP connection from 10.0.0.8 (plaintext) to port 3306: plaintext after its port became STRICT"
            );
            let inbound = tls_refusal("inbound");
            assert!(inbound.get("tls").is_none(), "no tls object without the version OCSF requires");
            let dos: Vec<&Value> = lines.iter().filter(|l| l["firewall_rule"]["category"] == "dos").collect();
            let by_reason = |reason: &str| *dos.iter().find(|l| l["firewall_rule"]["name"] == reason).unwrap();
            for (reason, class, activity) in [
                ("connection_limit", 4001, 5),
                ("source_limit", 4001, 5),
                ("header_timeout", 4001, 2),
                ("idle_timeout", 4001, 2),
                ("body_timeout", 4002, 0),
                ("shed", 4002, 0),
                ("memory_shed", 4002, 0),
                ("memory_cut", 4001, 2),
                ("memory_limit", 4001, 5),
                ("memory_idle", 4001, 2),
                ("rapid_reset", 4001, 2),
            ] {
                let e = by_reason(reason);
                assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64()), (Some(class), Some(activity)), "{e}");
                assert_eq!((e["count"].as_u64(), e["start_time"].as_u64()), (Some(1234), Some(1_796_000_000_000)));
                assert_eq!(e["dst_endpoint"]["port"], 15006, "the listener");
            }
            // Traffic the mesh cannot carry is a rule about what the app may reach, not a DoS limit.
            let egress = lines.iter().find(|l| l["firewall_rule"]["name"] == "not_http").unwrap();
            assert_eq!(egress["firewall_rule"]["category"], "egress", "{egress}");
            assert_eq!(egress["firewall_rule"]["uid"], "outbound.passthrough", "{egress}");
            assert_eq!(
                (egress["class_uid"].as_u64(), egress["activity_id"].as_u64()),
                (Some(4001), Some(5)),
                "{egress}"
            );
            assert_eq!(by_reason("shed")["http_response"]["code"], 503);
            assert_eq!(by_reason("body_timeout")["http_response"]["code"], 408);
            assert_eq!(by_reason("source_limit")["src_endpoint"]["ip"], "10.0.0.66", "one source: named");
            assert!(by_reason("header_timeout").get("src_endpoint").is_none(), "several: none named");
        }
    }
}

/// Writes events a real sidecar emitted where tests/k8s/test_events.py validates them too.
fn keep_for_the_schema_check(file: &str, events: &[Value]) {
    let dir = samples_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(dir.join(file), lines).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waf_findings_and_authentication_failures_from_real_requests() {
    const ATTACK: &str = "/orders?id=1%27%20OR%20%271%27%3D%271";
    let mut all = Vec::new();
    for (mode, status) in [("BLOCK", 403), ("DETECT", 200)] {
        let s =
            PolicedSidecar::start(&policy("waf", &format!("  inputValidation:\n    waf: {{mode: {mode}}}\n"))).await;
        assert_eq!(s.send("frontend", "GET", ATTACK, &[]).await.status, status, "{mode}");
        let events = s.events_where("the events of the requests above", 2, |_| true).await;
        let finding = events
            .iter()
            .find(|e| e["unmapped"]["waf"]["detector"] == "sqli")
            .unwrap_or_else(|| panic!("{mode}: {events:#?}"));
        assert_eq!(finding["class_uid"], 4002);
        assert_eq!(finding["disposition"], if mode == "BLOCK" { "Blocked" } else { "Detected" });
        assert_eq!(finding["dst_endpoint"]["port"], s.sidecar.inbound.port());
        all.extend(events);
        s.shutdown();
    }
    let jwt =
        "  authentication:\n    jwt:\n      - issuer: https://auth.example.com\n        audiences: [orders]\n        \
               hmacSecret: {inline: \"0123456789abcdef0123456789abcdef\"}\n    requireJwt: true\n";
    let s = PolicedSidecar::start(&policy("jwt", jwt)).await;
    assert_eq!(s.send("frontend", "GET", "/orders/1", &[]).await.status, 401);
    assert_eq!(s.send("frontend", "GET", "/orders/1", &[("authorization", "Bearer not.a.token")]).await.status, 401);
    let events = s.events_where("the events of the requests above", 3, |_| true).await;
    let failed: Vec<&Value> = events.iter().filter(|e| e["http_response"]["code"] == 401).collect();
    assert_eq!(failed.len(), 2, "{events:#?}");
    assert!(failed
        .iter()
        .all(|e| e["status_id"] == 2 && e["firewall_rule"]["name"].as_str().unwrap().starts_with("jwt:")));
    assert!(failed.iter().all(|e| e["firewall_rule"]["uid"] == "shop/jwt/jwt"), "{failed:#?}");
    all.extend(events);
    s.shutdown();
    // Without requireJwt a token that fails is refused all the same, by the policy naming its
    // issuer: the event says which.
    let s = PolicedSidecar::start(&policy("optional-jwt", &jwt.replace("requireJwt: true", "requireJwt: false"))).await;
    assert_eq!(s.send("frontend", "GET", "/orders/1", &[("authorization", "Bearer not.a.token")]).await.status, 401);
    let events = s.events_where("the failed token's event", 1, |e| e["http_response"]["code"] == 401).await;
    assert_eq!(events[0]["firewall_rule"]["uid"], "shop/optional-jwt/jwt", "{events:#?}");
    s.shutdown();
    for e in &all {
        assert_ocsf_base(e);
    }
    keep_for_the_schema_check("ocsf-sidecar-waf-jwt.jsonl", &all);
}

/// The DoS refusals of a real sidecar's events: (reason, sum of counts, number of events).
fn dos_counts(events: &[Value]) -> std::collections::BTreeMap<String, (u64, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for e in events.iter().filter(|e| e["firewall_rule"]["category"] == "dos") {
        let key = format!(
            "{}/{}",
            e["unmapped"]["direction"].as_str().unwrap(),
            e["firewall_rule"]["name"].as_str().unwrap()
        );
        let entry = counts.entry(key).or_insert((0, 0));
        entry.0 += e["count"].as_u64().unwrap();
        entry.1 += 1;
    }
    counts
}

/// A series' value on a sidecar's /metrics (0 when absent).
async fn series(admin: std::net::SocketAddr, series: &str) -> u64 {
    let text = http_client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dos_refusals_are_counted_each_and_reported_in_aggregate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: usize = 3;
    const FLOOD: usize = 200;
    let app = HoldingApp::start().await;
    let app_addr = app.addr;
    let started = std::time::Instant::now();
    let s = PolicedSidecar::start_with(&policy("open", "  authorization: {}\n"), |c| {
        c.inbound.app = app_addr.to_string().parse().unwrap();
        c.inbound.app_protocol = palisade::config::AppProtocol::Http1;
        c.limits.max_connections = LIMIT;
        c.limits.max_inflight = 1;
        c.limits.header_timeout = palisade::config::HumanDuration(std::time::Duration::from_millis(1500));
        c.limits.idle_timeout = palisade::config::HumanDuration(std::time::Duration::from_millis(500));
    })
    .await;
    let admin = s.sidecar.admin;
    let closed =
        |reason: &str| format!("palisade_connections_closed_total{{direction=\"outbound\",reason=\"{reason}\"}}");

    // Outbound: LIMIT connections that send nothing (each closed at the header timeout), and a
    // flood of connections past the limit while they are open (each closed at accept). Some of
    // the flood may come after the first ones closed: then they are held, and time out, too.
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap());
    }
    for _ in 0..FLOOD {
        let mut extra = tokio::net::TcpStream::connect(s.sidecar.outbound).await.unwrap();
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), extra.read(&mut buf)).await;
    }
    // Inbound: a keep-alive connection left idle after its answer; then load shedding, one
    // request held by the app and two more past maxInflight.
    let client = s.https("frontend");
    let mut idle = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nhost: orders.shop\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
    let hold = tokio::spawn({
        let (client, url) = (client.clone(), s.url("/hold"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    app.wait_held(1).await;
    for _ in 0..2 {
        assert_eq!(client.get(s.url("/over")).send().await.unwrap().status(), 503);
    }
    app.release(1);
    assert_eq!(hold.await.unwrap().unwrap(), 200);

    // Every refusal is counted, and the events carry exactly those counts, in at most one event
    // per listener and reason a second.
    let mut events = Vec::new();
    let mut seen = String::new();
    let added_up = eventually(async || {
        events = s.events();
        let counts = dos_counts(&events);
        let expected = [
            ("outbound/connection_limit", series(admin, &closed("connection_limit")).await),
            ("outbound/header_timeout", series(admin, &closed("header_timeout")).await),
            (
                "inbound/idle_timeout",
                series(admin, r#"palisade_connections_closed_total{direction="inbound",reason="idle_timeout"}"#).await,
            ),
            ("inbound/shed", series(admin, r#"palisade_requests_shed_total{direction="inbound"}"#).await),
        ];
        seen = format!("counters {expected:?}, events {counts:?}");
        expected.iter().all(|(key, n)| *n > 0 && counts.get(*key).map(|c| c.0) == Some(*n))
    })
    .await;
    assert!(added_up, "events that add up to the counters: {seen}");
    drop(held);
    let counts = dos_counts(&events);
    let seconds = started.elapsed().as_secs() as usize;
    for (key, (count, lines)) in &counts {
        assert!(*lines <= seconds + 2, "{key}: {lines} events for {count} refusals in {seconds} s");
    }
    let (refused, lines) = counts["outbound/connection_limit"];
    assert_eq!(refused + counts["outbound/header_timeout"].0, (FLOOD + LIMIT) as u64, "each connection counted once");
    assert!(lines < refused as usize || refused == 1, "{refused} refusals in {lines} events: aggregated");
    assert_eq!(counts["inbound/shed"].0, 2);
    let shed = events.iter().find(|e| e["firewall_rule"]["name"] == "shed").unwrap();
    assert_eq!((shed["class_uid"].as_u64(), shed["http_response"]["code"].as_u64()), (Some(4002), Some(503)));
    assert_eq!(shed["dst_endpoint"]["port"], s.sidecar.inbound.port());
    let at_accept = events.iter().find(|e| e["firewall_rule"]["name"] == "connection_limit").unwrap();
    assert_eq!((at_accept["class_uid"].as_u64(), at_accept["activity_id"].as_u64()), (Some(4001), Some(5)));
    assert_eq!(at_accept["src_endpoint"]["ip"], "127.0.0.1", "one source: named");
    for e in &events {
        assert_ocsf_base(e);
    }
    keep_for_the_schema_check("ocsf-sidecar-dos.jsonl", &events);
    s.shutdown();
}

/// Inbound handshake refusals say why in an operator's words: the verifier's reason, not
/// rustls's `Other(OtherError(...))` around a variant name, and plaintext on a STRICT port named
/// as such (the usual mistake while a caller is moved into the mesh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_say_why_in_words() {
    let s = PolicedSidecar::start(&policy("events", &format!("  mtls: STRICT\n{DENY_ADMIN_LIMIT_ONE}"))).await;
    let foreign = s.pki.workload("foreign", "spiffe://evil.local/ns/shop/sa/frontend");
    let mut no_id = palisade::identity::LeafSpec::workload(&id("shop", "frontend"));
    no_id.spiffe_id = None;
    let nameless = s.pki.issue("nameless", &no_id);
    assert!(handshake(s.sidecar.inbound, Some(&foreign)).await.is_err());
    assert!(handshake(s.sidecar.inbound, Some(&nameless)).await.is_err());
    let mut plain = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nhost: orders\r\n\r\n").await.unwrap();
    let refused = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").contains("inbound TLS handshake refused");
    let events = s.events_where("three refusals", 3, refused).await;
    let messages: Vec<&str> = events.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(
        messages.iter().all(|m| !m.contains("Other(") && !m.contains("OtherError") && !m.contains("connect error")),
        "{messages:#?}"
    );
    for reason in [
        "spiffe://evil.local/ns/shop/sa/frontend is not in an accepted trust domain",
        "certificate has no SPIFFE ID",
        "not TLS: plaintext on a port that requires mutual TLS",
    ] {
        assert!(messages.iter().any(|m| m.contains(reason)), "{reason}: {messages:#?}");
    }
    s.shutdown();
}

/// HTTP/2 requests refused as malformed before the proxy sees them (by h2: a stream reset, or
/// the connection closed with a GOAWAY; by pingora's HTTP/2 server: a bare 400 for a `host`
/// that is not the `:authority`) are counted and reported as the HTTP/1.1 parser's refusals
/// are: smuggling probes over h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_h2_refuses_as_malformed_are_counted_and_reported() {
    use tokio::io::AsyncWriteExt;
    let s = PolicedSidecar::start(&policy("events", DENY_ADMIN_LIMIT_ONE)).await;
    // GET http://orders.shop/ in HPACK, then one field HTTP/2 forbids (RFC 9113 §8.2).
    let mut head = vec![0x82, 0x86, 0x84, 0x01, 11];
    head.extend_from_slice(b"orders.shop");
    let mut open = Vec::new();
    // The last one after a SETTINGS that sets the HPACK table's size to 0: the answer's header
    // block then starts with a size update (RFC 7541 §4.2) before its status.
    let fields = [
        ("transfer-encoding", "chunked", &[][..]),
        ("connection", "close", &[]),
        ("X-Upper", "1", &[]),
        ("host", "admin.shop", &[]),
        ("host", "admin.shop", &[0, 1, 0, 0, 0, 0]),
    ];
    for (name, value, settings) in fields {
        let mut h2c = tokio::net::TcpStream::connect(s.sidecar.inbound).await.unwrap();
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend(h2_frame(0x4, 0, 0, settings));
        let mut fields = head.clone();
        fields.extend([0x00, name.len() as u8]);
        fields.extend_from_slice(name.as_bytes());
        fields.push(value.len() as u8);
        fields.extend_from_slice(value.as_bytes());
        bytes.extend(h2_frame(0x1, 0x4 | 0x1, 1, &fields));
        h2c.write_all(&bytes).await.unwrap();
        // Held open: h2 ends the stream (RST_STREAM) or the connection (GOAWAY) as it sees fit.
        open.push(h2c);
    }
    let invalid = "palisade_requests_total{code=\"400\",decision=\"invalid\",destination=\"\",direction=\"inbound\",method=\"OTHER\",source_principal=\"\"} 5";
    wait_for("five malformed HTTP/2 requests counted", async || s.metrics().await.contains(invalid)).await;
    let reported =
        s.events_where("their events", 5, |e| e.to_string().contains("HTTP/2 request refused as malformed")).await;
    assert!(reported.iter().all(|e| e["http_response"]["code"] == 400), "{reported:?}");
    drop(open);
    s.shutdown();
}
