//! Diagnostic logs (tracing), as text or JSON lines on stderr, with a filter that can be changed
//! at run time through the admin API.

use std::io::{IsTerminal, Write};
use std::sync::{LazyLock, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogLevel(Option<reload::Handle<EnvFilter, Registry>>);

/// How each log line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, the event's fields),
    /// for log shippers and `kubectl logs | jq`.
    Json,
}

// h2 warns once for each connection it closes for a flood (streams reset before they were
// accepted, CONTINUATION frames): as many lines as an attacker opens connections, 700 in 3 s. The
// sidecar counts those closures and reports them in aggregate (`http2_abuse`) instead.
const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,h2=error";

/// The variables a filter is read from, in order: the project's own first, so a `RUST_LOG` meant
/// for another program in the same environment can be overridden without unsetting it.
const FILTER_VARS: [&str; 2] = ["PALISADE_LOG", "RUST_LOG"];

impl LogLevel {
    /// Installs the global subscriber, logging to stderr (stdout carries security events).
    /// The filter comes from `PALISADE_LOG`, else `RUST_LOG` (both in `RUST_LOG` syntax), else
    /// the default; a filter that does not parse is an error naming the variable, never a
    /// silent fallback to the default.
    pub fn init(format: LogFormat) -> Result<Self, String> {
        let filter = filter_from_env(&|name| std::env::var(name).ok(), DEFAULT_FILTER)?;
        Ok(Self::install(filter, format))
    }

    /// As [`LogLevel::init`] in text, with another filter when neither variable is set (tests).
    pub fn init_with(default_filter: &str) -> Self {
        let filter =
            filter_from_env(&|name| std::env::var(name).ok(), default_filter).unwrap_or_else(|e| panic!("{e}"));
        Self::install(filter, LogFormat::Text)
    }

    fn install(filter: EnvFilter, format: LogFormat) -> Self {
        let (filter, handle) = reload::Layer::new(filter);
        // Colour codes only for a person at a terminal: `kubectl logs`, files and log shippers
        // read stderr through a pipe and would store the escape sequences. NO_COLOR is honoured
        // too (no-color.org).
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        // One writer per process (a second sidecar in a test process shares the first's).
        if QUEUE.get().is_none() {
            if let Ok(lines) =
                super::lines::JsonLines::start("palisade-log", &crate::config::EventSink::Stderr, DROPPED.clone())
            {
                let _ = QUEUE.set(lines);
            }
        }
        let text = (format == LogFormat::Text).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(OneLine { ansi, inner: || Queued })
                .with_target(false)
                .with_ansi(ansi)
        });
        // Flattened: the message and the event's fields at the top level, where log pipelines
        // look for them, rather than under "fields".
        let json = (format == LogFormat::Json).then(|| {
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(|| Queued).with_ansi(false)
        });
        let installed = tracing_subscriber::registry().with(filter).with(text).with(json).try_init().is_ok();
        // A second sidecar in the same process (tests) shares the first one's subscriber.
        LogLevel(installed.then_some(handle))
    }

    pub fn get(&self) -> String {
        self.0.as_ref().and_then(|h| h.with_current(|f| f.to_string()).ok()).unwrap_or_else(|| "unmanaged".into())
    }

    /// Replaces the filter, saying so at `warn` under the filter it replaces (outside tester q2:
    /// `off` through the admin API had silenced the log without a trace), and again under the
    /// new one.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        if !crate::config::is_log_filter(filter) {
            return Err(format!("bad filter {filter:?}: {FILTER_FORM}"));
        }
        let text = filter;
        let filter = EnvFilter::try_new(crate::config::log_filter_text(filter))
            .map_err(|e| format!("bad filter {filter:?}: {e}"))?;
        let Some(handle) = &self.0 else {
            return Err("the log level is managed by another component in this process".into());
        };
        let from = self.get();
        // Under a filter that writes errors only, at error: the change leaves a trace whatever the
        // level it replaces (the review: `error` to `off` left none).
        match tracing::enabled!(tracing::Level::WARN) {
            true => tracing::warn!(from = %from, to = text, "log level changing through the admin API"),
            false => tracing::error!(from = %from, to = text, "log level changing through the admin API"),
        }
        handle.reload(filter).map_err(|e| e.to_string())?;
        tracing::warn!(from = %from, to = text, "log level changed through the admin API");
        Ok(())
    }
}

