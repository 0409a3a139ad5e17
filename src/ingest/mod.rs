//! Ingest: CDRs from Kafka to durable, pseudonymised Parquet, exactly once.
//!
//! ```text
//! source ──► decode ──► process (tokenise, columns) ──► storage::write (staged)
//!   │  │        └─ refused ─► dead_letter                   │
//!   │  └─ ownership: claims, cursors ◄──── storage::checkpoint (files + offsets, one commit)
//!   └─ Kafka offsets (monitoring) ◄─────────────────────────┘
//! ```
//!
//! [`source`] polls the consumer group into bounded batches, each with the
//! offset range of every partition it took; [`ownership`] claims every
//! assignment in the checkpoint and seeks it there; [`process`] decodes
//! and validates each record ([`decode`]), builds the columns of each day
//! ([`columns`]) and stages each day's file; [`dead_letter`] sends refused
//! records to their topic; [`run`] orders the steps and commits; and
//! [`checkpoint`] keeps Kafka's own offsets following, for monitoring. The
//! invariant this folder keeps: a record is stored once, and a batch
//! commits only after its files are durable and its refusals acknowledged
//! by the dead-letter topic. An fsync error stops the loop.

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
