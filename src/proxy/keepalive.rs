//! HTTP/1.1 keep-alive outside pingora's loop, so that a connection between two requests holds
//! only its stream. pingora's own loop (`ServerApp::process_new` for an `HttpServerApp`) starts
//! the next request's future as soon as an answer is done, and that future (about 15 KB, boxed,
//! with a 4 KB head buffer after it) waits there for the next head: an idle keep-alive
//! connection cost its sidecar over 20 KB, most of A's memory with 256 client connections. Here
//! the next request's first bytes are awaited first, on the stream alone, and handed to the new
//! session as the start of its head (pingora's pipelined prefix: the same buffer it would have
//! read them into), so nothing else is allocated while a connection is idle.
//!
//! Everything else is pingora's: HTTP/2 (by ALPN or the h2c preface) goes to its own
//! `process_new`, and each request to its `process_new_http`, with the settings it hands from
//! one session of a connection to the next.
//!
//! How long an idle connection is kept, and how long a head may take, is the stream's to say
//! (serve.rs: `limits.idleTimeout` after an answer, `limits.headerTimeout` for a head), with no
//! timer here or in pingora (keep-alive on without its timeout, as pingora itself sets it for
//! an HTTP/1.1 request's successors).

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};

use crate::serve::H2_PREFACE;

/// Keep-alive on, with no timer of pingora's on the reads of a head (pingora's own loop sets 60 s
/// on a connection's first session: a first head with a pause that long was closed silently,
/// whatever `limits.headerTimeout` said).
const KEEPALIVE_WITHOUT_TIMER: u64 = 0;
/// The first read of a head takes as much as pingora's own first read does.
const HEAD_READ: usize = 4096;

/// Serves one connection for `app`, as pingora's `process_new` would.
pub async fn serve<A>(app: &Arc<A>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let mut shutdown_signal = shutdown.clone();
    // A plaintext connection that has sent nothing yet is as idle as one between requests: a
    // shutdown closes it rather than wait for its bytes.
    let http1 = tokio::select! {
        biased;
        http1 = is_http1(app.as_ref(), &mut stream) => http1?,
        Ok(_) = shutdown_signal.wait_for(|stop| *stop) => return None,
    };
    if !http1 {
        return app.process_new(stream, shutdown).await;
    }
    // None before the first request; then what the last session handed on.
    let mut handed_on = None;
    loop {
        let head = next_request_bytes(&mut stream, &mut shutdown_signal).await?;
        let mut session = ServerSession::new_http1(stream);
        match handed_on {
            None => {
                session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_WITHOUT_TIMER));
                session.set_keepalive_reuses_remaining(app.server_options().and_then(|o| o.keepalive_request_limit));
            }
            Some(Some(settings)) => pingora::apps::HttpPersistentSettings::apply_to_session(settings, &mut session),
            Some(None) => {}
        }
        // A pipelined prefix of pingora's own comes only with pipelining on, and would already
        // hold the start of this head: bytes read here on top of it would be put in its place.
        // Pipelining is off in the proxies (a request sent before its predecessor's answer
        // ends the connection after that answer); were it ever turned on, this connection
        // fails here rather than lose bytes between two requests.
        assert!(!session.pipelining_enabled(), "HTTP/1.1 pipelining is not supported by proxy::keepalive");
        session.set_pipelined_prefix(head);
        let (next, settings) = app.process_new_http(session, shutdown).await?.consume();
        stream = next;
        handed_on = Some(settings);
    }
}

/// Whether the connection speaks HTTP/1.1 (not HTTP/2 by ALPN or by its preface, nor a custom
/// protocol); `None` when it ended before saying.
async fn is_http1<A: HttpServerApp>(app: &A, stream: &mut Stream) -> Option<bool> {
    match stream.selected_alpn_proto() {
        Some(ALPN::H2 | ALPN::Custom(_)) => return Some(false),
        _ if stream.get_ssl_digest().is_some() => return Some(true),
        _ => {}
    }
    let options = app.server_options();
    if options.is_some_and(|o| o.force_custom) {
        return Some(false);
    }
    if !options.is_some_and(|o| o.h2c) {
        return Some(true);
    }
    // pingora peeks for the whole preface at once (its stream keeps the bytes for the next
    // read), so a request shorter than 24 bytes (`GET / HTTP/1.0` and an empty line) waited
    // for bytes that never came. Every HTTP/1.1 request differs from the preface in its first
    // two bytes (a method of "PR..." is none a server here accepts), so the peek grows only
    // while what came matches. A stream that cannot be peeked is taken for HTTP/2 when h2c is
    // on, as pingora takes it.
    let mut first = [0u8; H2_PREFACE.len()];
    for len in [1, 2, H2_PREFACE.len()] {
        if !stream.try_peek(&mut first[..len]).await.ok()? {
            return Some(false);
        }
        if first[..len] != H2_PREFACE[..len] {
            return Some(true);
        }
    }
    Some(false)
}

