//! The one shutdown signal of a process.
//!
//! Ctrl-C, SIGTERM, the end of a demo, a fatal error in a background job:
//! each calls [`Shutdown::trigger`], once or many times. Blocking loops (the
//! ingest loop, the Kafka poll) ask [`Shutdown::is_triggered`], a relaxed
//! atomic load that costs nothing on their hot paths; async tasks (the HTTP
//! endpoint, the gRPC server, periodic jobs) await [`Shutdown::wait`],
//! which wakes them at once instead of polling. Every stage then drains
//! what it holds: ingest finishes the batches it fetched and commits their
//! offsets last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// A cloneable handle on the process's shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Set once triggered; read by blocking loops.
    flag: Arc<AtomicBool>,
    /// Wakes the async waiters.
    sender: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (sender, _) = watch::channel(false);
        Shutdown { flag: Arc::new(AtomicBool::new(false)), sender: Arc::new(sender) }
    }

    /// A signal triggered by Ctrl-C or SIGTERM, watched by a thread of its
    /// own so that it works whether or not the caller runs an async runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut term =
            runtime.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) })?;
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            trigger.trigger();
        })?;
        Ok(shutdown)
    }

    /// Asks everything that shares this signal to stop. Idempotent.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.sender.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Completes once the signal is triggered (at once if it already was).
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail
        // with a closed channel here; either way the wait is over.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_when_triggered_from_another_thread() {
        let shutdown = Shutdown::new();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let waiter = {
            let shutdown = shutdown.clone();
            runtime.spawn(async move { shutdown.wait().await })
        };
        assert!(!shutdown.is_triggered());
        let trigger = shutdown.clone();
        std::thread::spawn(move || trigger.trigger()).join().unwrap();
        runtime.block_on(waiter).unwrap();
        assert!(shutdown.is_triggered());
        // A waiter that comes late returns at once.
        runtime.block_on(shutdown.wait());
    }
}
