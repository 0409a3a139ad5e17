//! Compaction of closed days: a day's many small files (one per ingest
//! batch) rewritten as one file per token key, sorted for lookups, with its
//! token index. A lookup's cost is per file, so a year of compacted days is
//! a year of single files. The files are merged as they are read (each is
//! sorted already), so memory does not grow with the day.
//!
//! The switch is crash-safe without ever showing a row twice or not at all
//! to cdrvault's readers, through a manifest written before the new file:
//!
//! 1. `_<new stem>.replaces` (durable) lists the source files;
//! 2. the new file is published (index first, then data);
//! 3. the sources (index, then data) are deleted;
//! 4. the manifest is deleted.
//!
//! [`super::read::list_files`] hides the sources a manifest lists once its
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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};

use super::error::WriteError;
use super::layout::{self, day_dir};
use super::manifest;
use super::read::{self, ReadError};
use super::write::{ParquetWriter, SortedFile, WrittenFile};
use crate::keys::{DayKey, KeyError, KeyStore};
use crate::model::retention::oldest_retained;
use crate::model::{IdentifierField, KeyId, PartitionDate, TimestampMicros};
use crate::ops::clock::Clock;
use crate::ops::durable::{self, DurableError, FileMode};
use crate::ops::metrics::Metrics;
use crate::ops::periodic;

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
            CompactError::Durable(e) => e.is_fatal(),
            CompactError::Write(e) => e.is_fatal(),
            CompactError::Keys(e) => e.is_fatal(),
            CompactError::Read(_) => false,
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
    /// Manifest entries refused by the recovery that ran first: names that
    /// are not data files of the day (see [`manifest`]); nothing they named
    /// was touched.
    pub refused_manifest_entries: usize,
}

/// Finishes or drops interrupted compactions in one day directory. Only the
/// plain data file names a manifest lists are deleted; returns how many
/// entries were refused (each such manifest is logged as a warning).
pub fn recover(dir: &Path) -> Result<usize, DurableError> {
    let mut refused = 0;
    for manifest in manifest::list(dir) {
        debug_assert!(manifest.sources.iter().all(|s| layout::is_plain_data_name(s)));
        refused += manifest.refused;
        if dir.join(&manifest.new_file).exists() {
            for source in &manifest.sources {
                remove_data_file(&dir.join(source))?;
            }
        }
        durable::remove_file(&manifest.path)?;
    }
    Ok(refused)
}

/// Removes a data file, its index and its companion. The data file goes
/// first among the files readers find, the companion last, so a reader
/// never finds a data file without its companion.
fn remove_data_file(path: &Path) -> Result<(), DurableError> {
    durable::remove_file(&layout::index_path(path))?;
    durable::remove_file(path)?;
    durable::remove_file(&layout::sealed_path(path))
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
    let refused_manifest_entries = recover(&dir)?;
    let mut report = CompactReport { day: Some(day), refused_manifest_entries, ..CompactReport::default() };
    let files = read::list_files(writer.data_dir(), day)?;
    report.files_before = files.len();
    report.files_after = files.len();
    let Some(day_key) = keys.existing_day_key(day)? else { return Ok(report) };
    if keys.is_destroyed(day) || files.len() < 2 {
        return Ok(report);
    }
    // Files by token key, from their plaintext footers: one output file per
    // key, so each file keeps one token key id in its footer, as lookups
    // expect.
    let mut groups: BTreeMap<KeyId, Vec<(PathBuf, u64)>> = BTreeMap::new();
    for file in files {
        let (rows, token_key) = read::footer_facts(&file)?;
        let Some(token_key) = token_key else { continue };
        groups.entry(token_key).or_default().push((file, rows));
    }
    for (token_key_id, sources) in groups {
        if sources.len() < 2 {
            continue;
        }
        let names: Vec<String> =
            sources.iter().filter_map(|(path, _)| path.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
        let new_name = writer.next_name(now_millis);
        let manifest = layout::manifest_path(&dir, &new_name);
        durable::write_atomically(&manifest, &manifest::content(&names), FileMode::Private)?;
        let written = match merge(writer, day, &new_name, &day_key, &token_key_id, &sources) {
            Ok(written) => written,
            Err(e) => {
                // Nothing was published: the sources are still the day.
                // Best effort, as recovery drops such a manifest anyway.
                let _ = durable::remove_file(&manifest);
                return Err(e);
            }
        };
        for (path, _) in &sources {
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            report.bytes_before += size(path) + size(&layout::sealed_path(path));
            remove_data_file(path)?;
        }
        durable::remove_file(&manifest)?;
        report.files_after -= sources.len() - 1;
        report.rows += written.rows as u64;
        report.bytes_after += written.bytes + written.sealed_bytes;
    }
    Ok(report)
}

/// Rows per batch read from each source and per merged batch written.
const MERGE_BATCH_ROWS: usize = 8_192;

/// One source of a merge: its reader and the batch being consumed.
struct Source {
    path: PathBuf,
    reader: read::FileReader,
    batch: RecordBatch,
    /// Where `batch` sits among the batches the next merged batch takes
    /// rows from.
    slot: usize,
    row: usize,
}

impl Source {
    /// The sort key of the current row, or `None` at the end. Loads the
    /// next batch when the current one is consumed.
    fn key(&mut self, slots: &mut Vec<RecordBatch>) -> Result<Option<(bool, i64)>, CompactError> {
        while self.row == self.batch.num_rows() {
            match self.reader.next() {
                Some(batch) => {
                    self.batch = batch.map_err(|e| ReadError::Parquet {
                        path: self.path.clone(),
                        source: parquet::errors::ParquetError::ArrowError(e.to_string()),
                    })?;
                    self.row = 0;
                    self.slot = slots.len();
                    slots.push(self.batch.clone());
                }
                None => return Ok(None),
            }
        }
        let tokens = self
            .batch
            .column_by_name(IdentifierField::CallingNumber.token_column())
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::Int64Type>());
        Ok(Some(match tokens {
            Some(tokens) if tokens.is_valid(self.row) => (false, tokens.value(self.row)),
            _ => (true, 0),
        }))
    }
}

