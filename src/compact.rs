//! Compaction of closed days: a day's many small files (one per ingest
//! batch) rewritten as one file per token key, sorted for lookups, with its
//! token index. A lookup's cost is per file, so a year of compacted days is
//! a year of single files.
//!
//! The switch is crash-safe without ever showing a row twice or not at all
//! to cdrvault's readers, through a manifest written before the new file:
//!
//! 1. `_<new stem>.replaces` (durable) lists the source files;
//! 2. the new file is published (index first, then data);
//! 3. the sources (index, then data) are deleted;
//! 4. the manifest is deleted.
//!
//! [`crate::read::list_files`] hides the sources a manifest lists once its
//! new file exists, so readers see the sources up to step 2 and the new file
//! from then on. A crash leaves a manifest: without its new file it is
//! dropped (the day is compacted again later), with it the sources are
//! deleted ([`recover`], run first by every compaction and by start-up).
//! Readers that do not know manifests (DuckDB, Spark) may see both copies
//! between steps 2 and 3, for milliseconds, or until recovery after a crash.
//!
//! Only closed days are compacted, and never one near its retention
//! horizon, so compaction does not race the retention sweep. Ingest may
//! still write a late record's file into a closed day while it is being
//! compacted: that file is not in the manifest, stays, and is merged at the
//! next run. `serve` runs a [`Compactor`] every `compaction.interval`
//! (default hourly); `cdrvault compact` runs it once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;

use crate::clock::Clock;
use crate::durable::{self, DurableError, FileMode};
use crate::index;
use crate::keys::{KeyError, KeyStore};
use crate::metrics::Metrics;
use crate::models::{KeyId, PartitionDate, TimestampMicros};
use crate::read::{self, ReadError};
use crate::write::{ParquetWriter, WriteError, day_dir, schema};

/// The `[compaction]` config section.
#[derive(Debug, Clone, serde::Deserialize)]
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

/// The suffix of a compaction manifest.
pub const MANIFEST_SUFFIX: &str = ".replaces";

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Durable(#[from] DurableError),
}

impl CompactError {
    /// True when the process must stop: an fsync failed, so the state of
    /// the disk is unknown.
    pub fn is_fatal(&self) -> bool {
        match self {
            CompactError::Durable(e) | CompactError::Write(WriteError::Durable(e)) => e.is_fatal(),
            _ => false,
        }
    }
}

/// What compacting one day did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub day: Option<PartitionDate>,
    pub files_before: usize,
    pub files_after: usize,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The manifest of a new file `<stem>.parquet`.
fn manifest_path(dir: &Path, new_name: &str) -> PathBuf {
    let stem = new_name.strip_suffix(".parquet").unwrap_or(new_name);
    dir.join(format!("_{stem}{MANIFEST_SUFFIX}"))
}

/// The manifests of a day directory: (new file name, source names).
pub fn manifests(dir: &Path) -> Vec<(PathBuf, String, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_prefix('_').and_then(|n| n.strip_suffix(MANIFEST_SUFFIX)) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let sources = text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
        found.push((entry.path(), format!("{stem}.parquet"), sources));
    }
    found
}

/// Finishes or drops interrupted compactions in one day directory.
pub fn recover(dir: &Path) -> Result<(), DurableError> {
    for (manifest, new_name, sources) in manifests(dir) {
        if dir.join(&new_name).exists() {
            for source in sources {
                remove_data_file(&dir.join(source))?;
            }
        }
        durable::remove_file(&manifest)?;
    }
    Ok(())
}

fn remove_data_file(path: &Path) -> Result<(), DurableError> {
    durable::remove_file(&index::sidecar_path(path))?;
    durable::remove_file(path)
}

/// Compacts one day: every token key's files become one file. A day with a
/// single file per token key, or whose key is gone, is left alone.
pub fn compact_day(
    writer: &ParquetWriter,
    keys: &KeyStore,
    day: PartitionDate,
    now_millis: i64,
) -> Result<CompactReport, CompactError> {
    let dir = day_dir(writer.data_dir(), day);
    recover(&dir)?;
    let mut report = CompactReport { day: Some(day), ..CompactReport::default() };
    let files = read::list_files(writer.data_dir(), day)?;
    report.files_before = files.len();
    report.files_after = files.len();
    let Some(day_key) = keys.existing_day_key(day)? else { return Ok(report) };
    if keys.is_destroyed(day) || files.len() < 2 {
        return Ok(report);
    }
    let columns: Vec<&str> = writer.schema().fields().iter().map(|f| f.name().as_str()).collect();
    // Files by token key: one output file per key, so each file keeps one
    // token key id in its footer, as lookups expect.
    let mut groups: BTreeMap<String, Vec<(PathBuf, Vec<RecordBatch>)>> = BTreeMap::new();
    for file in files {
        let batches = read::read_file(&file, Some(&day_key), &columns)?;
        let key_id = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column_by_name(schema::TOKEN_KEY_ID))
            .map(|c| c.as_string::<i32>().value(0).to_string())
            .unwrap_or_default();
        groups.entry(key_id).or_default().push((file, batches));
    }
    for (key_id, sources) in groups {
        let Some(token_key_id) = KeyId::new(key_id) else { continue };
        if sources.len() < 2 {
            continue;
        }
        let names: Vec<String> =
            sources.iter().filter_map(|(path, _)| path.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
        let batches: Vec<RecordBatch> = sources.iter().flat_map(|(_, b)| b.iter().cloned()).collect();
        let new_name = writer.next_name(now_millis);
        let manifest = manifest_path(&dir, &new_name);
        durable::write_atomically(&manifest, (names.join("\n") + "\n").as_bytes(), FileMode::Private)?;
        let written = writer.write_day_named(day, &new_name, &batches, &day_key, &token_key_id)?;
        for (path, _) in &sources {
            report.bytes_before += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            remove_data_file(path)?;
        }
        durable::remove_file(&manifest)?;
        report.files_after -= sources.len() - 1;
        report.rows += written.rows as u64;
        report.bytes_after += written.bytes;
    }
    Ok(report)
}

