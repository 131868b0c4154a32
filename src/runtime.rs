//! The process runtime both programs share: binding a listener, waiting for a shutdown
//! signal, periodic background tasks, and the startup error whose exit code the README
//! documents (2 for invalid configuration, 1 for a runtime failure).

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

/// Runs `task` every `interval` (first run one interval from now), forever; a slow
/// run delays the next instead of piling up.
pub fn every<F, Fut>(interval: std::time::Duration, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            task().await;
        }
    });
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

#[cfg(test)]
mod tests {
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
}
