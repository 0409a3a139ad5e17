//! cdrvault: lawful, private retention of telecom call-detail records.
//!
//! Records flow from Kafka ([`source`]) through decoding and validation
//! ([`decode`]), pseudonymisation ([`pseudonymise`], with keys from [`keys`])
//! into date-partitioned Parquet ([`write`]); Kafka offsets move only once
//! the files are durable ([`checkpoint`]). [`pipeline`] wires the stages
//! together. See ARCHITECTURE.md for the map and the invariants.

pub mod access;
pub mod api;
pub mod audit;
pub mod checkpoint;
pub mod client;
pub mod clock;
pub mod compact;
pub mod config;
pub mod decode;
pub mod deliver;
pub mod demo;
pub mod durable;
pub mod import;
pub mod index;
pub mod ingest;
pub mod keys;
pub mod lookup;
pub mod metrics;
pub mod models;
pub mod orders;
pub mod periodic;
pub mod pipeline;
pub mod preserve;
pub mod produce;
pub mod pseudonymise;
pub mod read;
pub mod registry;
pub mod requests;
pub mod retention;
pub mod service;
pub mod source;
pub mod synth;
pub mod write;

/// Types generated from `proto/cdrvault/v1/*.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/cdrvault.v1.rs"));
}
