//! Policy files change under load: every valid version is swapped in between requests, a broken
//! file leaves the last good policy enforcing.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn version_with(extra_rule: usize) -> String {
    let mut spec = String::from(
        "  authorization:\n    default: DENY\n    rules:\n      - {name: reads, action: ALLOW, to: {methods: [GET]}}\n      - {name: no-admin, action: DENY, to: {paths: [\"/admin\"]}}\n",
    );
    for i in 0..extra_rule {
        spec.push_str(&format!("      - {{name: extra-{i}, action: DENY, to: {{paths: [\"/extra-{i}\"]}}}}\n"));
    }
    policy("reloading", &spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_a_broken_file_changes_nothing() {
    let s = Arc::new(PolicedSidecar::start(&version_with(0)).await);
    let first_version = s.config_dump().await["policy"]["version"].as_str().unwrap().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (s, stop, served) = (s.clone(), stop.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(20);
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match s.send("frontend", "GET", "/orders", &[]).await.status {
                    200 => {
                        ok += 1;
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => bad.push(other),
                }
            }
            (ok, bad)
        }));
    }
    // Each version is swapped in (its new rule enforced) before the next one is written, and
    // the load has served more requests around each swap, however slow the machine.
    let load_moved = async |at_least: usize| {
        let moved = eventually(async || served.load(Ordering::Relaxed) >= at_least).await;
        assert!(moved, "the load served {at_least} requests");
    };
    load_moved(20).await;
    for v in 1..=5 {
        let before = served.load(Ordering::Relaxed);
        write_policy(&s.policy_file, &version_with(v));
        let path = format!("/extra-{}", v - 1);
        let in_force = eventually(async || s.send("admin", "GET", &path, &[]).await.status == 403).await;
        assert!(in_force, "version {v} is in force");
        load_moved(before + 10).await;
    }
    let metrics = s.metrics().await;
    assert!(metrics.contains("palisade_policy_updates_total{result=\"applied\"} 6\n"), "six versions: {metrics}");
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, Vec::new());
    for w in workers {
        let (o, b) = w.await.unwrap();
        ok += o;
        bad.extend(b);
    }
    assert!(bad.is_empty(), "{} of {} requests failed during reloads: {:?}", bad.len(), ok + bad.len(), bad);
    assert!(ok >= 70, "the load ran: {ok}");

    // A broken file: rejected, reported, and the policy in force stays.
    let before = s.config_dump().await["policy"]["version"].as_str().unwrap().to_string();
    assert_ne!(before, first_version);
    write_policy(&s.policy_file, &policy("reloading", "  authorization:\n    default: MAYBE\n"));
    let rejected =
        eventually(|| async { s.metrics().await.contains("palisade_policy_updates_total{result=\"rejected\"} 1") })
            .await;
    assert!(rejected, "{}", s.metrics().await);
    assert_eq!(s.config_dump().await["policy"]["version"], before.as_str());
    assert_eq!(s.send("frontend", "GET", "/orders", &[]).await.status, 200);
    assert_eq!(s.send("frontend", "GET", "/admin", &[]).await.status, 403, "the old DENY still holds");

    // Fixing the file takes effect: now GET is denied too.
    write_policy(&s.policy_file, &policy("reloading", "  authorization:\n    default: DENY\n"));
    let denied = eventually(|| async { s.send("frontend", "GET", "/orders", &[]).await.status == 403 }).await;
    assert!(denied);
    match Arc::try_unwrap(s) {
        Ok(s) => s.shutdown(),
        Err(_) => panic!("workers still hold the sidecar"),
    }
}

/// Kubernetes updates a mounted ConfigMap by pointing the `..data` symlink at a new directory;
/// the file the sidecar was given is a symlink through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let mount = tempfile::tempdir().unwrap();
    let publish = |version: &str, documents: &str| {
        let dir = mount.path().join(format!("..{version}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("policy.yaml"), documents).unwrap();
        let tmp = mount.path().join("..data_tmp");
        symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, mount.path().join("..data")).unwrap();
    };
    publish("v1", &policy("cm", "  authorization:\n    default: ALLOW\n"));
    symlink("..data/policy.yaml", mount.path().join("policy.yaml")).unwrap();

    let policy_path = mount.path().join("policy.yaml");
    let s = PolicedSidecar::start_with(&policy("unused", "  mtls: PERMISSIVE\n"), |c| {
        c.policy.files = vec![policy_path.clone()]
    })
    .await;
    assert_eq!(s.send("plain", "GET", "/x", &[]).await.status, 200);
    publish("v2", &policy("cm", "  authorization:\n    default: DENY\n"));
    let denied = eventually(|| async { s.send("plain", "GET", "/x", &[]).await.status == 403 }).await;
    assert!(denied, "the new ConfigMap version is in force");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_a_rule_or_limit_removed_by_an_update_leave_metrics_and_the_rest_keep_their_counts() {
    let limited =
        "  rateLimits:\n    - {name: temporary, match: {paths: [\"/extra-0\"]}, key: global, rate: 100, per: 1s}\n";
    let s = PolicedSidecar::start(&format!("{}{limited}", version_with(1))).await;
    assert_eq!(s.send("admin", "GET", "/extra-0", &[]).await.status, 403);
    assert_eq!(s.send("admin", "GET", "/admin", &[]).await.status, 403);
    let metrics = s.metrics().await;
    let rule =
        r#"palisade_authz_decisions_total{decision="deny",mode="ENFORCE",policy="shop/reloading",rule="extra-0"} 1"#;
    let kept =
        r#"palisade_authz_decisions_total{decision="deny",mode="ENFORCE",policy="shop/reloading",rule="no-admin"} 1"#;
    let limit = r#"palisade_ratelimit_decisions_total{limit="temporary",policy="shop/reloading",result="allowed"}"#;
    assert!(metrics.contains(rule) && metrics.contains(kept) && metrics.contains(limit), "{metrics}");

    // The update drops the rule and the limit: their series go, the others keep their counts.
    write_policy(&s.policy_file, &version_with(0));
    let gone = eventually(async || {
        let metrics = s.metrics().await;
        metrics.contains("palisade_policy_updates_total{result=\"applied\"} 2\n")
            && !metrics.contains("rule=\"extra-0\"")
            && !metrics.contains("limit=\"temporary\"")
    })
    .await;
    let metrics = s.metrics().await;
    assert!(gone, "{metrics}");
    assert!(metrics.contains(kept), "{metrics}");
    s.shutdown();
}
