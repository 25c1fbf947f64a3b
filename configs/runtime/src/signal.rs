//! Stopping cleanly: the signals a service manager or a person sends.

use std::future::Future;

/// A future that completes on SIGTERM or SIGINT, logging which arrived; the
/// handlers are installed before this returns, so a stop that comes early
/// in start-up is still clean.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("{name}: shutting down cleanly");
    })
}
