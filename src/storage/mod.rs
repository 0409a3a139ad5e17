//! The data directory: what is in it and under which names ([`layout`]),
//! the public Parquet schema ([`schema`]), writing files durably with their
//! token indexes ([`write`], [`index`]), reading them back ([`read`],
//! [`published`], and a lookup's few rows straight from their pages:
//! [`direct`]), compacting closed days ([`compact`], [`manifest`]) and
//! finishing what a crash interrupted ([`recover`]).
//!
//! Everything that appears in the data directory is complete and durable
//! under its final name (written under a hidden temporary, fsynced, renamed,
//! directory fsynced); readers see a day either before or after a
//! compaction, never half; and no name or clear column ever holds a raw
//! identifier. `docs/storage-format.md` describes the files.

pub mod checkpoint;
pub mod compact;
pub mod config;
pub mod direct;
mod encodings;
pub mod error;
pub mod index;
pub mod layout;
pub mod manifest;
pub mod published;
pub mod read;
pub mod recover;
pub mod schema;
mod thrift;
pub mod write;
