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
        self.why_not().is_none()
    }

    /// What `/ready` says when these do not hold: a probe's log then tells a pod that is going
    /// away from one that never came up.
    pub fn why_not(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("not ready: draining (stopping); new connections go to other replicas")
        } else if !self.listeners.load(Ordering::Acquire) {
            Some("not ready: the listeners are not up yet")
        } else {
            None
        }
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

/// One configured listen address as sockets: the address itself and, for a wildcard or loopback
/// address on a host with both families, its [`family_counterpart`] at the same port. One socket
/// per family, because an IPv4 connection accepted on a dual-stack socket comes as an
/// IPv6-mapped address and loses its original destination (the iptables REDIRECT of an injected
/// pod).
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<std::net::TcpListener>,
}

impl Listener {
    /// The configured address, with the port it got.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    /// Every address it listens on, the configured one first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Its sockets on the current runtime.
    pub fn into_async(self) -> AsyncListener {
        let sockets = self
            .sockets
            .into_iter()
            .map(|s| tokio::net::TcpListener::from_std(s).expect("listener joins the runtime"))
            .collect();
        AsyncListener { sockets, next: 0 }
    }
}

/// A socket bound elsewhere, alone (its family only); made non-blocking.
impl TryFrom<std::net::TcpListener> for Listener {
    type Error = std::io::Error;
    fn try_from(socket: std::net::TcpListener) -> std::io::Result<Listener> {
        socket.set_nonblocking(true)?;
        Ok(Listener { sockets: vec![socket] })
    }
}

/// A [`Listener`] on the runtime: one accept over its sockets.
#[derive(Debug)]
pub struct AsyncListener {
    sockets: Vec<tokio::net::TcpListener>,
    /// The socket asked first next time, so a flood on one family does not starve the other.
    next: usize,
}

impl AsyncListener {
    pub async fn accept(&mut self) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| {
            let count = self.sockets.len();
            for i in 0..count {
                let k = (self.next + i) % count;
                if let std::task::Poll::Ready(accepted) = self.sockets[k].poll_accept(cx) {
                    self.next = (k + 1) % count;
                    return std::task::Poll::Ready(accepted);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The configured address, with the port it got.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }
}

/// The same address in the other IP family: the wildcard (`0.0.0.0`, `::`) and loopback
/// (`127.0.0.1`, `::1`) have one; other addresses have none.
pub fn family_counterpart(ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED) => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        IpAddr::V4(Ipv4Addr::LOCALHOST) => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED) => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpAddr::V6(Ipv6Addr::LOCALHOST) => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        _ => None,
    }
}

/// Binds before the runtime starts, so a taken port fails `start` rather than a task. A wildcard
/// or loopback address is bound in both families at one port, each socket for its own family; the
/// other family is left out only where the host lacks it (no such family, or no loopback address
/// in it). Taken, it fails like the address itself: the pod's connections of that family would
/// otherwise reach whatever holds it.
pub fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<Listener> {
    // With port 0 the other family takes the port the first picked, which some other socket may hold there.
    const PICKS: usize = 8;
    for pick in 1..=PICKS {
        let first = bind_one_family(addr).with_context(|| format!("{field}: cannot listen on {addr}"))?;
        let Some(ip) = family_counterpart(addr.ip()) else {
            return Ok(Listener { sockets: vec![first] });
        };
        let other = SocketAddr::new(ip, first.local_addr()?.port());
        let family = if other.is_ipv6() { "IPv6" } else { "IPv4" };
        match bind_one_family(other) {
            Ok(second) => return Ok(Listener { sockets: vec![first, second] }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) => {
                tracing::info!(%addr, error = %e, "no {family} on this host; {field} listens on {addr} alone");
                return Ok(Listener { sockets: vec![first] });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 0 && pick < PICKS => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{field}: cannot listen on {other}, the {family} side of {addr}"))
            }
        }
    }
    unreachable!("the last pick returns")
}

