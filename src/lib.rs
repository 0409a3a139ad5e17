//! cdrvault: lawful, private retention of telecom call-detail records.
//!
//! The folders are the architecture (ARCHITECTURE.md is the map):
//!
//! - [`model`]: the vocabulary (records, identifiers, time, the retention rule);
//! - [`ops`]: clock, durable files, metrics and health, jobs, shutdown, worker pool;
//! - [`keys`]: key custody (master, token, day and record keys; sealing);
//! - [`privacy`]: canonical forms, targets and keyed tokens;
//! - [`storage`]: the data directory (layout, schema, writing, reading, index, compaction);
//! - [`ingest`]: Kafka to durable Parquet;
//! - [`registry`]: authorities, principals, warrants, requests and orders, behind traits;
//! - [`audit`]: the tamper-evident trail;
//! - [`lifecycle`]: retention and preservation orders;
//! - [`access`]: lawful access (authorisation, warrants, requests, lookup, the gRPC API);
//! - [`tools`]: synthetic data, producer, demo, import;
//! - [`cli`]: the command line and the composition root of the service.

pub mod access;
pub mod audit;
pub mod cli;
pub mod ingest;
pub mod keys;
pub mod lifecycle;
pub mod model;
pub mod ops;
pub mod privacy;
pub mod registry;
pub mod storage;
pub mod tools;

/// Types generated from `proto/cdrvault/v1/*.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/cdrvault.v1.rs"));
}
