//! The configuration tree: TOML, with `CDRVAULT_…` environment overrides.
//!
//! Each subsystem owns the section it reads (`ingest::config`,
//! `storage::config`, `lifecycle::config`, `access::config`, `keys`,
//! `ops::config`); this module assembles them. Every section denies unknown
//! keys (a typo is an error, not a silent default), every field has a
//! documented default, durations are typed (`"5s"`, `"2m"`), and
//! [`Config::validate`] checks the cross-field rules once at start-up with
//! errors that name the key and the fix.
//!
//! Environment overrides use `__` between levels:
//! `CDRVAULT_KAFKA__BROKERS=host:9092`, `CDRVAULT_STORAGE__DATA_DIR=/data`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::access::config::AccessConfig;
use crate::access::lookup::MAX_WINDOW_DAYS;
use crate::audit::config::AuditConfig;
use crate::ingest::config::{IngestConfig, KafkaConfig};
use crate::keys::{self, KeysConfig};
use crate::lifecycle::config::RetentionConfig;
use crate::ops::config::{HttpConfig, LogConfig};
use crate::storage::config::{CompactionConfig, ParquetConfig, StorageConfig};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub kafka: KafkaConfig,
    pub ingest: IngestConfig,
    pub parquet: ParquetConfig,
    pub retention: RetentionConfig,
    pub compaction: CompactionConfig,
    pub state: StateConfig,
    pub audit: AuditConfig,
    pub http: HttpConfig,
    pub access: AccessConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The service's own records: the audit trail (`audit.jsonl`) and, with
    /// lawful access, the registry. Never inside the data directory.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: PathBuf::from("cdrvault-state") }
    }
}

/// A configuration error that names the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {problem}; {fix}")]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: String,
    pub fix: &'static str,
}

