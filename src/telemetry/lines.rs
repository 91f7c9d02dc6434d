//! JSON lines written on a thread of their own behind a bounded queue: a slow sink never slows a
//! request; what does not fit is counted and dropped.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use serde_json::Value;

use crate::config::EventSink;

const QUEUE: usize = 4096;

pub struct JsonLines {
    queue: SyncSender<Value>,
    dropped: prometheus::IntCounter,
}

impl JsonLines {
    pub fn start(thread: &str, sink: &EventSink, dropped: prometheus::IntCounter) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match sink {
            EventSink::Stdout => Box::new(std::io::stdout()),
            EventSink::Stderr => Box::new(std::io::stderr()),
            EventSink::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (queue, rx) = sync_channel::<Value>(QUEUE);
        std::thread::Builder::new().name(thread.into()).spawn(move || {
            for record in rx {
                let mut line = serde_json::to_vec(&record).expect("JSON values serialise");
                line.push(b'\n');
                if out.write_all(&line).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        })?;
        Ok(JsonLines { queue, dropped })
    }

    pub fn send(&self, record: Value) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(record) {
            self.dropped.inc();
        }
    }
}
