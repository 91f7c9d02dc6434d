//! Certificate and trust-bundle rotation under steady load: no request fails, new handshakes
//! use the new certificate, and the old CA stops being trusted once it leaves the bundle.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::identity::{DevCa, LeafSpec};
use support::*;

fn write_atomically(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn serial_of(pem_path: &std::path::Path) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(pem_path).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

/// The serial of the certificate a server presents to a new connection.
async fn served_serial(addr: std::net::SocketAddr, client: &palisade::identity::WorkloadFiles) -> String {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(Some(client))));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("x").unwrap(), tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_certificates_and_bundles_under_load_fails_no_request() {
    let pair = Pair::start().await;
    let a_dir = pair.pki.path("a");
    let b_dir = pair.pki.path("b");
    let old_client = pair.pki.workload("old-client", &id("shop", "frontend"));
    let old_b_serial = serial_of(&b_dir.join("tls.crt"));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), pair.url("/load"));
        workers.push(tokio::spawn(async move {
            let client = http_client();
            let deadline = Instant::now() + Duration::from_secs(20);
            // Bounded in count and time.
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client.get(&url).header("host", B_AUTHORITY).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
                // Pacing, so the load stays a load and not a flood; nothing waits on it.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // Each step is taken once both sidecars have put the previous one in force.
    let dump = |admin: std::net::SocketAddr| async move {
        let url = format!("http://{admin}/config_dump");
        http_client().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
    };
    let generation = |admin| async move { dump(admin).await["identity"]["generation"].as_u64().unwrap() };
    let (a_admin, b_admin) = (pair.a.admin, pair.b.admin);
    // ...and traffic has crossed the pair in the new state.
    let ok_ref = ok.clone();
    let more_load = move || {
        let ok = ok_ref.clone();
        async move {
            let now = ok.load(Ordering::Relaxed);
            assert!(eventually(async || ok.load(Ordering::Relaxed) > now + 20).await, "the load runs on");
        }
    };
    let settle = |a_from: u64, b_from: u64| {
        let more_load = more_load.clone();
        async move {
            let moved =
                eventually(async || generation(a_admin).await > a_from && generation(b_admin).await > b_from).await;
            assert!(moved, "both sidecars reloaded");
            more_load().await;
        }
    };
    assert!(eventually(async || ok.load(Ordering::Relaxed) > 20).await, "the load runs");

    // 1. Both sides trust the old and the new CA.
    let new_ca = DevCa::generate(TD).unwrap();
    let both = format!("{}{}", pair.pki.ca.cert_pem(), new_ca.cert_pem());
    let (a0, b0) = (generation(a_admin).await, generation(b_admin).await);
    write_atomically(&a_dir.join("ca.crt"), &both);
    write_atomically(&b_dir.join("ca.crt"), &both);
    settle(a0, b0).await;
    assert!(eventually(async || dump(b_admin).await["identity"]["trustBundle"]["certificates"] == 2).await);
    // The files it was read from, named as the configuration names them.
    let files = &dump(b_admin).await["identity"]["source"]["files"];
    assert_eq!(files["trustBundle"], b_dir.join("ca.crt").to_str().unwrap(), "{files}");
    // 2. New certificates from the new CA (cert and key land as two separate renames).
    for (dir, sa) in [(&b_dir, "orders"), (&a_dir, "frontend")] {
        let (cert, key) = new_ca.issue(&LeafSpec::workload(&id("shop", sa))).unwrap();
        write_atomically(&dir.join("tls.crt"), &cert);
        write_atomically(&dir.join("tls.key"), &key);
        let serial = serial_of(&dir.join("tls.crt"));
        let admin = if sa == "orders" { b_admin } else { a_admin };
        let in_force = eventually(async || dump(admin).await["identity"]["serial"] == serial.as_str()).await;
        assert!(in_force, "{sa}'s new certificate is in force");
        more_load().await;
    }
    // 3. The old CA leaves the bundles.
    let (a0, b0) = (generation(a_admin).await, generation(b_admin).await);
    write_atomically(&a_dir.join("ca.crt"), new_ca.cert_pem());
    write_atomically(&b_dir.join("ca.crt"), new_ca.cert_pem());
    settle(a0, b0).await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 40, "the load ran before, during and after the rotation (waited for above): {ok} requests");

    // New handshakes get the new certificate...
    let new_client = pair.pki.issue("new-client", &LeafSpec::workload(&id("shop", "frontend")));
    let (cert, key) = new_ca.issue(&LeafSpec::workload(&id("shop", "frontend"))).unwrap();
    write_atomically(&new_client.cert, &cert);
    write_atomically(&new_client.key, &key);
    let new_b_serial = serial_of(&b_dir.join("tls.crt"));
    assert_ne!(new_b_serial, old_b_serial);
    assert_eq!(served_serial(pair.b.inbound, &new_client).await, new_b_serial);
    // ...the old CA's clients are refused...
    assert!(handshake(pair.b.inbound, Some(&old_client)).await.is_err());
    // ...and the admin API reports what is in use.
    let dump: serde_json::Value =
        http_client().get(format!("http://{}/config_dump", pair.b.admin)).send().await.unwrap().json().await.unwrap();
    assert_eq!(dump["identity"]["serial"], new_b_serial.as_str());
    // Traffic through the pair still flows on fresh connections.
    assert_eq!(http_client().get(pair.url("/after")).header("host", B_AUTHORITY).send().await.unwrap().status(), 200);
    pair.shutdown();
}

/// A certificate for shop/orders issued by `pki`'s CA as `spec` says, written over `files` as
/// a rotation writes it (the key first, each file replaced whole); its serial.
fn issue_into(pki: &Pki, files: &palisade::identity::WorkloadFiles, spec: &LeafSpec) -> String {
    let (cert, key) = pki.ca.issue(spec).unwrap();
    write_atomically(&files.key, &key);
    write_atomically(&files.cert, &cert);
    serial_of(&files.cert)
}

/// A sidecar for shop/orders whose security events go to a file.
struct Reporting {
    pki: Pki,
    files: palisade::identity::WorkloadFiles,
    _app: EchoApp,
    events: std::path::PathBuf,
    sidecar: palisade::app::Sidecar,
}

impl Reporting {
    async fn start() -> Reporting {
        let pki = Pki::new();
        let files = pki.workload("b", &id("shop", "orders"));
        let app = EchoApp::start().await;
        let events = pki.path("events.jsonl");
        let mut config = sidecar_config(&files, app.addr);
        config.telemetry.events.sink = palisade::config::EventSink::File(events.clone());
        let sidecar = start_sidecar(config);
        Reporting { pki, files, _app: app, events, sidecar }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_and_refused_reloads_are_security_events() {
    let Reporting { pki, files, _app, events, sidecar } = Reporting::start().await;
    let read = || read_jsonl(&events);
    // A certificate from a CA the bundle does not hold is refused, and says so.
    let stranger = DevCa::generate(TD).unwrap();
    let (cert, key) = stranger.issue(&LeafSpec::workload(&id("shop", "orders"))).unwrap();
    write_atomically(&files.cert, &cert);
    write_atomically(&files.key, &key);
    let has = |events: &[serde_json::Value], words: &str| {
        events.iter().find(|e| e["message"].as_str().unwrap_or("").contains(words)).cloned()
    };
    assert!(eventually(|| async { has(&read(), "certificate reload failed").is_some() }).await);
    let refused = has(&read(), "certificate reload failed").unwrap();
    assert_eq!(refused["class_uid"], 3004, "Entity Management");
    assert_eq!(refused["status_id"], 2, "failure");
    assert_eq!(refused["severity_id"], 4);
    // A good one is a rotation, with the new serial and expiry.
    let (cert, key) = pki.ca.issue(&LeafSpec::workload(&id("shop", "orders"))).unwrap();
    write_atomically(&files.cert, &cert);
    write_atomically(&files.key, &key);
    let serial = serial_of(&files.cert);
    assert!(
        eventually(|| async { read().iter().any(|e| e["message"].as_str().unwrap_or("").contains("rotated")) }).await
    );
    let rotated = read().into_iter().find(|e| e["message"].as_str().unwrap_or("").contains("rotated")).unwrap();
    assert_eq!(rotated["entity"]["type"], "Certificate");
    assert_eq!(rotated["entity"]["uid"], serial.as_str());
    assert!(rotated["entity"]["data"]["expiration_time"].as_i64().unwrap() > 0);
    assert_eq!(rotated["actor"]["user"]["uid"], id("shop", "orders").as_str());
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_for_another_workload_is_refused_and_the_current_one_kept() {
    // A cert-manager Certificate edited to another account: the same pair is a configuration
    // error at start, so at a reload it is refused, and the sidecar stays who it was.
    let Reporting { pki, files, _app, events, sidecar } = Reporting::start().await;
    let before = serial_of(&files.cert);
    issue_into(&pki, &files, &LeafSpec::workload(&id("prod", "payments")));
    let message = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").to_string();
    let refused = eventually(|| async {
        read_jsonl(&events).iter().any(|e| message(e).contains("reload failed") && message(e).contains("started as"))
    })
    .await;
    assert!(refused, "{:?}", read_jsonl(&events));
    let url = format!("http://{}/config_dump", sidecar.admin);
    let dump: serde_json::Value = http_client().get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(dump["identity"]["spiffeId"], id("shop", "orders").as_str());
    assert_eq!(dump["identity"]["serial"], before.as_str());
    assert!(!read_jsonl(&events).iter().any(|e| message(e).contains("rotated")), "{:?}", read_jsonl(&events));
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_issued_ahead_of_this_clock_is_taken_once_it_is_valid() {
    // An issuer whose clock runs a few seconds ahead: refused once (not valid yet), then taken
    // when it is, without another change to the files; not left on disk while the old one expires.
    let Reporting { pki, files, _app, events, sidecar } = Reporting::start().await;
    let mut spec = LeafSpec::workload(&id("shop", "orders"));
    spec.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let serial = issue_into(&pki, &files, &spec);
    let message = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").to_string();
    let refused =
        eventually(|| async { read_jsonl(&events).iter().any(|e| message(e).contains("reload failed")) }).await;
    assert!(refused, "refused while not valid yet: {:?}", read_jsonl(&events));
    let taken = eventually(|| async {
        read_jsonl(&events).iter().any(|e| message(e).contains("rotated") && e["entity"]["uid"] == serial.as_str())
    })
    .await;
    assert!(taken, "taken once valid: {:?}", read_jsonl(&events));

    // Tried again quietly in between: one refusal reported, not one per look.
    let refusals = read_jsonl(&events).iter().filter(|e| message(e).contains("reload failed")).count();
    assert_eq!(refusals, 1);
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_certificate_that_expires_unreplaced_is_reported_once_and_unready() {
    // The files' writer stopped renewing: the certificate in force runs out. /ready says so, and
    // so does one security event (and the log), not one per look; a new certificate ends it.
    let Reporting { pki, files, _app, events, sidecar } = Reporting::start().await;
    let ready = || async {
        let url = format!("http://{}/ready", sidecar.admin);
        http_client().get(url).send().await.unwrap().status().as_u16()
    };
    assert_eq!(ready().await, 200);
    let mut spec = LeafSpec::workload(&id("shop", "orders"));
    // Long enough to be taken on a busy machine before it runs out.
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let short = issue_into(&pki, &files, &spec);
    let message = |e: &serde_json::Value| e["message"].as_str().unwrap_or("").to_string();
    let expired_events =
        || read_jsonl(&events).into_iter().filter(|e| message(e).contains("certificate expired")).collect::<Vec<_>>();
    assert!(eventually(|| async { !expired_events().is_empty() }).await, "{:?}", read_jsonl(&events));
    let expired = expired_events().remove(0);
    assert_eq!(expired["class_uid"], 3004, "Entity Management");
    assert_eq!(expired["status_id"], 2, "failure");
    assert_eq!(expired["entity"]["uid"], short.as_str());
    assert_eq!(ready().await, 503);

    // A renewed certificate is taken and ends it; the expiry was reported once in between.
    let renewed = issue_into(&pki, &files, &LeafSpec::workload(&id("shop", "orders")));
    let taken = eventually(|| async {
        read_jsonl(&events).iter().any(|e| message(e).contains("rotated") && e["entity"]["uid"] == renewed.as_str())
    })
    .await;
    assert!(taken);
    assert_eq!(ready().await, 200);
    assert_eq!(expired_events().len(), 1, "{:?}", expired_events());
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_file_keeps_the_current_one() {
    let pair = Pair::start().await;
    let b_dir = pair.pki.path("b");
    let serial = serial_of(&b_dir.join("tls.crt"));
    let dump = || async {
        let url = format!("http://{}/config_dump", pair.b.admin);
        http_client().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
    };
    write_atomically(&b_dir.join("tls.crt"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    // The refusal is counted where an operator sees it: the watcher looked and said no.
    let refused = eventually(async || {
        let metrics = http_client().get(format!("http://{}/metrics", pair.b.admin)).send().await.unwrap();
        metrics.text().await.unwrap().contains("palisade_certificate_reloads_total{result=\"rejected\"} 1")
    })
    .await;
    assert!(refused, "the broken file was looked at and refused");
    assert_eq!(dump().await["identity"]["serial"], serial.as_str());
    let client = pair.pki.workload("client", &id("shop", "frontend"));
    assert_eq!(served_serial(pair.b.inbound, &client).await, serial, "the last good certificate stays in use");
    assert_eq!(http_client().get(pair.url("/")).header("host", B_AUTHORITY).send().await.unwrap().status(), 200);
    pair.shutdown();
}