impl Config {
    /// Loads the defaults, then the TOML file (if given), then `CDRVAULT_…`
    /// environment variables.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // Every key lives in a section, so only `CDRVAULT_SECTION__KEY` is
        // configuration; other CDRVAULT_ variables (CDRVAULT_CONFIG, test
        // settings) are not.
        figment = figment.merge(Env::prefixed("CDRVAULT_").filter(|k| k.as_str().contains("__")).split("__"));
        let config: Config = figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }

    /// The cross-field checks, run once at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, problem: String, fix| Err(ConfigError { key, problem, fix });
        if self.access.csp_id.trim().is_empty() {
            return err("access.csp_id", "is empty".into(), "set the operator's id shown in result headers");
        }
        if !(1..=1000).contains(&self.access.max_targets) {
            return err("access.max_targets", format!("is {}", self.access.max_targets), "use 1 to 1000 (default 64)");
        }
        if self.access.tls_cert.is_some() != self.access.tls_key.is_some()
            || (self.access.tls_client_ca.is_some() && self.access.tls_cert.is_none())
        {
            return err(
                "access.tls_cert",
                "and access.tls_key must be set together (and tls_client_ca needs them)".into(),
                "set both PEM files, or neither for a plain-text API behind a TLS proxy",
            );
        }
        if !(1..=3660).contains(&self.access.order_max_days) {
            return err(
                "access.order_max_days",
                format!("is {}", self.access.order_max_days),
                "use 1 to 3660 days (default 90); an order is extended by a new approval",
            );
        }
        if let Some(days) = self.access.max_window_days
            && !(1..=MAX_WINDOW_DAYS).contains(&days)
        {
            return err(
                "access.max_window_days",
                format!("is {days}"),
                "use 1 to 3660, or leave it unset for twice retention.days",
            );
        }
        if self.access.result_keep.is_zero() {
            return err("access.result_keep", "is 0".into(), "keep results for a while, e.g. 7d (default)");
        }
        if self.ingest.batch_max_records == 0 {
            return err("ingest.batch_max_records", "is 0".into(), "set it to at least 1 (default 100000)");
        }
        if self.ingest.batch_max_bytes < 1024 {
            return err(
                "ingest.batch_max_bytes",
                "is below 1 KiB".into(),
                "set it to at least 1024 (default 67108864)",
            );
        }
        if self.ingest.batch_linger.is_zero() || self.ingest.batch_linger > Duration::from_secs(600) {
            return err(
                "ingest.batch_linger",
                format!("is {:?}", self.ingest.batch_linger),
                "use a value between 1ms and 10m (default 5s)",
            );
        }
        if self.kafka.topics.is_empty() {
            return err("kafka.topics", "is empty".into(), "add at least one [[kafka.topics]] entry with a name");
        }
        let mut names: Vec<&str> = self.kafka.topics.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return err("kafka.topics", "lists a topic twice".into(), "list each topic once, with one encoding");
        }
        if names.iter().any(|n| n.is_empty()) {
            return err("kafka.topics.name", "is empty".into(), "give every topic a name");
        }
        if self.kafka.dead_letter_topic.is_empty() || names.contains(&self.kafka.dead_letter_topic.as_str()) {
            return err(
                "kafka.dead_letter_topic",
                "is empty or also an input topic".into(),
                "name a topic of its own, e.g. cdr.dead-letter",
            );
        }
        if self.kafka.group_id.is_empty() {
            return err("kafka.group_id", "is empty".into(), "set the consumer group id shared by all instances");
        }
        for reserved in ["enable.auto.offset.store", "group.id", "bootstrap.servers", "enable.partition.eof"] {
            if self.kafka.properties.contains_key(reserved) {
                return err(
                    "kafka.properties",
                    format!("sets `{reserved}`, which cdrvault manages"),
                    "remove it; offsets are stored only after files are durable",
                );
            }
        }
        if self.parquet.row_group_rows == 0 || self.parquet.data_page_rows == 0 || self.parquet.lookup_page_rows == 0 {
            return err(
                "parquet.row_group_rows",
                "or parquet.data_page_rows or parquet.lookup_page_rows is 0".into(),
                "use positive row counts",
            );
        }
        if !(1..=22).contains(&self.parquet.zstd_level) {
            return err("parquet.zstd_level", format!("is {}", self.parquet.zstd_level), "use 1 to 22 (default 3)");
        }
        if !(1..=22).contains(&self.parquet.ingest_zstd_level) {
            return err(
                "parquet.ingest_zstd_level",
                format!("is {}", self.parquet.ingest_zstd_level),
                "use 1 to 22 (default 1)",
            );
        }
        if !(1..=22).contains(&self.parquet.compacted_companion_zstd_level) {
            return err(
                "parquet.compacted_companion_zstd_level",
                format!("is {}", self.parquet.compacted_companion_zstd_level),
                "use 1 to 22 (default 11)",
            );
        }
        if !(self.parquet.bloom_fpp > 0.0 && self.parquet.bloom_fpp < 1.0) {
            return err(
                "parquet.bloom_fpp",
                format!("is {}", self.parquet.bloom_fpp),
                "use a rate between 0 and 1 (default 0.05)",
            );
        }
        if self.retention.days == 0 {
            return err("retention.days", "is 0".into(), "set the legal window in days (default 365)");
        }
        if self.compaction.enabled && self.compaction.interval.is_zero() {
            return err(
                "compaction.interval",
                "is 0".into(),
                "use a duration such as 1h (default), or enabled = false",
            );
        }
        if self.retention.interval.is_zero() {
            return err("retention.interval", "is 0".into(), "sweep at least hourly (default 1h)");
        }
        if self.retention.max_clock_jump.is_zero() {
            return err(
                "retention.max_clock_jump",
                "is 0".into(),
                "allow the clock a plausible advance between sweeps (default 7d)",
            );
        }
        if self.retention.max_clock_jump <= self.retention.interval {
            return err(
                "retention.max_clock_jump",
                "is not longer than retention.interval".into(),
                "allow more than one interval between sweeps, or every sweep distrusts the clock (default 7d)",
            );
        }
        if keys::ensure_apart(&self.state.dir, &self.storage.data_dir).is_err() {
            return err(
                "state.dir",
                "lies inside storage.data_dir".into(),
                "keep the audit trail apart from the data it records the deletion of",
            );
        }
        if let Some(witness) = &self.audit.witness_file
            && [&self.state.dir, &self.keys.dir, &self.storage.data_dir]
                .iter()
                .any(|dir| keys::ensure_apart(witness, dir).is_err())
        {
            return err(
                "audit.witness_file",
                "lies inside the state, keys or data directory".into(),
                "publish the heads where the trail's writer cannot rewrite them unseen, e.g. a file an auditor copies away",
            );
        }
        if keys::ensure_apart(&self.keys.dir, &self.storage.data_dir).is_err() {
            return err(
                "keys.dir",
                "lies inside storage.data_dir".into(),
                "keep the keys apart from the data they protect, e.g. /etc/cdrvault/keys",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ingest::decode::Encoding;

    #[test]
    fn the_example_config_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cdrvault.example.toml");
        let config = Config::load(Some(&path)).unwrap();
        config.validate().unwrap();
        assert_eq!(config.kafka.topics.len(), 2);
        assert_eq!(config.kafka.topics[1].encoding, Encoding::Protobuf);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[ingest]\nbatch_max_record = 5\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("batch_max_record"), "{error}");
    }

    #[test]
    fn validation_names_the_key_and_the_fix() {
        let mut config = Config::default();
        config.kafka.dead_letter_topic = "cdr".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.dead_letter_topic") && error.contains("name a topic"), "{error}");

        let mut config = Config::default();
        config.keys.dir = config.storage.data_dir.join("keys");
        assert!(config.validate().unwrap_err().to_string().contains("keys.dir"));

        let mut config = Config::default();
        config.kafka.properties.insert("enable.auto.offset.store".into(), "true".into());
        assert!(config.validate().unwrap_err().to_string().contains("kafka.properties"));

        let mut config = Config::default();
        config.access.max_window_days = Some(0);
        assert!(config.validate().unwrap_err().to_string().contains("access.max_window_days"));

        let mut config = Config::default();
        config.parquet.ingest_zstd_level = 0;
        assert!(config.validate().unwrap_err().to_string().contains("parquet.ingest_zstd_level"));
        config.parquet.ingest_zstd_level = 1;
        config.parquet.compacted_companion_zstd_level = 23;
        assert!(config.validate().unwrap_err().to_string().contains("parquet.compacted_companion_zstd_level"));
    }

    #[test]
    fn a_request_window_spans_twice_the_retention_unless_configured() {
        let mut config = Config::default();
        config.retention.days = 400;
        assert_eq!(config.access.settings(config.retention.days).max_window_days, 800);
        config.retention.days = 5_000;
        assert_eq!(config.access.settings(config.retention.days).max_window_days, MAX_WINDOW_DAYS);
        config.access.max_window_days = Some(31);
        assert_eq!(config.access.settings(config.retention.days).max_window_days, 31);
        config.validate().unwrap();
    }

    #[test]
    fn the_clock_may_jump_more_than_one_interval() {
        let mut config = Config::default();
        config.retention.max_clock_jump = Duration::ZERO;
        assert!(config.validate().unwrap_err().to_string().contains("retention.max_clock_jump"));
        config.retention.max_clock_jump = config.retention.interval;
        assert!(config.validate().unwrap_err().to_string().contains("retention.max_clock_jump"));
    }

    #[test]
    fn durations_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[ingest]\nbatch_linger = \"250ms\"\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.ingest.batch_linger, Duration::from_millis(250));

        std::fs::write(&path, "[retention]\nmax_clock_jump = \"2d\"\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.retention.max_clock_jump, Duration::from_secs(2 * 24 * 3600));
    }
}
