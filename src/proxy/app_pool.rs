//! The inbound side's keep-alive HTTP/1.1 connections to the local app, and the requests that
//! cross one of them directly: those without a body, and those with a small body of declared
//! length.
//!
//! Most requests between sidecars carry no body (reads, deletes, health checks) or a small one
//! (an API call's JSON). pingora's proxy sends each one through a pair of task channels and a
//! connection pool that re-checks the socket's peer (`getpeername`) on every reuse and spawns an
//! idle-watch task on every release; for a request that is a header and a few bytes each way
//! that machinery is most of what the sidecar does. Here such a request is written to a pooled
//! connection and its answer copied back, with the same request rewriting as pingora's proxy
//! would do. A small body is read whole first (it is one DATA frame or a few), so the request is
//! written at once and, when it is safe to repeat, can be sent again. A larger or unannounced
//! body is passed on as it arrives, each wait for it held to `limits.bodyTimeout` (pingora's own
//! HTTP/2 body reads have no timer, so a caller could otherwise hold a stream and an app
//! connection open with a body that never ends). Apps spoken to over HTTP/2 (gRPC) still go
//! through pingora.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderValue, Version};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession as AppSession;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;

use super::respond::ErrorKind;
use crate::tls::connect_tcp;

/// How long the app may take to accept a connection (pooled, an upgrade's own, or pingora's).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A new connection to the app at `addr`.
pub(super) async fn connect(addr: SocketAddr) -> pingora::Result<tokio::net::TcpStream> {
    connect_tcp(addr, CONNECT_TIMEOUT).await.map_err(|e| super::connect_failure(&e))
}
/// How long an idle connection is kept when the app does not say (`Keep-Alive: timeout=N`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept; more than this many concurrent requests to one app is rare, and the
/// extra connections are closed instead of held.
const MAX_IDLE: usize = 128;
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// The largest request body read whole before the request is sent. Held in memory per request,
/// and small enough that writing it never waits on an app that answers before reading it.
const HELD_BODY_MAX: u64 = 64 * 1024;

/// Hop-by-hop headers beyond the connection-specific ones that never reach the app: together
/// they are the list pingora's proxy strips.
const HOP_BY_HOP: [HeaderName; 4] =
    [header::PROXY_AUTHENTICATE, header::PROXY_AUTHORIZATION, header::TE, header::TRAILER];

/// How [`AppPool::forward`] takes a request's body (see [`AppPool::serves`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    Held,
    Streamed,
}

/// A request body as [`AppPool::forward`] sends it.
pub enum Body<'a> {
    /// Read whole before the request is sent ([`held_body`]); empty when there is none.
    Held(Bytes),
    /// Read from the caller as the app takes it: each wait for the caller held to the body
    /// timeout, each piece passed to `each` before it is sent, with whether it ends the body
    /// (the inbound's maxBodyBytes count, and a gRPC call's messages read as they stream: what
    /// it returns is what is sent).
    Streamed {
        /// Read already (and counted): sent before the rest.
        first: Bytes,
        each: &'a mut (dyn FnMut(&Session, Bytes, bool) -> pingora::Result<Bytes> + Send),
        /// Some of it was read: the request can no longer be sent again.
        started: bool,
    },
}

impl Body<'_> {
    fn partly_read(&self) -> bool {
        matches!(self, Body::Streamed { started: true, .. })
    }
}

struct Idle {
    stream: Stream,
    until: Instant,
}

type IdleList = Arc<Mutex<Vec<Idle>>>;

pub struct AppPool {
    address: SocketAddr,
    idle: IdleList,
    sweeping: OnceLock<()>,
    read_timeout: Option<Duration>,
}

impl AppPool {
    pub fn new(address: SocketAddr, read_timeout: Option<Duration>) -> Self {
        AppPool { address, idle: IdleList::default(), sweeping: OnceLock::new(), read_timeout }
    }

