//! `GET /app-health/<container>/<kind>`: the app's own probes, asked by the sidecar for the
//! kubelet. Injection points an app's HTTP, TCP and gRPC probes of a captured port here, since
//! the kubelet's plaintext probe would meet the inbound port's STRICT mTLS (an HTTP or gRPC
//! probe), or be accepted by the sidecar whether the app listens or not (a TCP probe).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::AppProbe;

/// The most of the app's answer read: its final status line is all that counts, after any
/// informational (1xx) heads.
const STATUS_LINE_BYTES: usize = 8192;

/// What the kubelet is told: 200 while the app answers 200-399 (or accepts the connection),
/// the app's own 4xx/5xx status, else 503 with why.
pub struct Verdict {
    pub status: StatusCode,
    pub why: String,
}

/// Asks the app at `address` (the pod address the kubelet reached; the sidecar's own traffic is
/// not captured, so this reaches the app, as the kubelet's probe would without a sidecar).
pub async fn ask(probe: &AppProbe, address: IpAddr) -> Verdict {
    let target = SocketAddr::new(address, probe.port);
    let within = Duration::from_secs(u64::from(probe.timeout_seconds));
    match tokio::time::timeout(within, exchange(probe, target)).await {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(e)) => unavailable(format!("{target}: {e}")),
        Err(_) => unavailable(format!("{target}: no answer within {}s", probe.timeout_seconds)),
    }
}

fn unavailable(why: String) -> Verdict {
    Verdict { status: StatusCode::SERVICE_UNAVAILABLE, why }
}

async fn exchange(probe: &AppProbe, target: SocketAddr) -> std::io::Result<Verdict> {
    let mut stream = TcpStream::connect(target).await?;
    if let Some(grpc) = &probe.grpc {
        return grpc_check(stream, target, &grpc.service).await;
    }
    let Some(path) = &probe.path else {
        return Ok(Verdict { status: StatusCode::OK, why: format!("{target} accepts connections") });
    };
    // As the kubelet does: a probe's own Host or User-Agent replaces the default.
    let given = |name: &str| probe.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !given("host") {
        request.push_str(&format!("host: {target}\r\n"));
    }
    if !given("user-agent") {
        request.push_str("user-agent: kube-probe (palisade)\r\n");
    }
    for header in &probe.headers {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut read = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    let status = loop {
        match final_status(&read) {
            Ok(status) => break status,
            Err(()) if read.len() >= STATUS_LINE_BYTES => break None,
            Err(()) => {}
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break final_status(&read).ok().flatten();
        }
        read.extend_from_slice(&buf[..n]);
    };
    Ok(match status {
        Some(code @ 200..=399) => Verdict { status: StatusCode::OK, why: format!("the app answered {code}") },
        Some(code) => Verdict {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            why: format!("the app answered {code}"),
        },
        None => unavailable(format!("{target}: the answer is not HTTP")),
    })
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` 1 is `SERVING`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// The most of the app's answer to a health check read (one small message is expected).
const GRPC_ANSWER_BYTES: usize = 16 * 1024;

/// The kubelet's gRPC probe: `Check` of `service` over HTTP/2 without TLS; healthy only when the
/// app answers `SERVING` (a missing health service, an error status, or any other answer is
/// not, as for the kubelet).
async fn grpc_check(stream: TcpStream, target: SocketAddr, service: &str) -> std::io::Result<Verdict> {
    let (client, connection) = h2::client::handshake(stream).await.map_err(std::io::Error::other)?;
    // Ends once the request below is answered and its handles are gone.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(std::io::Error::other)?;
    let request = http::Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe (palisade)")
        .body(())
        .map_err(std::io::Error::other)?;
    let (answer, mut body) = client.send_request(request, false).map_err(std::io::Error::other)?;
    body.send_data(grpc_message(&HealthCheckRequest { service: service.to_string() }), true)
        .map_err(std::io::Error::other)?;
    let answer = answer.await.map_err(std::io::Error::other)?;
    let not_serving = |why: String| Ok(unavailable(format!("{target}: {why}")));
    if answer.status() != StatusCode::OK {
        return not_serving(format!("the app answered HTTP {} to the gRPC health check", answer.status().as_u16()));
    }
    // A trailers-only answer carries its status in the head.
    let head_status = grpc_status(answer.headers());
    let mut body = answer.into_body();
    let mut message = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(std::io::Error::other)?;
        let _ = body.flow_control().release_capacity(data.len());
        if message.len() + data.len() > GRPC_ANSWER_BYTES {
            return not_serving(format!("the health check's answer is over {GRPC_ANSWER_BYTES} bytes"));
        }
        message.extend_from_slice(&data);
    }
    let trailers = body.trailers().await.map_err(std::io::Error::other)?;
    match head_status.or_else(|| trailers.as_ref().and_then(grpc_status)) {
        Some((0, _)) => {}
        Some((code, why)) => return not_serving(format!("the health check failed with grpc-status {code}{why}")),
        None => return not_serving("the health check's answer has no grpc-status".into()),
    }
    let status = match message.get(5..).filter(|_| message[0] == 0) {
        Some(bytes) => <HealthCheckResponse as prost::Message>::decode(bytes).map(|r| r.status).ok(),
        None => None,
    };
    Ok(match status {
        Some(1) => Verdict { status: StatusCode::OK, why: format!("{target}: the app's health service says SERVING") },
        Some(other) => unavailable(format!("{target}: the app's health service says {}", serving_status(other))),
        None => unavailable(format!("{target}: the health check's answer is not a HealthCheckResponse")),
    })
}

/// A gRPC message as sent on the wire: not compressed, its length, the message.
fn grpc_message(message: &impl prost::Message) -> bytes::Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed.into()
}

/// `grpc-status` (read as the proxy reads it) and `grpc-message` (as `: message`), when there
/// is a status.
fn grpc_status(headers: &http::HeaderMap) -> Option<(u16, String)> {
    let code = crate::policy::grpc_status(headers)?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).filter(|m| !m.is_empty());
    Some((code, message.map(|m| format!(": {m}")).unwrap_or_default()))
}

fn serving_status(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "a status it does not know",
    }
}

/// The status of the first head in `read` that is not informational: `Ok(Some)` found,
/// `Ok(None)` not HTTP, `Err` more is needed. A 103 Early Hints head comes before the answer, and
/// told to the kubelet as the answer it would wait on for good.
fn final_status(read: &[u8]) -> Result<Option<u16>, ()> {
    let mut rest = read;
    loop {
        let Some(line_end) = rest.iter().position(|&b| b == b'\n') else { return Err(()) };
        match status_of(&rest[..line_end]) {
            None => return Ok(None),
            Some(code) if code >= 200 => return Ok(Some(code)),
            Some(_) => {
                // Skip the informational head: up to its empty line.
                let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else { return Err(()) };
                rest = &rest[end + 4..];
            }
        }
    }
}

/// `HTTP/1.x NNN ...` → NNN.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?.get(2..)?;
    let code = rest.get(..3)?;
    if rest.get(3).is_some_and(|b| !matches!(b, b' ' | b'\r')) || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn informational_heads_are_passed_over_for_the_final_status() {
        assert_eq!(
            final_status(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n"),
            Ok(Some(204))
        );
        assert_eq!(final_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 x\r\n"), Ok(Some(500)));
        assert_eq!(final_status(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n"), Err(()), "more is needed");
        assert_eq!(final_status(b"HTTP/1.1 200 OK"), Err(()));
        assert_eq!(final_status(b"SSH-2.0-x\r\n"), Ok(None));
    }

    #[test]
    fn the_status_is_read_from_the_status_line() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
