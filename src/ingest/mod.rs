//! Ingest: CDRs from Kafka to durable, pseudonymised Parquet.
//!
//! ```text
//! source ──► decode ──► process (tokenise, columns) ──► storage::write ──► checkpoint
//!   │           └─ refused ─► dead_letter
//! ```
//!
//! [`source`] polls the consumer group into bounded batches; [`process`]
//! decodes and validates each record ([`decode`]), builds the columns of
//! each day ([`columns`]) and writes each day's file; [`dead_letter`] sends
//! refused records to their topic; [`run`] orders the steps; [`checkpoint`]
//! decides where the source may resume. The invariant this folder keeps:
//! an offset moves only after every record below it is in a durable file or
//! acknowledged by the dead-letter topic. An fsync error stops the loop.

pub mod checkpoint;
pub mod columns;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod ownership;
pub mod process;
pub mod run;
pub mod source;

pub use run::{Ingest, IngestReport, StopAfter};
