//! Every name in the data directory, decided here and nowhere else:
//!
//! ```text
//! <data_dir>/cdr/dt=YYYY-MM-DD/part-<millis>-<instance>-<seq>.parquet   a data file (clear columns)
//! <data_dir>/cdr/dt=YYYY-MM-DD/_part-….sealed                           its sealed columns (encrypted)
//! <data_dir>/cdr/dt=YYYY-MM-DD/_part-….index                            its token index
//! <data_dir>/cdr/dt=YYYY-MM-DD/_part-….replaces                         a compaction manifest
//! <data_dir>/cdr/dt=YYYY-MM-DD/.part-….parquet.<pid>.tmp                a file being written
//! <data_dir>/cdr/dt=YYYY-MM-DD/.part-….parquet.staged-<instance>.tmp    a file ingest staged, not yet committed
//! <data_dir>/checkpoints/log/<seq>.json                                  an ingest commit (files and offsets)
//! <data_dir>/checkpoints/log/snapshot-<seq>.json                         the checkpoint state at a commit
//! <data_dir>/checkpoints/instances/<instance>.lock                       held by the running instance
//! <data_dir>/checkpoints/maintenance.lock                                held by the instance that sweeps and compacts
//! <data_dir>/preserved/<order>/cdr/dt=YYYY-MM-DD/<source name>          an order's copies
//! ```
//!
//! Names carry only times, sequence numbers, random instance ids and order
//! ids, never anything derived from a record. The leading underscore hides
//! companions, indexes and manifests from Spark, Hive and Trino listings, and their
//! suffixes keep them out of `*.parquet` globs (DuckDB); temporaries are
//! hidden by their leading dot. A preservation area is laid out like the
//! data directory, so the same readers read it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::PartitionDate;
use crate::ops::durable;

/// The sub-directory of a data directory (or preservation area) that holds
/// the CDR files.
pub const CDR_DIR: &str = "cdr";
/// The directory holding every preservation order's area.
pub const PRESERVED_DIR: &str = "preserved";
/// The suffix of data files.
pub const DATA_SUFFIX: &str = ".parquet";
/// The suffix of token indexes.
pub const INDEX_SUFFIX: &str = ".index";
/// The suffix of the companions that hold a data file's sealed columns.
pub const SEALED_SUFFIX: &str = ".sealed";
/// The suffix of compaction manifests.
pub const MANIFEST_SUFFIX: &str = ".replaces";

/// The directory of one day's files under `root` (a data directory or an
/// order's area): `cdr/dt=YYYY-MM-DD`.
pub fn day_dir(root: &Path, date: PartitionDate) -> PathBuf {
    root.join(CDR_DIR).join(day_dir_name(date))
}

/// The name of a day's directory, `dt=YYYY-MM-DD` (a Hive partition).
pub fn day_dir_name(date: PartitionDate) -> String {
    format!("dt={date}")
}

/// The day a directory named `dt=YYYY-MM-DD` holds.
pub fn date_of_dir(name: &str) -> Option<PartitionDate> {
    name.strip_prefix("dt=").and_then(PartitionDate::parse)
}

/// True for the name of a published data file (not a temporary).
pub fn is_data_file(name: &str) -> bool {
    name.ends_with(DATA_SUFFIX) && !name.starts_with('.')
}

/// True for a file being written (or left by a crashed writer).
pub fn is_temporary(name: &str) -> bool {
    durable::is_temporary_name(name)
}

/// The token index of a data file: `_<stem>.index` in the same directory.
pub fn index_path(data_file: &Path) -> PathBuf {
    let stem = data_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    data_file.with_file_name(format!("_{stem}{INDEX_SUFFIX}"))
}

/// True for the name of an index file.
pub fn is_index(name: &str) -> bool {
    name.starts_with('_') && name.ends_with(INDEX_SUFFIX)
}

/// The data file an index named `name` describes, if `name` is an index's.
pub fn data_file_of_index(name: &str) -> Option<String> {
    let stem = name.strip_prefix('_')?.strip_suffix(INDEX_SUFFIX)?;
    Some(format!("{stem}{DATA_SUFFIX}"))
}

/// The companion of a data file, which holds its sealed columns:
/// `_<stem>.sealed` in the same directory.
pub fn sealed_path(data_file: &Path) -> PathBuf {
    let stem = data_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    data_file.with_file_name(format!("_{stem}{SEALED_SUFFIX}"))
}

/// The data file a companion named `name` belongs to, if `name` is a
/// companion's.
pub fn data_file_of_sealed(name: &str) -> Option<String> {
    let stem = name.strip_prefix('_')?.strip_suffix(SEALED_SUFFIX)?;
    Some(format!("{stem}{DATA_SUFFIX}"))
}

/// The manifest that announces the compacted file `new_name` of `dir`.
pub fn manifest_path(dir: &Path, new_name: &str) -> PathBuf {
    let stem = new_name.strip_suffix(DATA_SUFFIX).unwrap_or(new_name);
    dir.join(format!("_{stem}{MANIFEST_SUFFIX}"))
}

/// The compacted file a manifest named `name` announces, if `name` is a
/// manifest's.
pub fn new_file_of_manifest(name: &str) -> Option<String> {
    let stem = name.strip_prefix('_')?.strip_suffix(MANIFEST_SUFFIX)?;
    Some(format!("{stem}{DATA_SUFFIX}"))
}

