//! The loop shared by everything the vault re-reads from files while it runs (the keyring,
//! the providers' client secrets): a check every `every` (never, if zero) and at once on SIGHUP,
//! until stopped.
//!
//! Why polling (plus SIGHUP): Kubernetes updates a mounted secret by swapping a symlink, and
//! nothing signals the process; a SIGHUP needs a sidecar or an operator. Each check decides for
//! itself what changed (by content, not mtime, which the symlink swap makes unreliable), and
//! logs and counts what it took or refused.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// Runs `check(&mut state)` every `every` and on SIGHUP until `stop`. `what` names the files in
/// the log. Each caller listens for SIGHUP on its own: every listener sees every signal.
pub async fn watch<S>(
    what: &'static str,
    every: Duration,
    stop: CancellationToken,
    mut state: S,
    check: fn(&mut S) -> BoxFuture<'_, ()>,
) {
    let mut hangup = hangup_signal(what);
    tracing::info!(?every, "watching {what} for changes (and SIGHUP)");
    loop {
        tokio::select! {
            _ = tick(every) => {}
            Some(()) = next_hangup(&mut hangup) => tracing::info!("SIGHUP: checking {what}"),
            _ = stop.cancelled() => return,
        }
        check(&mut state).await;
    }
}

async fn tick(every: Duration) {
    if every.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(every).await;
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal(what: &str) -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; {what} is only polled"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal(_what: &str) -> Hangup {
    None
}

/// The next SIGHUP; never resolves when there is no signal stream.
async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        return signal.recv().await;
    }
    #[cfg(not(unix))]
    let _ = hangup;
    std::future::pending().await
}
