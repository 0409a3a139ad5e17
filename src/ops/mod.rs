//! What keeps the process running and visible to its operators, for every
//! subsystem: the injected clock, durable file operations, the metrics and
//! their HTTP endpoint, background jobs, the one shutdown signal and the
//! scoped worker pool. Nothing here knows a record, a key or a warrant.

pub mod clock;
pub mod config;
pub mod durable;
pub mod http;
pub mod lease;
pub mod memory;
pub mod metrics;
pub mod periodic;
pub mod pool;
pub mod scrape;
pub mod shutdown;
