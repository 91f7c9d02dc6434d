//! How a process of Palisade lives: runtimes and threads, listeners bound before anything runs,
//! readiness, polling files off the runtime, stopping on a signal or a request, and why it did
//! not start. The sidecar and the control plane share it; it knows no Palisade type but the
//! configuration's error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::ConfigError;

/// How long tasks left after the drain (a file being read on the blocking pool) may hold the
/// exit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A service running on a thread of its own, stopped through a watch channel.
pub struct Running {
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn new(shutdown: watch::Sender<bool>, thread: std::thread::JoinHandle<()>) -> Self {
        Running { shutdown, thread: Some(thread) }
    }

    pub fn stop(&mut self) {
        self.shutdown.send_replace(true);
        self.wait();
    }

    pub fn wait(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The readiness conditions; `/ready` answers 200 only when all hold.
#[derive(Default)]
pub struct Readiness {
    pub listeners: AtomicBool,
    pub draining: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.listeners.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    Ok(runtime)
}

/// Raises the soft limit on open files to the hard one (at most 2^20) and returns the limit in
/// force. Every connection is a file, and containers often start at a soft 1,024 (containerd 2,
/// systemd): a few hundred connections used that up, and then no listener could accept, the
/// admin port's probes included. Go raises it for its programs at start; so does this.
#[allow(unsafe_code)] // see the SAFETY notes
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let wanted = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given; a soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    limit.rlim_cur
}

/// Binds before the runtime starts, so a taken port fails `start` rather than a task.
pub fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("{field}: cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The signals that stop a process of ours gracefully: SIGTERM (Kubernetes, `kill`), SIGINT
/// (Ctrl-C) and SIGHUP (its terminal closed), whose default action would end it at once.
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// From here on the three signals are caught, not left to their default action.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them, by name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// Waits for a [`StopSignals`] signal (when `handle_signals`) or for `stop`; false when the
/// signal handlers cannot be installed.
pub async fn stop_requested(handle_signals: bool, mut stop: watch::Receiver<bool>) -> bool {
    if handle_signals {
        let mut signals = match StopSignals::install() {
            Ok(signals) => signals,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return false;
            }
        };
        tokio::select! {
            signal = signals.next() => tracing::info!("{signal}: draining"),
            _ = stop.wait_for(|s| *s) => {}
        }
    } else {
        let _ = stop.wait_for(|s| *s).await;
    }
    true
}

/// Runs `check` on the blocking pool every `every` (it reads files: a slow disk must never stall
/// requests) and hands its result to `handle` on the runtime, until `stop` turns true.
pub async fn poll_files<T, C, H>(every: Duration, mut stop: watch::Receiver<bool>, check: C, mut handle: H)
where
    T: Send + 'static,
    C: Fn() -> T + Clone + Send + 'static,
    H: FnMut(T),
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match tokio::task::spawn_blocking(check.clone()).await {
            Ok(result) => handle(result),
            Err(e) => tracing::error!(error = %e, "file watcher task failed"),
        }
    }
}

/// Why a sidecar or control plane did not start, and the exit status that says so.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a file it names) is wrong: every mistake, each located.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// The configuration is good but the system refused (a port taken, no threads).
    #[error("{0:#}")]
    System(anyhow::Error),
}

impl StartError {
    /// sysexits: EX_CONFIG (78) for configuration, EX_OSERR (71) for the system.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 78,
            StartError::System(_) => 71,
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::System(e.into())
    }
}