    /// Whether [`Self::forward`] serves this request, and how it takes the body: an HTTP/2
    /// request (every request from a peer sidecar) for an app spoken to over HTTP/1.1. Its body
    /// is held when it has none or declares at most [`HELD_BODY_MAX`] bytes, else streamed.
    /// HTTP/1.1 callers keep pingora's handling of their connection-level headers.
    ///
    /// `Expect: 100-continue` changes nothing for the caller (an interim answer cannot go to an
    /// HTTP/2 caller: pingora drops it too, so the caller sends its body when it tires of
    /// waiting). A streamed body's app still sees the header and may refuse before the body;
    /// a held body is already here, and an app that refused it without reading it would leave
    /// it on a connection that goes back to the pool, so the header is not passed on.
    pub fn serves(session: &mut Session, app_h2: bool) -> Option<BodyMode> {
        if app_h2 || !session.is_http2() {
            return None;
        }
        let small_body = declared_length(session.req_header()).is_some_and(|n| n <= HELD_BODY_MAX);
        let mode = match small_body || session.is_body_empty() {
            true => BodyMode::Held,
            false => BodyMode::Streamed,
        };
        if mode == BodyMode::Held && session.req_header().headers.contains_key(header::EXPECT) {
            session.req_header_mut().remove_header(&header::EXPECT);
        }
        Some(mode)
    }

    /// Sends `request` (see [`app_request`]) and the request's body to the app and writes its
    /// answer to the caller, both held to the caller's `timeouts`. A reused connection the app had closed costs no idempotent request
    /// whose body is still whole: it is sent once more on a new connection.
    pub async fn forward(
        &self,
        session: &mut Session,
        mut body: Body<'_>,
        timeouts: &super::CallerTimeouts,
        request: impl Fn(&Session) -> pingora::Result<http::request::Parts>,
    ) -> pingora::Result<()> {
        let mut retried = false;
        loop {
            // The retry goes on a new connection: the next pooled one may be as stale as the
            // first, when the app closed several at once.
            let (stream, reused) = self.take(!retried).await?;
            let mut app = AppSession::new(stream);
            app.read_timeout = self.read_timeout;
            let mut request = request(session)?;
            if matches!(body, Body::Streamed { .. }) && !request.headers.contains_key(header::CONTENT_LENGTH) {
                request.headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            match exchange(session, &mut app, RequestHeader::from(request), &mut body, timeouts).await {
                Ok(request_done) => {
                    if request_done && !framed_twice(&app) {
                        app.respect_keepalive();
                        let idle_for = keep_alive_timeout(&app).unwrap_or(IDLE_TIMEOUT);
                        if let Some(stream) = app.reuse().await {
                            self.put(stream, idle_for);
                        }
                    } else if !request_done {
                        // An app that answered before it had the whole body leaves the
                        // connection in the middle of a request.
                        drop(app);
                        drain_answered_body(session).await;
                    }
                    return Ok(());
                }
                Err(mut e) => {
                    let app_side = e.esource() == &pingora::ErrorSource::Upstream;
                    // The app may have acted on a request it read before closing; only one that
                    // is safe to repeat (RFC 9110 §9.2.2) is sent again, and only while the
                    // body is still whole.
                    let idempotent = session.req_header().method.is_idempotent();
                    if retried
                        || body.partly_read()
                        || !(app_side && idempotent && super::may_send_again(&mut e, reused, session))
                    {
                        return Err(e);
                    }
                    retried = true;
                }
            }
        }
    }

    /// The most recently used idle connection that is still open (when `pooled`), else a new
    /// one; true when reused.
    async fn take(&self, pooled: bool) -> pingora::Result<(Stream, bool)> {
        let now = Instant::now();
        if pooled {
            loop {
                // The lock is released before a stale connection is checked or closed.
                let next = lock(&self.idle).pop();
                let Some(mut idle) = next else { break };
                if idle.until > now && still_open(&mut idle.stream) {
                    return Ok((idle.stream, true));
                }
            }
        }
        let tcp = connect(self.address).await?;
        Ok((Box::new(L4Stream::from(tcp)), false))
    }

    fn put(&self, stream: Stream, idle_for: Duration) {
        if idle_for.is_zero() {
            return;
        }
        self.sweeping.get_or_init(|| {
            tokio::spawn(sweep(Arc::downgrade(&self.idle)));
        });
        let refused = {
            let mut idle = lock(&self.idle);
            if idle.len() < MAX_IDLE {
                idle.push(Idle { stream, until: Instant::now() + idle_for });
                None
            } else {
                Some(stream)
            }
        };
        // Closing happens outside the lock.
        drop(refused);
    }
}

fn lock(idle: &IdleList) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    idle.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every few seconds, closes the idle connections that expired or that the app closed, so a
/// burst followed by silence does not leave them open (or half-closed) until the next request.
/// Ends with the pool.
async fn sweep(idle: Weak<Mutex<Vec<Idle>>>) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        let now = Instant::now();
        let closed: Vec<Idle> = lock(&idle).extract_if(.., |c| c.until <= now || !still_open(&mut c.stream)).collect();
        // Closing happens outside the lock.
        drop(closed);
    }
}

