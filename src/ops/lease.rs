//! The maintenance lease: of several instances sharing a data directory,
//! only the holder runs retention and compaction, so two sweepers never
//! race over one day.
//!
//! On a file system the lease is an exclusive `flock` on one file, taken
//! without waiting and held while the process lives. The kernel releases it
//! when the holder dies, even by `kill -9`: the lease expires with its
//! holder, and the next instance to try takes it over at its next run. A
//! holder that is stopped (SIGSTOP) but alive keeps it: maintenance pauses,
//! it never doubles (the retention alerts see the pause). On object storage
//! the same lease is an object with an expiry, renewed by its holder and
//! taken over through a conditional write once expired.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::durable;
use super::metrics::Metrics;
use super::periodic::Job;

/// A lease over one lock file.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    held: Mutex<Option<File>>,
    metrics: Arc<Metrics>,
}

impl Lease {
    pub fn new(path: &Path, metrics: Arc<Metrics>) -> Self {
        Lease { path: path.to_path_buf(), held: Mutex::new(None), metrics }
    }

    /// True if this process holds the lease, taking it if it is free. An
    /// error taking it counts as not held (and is logged).
    pub fn hold(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return true;
        }
        match self.try_take() {
            Ok(Some(file)) => {
                *held = Some(file);
                self.metrics.maintenance_leader.set(1);
                self.metrics.maintenance_lease_acquired.inc();
                tracing::info!("maintenance lease taken: retention and compaction run on this instance");
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(reason = %e, "cannot take the maintenance lease");
                false
            }
        }
    }

    /// True while held.
    pub fn is_held(&self) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn try_take(&self) -> Result<Option<File>, durable::DurableError> {
        durable::try_lock(&self.path)
    }
}

/// A periodic job that runs only on the lease holder.
pub struct Leased<J> {
    job: Arc<J>,
    lease: Arc<Lease>,
}

impl<J> Leased<J> {
    pub fn new(job: Arc<J>, lease: Arc<Lease>) -> Self {
        Leased { job, lease }
    }
}

impl<J: Job> Job for Leased<J> {
    /// `None` when another instance holds the lease.
    type Report = Option<J::Report>;
    type Error = J::Error;

    const NAME: &'static str = J::NAME;

    fn run_once(&self) -> Result<Self::Report, Self::Error> {
        if !self.lease.hold() {
            return Ok(None);
        }
        self.job.run_once().map(Some)
    }

    fn is_fatal(error: &Self::Error) -> bool {
        J::is_fatal(error)
    }

    fn log(report: &Self::Report) {
        if let Some(report) = report {
            J::log(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_lease_passes_when_the_holder_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("maintenance.lock");
        let (a, b) = (Lease::new(&path, Metrics::new()), Lease::new(&path, Metrics::new()));
        assert!(a.hold(), "a free lease is taken");
        assert!(a.hold(), "and kept");
        assert!(!b.hold(), "a held lease is not taken by another");
        assert!(!b.is_held());
        drop(a);
        assert!(b.hold(), "the holder gone, the lease passes");
        assert_eq!(b.metrics.maintenance_lease_acquired.get(), 1);
        assert_eq!(b.metrics.maintenance_leader.get(), 1);
    }
}