/// The first bytes of the connection's next request, in a buffer the session's head parse
/// continues in; `None` when the connection ends first (the client closed it, the server is
/// shutting down, or the stream's own deadlines closed it).
async fn next_request_bytes(stream: &mut Stream, shutdown: &mut ShutdownWatch) -> Option<BytesMut> {
    let read = std::future::poll_fn(|cx| {
        // On the stack of this poll, not in the future: an idle connection holds no buffer.
        let mut space = [MaybeUninit::<u8>::uninit(); HEAD_READ];
        let mut read = ReadBuf::uninit(&mut space);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                let mut head = BytesMut::with_capacity(HEAD_READ);
                head.extend_from_slice(read.filled());
                Poll::Ready(Some(head))
            }
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    });
    tokio::select! {
        biased;
        head = read => head,
        // A dropped sender is no shutdown: this branch is then off.
        Ok(_) = shutdown.wait_for(|stop| *stop) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use bytes::Bytes;
    use pingora::apps::{HttpPersistentSettings, HttpServerOptions, ReusedHttpStream};
    use pingora::http::ResponseHeader;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    use std::time::Duration;

    use super::*;

    /// An app as pingora's proxy is one: a session per request, handed on to the next one.
    #[derive(Default)]
    struct Answering {
        options: Option<HttpServerOptions>,
        sessions: AtomicUsize,
        /// Per request: its path, whether it came over HTTP/2, and its body.
        requests: Mutex<Vec<(String, bool, Vec<u8>)>>,
    }

    #[async_trait::async_trait]
    impl HttpServerApp for Answering {
        async fn process_new_http(
            self: &Arc<Self>,
            mut session: ServerSession,
            _: &ShutdownWatch,
        ) -> Option<ReusedHttpStream> {
            self.sessions.fetch_add(1, Ordering::SeqCst);
            if !session.read_request().await.ok()? {
                return None;
            }
            let mut body = Vec::new();
            while let Some(piece) = session.read_request_body().await.ok()? {
                body.extend_from_slice(&piece);
            }
            let path = session.req_header().uri.path().to_string();
            self.requests.lock().unwrap().push((path, session.is_http2(), body));
            let settings = HttpPersistentSettings::for_session(&session);
            let mut answer = ResponseHeader::build(200, None).unwrap();
            answer.insert_header("content-length", "2").unwrap();
            session.write_response_header(Box::new(answer)).await.ok()?;
            session.write_response_body(Bytes::from_static(b"ok"), true).await.ok()?;
            let reusable = session.finish().await.ok()??;
            Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
        }

        fn server_options(&self) -> Option<&HttpServerOptions> {
            self.options.as_ref()
        }
    }

    /// Reads one answer (its head and the two bytes of its body) from `client`.
    async fn answer(client: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    fn start(app: &Arc<Answering>) -> (tokio::io::DuplexStream, watch::Sender<bool>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop, shutdown) = watch::channel(false);
        let app = app.clone();
        tokio::spawn(async move { serve(&app, Box::new(server), &shutdown).await });
        (client, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_a_connection_holds_no_session() {
        let app = Arc::new(Answering::default());
        let (mut client, _stop) = start(&app);
        client.write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        // Paused time moves only once every task waits: the server has reached its wait.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(app.sessions.load(Ordering::SeqCst), 1, "a session waits for the next head");

        // A head in pieces, then a head with its body in the same read.
        client.write_all(b"GET /tw").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"o HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut client).await;
        client.write_all(b"POST /three HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello").await.unwrap();
        answer(&mut client).await;
        let requests = app.requests.lock().unwrap().clone();
        let expected = [("/one", false, &b""[..]), ("/two", false, b""), ("/three", false, b"hello")];
        assert_eq!(requests.len(), 3);
        for ((path, h2, body), (want_path, want_h2, want_body)) in requests.iter().zip(expected) {
            assert_eq!((path.as_str(), *h2, body.as_slice()), (want_path, want_h2, want_body));
        }
        assert_eq!(app.sessions.load(Ordering::SeqCst), 3);
    }

    /// How long an idle connection is kept is the stream's `limits.idleTimeout` (serve.rs): no
    /// timer here ends one, and a client that leaves does.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_kept_until_the_client_leaves() {
        let app = Arc::new(Answering::default());
        let (client, server_io) = tokio::io::duplex(64 * 1024);
        let (_stop, shutdown) = watch::channel(false);
        let serving = {
            let app = app.clone();
            tokio::spawn(async move { serve(&app, Box::new(server_io), &shutdown).await })
        };
        let mut client = client;
        client.write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut client).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        client.write_all(b"GET /two HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut client).await;
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(1), serving).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
        assert_eq!(app.sessions.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_closes_an_idle_connection_at_once() {
        let app = Arc::new(Answering::default());
        let (mut client, stop) = start(&app);
        client.write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut client).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked = tokio::time::Instant::now();
        stop.send_replace(true);
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
        assert_eq!(asked.elapsed(), Duration::ZERO);
        assert_eq!(app.sessions.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_shutdown_sender_is_no_shutdown() {
        let app = Arc::new(Answering::default());
        let (mut client, stop) = start(&app);
        drop(stop);
        client.write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut client).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"GET /two HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut client).await;
    }

    /// Serves connections for `app` on a real socket (pingora's peek for the h2c preface needs
    /// one) with h2c on, as the sidecar's plaintext ports do.
    async fn serve_h2c(app: &Arc<Answering>) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (app, shutdown) = (app.clone(), shutdown.clone());
                let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
                tokio::spawn(async move { serve(&app, stream, &shutdown).await });
            }
        });
        (addr, stop)
    }

    fn with_h2c() -> Arc<Answering> {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        Arc::new(Answering { options: Some(options), ..Answering::default() })
    }

    /// HTTP/2 with prior knowledge goes to pingora's HTTP/2, HTTP/1.1 on the same port to the
    /// loop here.
    #[tokio::test]
    async fn plaintext_http2_with_prior_knowledge_is_served_as_http2() {
        let app = with_h2c();
        let (addr, _stop) = serve_h2c(&app).await;
        let (h2, connection) =
            h2::client::handshake(tokio::net::TcpStream::connect(addr).await.unwrap()).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let (response, _) = h2.send_request(http::Request::get("http://a/h2").body(()).unwrap(), true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);

        let mut h1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        h1.write_all(b"GET /h1 HTTP/1.1\r\nhost: a\r\nuser-agent: test\r\n\r\n").await.unwrap();
        assert!(answer(&mut h1).await.starts_with("HTTP/1.1 200"));
        let requests = app.requests.lock().unwrap().clone();
        let seen: Vec<_> = requests.iter().map(|(path, h2, _)| (path.as_str(), *h2)).collect();
        assert_eq!(seen, [("/h2", true), ("/h1", false)]);
    }

    /// A request shorter than the h2c preface is answered: pingora's own peek waited for all 24
    /// bytes, so this one (18) waited for bytes that never came.
    #[tokio::test]
    async fn a_request_shorter_than_the_h2c_preface_is_answered() {
        let app = with_h2c();
        let (addr, _stop) = serve_h2c(&app).await;
        let mut h1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        h1.write_all(b"GET /0 HTTP/1.0\r\n\r\n").await.unwrap();
        // Bounded so that the old behaviour fails rather than hangs; an answer comes at once.
        let answered = tokio::time::timeout(Duration::from_secs(30), answer(&mut h1)).await;
        assert!(answered.expect("no answer to a short request").starts_with("HTTP/1.1 200"));
        let requests = app.requests.lock().unwrap().clone();
        assert_eq!(requests.iter().map(|(path, h2, _)| (path.as_str(), *h2)).collect::<Vec<_>>(), [("/0", false)]);
    }

    /// A connection that has sent nothing is closed by a shutdown at once, as an idle one
    /// between requests is, not held until its bytes come.
    #[tokio::test]
    async fn a_shutdown_closes_a_connection_that_has_sent_nothing() {
        let app = with_h2c();
        let (addr, stop) = serve_h2c(&app).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        // One byte of a preface: the wait for the next ones is what the shutdown ends.
        silent.write_all(b"P").await.unwrap();
        let mut other = tokio::net::TcpStream::connect(addr).await.unwrap();
        other.write_all(b"GET /after HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        answer(&mut other).await;
        stop.send_replace(true);
        let mut buf = [0u8; 16];
        for connection in [&mut silent, &mut other] {
            let closed = tokio::time::timeout(Duration::from_secs(30), connection.read(&mut buf)).await;
            assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
        }
        assert_eq!(app.sessions.load(Ordering::SeqCst), 1);
    }
}