/// A listening socket that takes connections of its address's family only (an IPv6 one is
/// IPV6_V6ONLY, whatever `net.ipv6.bindv6only` says), with the kernel's longest accept queue
/// (`SOMAXCONN`, capped by `net.core.somaxconn`) for both: std's `bind` asks for 128, and a burst
/// of connections (a pool opening at once) overflowed it, stalling new ones for a second or more
/// on IPv4 while IPv6 took them at once.
fn bind_one_family(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(libc::SOMAXCONN)?;
    Ok(socket.into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    #[test]
    fn both_families_listen_with_the_kernels_longest_accept_queue() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        let expected = somaxconn.min(libc::SOMAXCONN as usize);
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = bind_one_family(addr.parse().unwrap()) else { continue }; // no IPv6 here
            let port = listener.local_addr().unwrap().port();
            // ss shows a listening socket's queue length as its Send-Q.
            let Ok(out) = std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output() else {
                eprintln!("no ss here; not checked");
                return;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let queue: Vec<usize> = text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse().ok()).collect();
            assert_eq!(queue, [expected], "{addr}: {text}");
        }
    }

    /// Whether this host can listen on `::1` at all; where it cannot, the IPv4 socket must serve alone.
    fn host_has_ipv6_loopback() -> bool {
        match bind_one_family(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)) {
            Ok(_) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)) => false,
            Err(e) => panic!("probing ::1: {e}"),
        }
    }

    #[tokio::test]
    async fn loopback_listens_on_both_families_at_one_port_and_accepts_on_each() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test.listen").unwrap();
        let addresses = listener.addresses();
        let port = listener.local_addr().unwrap().port();
        let mut expected = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        if host_has_ipv6_loopback() {
            expected.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
        }
        assert_eq!(addresses, expected);
        let mut accepting = listener.into_async();
        for address in &expected {
            let _client = tokio::net::TcpStream::connect(address).await.unwrap();
            let (_, peer) = accepting.accept().await.unwrap();
            assert_eq!(peer.is_ipv6(), address.is_ipv6(), "{address}: accepted from {peer}");
        }
    }

    #[test]
    fn an_address_of_its_own_gets_no_second_socket() {
        // Another loopback address than 127.0.0.1 names one family on purpose.
        let listener = bind("127.0.0.2:0".parse().unwrap(), "test.listen").unwrap();
        assert_eq!(listener.addresses().len(), 1);
        assert_eq!(family_counterpart("10.0.0.1".parse().unwrap()), None);
        assert_eq!(family_counterpart("fd00::1".parse().unwrap()), None);
        assert_eq!(family_counterpart("0.0.0.0".parse().unwrap()), Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(family_counterpart("::".parse().unwrap()), Some("0.0.0.0".parse().unwrap()));
    }

    #[tokio::test]
    async fn ipv6_loopback_configured_listens_on_ipv4_loopback_too_each_socket_for_its_family() {
        if !host_has_ipv6_loopback() {
            return;
        }
        let listener = bind("[::1]:0".parse().unwrap(), "test.listen").unwrap();
        let port = listener.local_addr().unwrap().port();
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(listener.addresses(), vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port), v4]);
        // The IPv4 connection is accepted as IPv4 (its original destination readable), not as an
        // IPv6-mapped address on the IPv6 socket.
        let mut accepting = listener.into_async();
        let _client = tokio::net::TcpStream::connect(v4).await.unwrap();
        let (stream, peer) = accepting.accept().await.unwrap();
        assert!(peer.is_ipv4() && stream.local_addr().unwrap() == v4, "{peer}");
    }

    #[test]
    fn a_taken_ipv6_side_of_a_configured_port_fails_the_bind_with_both_names() {
        if !host_has_ipv6_loopback() {
            // Without IPv6 nothing can hold the IPv6 side; the test above covers the IPv4-only bind.
            return;
        }
        let held = bind_one_family(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let err = bind(SocketAddr::from(([127, 0, 0, 1], port)), "outbound.listen").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("outbound.listen") && text.contains(&format!("[::1]:{port}")), "{text}");
        assert!(text.contains("the IPv6 side of 127.0.0.1"), "{text}");
    }
}
