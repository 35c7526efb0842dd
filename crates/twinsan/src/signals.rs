//! Stopping on SIGTERM or SIGINT for the commands that run until told to stop without a runtime of their own
//! (`twinsan witness`, `twinsan demo`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

/// A flag raised by SIGTERM or SIGINT, watched by a thread of its own; the handlers are in place on return.
pub fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    let (mut term, mut int) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let raised = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            info!("signal received: shutting down");
            raised.store(true, Ordering::SeqCst);
        })
        .context("starting the signal watcher")?;
    Ok(stop)
}