/// A pooled connection is open and idle while a read would block: the app closing it reads as
/// the end of the stream, and bytes it sent unasked mean the connection is out of step.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // Unconstrained: tokio's cooperative budget could otherwise answer "not yet" for a read
    // that is ready.
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    read.poll(&mut Context::from_waker(Waker::noop())).is_pending()
}

/// The request's one `Content-Length`, when it has exactly one that is a number.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    let mut lengths = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next()?;
    if lengths.next().is_some() {
        return None;
    }
    length.to_str().ok()?.parse().ok()
}

/// The whole request body of a request [`AppPool::serves`] (empty when there is none), each
/// chunk first passed to `count` (the inbound's maxBodyBytes count). One DATA frame, the usual
/// case, is kept as it came; more are joined.
pub async fn held_body(
    session: &mut Session,
    timeout: &super::CallerTimeouts,
    mut count: impl FnMut(usize) -> pingora::Result<()>,
) -> pingora::Result<Bytes> {
    let mut body = Joined::default();
    let since = tokio::time::Instant::now();
    while let Some(chunk) = timeout.read(session, since).await? {
        count(chunk.len())?;
        // HTTP/2 already holds a body to its declared length; this holds it to the held size
        // even so.
        if !body.push(chunk, HELD_BODY_MAX as usize) {
            return Err(ErrorKind::InvalidRequest.fail("body longer than its Content-Length"));
        }
    }
    Ok(body.bytes())
}

/// How much of a body of a type no WAF parses is read at most to tell whether it is JSON.
const SNIFF_WINDOW: usize = 4096;

/// A request body as [`read_for_waf`] leaves it.
pub enum ForWaf {
    /// All of it, within the plan's limit: to be inspected, then sent as one piece.
    Whole(Bytes),
    /// Not the WAF's: its first bytes are not JSON and no WAF parses its type. What was read
    /// goes first, the rest as it comes.
    NotRead(Bytes),
    /// Longer than the limit and passed on uninspected (`bodyOverLimit: PASS`, or DETECT), in
    /// the same way.
    Uninspected(Bytes),
    /// Longer than the limit under a WAF that blocks with `bodyOverLimit: REJECT`: refused (413).
    TooLong,
}

/// Reads a request body for the WAF before anything of it is forwarded, each piece first passed
/// to `count`. A body of a type no WAF parses is read only as far as its first bytes tell
/// whether the WAF reads it ([`crate::policy::BodyPlan::reads`]).
pub async fn read_for_waf(
    session: &mut Session,
    timeout: &super::CallerTimeouts,
    plan: crate::policy::BodyPlan,
    mut count: impl FnMut(usize) -> pingora::Result<()>,
) -> pingora::Result<ForWaf> {
    let over_declared = declared_length(session.req_header()).is_some_and(|n| n > plan.limit as u64);
    let mut body = Joined::default();
    let mut ended = false;
    let since = tokio::time::Instant::now();
    let mut read = async |body: &mut Joined| -> pingora::Result<bool> {
        let Some(piece) = timeout.read(session, since).await? else { return Ok(false) };
        count(piece.len())?;
        body.push(piece, usize::MAX);
        Ok(!session.is_body_done())
    };
    if plan.waits_for_first_bytes() {
        // Looked at again each time what was read doubles, so a caller sending one byte at a
        // time costs a few looks, not one per byte.
        let mut look_at = 0;
        loop {
            let more = read(&mut body).await?;
            if more && body.seen < look_at {
                continue;
            }
            look_at = body.seen.saturating_mul(2).max(64);
            match plan.reads(body.as_slice()) {
                Some(false) => return Ok(ForWaf::NotRead(body.bytes())),
                Some(true) => {}
                // Blanks (or a gzip header) past a few KiB: taken for JSON rather than read on.
                None if more && body.seen <= SNIFF_WINDOW.min(plan.limit) => continue,
                None => {}
            }
            ended = !more;
            break;
        }
    }
    // Past the limit, declared so or found so: refused by a WAF that blocks under REJECT, else
    // passed on uninspected, what was read first.
    let over = |body: Joined| match plan.rejects_over_limit(body.as_slice()) {
        true => ForWaf::TooLong,
        false => ForWaf::Uninspected(body.bytes()),
    };
    if over_declared {
        return Ok(over(body));
    }
    while !ended && body.seen <= plan.limit {
        ended = !read(&mut body).await?;
    }
    Ok(match body.seen <= plan.limit {
        true => ForWaf::Whole(body.bytes()),
        false => over(body),
    })
}

