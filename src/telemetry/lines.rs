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
            EventSink::File(path) => Box::new(crate::files::open_append(path)?),
        };
        let (queue, rx) = sync_channel::<Item>(QUEUE);
        let lost = dropped.clone();
        let name = thread.to_string();
        std::thread::Builder::new().name(thread.into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
            let mut failing = false;
            let mut waiting = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut lines = 0;
                let mut written = Ok(());
                for item in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    match item {
                        Item::Line(line) => {
                            lines += 1;
                            written = written.and_then(|_| out.write_all(&line));
                        }
                        Item::Flushed(done) => waiting.push(done),
                    }
                }
                // A failed write (disk full, a closed pipe) loses this batch, not the writer: the
                // lines are counted, the failure is logged once, and the next batch tries again.
                match written.and_then(|_| out.flush()) {
                    Ok(()) => failing = false,
                    Err(e) => {
                        lost.inc_by(lines);
                        if !failing {
                            tracing::error!(writer = %name, error = %e, "cannot write; lines are dropped and counted until it works again");
                        }
                        failing = true;
                        // What the sink did not take would only repeat with the next batch.
                        out = std::io::BufWriter::with_capacity(64 * 1024, out.into_parts().0);
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
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(Item::Line(line)) {
            self.dropped.inc();
        }
    }

    /// Waits until every line queued before this call is written, or counted as dropped.
    pub fn flush(&self) {
        let (done, written) = sync_channel(1);
        if self.queue.send(Item::Flushed(done)).is_ok() {
            let _ = written.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
