//! The service's background jobs (retention sweeps, compaction): one run at
//! start and then one every interval, each on a blocking thread, until the
//! shutdown signal. A failed run is logged and retried at the next tick,
//! except a fatal one (a failed fsync: the state of the disk is unknown),
//! which triggers the shutdown and so stops the whole service.

use std::sync::Arc;
use std::time::Duration;

use super::shutdown::Shutdown;

/// A job the service runs periodically.
pub trait Job: Send + Sync + 'static {
    type Report: Send + 'static;
    type Error: std::fmt::Display + Send + 'static;

    /// The job's name in logs.
    const NAME: &'static str;

    /// One run. Blocks.
    fn run_once(&self) -> Result<Self::Report, Self::Error>;

    /// True for an error after which the process must stop.
    fn is_fatal(error: &Self::Error) -> bool;

    /// Logs what a successful run did.
    fn log(report: &Self::Report);
}

/// Runs `job` at start and then every `interval` until `shutdown`.
pub async fn run_periodically<J: Job>(job: Arc<J>, interval: Duration, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => return,
        }
        let task = Arc::clone(&job);
        match tokio::task::spawn_blocking(move || task.run_once()).await {
            Ok(Ok(report)) => J::log(&report),
            Ok(Err(e)) if J::is_fatal(&e) => {
                tracing::error!(job = J::NAME, reason = %e, "fatal error; stopping the service");
                shutdown.trigger();
                return;
            }
            Ok(Err(e)) => tracing::error!(job = J::NAME, reason = %e, "failed; retrying at the next interval"),
            Err(e) => tracing::error!(job = J::NAME, reason = %e, "panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails as told by its run number: `Err(true)` is fatal.
    struct Scripted {
        runs: AtomicUsize,
        outcome: fn(usize) -> Result<(), bool>,
        shutdown: Shutdown,
    }

    impl Job for Scripted {
        type Report = ();
        type Error = String;
        const NAME: &'static str = "scripted";

        fn run_once(&self) -> Result<(), String> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run == 5 {
                // Enough: the service is asked to stop.
                self.shutdown.trigger();
            }
            (self.outcome)(run).map_err(|fatal| if fatal { "fatal".to_string() } else { "transient".to_string() })
        }

        fn is_fatal(error: &String) -> bool {
            error == "fatal"
        }

        fn log(_: &()) {}
    }

    fn run(outcome: fn(usize) -> Result<(), bool>) -> (usize, bool) {
        let shutdown = Shutdown::new();
        let job = Arc::new(Scripted { runs: AtomicUsize::new(0), outcome, shutdown: shutdown.clone() });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_periodically(Arc::clone(&job), Duration::from_millis(1), shutdown.clone()));
        (job.runs.load(Ordering::SeqCst), shutdown.is_triggered())
    }

    #[test]
    fn a_fatal_error_stops_the_service_at_once() {
        let (runs, stopped) = run(|run| if run == 2 { Err(true) } else { Ok(()) });
        assert_eq!(runs, 2, "no run after the fatal one");
        assert!(stopped, "the whole service is told to stop");
    }

    #[test]
    fn other_errors_are_retried_until_the_service_stops() {
        let (runs, stopped) = run(|run| if run < 4 { Err(false) } else { Ok(()) });
        assert!(runs >= 5, "runs went on after three failures: {runs}");
        assert!(stopped);
    }
}
