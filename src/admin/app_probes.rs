//! `GET /app-health/<container>/<kind>`: the app's own probes, asked by the sidecar for the
//! kubelet. Injection points an app's HTTP and TCP probes of a captured port here, since the
//! kubelet's plaintext probe would meet the inbound port's STRICT mTLS.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::AppProbe;

/// The most of the app's answer read: its status line is all that counts.
const STATUS_LINE_BYTES: usize = 1024;

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
    let Some(path) = &probe.path else {
        return Ok(Verdict { status: StatusCode::OK, why: format!("{target} accepts connections") });
    };
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {target}\r\nuser-agent: kube-probe (palisade)\r\n");
    for header in &probe.headers {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(match status_of(&head) {
        Some(code @ 200..=399) => Verdict { status: StatusCode::OK, why: format!("the app answered {code}") },
        Some(code) => Verdict {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            why: format!("the app answered {code}"),
        },
        None => unavailable(format!("{target}: the answer is not HTTP")),
    })
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
    fn the_status_is_read_from_the_status_line() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
