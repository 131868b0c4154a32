//! The process runtime both programs share: binding a listener and serving it within
//! connection limits, waiting for a shutdown signal, periodic background tasks, and the
//! startup error whose exit code the README documents (2 for invalid configuration, 1
//! for a runtime failure).

use std::sync::Arc;
use std::time::Duration;

pub mod framing;

/// Why the STS or the shim could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// The process exit code (README, "Command line").
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Runtime(_) => 1,
        }
    }
}

/// Refuses to start (exit 2) unless `path`, the value of configuration key `key` in
/// `source`, is a readable directory (`dir`) or file: a typo in a path is caught at
/// start with the key, the path and the OS's reason, not as a server that runs unready.
pub fn require_path(
    source: &str,
    key: &str,
    path: &std::path::Path,
    dir: bool,
) -> Result<(), StartError> {
    let fail = |reason: String| {
        StartError::Config(format!("{source}: {key}: {}: {reason}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if dir {
        if !meta.is_dir() {
            return Err(fail("not a directory".into()));
        }
        std::fs::read_dir(path).map_err(|e| fail(e.to_string()))?;
    } else {
        if !meta.is_file() {
            return Err(fail("not a file".into()));
        }
        std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// `error` and its causes, `: `-separated (an OS error under a path error, say).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs `task` every `interval` (first run one interval from now) until the returned
/// handle is aborted (a tenant's refreshers stop with it); a slow run delays the next
/// instead of piling up.
pub fn every<F, Fut>(interval: std::time::Duration, task: F) -> tokio::task::AbortHandle
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            task().await;
        }
    });
    handle.abort_handle()
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Binds `addr`, naming it on failure.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))
}

/// Binds `addr` and serves `router` there in the background until the process ends:
/// the admin listener of the STS (`server.admin_listen`) and of the shim
/// (`shim.admin_listen`), where `/healthz`, `/readyz` and `/metrics` are kept off the
/// public port. Logs `{program} admin serving` with the bound address (port 0 picks
/// one) and returns it.
pub async fn serve_admin(
    program: &'static str,
    addr: std::net::SocketAddr,
    router: axum::Router,
    limits: ConnectionLimits,
) -> Result<std::net::SocketAddr, StartError> {
    let listener = bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    tracing::info!(listen = %local, "{program} admin serving");
    tokio::spawn(async move {
        if let Err(e) = serve(listener, router, limits, std::future::pending()).await {
            tracing::error!(error = %e, "{program} admin listener stopped");
        }
    });
    Ok(local)
}

/// What bounds the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's header section (idle keep-alive included).
    pub header_read_timeout: Duration,
    /// Open connections at most, before the descriptor reserve lowers it.
    pub max_connections: usize,
    /// Open connections at most from one peer address.
    pub max_connections_per_peer: usize,
    /// Largest header section a request may have; hyper's read buffer is bounded by it.
    pub header_bytes: usize,
    /// Longest a connection stays open, whatever it does (a client that stops reading
    /// its answer holds a slot no longer than this).
    pub max_connection_age: Duration,
}

/// File descriptors kept for everything but client connections: the keyring and
/// catalogue refreshers, Vault, JWKS fetches, the audit log, the upstream.
pub const FD_RESERVE: usize = 128;

/// Serves `router` on `listener` until `shutdown` completes, HTTP/1.1, within
/// `limits`: a connection that does not send a whole header section within
/// `header_read_timeout` is closed (so half-sent requests and idle keep-alive
/// connections cannot pile up); at most `max_connections` are open (lowered so that
/// [`FD_RESERVE`] descriptors stay free under `RLIMIT_NOFILE`), further ones wait in
/// the kernel's backlog; a peer beyond `max_connections_per_peer` has its new
/// connections closed at once. A connection lives at most `max_connection_age`. IPv6
/// peers are counted per /64. In-flight requests finish on shutdown, for at most 10 s.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send,
{
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(effective_max_connections(
        limits.max_connections,
    )));
    let peers = Arc::new(PeerCounts::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_bytes.saturating_mul(2).max(16 * 1024));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(peer_slot) = peers.enter(peer_key(peer.ip()), limits.max_connections_per_peer)
        else {
            tracing::debug!(%peer, "connection refused: too many from this peer");
            continue;
        };
        // Each request carries its connection's framing mark (see [`framing`]).
        let (stream, framing) = framing::FramingWatch::new(stream);
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(framing.clone());
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let max_age = limits.max_connection_age;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(max_age, connection).await;
            drop((permit, peer_slot));
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    Ok(())
}

/// `configured`, lowered so that [`FD_RESERVE`] descriptors stay free under the
/// process's soft `RLIMIT_NOFILE` (read from `/proc/self/limits` where there is one).
fn effective_max_connections(configured: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        });
    match soft {
        Some(soft) => configured.min(soft.saturating_sub(FD_RESERVE).max(1)),
        None => configured,
    }
}

/// The address a per-peer cap counts: an IPv4 address, or an IPv6 address's /64 (one
/// host usually holds a whole /64, so counting single addresses would count nothing).
fn peer_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// Open connections per peer address.
#[derive(Default)]
struct PeerCounts(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One open connection of a peer; dropping it frees the slot.
struct PeerSlot {
    peers: Arc<PeerCounts>,
    ip: std::net::IpAddr,
}

impl PeerCounts {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock().ok()?;
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.peers.0.lock()
            && let Some(count) = counts.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::every;

    /// Starts [`every`] with a task that counts its runs and takes `busy` each.
    fn counting_every(interval: Duration, busy: Duration) -> Arc<AtomicUsize> {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        every(interval, move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(busy).await;
            }
        });
        runs
    }

    /// Lets spawned tasks run at the current (paused) instant.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_runs_one_interval_from_now_then_each_interval() {
        let runs = counting_every(Duration::from_secs(30), Duration::ZERO);
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "not at once");
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(30)).await;
            settle().await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_delays_the_next_instead_of_piling_up() {
        // Each run takes three intervals.
        let runs = counting_every(Duration::from_secs(10), Duration::from_secs(30));
        // 10 s: first run starts; it ends at 40 s; the next starts at 40 s, not in a
        // burst of the ticks missed meanwhile.
        for _ in 0..7 {
            tokio::time::advance(Duration::from_secs(10)).await;
            settle().await;
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "70 s: runs at 10 s and 40 s only"
        );
    }

    #[test]
    fn peers_are_counted_by_ipv4_address_or_ipv6_slash_64() {
        use super::peer_key;
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(peer_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(peer_key(ip("2001:db8:1:2:ffff::9")), ip("2001:db8:1:2::"));
        assert_eq!(peer_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
