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

pub struct JsonLines {
    queue: SyncSender<Vec<u8>>,
    dropped: prometheus::IntCounter,
}

impl JsonLines {
    pub fn start(thread: &str, sink: &EventSink, dropped: prometheus::IntCounter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match sink {
            EventSink::Stdout => Box::new(std::io::stdout()),
            EventSink::Stderr => Box::new(std::io::stderr()),
            EventSink::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (queue, rx) = sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new().name(thread.into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
            while let Ok(line) = rx.recv() {
                let mut written = out.write_all(&line);
                while let (Ok(()), Ok(line)) = (&written, rx.try_recv()) {
                    written = out.write_all(&line);
                }
                if written.and_then(|_| out.flush()).is_err() {
                    break;
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
        if let Err(TrySendError::Full(_)) = self.queue.try_send(line) {
            self.dropped.inc();
        }
    }
}