/// True if `name` may be listed in a manifest: a plain data file name, with
/// no directory part, that stays inside its day directory.
pub fn is_plain_data_name(name: &str) -> bool {
    is_data_file(name) && !name.contains('/') && !name.contains('\\') && name != ".." && !name.contains('\0')
}

/// The directory of the ingest checkpoint: its commit log, the locks of
/// running instances and of maintenance.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// The commit log of ingest ([`crate::storage::checkpoint`]).
pub fn checkpoint_log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CHECKPOINT_DIR).join("log")
}

/// The lock a running instance holds, so that one instance id runs once.
pub fn instance_lock(data_dir: &Path, instance: &str) -> PathBuf {
    data_dir.join(CHECKPOINT_DIR).join("instances").join(format!("{instance}.lock"))
}

/// The lock of the instance that runs retention and compaction.
pub fn maintenance_lock(data_dir: &Path) -> PathBuf {
    data_dir.join(CHECKPOINT_DIR).join("maintenance.lock")
}

/// The name under which ingest stages data file `name` for `instance`:
/// hidden, a temporary to every other rule, and tagged with the instance
/// so that its own recovery can tell its leftovers from another's work.
pub fn staged_name(name: &str, instance: &str) -> String {
    format!(".{name}.staged-{instance}.tmp")
}

/// The data file name and the instance of a staged name.
pub fn parse_staged(staged: &str) -> Option<(&str, &str)> {
    let inner = staged.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, instance) = inner.split_once(".staged-")?;
    is_plain_data_name(name).then_some((name, instance))
}

/// True for an instance id that may appear in names: 1 to 64 characters
/// of `[A-Za-z0-9_-]` (a pod name, a host name).
pub fn is_valid_instance(instance: &str) -> bool {
    (1..=64).contains(&instance.len()) && instance.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The area of one preservation order: a data directory of its own.
pub fn order_dir(data_dir: &Path, order: &str) -> PathBuf {
    data_dir.join(PRESERVED_DIR).join(order)
}

/// The orders that have an area, by directory name, sorted.
pub fn orders_with_areas(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(PRESERVED_DIR)) else { return Vec::new() };
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The additional authenticated data prefix of a data file: its place
/// relative to the `cdr/` directory, `dt=…/part-….parquet`. The writer
/// binds every encrypted module of a file to it and does not store it, so a
/// file moved to another day or renamed fails verification.
pub fn aad_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let day = path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{day}/{name}")
}

/// Hands out unique data file names: creation time, a random instance id,
/// and a sequence number within the instance.
#[derive(Debug)]
pub struct FileNamer {
    instance: u32,
    sequence: AtomicU64,
}

impl FileNamer {
    pub fn new() -> Self {
        FileNamer { instance: rand::random(), sequence: AtomicU64::new(0) }
    }

    /// A new name; `now_millis` only orders names in listings.
    pub fn next(&self, now_millis: i64) -> String {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("part-{now_millis:013}-{:08x}-{seq:06}{DATA_SUFFIX}", self.instance)
    }
}

impl Default for FileNamer {
    fn default() -> Self {
        FileNamer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_stay_apart() {
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let dir = day_dir(Path::new("/d"), date);
        assert_eq!(dir, Path::new("/d/cdr/dt=2026-11-24"));
        assert_eq!(date_of_dir("dt=2026-11-24"), Some(date));
        let name = FileNamer::new().next(1);
        assert!(is_data_file(&name) && is_plain_data_name(&name));
        let index = index_path(&dir.join(&name));
        let index_name = index.file_name().unwrap().to_str().unwrap();
        assert!(is_index(index_name) && !is_data_file(index_name));
        assert_eq!(data_file_of_index(index_name), Some(name.clone()));
        let sealed = sealed_path(&dir.join(&name));
        let sealed_name = sealed.file_name().unwrap().to_str().unwrap();
        assert!(!is_data_file(sealed_name) && !is_index(sealed_name) && !is_temporary(sealed_name));
        assert_eq!(data_file_of_sealed(sealed_name), Some(name.clone()));
        assert_eq!(data_file_of_index(sealed_name), None);
        let manifest = manifest_path(&dir, &name);
        assert_eq!(new_file_of_manifest(manifest.file_name().unwrap().to_str().unwrap()), Some(name.clone()));
        assert_eq!(aad_prefix(&dir.join(&name)), format!("dt=2026-11-24/{name}"));
        assert!(!is_data_file(&format!(".{name}.7.tmp")) && is_temporary(&format!(".{name}.7.tmp")));
        let staged = staged_name(&name, "cdrvault-0");
        assert!(is_temporary(&staged) && !is_data_file(&staged));
        assert_eq!(parse_staged(&staged), Some((name.as_str(), "cdrvault-0")));
        assert_eq!(parse_staged(&format!(".{name}.7.tmp")), None);
        assert!(is_valid_instance("cdrvault-0") && !is_valid_instance("../x") && !is_valid_instance(""));
    }

    #[test]
    fn a_manifest_entry_is_a_plain_name_in_its_day() {
        for bad in ["/etc/passwd", "../dt=2026-01-01/part-1.parquet", "sub/part-1.parquet", "master.key", ""] {
            assert!(!is_plain_data_name(bad), "{bad}");
        }
        assert!(is_plain_data_name("part-0000000000001-0a0b0c0d-000001.parquet"));
    }
}