/// The days that may be compacted on `today`: closed (before today) and at
/// least a week inside the retention window.
pub fn compactable_days(
    data_dir: &Path,
    today: PartitionDate,
    retention_days: u32,
) -> Result<Vec<PartitionDate>, CompactError> {
    let first = crate::retention::oldest_retained(today, retention_days).days_since_epoch() + 7;
    Ok(read::list_days(data_dir)?
        .into_iter()
        .filter(|d| d.days_since_epoch() >= first && d.days_since_epoch() < today.days_since_epoch())
        .collect())
}

/// Compacts the closed days that need it: what `serve` runs periodically
/// and `cdrvault compact` once.
pub struct Compactor {
    writer: ParquetWriter,
    keys: Arc<KeyStore>,
    clock: Arc<dyn Clock>,
    retention_days: u32,
    metrics: Option<Arc<Metrics>>,
}

impl Compactor {
    pub fn new(writer: ParquetWriter, keys: Arc<KeyStore>, clock: Arc<dyn Clock>, retention_days: u32) -> Self {
        Compactor { writer, keys, clock, retention_days, metrics: None }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// One run over `day`, or over every compactable day. The reports of the
    /// days that had files; a day that needs nothing costs a listing.
    pub fn run(&self, day: Option<PartitionDate>) -> Result<Vec<CompactReport>, CompactError> {
        let started = Instant::now();
        let now = self.clock.now();
        let today = TimestampMicros::from_datetime(now).partition_date();
        let days = match day {
            Some(day) => vec![day],
            None => compactable_days(self.writer.data_dir(), today, self.retention_days)?,
        };
        let mut reports = Vec::new();
        let mut failed = None;
        for day in days {
            match compact_day(&self.writer, &self.keys, day, now.timestamp_millis()) {
                Ok(report) => {
                    if let Some(metrics) = &self.metrics
                        && report.files_after < report.files_before
                    {
                        metrics.compaction_days.inc();
                        metrics.compaction_files_replaced.inc_by(report.files_before as u64);
                    }
                    reports.push(report);
                }
                Err(e) if e.is_fatal() => return Err(e),
                // One day that cannot be compacted (a damaged file) does not
                // hold back the others; its files stay readable as they are.
                Err(e) => {
                    tracing::warn!(%day, reason = %e, "compaction of a day failed");
                    if let Some(metrics) = &self.metrics {
                        metrics.compaction_failures.inc();
                    }
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.compaction_run_duration.observe(started.elapsed().as_secs_f64());
        }
        match failed {
            Some(e) => Err(e),
            None => {
                if let Some(metrics) = &self.metrics {
                    metrics.compaction_last_success.set(self.clock.now().timestamp_millis() as f64 / 1e3);
                }
                Ok(reports)
            }
        }
    }
}

/// The service's schedule: a run at start and then every `interval`, each
/// on a blocking thread, until `stop` is set. A failed run is logged and
/// retried at the next tick, except a failed fsync, which stops the service.
pub async fn run_periodically(compactor: Arc<Compactor>, interval: Duration, stop: Arc<AtomicBool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut shutdown => return,
        }
        let task = Arc::clone(&compactor);
        match tokio::task::spawn_blocking(move || task.run(None)).await {
            Ok(Ok(reports)) => {
                let compacted: Vec<&CompactReport> =
                    reports.iter().filter(|r| r.files_after < r.files_before).collect();
                if !compacted.is_empty() {
                    tracing::info!(
                        days = compacted.len(),
                        files_before = compacted.iter().map(|r| r.files_before).sum::<usize>(),
                        files_after = compacted.iter().map(|r| r.files_after).sum::<usize>(),
                        "compaction done"
                    );
                }
            }
            Ok(Err(e)) if e.is_fatal() => {
                tracing::error!(reason = %e, "compaction hit a failed fsync; stopping");
                stop.store(true, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => tracing::error!(reason = %e, "compaction failed; retrying at the next interval"),
            Err(e) => tracing::error!(reason = %e, "compaction panicked"),
        }
    }
}