/// A body's chunks, copied together only when there is more than one.
#[derive(Default)]
struct Joined {
    first: Bytes,
    joined: Option<BytesMut>,
    seen: usize,
}

impl Joined {
    /// False once the body is longer than `max`.
    fn push(&mut self, chunk: Bytes, max: usize) -> bool {
        self.seen += chunk.len();
        if self.seen > max {
            return false;
        }
        match self.joined.as_mut() {
            Some(joined) => joined.extend_from_slice(&chunk),
            None if self.first.is_empty() => self.first = chunk,
            None => {
                let mut both = BytesMut::with_capacity(self.first.len() + chunk.len());
                both.extend_from_slice(&self.first);
                both.extend_from_slice(&chunk);
                self.joined = Some(both);
            }
        }
        true
    }

    fn bytes(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }

    fn as_slice(&self) -> &[u8] {
        self.joined.as_deref().unwrap_or(&self.first)
    }
}

/// `Keep-Alive: timeout=N` from the app, less a second so the connection is not reused just as
/// the app closes it; zero means not worth keeping.
fn keep_alive_timeout(app: &AppSession) -> Option<Duration> {
    parse_keep_alive_timeout(app.get_header("keep-alive")?.to_str().ok()?)
}

fn parse_keep_alive_timeout(value: &str) -> Option<Duration> {
    let seconds = value.split(',').find_map(|p| p.trim().strip_prefix("timeout=")?.trim().parse::<u64>().ok())?;
    Some(Duration::from_secs(seconds.saturating_sub(1)).min(IDLE_TIMEOUT))
}

/// The caller's HTTP/2 request as the app gets it over HTTP/1.1: `:authority` becomes `Host`,
/// hop-by-hop headers are dropped. Plain parts, so the headers the sidecar adds go into the map
/// as they are (pingora's header would parse and copy each name); an HTTP/2 request's target is
/// its URI, so nothing of it is lost.
pub fn app_request(session: &Session) -> pingora::Result<http::request::Parts> {
    let mut request = session.req_header().as_owned_parts();
    request.version = Version::HTTP_11;
    for name in super::CONNECTION_SPECIFIC.iter().chain(&HOP_BY_HOP) {
        request.headers.remove(name);
    }
    // HTTP/2 may split a cookie into crumbs; HTTP/1.1 has one Cookie line, and many apps read
    // only the first (RFC 9113 §8.2.3: joined with "; ").
    if request.headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let crumbs: Vec<&[u8]> = request.headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
        let joined = HeaderValue::from_bytes(&crumbs.join(&b"; "[..]))
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "cookie crumbs do not join").into_down())?;
        request.headers.insert(header::COOKIE, joined);
    }
    match request.uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            return Err(Error::explain(ErrorType::InvalidHTTPHeader, "userinfo in the request authority").into_down());
        }
        Some(authority) => {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "authority is not a Host").into_down())?;
            request.headers.insert(header::HOST, host);
        }
        None if !request.headers.contains_key(header::HOST) => {
            request.headers.insert(header::HOST, HeaderValue::from_static(""));
        }
        None => {}
    }
    Ok(request)
}

/// Whether the app's answer was framed two ways (RFC 9112 §6.3: Transfer-Encoding wins, and the
/// message ought to be handled as an error), which leaves what follows on its connection in
/// doubt: that connection is not reused. pingora drops the Content-Length from the parsed head,
/// so the head as it came is read, for chunked answers only.
fn framed_twice(app: &AppSession) -> bool {
    const NAME: &[u8] = b"content-length:";
    let chunked = app.resp_header().is_some_and(|h| h.headers.contains_key(header::TRANSFER_ENCODING));
    chunked
        && app
            .get_headers_raw_bytes()
            .split(|b| *b == b'\n')
            .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
}

