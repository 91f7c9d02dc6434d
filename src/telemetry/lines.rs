//! JSON lines written on a thread of their own behind a bounded queue: a slow sink never slows a
//! request; what does not fit is counted and dropped.
//!
//! Lines arrive serialised. The writer drains whatever is queued, writes it in one go, then rests
//! a moment before looking again, so under load a producer rarely has to wake it and the sink
//! sees a few large writes instead of one small write per line.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use serde_json::Value;

use crate::config::EventSink;

const QUEUE: usize = 1024;
/// The longest a flush waits for the writer.
const FLUSH_PATIENCE: Duration = Duration::from_secs(5);
/// How long the writer rests after a batch: the most a line waits when lines keep coming.
const REST: Duration = Duration::from_millis(10);

/// What the writer thread receives: a line, or a request to say when all before it is written.
enum Item {
    Line(Vec<u8>),
    Flushed(SyncSender<()>),
}

pub struct JsonLines {
    queue: SyncSender<Item>,
    dropped: prometheus::IntCounter,
}

impl JsonLines {
    pub fn start(thread: &str, sink: &EventSink, dropped: prometheus::IntCounter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match sink {
            EventSink::Stdout => Box::new(std::io::stdout()),
            EventSink::Stderr => Box::new(std::io::stderr()),
            EventSink::File(path) => Box::new(
                crate::files::open_append(path)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("file:{}: {e}", path.display())))?,
            ),
        };
        Self::start_on(thread, out, dropped)
    }

    fn start_on(thread: &str, out: Box<dyn Write + Send>, dropped: prometheus::IntCounter) -> std::io::Result<Self> {
        let (queue, rx) = sync_channel::<Item>(QUEUE);
        let lost = dropped.clone();
        let name = thread.to_string();
        std::thread::Builder::new().name(thread.into()).spawn(move || {
            let mut out = out;
            let mut failing = false;
            let mut waiting = Vec::new();
            let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
            // Where each of the batch's lines ends in it.
            let mut ends: Vec<usize> = Vec::new();
            // The sink holds part of a line that a failed write cut: the next write ends it
            // first, so the next line starts a line of its own instead of being glued to it.
            let mut torn = false;
            while let Ok(first) = rx.recv() {
                batch.clear();
                ends.clear();
                if torn {
                    batch.push(b'\n');
                }
                for item in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    match item {
                        Item::Line(line) => {
                            batch.extend_from_slice(&line);
                            ends.push(batch.len());
                        }
                        Item::Flushed(done) => waiting.push(done),
                    }
                }
                let mut at = 0;
                let written = loop {
                    if at == batch.len() {
                        break out.flush();
                    }
                    match out.write(&batch[at..]) {
                        Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                // A failed write (disk full, a closed pipe) loses the lines it did not finish,
                // not the writer: they are counted, the failure is logged once, and the next
                // batch tries again.
                match written {
                    Ok(()) => {
                        if failing {
                            // Said, as the trace exporter says it: how long lines were lost is
                            // then in the log (outside tester q2).
                            tracing::warn!(writer = %name, "writes work again; lines lost meanwhile are counted");
                        }
                        failing = false;
                        torn = false;
                    }
                    Err(e) => {
                        lost.inc_by(ends.iter().filter(|&&end| end > at).count() as u64);
                        if at > 0 {
                            torn = batch[at - 1] != b'\n';
                        }
                        if !failing {
                            tracing::error!(writer = %name, error = %e, "cannot write; lines are dropped and counted until it works again");
                        }
                        failing = true;
                    }
                }
                // Every line queued before a flush request is written (or counted as lost) now.
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
                std::thread::sleep(REST);
            }
        })?;
        Ok(JsonLines { queue, dropped })
    }

    /// Queues one record; it is serialised here, on the caller's thread.
    pub fn send(&self, record: &Value) {
        let mut line = serde_json::to_vec(record).expect("JSON values serialise");
        line.push(b'\n');
        self.send_line(line);
    }

    /// Queues one line that is already JSON and ends with a newline.
    pub fn send_line(&self, line: Vec<u8>) {
        let line = match invisible_escaped(&line) {
            std::borrow::Cow::Borrowed(_) => line,
            std::borrow::Cow::Owned(escaped) => escaped,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(Item::Line(line)) {
            self.dropped.inc();
        }
    }

    /// Waits until every line queued before this call is written, or counted as dropped; at
    /// most [`FLUSH_PATIENCE`]: a sink nobody reads (a stalled pipe) must not keep a process
    /// that is done from exiting.
    pub fn flush(&self) {
        let deadline = std::time::Instant::now() + FLUSH_PATIENCE;
        let (done, written) = sync_channel(1);
        let mut item = Item::Flushed(done);
        loop {
            match self.queue.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(REST);
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// `line` with the characters that break a line, drive a terminal or hide text written as
/// `\\uXXXX` (a surrogate pair past the first plane, as JSON writes them): Unicode's line breaks (U+0085, U+2028,
/// U+2029), which `splitlines()` and many log viewers split on; the C1 controls (U+0080 to U+009F,
/// U+009B is `ESC [`); and what shows nothing or reorders text: the bidirectional controls
/// (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), zero-width and invisible
/// characters (U+00AD, U+034F, U+115F, U+1160, U+180E, U+200B to U+200D, U+2060 to U+206F,
/// U+3164, U+FEFF, U+FFA0, U+FFF9 to U+FFFB, U+17B4, U+17B5, U+2800, U+1D173 to U+1D17A),
/// variation selectors (U+FE00 to U+FE0F, U+E0100 to U+E01EF: an emoji's U+FE0F shows as its
/// escape) and tag characters (U+E0000 to U+E007F, which smuggle ASCII unseen). `/ad\\u{200b}min` read as `/admin`, and U+202E reversed what followed.
/// A peer chooses them (a path, a header, a claim); serde_json and the text log's formatter
/// write them raw, and inside a JSON string or a log line the escape is what a reader shows. Bytes
/// that are not UTF-8 are left as they are. Borrowed when there is none: ASCII lines are checked
/// at the speed of `is_ascii`.
pub fn invisible_escaped(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    fn hidden(c: char) -> bool {
        matches!(c,
            '\u{80}'..='\u{9f}' | '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}'
            | '\u{feff}' | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}'
            | '\u{17b4}' | '\u{17b5}' | '\u{2800}' | '\u{fe00}'..='\u{fe0f}' | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0100}'..='\u{e01ef}')
    }
    if line.is_ascii() {
        return Cow::Borrowed(line);
    }
    if !line.utf8_chunks().any(|chunk| chunk.valid().chars().any(hidden)) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            match (hidden(c), c as u32) {
                (false, _) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                (true, n @ ..=0xffff) => out.extend_from_slice(format!("\\u{n:04x}").as_bytes()),
                // As JSON writes it: a surrogate pair.
                (true, n) => {
                    let (hi, lo) = (0xd800 + ((n - 0x10000) >> 10), 0xdc00 + ((n - 0x10000) & 0x3ff));
                    out.extend_from_slice(format!("\\u{hi:04x}\\u{lo:04x}").as_bytes())
                }
            }
        }
        out.extend_from_slice(chunk.invalid());
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside tester q2: `/x\u{2028}\u{85}INFO forged line` split a JSON line and the text log
    /// for readers that split on Unicode line breaks; `\u{202e}` reversed the rest of a line.
    #[test]
    fn unicode_line_breaks_and_invisible_controls_are_escaped() {
        let line =
            "{\"path\":\"/x\u{2028}\u{85}INFO\u{2002}forged /ad\u{200b}min /invoice\u{202e}exe.txt caf\u{e9}\"}\n";
        let out = invisible_escaped(line.as_bytes());
        let out = std::str::from_utf8(&out).unwrap();
        assert_eq!(out.lines().count(), 1);
        assert_eq!(out.split(['\u{2028}', '\u{2029}', '\u{85}']).count(), 1, "{out}");
        assert!(
            out.contains("/x\\u2028\\u0085INFO") && out.contains("/ad\\u200bmin") && out.contains("\\u202eexe"),
            "{out}"
        );
        assert!(out.contains("caf\u{e9}") && out.contains('\u{2002}'), "other characters stay as they are: {out}");
        // Still JSON, and it reads back as what was escaped.
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        assert_eq!(
            v["path"].as_str().unwrap(),
            "/x\u{2028}\u{85}INFO\u{2002}forged /ad\u{200b}min /invoice\u{202e}exe.txt caf\u{e9}"
        );
        // The review's and tester s2's: C1 controls, the soft hyphen, tag characters, Hangul
        // fillers; and lines that are not all UTF-8 are escaped where they are.
        let more = "/\u{9b}2J /ad\u{ad}min \u{e0041}\u{e0042} \u{3164}x \u{206a}";
        let out = String::from_utf8(invisible_escaped(more.as_bytes()).into_owned()).unwrap();
        assert_eq!(out, "/\\u009b2J /ad\\u00admin \\udb40\\udc41\\udb40\\udc42 \\u3164x \\u206a");
        let tagged = ["{\"p\":\"", "\u{e0041}", "\"}"].concat();
        let v: serde_json::Value = serde_json::from_slice(&invisible_escaped(tagged.as_bytes())).unwrap();
        assert_eq!(v["p"], "\u{e0041}", "still JSON, and the same text");
        let mut broken = b"\xff/x\xe2\x80\xa8y".to_vec();
        broken.push(b'\n');
        assert_eq!(&*invisible_escaped(&broken), b"\xff/x\\u2028y\n");
        let t1 = "a\u{fe0f}b\u{2800}c\u{17b4}d\u{1d173}";
        let out = String::from_utf8(invisible_escaped(t1.as_bytes()).into_owned()).unwrap();
        assert_eq!(out, "a\\ufe0fb\\u2800c\\u17b4d\\ud834\\udd73", "tester t1's");
        for clean in ["{\"a\":1}\n", "caf\u{e9}\n", "\u{1f600} \u{2764}\n"] {
            assert!(matches!(invisible_escaped(clean.as_bytes()), std::borrow::Cow::Borrowed(_)));
        }
    }

    #[test]
    fn a_sink_that_fails_loses_lines_counted_never_silently() {
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let lines = JsonLines::start("t", &EventSink::File("/dev/full".into()), dropped.clone()).unwrap();
        for round in 1..=3u64 {
            lines.send(&serde_json::json!({"round": round}));
            lines.flush();
            assert_eq!(dropped.get(), round, "every line the sink refused is counted");
        }
    }

    /// A sink that takes `room` bytes, then fails (a full disk) until room is made again.
    struct Filling {
        taken: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        room: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Filling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            use std::sync::atomic::Ordering;
            let room = self.room.load(Ordering::Acquire);
            if room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = buf.len().min(room);
            self.room.fetch_sub(n, Ordering::AcqRel);
            self.taken.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write cut short leaves part of a line in the sink: the next line starts a line of its
    /// own (it was once glued to the fragment, and lost to a SIEM that refused the mix).
    #[test]
    fn a_line_cut_by_a_full_sink_does_not_swallow_the_next() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let room = std::sync::Arc::new(AtomicUsize::new(20));
        let sink = Filling { taken: taken.clone(), room: room.clone() };
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let lines = JsonLines::start_on("t", Box::new(sink), dropped.clone()).unwrap();
        lines.send(&serde_json::json!({"n": 1}));
        lines.send(&serde_json::json!({"n": 2, "pad": "a line too long for the room left"}));
        lines.flush();
        assert_eq!(dropped.get(), 1, "the line cut short is counted lost; the one written is not");
        room.store(1 << 20, Ordering::Release);
        lines.send(&serde_json::json!({"n": 3}));
        lines.flush();
        let text = String::from_utf8(taken.lock().unwrap().clone()).unwrap();
        let parsed: Vec<Option<serde_json::Value>> = text.lines().map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(parsed.len(), 3, "{text:?}");
        assert_eq!(parsed[0], Some(serde_json::json!({"n": 1})));
        assert_eq!(parsed[1], None, "the fragment stands alone: {text:?}");
        assert_eq!(parsed[2], Some(serde_json::json!({"n": 3})), "the next line is whole: {text:?}");
    }
}