/// Merges sorted files of one day and token key into one new sorted file,
/// batch by batch: memory holds a batch per source, the new file's current
/// row group (encoded) and its index entries, not the day. Every file the
/// writer publishes is sorted; a source that is not makes the new file
/// refuse its rows, and the day stays as it was.
fn merge(
    writer: &ParquetWriter,
    day: PartitionDate,
    name: &str,
    day_key: &DayKey,
    token_key_id: &KeyId,
    sources: &[(PathBuf, u64)],
) -> Result<WrittenFile, CompactError> {
    let columns: Vec<&str> = writer.schema().fields().iter().map(|f| f.name().as_str()).collect();
    let rows: u64 = sources.iter().map(|(_, rows)| rows).sum();
    let mut out = writer.compacted_file(day, name, day_key, token_key_id, rows as usize)?;
    let mut slots: Vec<RecordBatch> = Vec::new();
    let mut open = Vec::with_capacity(sources.len());
    for (path, _) in sources {
        let reader = read::file_reader(path, Some(day_key), &columns, MERGE_BATCH_ROWS)?;
        let empty = RecordBatch::new_empty(reader.schema());
        open.push(Source { path: path.clone(), reader, batch: empty, slot: 0, row: 0 });
    }
    // The smallest key first; ties in source order.
    let mut heap = BinaryHeap::new();
    for (i, source) in open.iter_mut().enumerate() {
        if let Some(key) = source.key(&mut slots)? {
            heap.push(Reverse((key, i)));
        }
    }
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(MERGE_BATCH_ROWS);
    while let Some(Reverse((_, i))) = heap.pop() {
        let source = &mut open[i];
        picks.push((source.slot, source.row));
        source.row += 1;
        if let Some(key) = source.key(&mut slots)? {
            heap.push(Reverse((key, i)));
        }
        if picks.len() == MERGE_BATCH_ROWS {
            flush(&mut out, &mut slots, &mut picks, &mut open)?;
        }
    }
    flush(&mut out, &mut slots, &mut picks, &mut open)?;
    Ok(out.finish()?)
}

/// Writes the picked rows as one batch and keeps only the batches the
/// sources are still consuming.
fn flush(
    out: &mut SortedFile<'_>,
    slots: &mut Vec<RecordBatch>,
    picks: &mut Vec<(usize, usize)>,
    open: &mut [Source],
) -> Result<(), CompactError> {
    if !picks.is_empty() {
        let batches: Vec<&RecordBatch> = slots.iter().collect();
        let merged = arrow_select::interleave::interleave_record_batch(&batches, picks).map_err(WriteError::Arrow)?;
        out.push(merged)?;
        picks.clear();
    }
    slots.clear();
    for source in open.iter_mut() {
        source.slot = slots.len();
        slots.push(source.batch.clone());
    }
    Ok(())
}

/// The days that may be compacted on `today`: closed (before today) and at
/// least a week inside the retention window.
pub fn compactable_days(
    data_dir: &Path,
    today: PartitionDate,
    retention_days: u32,
) -> Result<Vec<PartitionDate>, CompactError> {
    let first = oldest_retained(today, retention_days).days_since_epoch() + 7;
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

/// The service compacts periodically ([`periodic`]).
impl periodic::Job for Compactor {
    type Report = Vec<CompactReport>;
    type Error = CompactError;
    const NAME: &'static str = "compaction";

    fn run_once(&self) -> Result<Vec<CompactReport>, CompactError> {
        self.run(None)
    }

    fn is_fatal(error: &CompactError) -> bool {
        error.is_fatal()
    }

    fn log(reports: &Vec<CompactReport>) {
        let compacted: Vec<&CompactReport> = reports.iter().filter(|r| r.files_after < r.files_before).collect();
        if !compacted.is_empty() {
            tracing::info!(
                days = compacted.len(),
                files_before = compacted.iter().map(|r| r.files_before).sum::<usize>(),
                files_after = compacted.iter().map(|r| r.files_after).sum::<usize>(),
                "compaction done"
            );
        }
    }
}