/// What is read and dropped of a body the app answered before it ended, at most.
const DRAIN_MAX: usize = 256 * 1024;
/// How long that may take: what is left is usually in flight already.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads and drops the rest of a body the app answered before it ended (as nginx discards one),
/// when it is small and near, so its stream ends cleanly. Ended early instead, the stream is
/// reset while the rest is on its way, and h2 answers each late piece as an error it counts:
/// past 1,024 of them on a connection (from a peer sidecar, all of its requests to this pod)
/// it closes the connection, failing every request on it. A larger or slower rest is left to
/// the reset.
async fn drain_answered_body(session: &mut Session) {
    let drain = async {
        let mut left = DRAIN_MAX;
        while !session.is_body_done() {
            match session.read_request_body().await {
                Ok(Some(piece)) if piece.len() <= left => left -= piece.len(),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// One request and its answer on `app`; true when the whole request body went to the app (the
/// connection is then between requests once the answer has been read).
async fn exchange(
    session: &mut Session,
    app: &mut AppSession,
    request: RequestHeader,
    body: &mut Body<'_>,
    timeouts: &super::CallerTimeouts,
) -> pingora::Result<bool> {
    app.write_request_header(Box::new(request)).await.map_err(Error::into_up)?;
    // A held body is sent at once, and its timer is never awaited.
    let (mut request_done, idle) = match body {
        Body::Held(held) => {
            if !held.is_empty() {
                app.write_body(held).await.map_err(Error::into_up)?;
                app.finish_body().await.map_err(Error::into_up)?;
            }
            (true, Duration::ZERO)
        }
        Body::Streamed { first, .. } => {
            if !first.is_empty() {
                app.write_body(first).await.map_err(Error::into_up)?;
            }
            // What was read first may have been all of it (one frame that ended the stream):
            // a read now would wait for the caller's next move, not say the body ended.
            if session.is_body_done() {
                app.finish_body().await.map_err(Error::into_up)?;
                (true, Duration::ZERO)
            } else {
                (false, timeouts.body)
            }
        }
    };
    // From the last body bytes read or passed on: how long the caller may keep the rest. The
    // app answering meanwhile does not count, as on the outbound side.
    let stalled = tokio::time::sleep(idle);
    tokio::pin!(stalled);
    loop {
        // Only reads race; each write happens once its branch has won (pingora's reads of a
        // response head and of an HTTP/2 body are both safe to drop half-way).
        let task = tokio::select! {
            // Once the body is in, this watches for the caller resetting its stream (a long poll
            // given up): the app's connection is closed then instead of held until it answers.
            read = session.read_body_or_idle(request_done) => {
                let (false, Body::Streamed { each, started, .. }) = (request_done, &mut *body) else {
                    return Err(Error::explain(ErrorType::ConnectionClosed, "the caller reset its stream").into_down());
                };
                let read = read.map_err(Error::into_down)?;
                *started = true;
                // The last piece leaves the body done (a further read would wait for the
                // caller's next move instead of saying so).
                let last = read.is_none() || session.is_body_done();
                let piece = each(session, read.unwrap_or_default(), last)?;
                if !piece.is_empty() {
                    app.write_body(&piece).await.map_err(Error::into_up)?;
                }
                if last {
                    app.finish_body().await.map_err(Error::into_up)?;
                    request_done = true;
                }
                stalled.as_mut().reset(tokio::time::Instant::now() + idle);
                continue;
            }
            () = &mut stalled, if !request_done => return Err(super::body_timed_out()),
            task = app.read_response_task() => task.map_err(Error::into_up)?,
        };
        match task {
            // Nothing asked to switch protocols (HTTP/2 carries no Upgrade): the app is wrong.
            HttpTask::Header(header, _) if header.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                return Err(
                    Error::explain(ErrorType::InvalidHTTPHeader, "the app switched protocols unasked").into_up()
                );
            }
            // An interim answer cannot be forwarded to an HTTP/2 caller before the final one
            // (pingora drops it too).
            HttpTask::Header(header, _) if header.status.is_informational() => {}
            HttpTask::Header(mut header, end) => {
                super::drop_hop_by_hop(&mut header);
                super::forward::write_header(session, header, end).await?;
                if end {
                    return Ok(request_done);
                }
            }
            HttpTask::Body(data, end) => {
                timeouts.write_body(session, data, end).await?;
                if end {
                    return Ok(request_done);
                }
                // The caller's silence is not judged while its answer waited on it.
                stalled.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            HttpTask::Done => {
                timeouts.write_body(session, Some(Bytes::new()), true).await?;
                return Ok(request_done);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_keep_alive_timeout_bounds_how_long_a_connection_waits() {
        assert_eq!(parse_keep_alive_timeout("timeout=5, max=1000"), Some(Duration::from_secs(4)));
        assert_eq!(parse_keep_alive_timeout("max=10,timeout=2"), Some(Duration::from_secs(1)));
        assert_eq!(parse_keep_alive_timeout("timeout=1"), Some(Duration::ZERO), "too short to keep");
        assert_eq!(parse_keep_alive_timeout("timeout=3600"), Some(IDLE_TIMEOUT));
        assert_eq!(parse_keep_alive_timeout("max=5"), None);
        assert_eq!(parse_keep_alive_timeout("timeout=soon"), None);
    }
}
