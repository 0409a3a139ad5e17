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
//! horizon, so compaction does not race the retention sweep.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;

use crate::durable::{self, DurableError, FileMode};
use crate::index;
use crate::keys::{KeyError, KeyStore};
use crate::models::{KeyId, PartitionDate};
use crate::read::{self, ReadError};
use crate::write::{ParquetWriter, WriteError, day_dir, schema};

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
