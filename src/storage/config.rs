//! The `[storage]`, `[parquet]` and `[compaction]` config sections.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Root of the data: `<data_dir>/cdr/dt=YYYY-MM-DD/*.parquet`.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { data_dir: PathBuf::from("cdrvault-data") }
    }
}

/// How files are laid out: the `[parquet]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Rows per row group. Larger groups compress better (one dictionary per
    /// column instead of one per group); lookups find rows through the token
    /// index, so small groups prune little that the index does not.
    pub row_group_rows: usize,
    /// Rows per data page of the columns a lookup does not return (tokens,
    /// volumes).
    pub data_page_rows: usize,
    /// Rows per data page of the columns a lookup returns (record id, times,
    /// service, direction, ports, sealed identifiers): the unit a lookup
    /// decrypts and decodes for each matching row.
    pub lookup_page_rows: usize,
    /// zstd level, 1 (fast) to 22 (small), of compacted files and of
    /// preservation copies.
    pub zstd_level: i32,
    /// zstd level of the files ingest writes, data and companion. They
    /// live until their day closes and is compacted, so ingest trades a
    /// little size for CPU: level 1 against 3 makes its files about 1%
    /// larger and a batch about 6% cheaper (`benches/README.md`).
    pub ingest_zstd_level: i32,
    /// zstd level of the companion of a compacted file, written once per
    /// closed day: its sealed identifiers shrink by a tenth from level 3
    /// to 11 at about 1.6 times the compaction's CPU, and lookups do not
    /// slow (`benches/README.md`).
    pub compacted_companion_zstd_level: i32,
    /// Target false-positive rate of the token bloom filters. They prune
    /// row groups only where a file has no usable index (and for generic
    /// readers filtering on a token): 5% costs 4.3 bits a distinct token,
    /// 1% 9.6.
    pub bloom_fpp: f64,
    /// Threads that encode the columns of a row group in parallel.
    pub encode_threads: usize,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            row_group_rows: 1_048_576,
            data_page_rows: 8_192,
            lookup_page_rows: 1_024,
            zstd_level: 3,
            ingest_zstd_level: 1,
            compacted_companion_zstd_level: 11,
            bloom_fpp: 0.05,
            encode_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

/// The `[compaction]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Whether `serve` compacts closed days itself.
    pub enabled: bool,
    /// How often `serve` looks for days to compact.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig { enabled: true, interval: Duration::from_secs(3600) }
    }
}