/// Log lines go to stderr from a thread of their own, behind a bounded queue, as the access log
/// and security events do: a stderr nobody reads (a stalled log pipeline) must never stop a
/// worker thread, and with it every request and `/live`. What does not fit is dropped and
/// counted in `palisade_log_lines_dropped_total`.
static QUEUE: OnceLock<super::lines::JsonLines> = OnceLock::new();

static DROPPED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "palisade_log_lines_dropped_total",
        "Diagnostic log lines dropped because stderr could not take them as fast as they came.",
    )
    .expect("metric")
});

/// The process's count of dropped log lines, for a metrics registry.
pub fn dropped_lines() -> prometheus::IntCounter {
    DROPPED.clone()
}

/// Waits until every log line so far is written (before the process exits).
pub fn flush() {
    if let Some(queue) = QUEUE.get() {
        queue.flush();
    }
}

/// One event's text, handed to the queue (or, before it runs, to stderr).
struct Queued;

impl Write for Queued {
    // The formatter hands over a whole event in one `write_all`.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if is_head_failure(buf) {
            return Ok(());
        }
        match QUEUE.get() {
            Some(queue) => {
                queue.send_line(buf.to_vec());
                Ok(())
            }
            // The queue escapes what hides text ([`super::lines::invisible_escaped`]); so here.
            None => std::io::stderr().write_all(&super::lines::invisible_escaped(buf)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// pingora's error (`Fail to proxy`, or its HTTP server's on the admin port) for a request
/// head that stopped coming. It writes one per connection, with no hook to say otherwise (it
/// comes through the `log` bridge, past any per-event filter), so a slowloris flood would write
/// one per connection. Those closed by `limits.headerTimeout` are counted and logged in
/// aggregate by the listeners, at most a line a second; a client that leaves mid-head is a
/// client leaving, as one that leaves between requests is, and logged by neither.
fn is_head_failure(line: &[u8]) -> bool {
    const HEAD: &[u8] = b"while reading request headers";
    let contains = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    line.len() < 1024
        && contains(HEAD)
        && (contains(b"Fail to proxy: Downstream ") || contains(b"HTTP server fails to read from downstream"))
}

/// Text logs' writer: each event on one line of its own. Fields may carry a peer's text (a
/// pod's name from an AdmissionReview, a sidecar's NACK reason, a certificate's subject), and
/// `%` formatting writes it as it is: a line break in it would start a forged line, an escape
/// sequence would rewrite a terminal. The JSON layer escapes them already.
struct OneLine<M> {
    /// The formatter's own colours are escape sequences, kept when a person reads a terminal.
    ansi: bool,
    /// Where the lines go: stderr.
    inner: M,
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a> for OneLine<M> {
    type Writer = OneLineWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter { ansi: self.ansi, inner: self.inner.make_writer() }
    }
}

struct OneLineWriter<W> {
    ansi: bool,
    inner: W,
}

impl<W: std::io::Write> std::io::Write for OneLineWriter<W> {
    // The formatter hands over a whole event in one `write_all`.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(&one_line(buf, self.ansi))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `event` with every control character before its final line break written as `\xNN` (a tab
/// kept; ESC kept when `ansi`), borrowed when there is none, as almost always.
fn one_line(event: &[u8], ansi: bool) -> std::borrow::Cow<'_, [u8]> {
    let control = |b: u8| (b < 0x20 && b != b'\t' && !(ansi && b == 0x1b)) || b == 0x7f;
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    if !body.iter().any(|&b| control(b)) {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    for &b in body {
        if control(b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&event[body.len()..]);
    std::borrow::Cow::Owned(out)
}

/// What a filter is made of, for the error that refuses one.
const FILTER_FORM: &str = "write levels (trace, debug, info, warn, error, off) and target=level pairs, e.g. \"info,palisade=debug\"; a bare word other than a level names a module, and palisade, pingora, h2, hyper, rustls, tonic, tokio, tower and opentelemetry are the ones that log";

/// The filter from the first of [`FILTER_VARS`] that is set and not empty, else `default`.
fn filter_from_env(var: &dyn Fn(&str) -> Option<String>, default: &str) -> Result<EnvFilter, String> {
    for name in FILTER_VARS {
        if let Some(value) = var(name).filter(|v| !v.trim().is_empty()) {
            // Taken as given when it parses (a container's RUST_LOG may name the app's own
            // modules), but said on stderr, before the filter may silence everything.
            if !crate::config::is_log_filter(&value) {
                eprintln!("warning: {name}={value:?} has a word that is neither a level nor a module that logs here: {FILTER_FORM}");
            }
            return EnvFilter::builder()
                .parse(crate::config::log_filter_text(&value))
                .map_err(|e| format!("{name}: bad log filter {value:?}: {e} (e.g. \"info,palisade=debug\")"));
        }
    }
    Ok(EnvFilter::new(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_event_stays_one_line_whatever_its_fields_hold() {
        let forged = b"WARN refused pod=x\n2026-12-06T08:00:00Z  INFO pod injected namespace=prod\r\x1b[2K\n";
        let line = one_line(forged, false);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{:?}", String::from_utf8_lossy(&line));
        assert!(line.ends_with(b"\\x0d\\x1b[2K\n"), "{:?}", String::from_utf8_lossy(&line));
        assert!(line.starts_with(b"WARN refused pod=x\\x0a2026"), "{:?}", String::from_utf8_lossy(&line));
        // A terminal's colours are the formatter's own; the line breaks are still escaped.
        let coloured = one_line(b"\x1b[32m INFO\x1b[0m a\nb\n", true);
        assert_eq!(&coloured[..], b"\x1b[32m INFO\x1b[0m a\\x0ab\n");
        let plain = b"INFO\tpolicy in force version=1\n";
        assert!(matches!(one_line(plain, false), std::borrow::Cow::Borrowed(_)));
    }

    /// A text layer built as `install` builds it, writing into a buffer: a forged line in a field
    /// stays inside its event's line.
    #[test]
    fn the_text_layer_writes_each_event_whole_through_one_line() {
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let make = {
            let b = buffer.clone();
            move || b.clone()
        };
        let layer = tracing_subscriber::fmt::layer().with_writer(OneLine { ansi: false, inner: make }).with_ansi(false);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let pod = "x\n2026-12-06T08:10:00Z  INFO palisade::inject: pod injected namespace=prod";
            tracing::warn!(pod = %pod, "pod could not be injected");
            tracing::info!("second");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("pod=x\\x0a2026") && lines[1].ends_with("second"), "{text}");
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn palisade_log_wins_then_rust_log_then_the_default() {
        let f = |vars: &[(&str, &str)]| filter_from_env(&env(vars), "warn").unwrap().to_string();
        assert_eq!(f(&[("PALISADE_LOG", "debug"), ("RUST_LOG", "trace")]), "debug");
        assert_eq!(f(&[("RUST_LOG", "trace")]), "trace");
        assert_eq!(f(&[("PALISADE_LOG", ""), ("RUST_LOG", "error")]), "error");
        assert_eq!(f(&[]), "warn");
    }

    #[test]
    fn a_filter_that_does_not_parse_is_an_error_naming_its_variable() {
        let e = filter_from_env(&env(&[("RUST_LOG", "info,palisade=loud")]), "warn").unwrap_err();
        assert!(e.starts_with("RUST_LOG: bad log filter \"info,palisade=loud\""), "{e}");
    }
}
