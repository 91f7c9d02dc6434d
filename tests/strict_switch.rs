//! A workload turning from PERMISSIVE to STRICT: plaintext connections let in before are closed
//! once the request they carry is answered, while mutual-TLS callers see no failure at all.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Reads one response of known length; its status line and body.
async fn read_answer(stream: &mut TcpStream) -> (String, String, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the head arrives whole: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, head, String::from_utf8(body).unwrap())
}

/// Whether the peer closed the connection (a read returns the end of the stream).
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(patience(), stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_connections_are_closed_after_their_request_when_the_workload_becomes_strict() {
    let app = HoldingApp::start().await;
    let open = policy("mode", "  mtls: PERMISSIVE\n  authorization: {default: ALLOW}\n");
    let s =
        Arc::new(PolicedSidecar::start_with(&open, |c| c.inbound.app = palisade::config::ListenAddr(app.addr)).await);
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: orders.shop\r\n\r\n");

    // An idle keep-alive connection and one with a request in flight, both plaintext.
    let mut idle = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    idle.write_all(request("/first").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut idle).await.2, "ok");
    let mut busy = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    busy.write_all(request("/hold").as_bytes()).await.unwrap();
    app.wait_held(1).await;

    // Mutual-TLS callers keep calling through the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (s, stop, ok, failed) = (s.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match s.send("frontend", "GET", "/mtls", &[]).await.status {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    assert!(eventually(|| async { ok.load(Ordering::Relaxed) > 0 }).await, "mTLS load runs");
    let before_switch = ok.load(Ordering::Relaxed);

    write_policy(&s.policy_file, &policy("mode", "  mtls: STRICT\n  authorization: {default: ALLOW}\n"));
    let strict = eventually(|| async { s.config_dump().await["policy"]["mtls"] == "STRICT" }).await;
    assert!(strict, "the STRICT policy is in force");

    // The idle connection is closed at once; the busy one gets its answer, then is closed.
    assert!(closed_by_peer(&mut idle).await, "the idle plaintext connection is closed");
    app.release(1);
    let (status, head, body) = read_answer(&mut busy).await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "held"), "{head}");
    assert!(closed_by_peer(&mut busy).await, "the busy plaintext connection is closed after its answer");

    // New plaintext connections are refused at the handshake, as any STRICT port does: what
    // comes back (a TLS alert, or nothing) is no HTTP answer.
    let mut fresh = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    let _ = fresh.write_all(request("/late").as_bytes()).await;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(patience(), fresh.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "the sidecar closes the connection");
    assert!(!answer.starts_with(b"HTTP/"), "a new plaintext connection gets no HTTP answer: {answer:?}");

    // Calls over mutual TLS went on through the switch, none failed.
    let after = ok.load(Ordering::Relaxed);
    assert!(eventually(|| async { ok.load(Ordering::Relaxed) > after + 20 }).await);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(ok.load(Ordering::Relaxed) > before_switch);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no mTLS request failed during the switch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_level_mode_lets_plaintext_in_on_one_port_of_a_strict_workload_until_it_is_strict_too() {
    let s = PolicedSidecar::start(&policy("mode", "  mtls: STRICT\n  authorization: {default: ALLOW}\n")).await;
    // The port the app listens on is the one a caller addresses here (no redirect).
    let port = s.app.addr.port();
    let request = "GET /plain HTTP/1.1\r\nhost: orders.shop\r\n\r\n";
    let refused = |mut tcp: TcpStream| async move {
        let _ = tcp.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let ended = tokio::time::timeout(patience(), tcp.read_to_end(&mut answer)).await;
        ended.is_ok() && !answer.starts_with(b"HTTP/")
    };
    assert!(refused(TcpStream::connect(s.sidecar.inbound).await.unwrap()).await, "STRICT: no plaintext");

    let open_port = format!(
        "  mtls: STRICT\n  portLevelMtls: {{{port}: {{mode: PERMISSIVE}}}}\n  authorization: {{default: ALLOW}}\n"
    );
    write_policy(&s.policy_file, &policy("mode", &open_port));
    let in_force =
        eventually(|| async { s.config_dump().await["policy"]["portLevelMtls"][port.to_string()] == "PERMISSIVE" });
    assert!(in_force.await, "the port-level mode is in force");
    let mut kept = TcpStream::connect(s.sidecar.inbound).await.unwrap();
    kept.write_all(request.as_bytes()).await.unwrap();
    let (status, head, body) = read_answer(&mut kept).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
    assert!(body.contains("/plain"), "the app answered it: {body}");
    // An update that leaves the port PERMISSIVE (the workload is STRICT throughout) keeps it.
    let version = s.config_dump().await["policy"]["version"].clone();
    let more = format!(
        "  mtls: STRICT\n  portLevelMtls: {{{port}: {{mode: PERMISSIVE}}}}\n  authorization:\n    default: ALLOW\n    rules:\n      - {{name: no-batch, action: DENY, from: {{namespaces: [batch]}}}}\n"
    );
    write_policy(&s.policy_file, &policy("mode", &more));
    assert!(eventually(|| async { s.config_dump().await["policy"]["version"] != version }).await, "updated");
    kept.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut kept).await.0, "HTTP/1.1 200 OK", "kept alive");

    // Another port PERMISSIVE instead: this one is STRICT again, its plaintext connection closed.
    let other = format!(
        "  mtls: STRICT\n  portLevelMtls: {{{}: {{mode: PERMISSIVE}}}}\n  authorization: {{default: ALLOW}}\n",
        port ^ 1
    );
    write_policy(&s.policy_file, &policy("mode", &other));
    assert!(closed_by_peer(&mut kept).await, "the kept-alive plaintext connection is closed");
    assert!(refused(TcpStream::connect(s.sidecar.inbound).await.unwrap()).await, "and no new one comes in");
    s.shutdown();
}
