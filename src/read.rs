//! Reading the data directory back: which days and files exist, and the rows
//! of a file, with its sealed columns decrypted when the day key is given.
//!
//! This is the base of the lookup engine and of the checks in tests and
//! `retention verify`. It never decrypts without a key handed in by the
//! caller, so the decision to unseal stays with the caller (later: the
//! lawful-access service, after the audit entry is durable).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::errors::ParquetError;

use crate::keys::DayKey;
use crate::models::PartitionDate;
use crate::write::{CDR_DIR, day_dir, schema};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
}

/// The days present in the data directory, sorted.
pub fn list_days(data_dir: &Path) -> Result<Vec<PartitionDate>, ReadError> {
    let root = data_dir.join(CDR_DIR);
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::List { path: root, source }),
    };
    let mut days = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ReadError::List { path: root.clone(), source })?;
        if let Some(date) = entry.file_name().to_str().and_then(PartitionDate::from_dir_name) {
            days.push(date);
        }
    }
    days.sort();
    Ok(days)
}

/// The complete files of one day, sorted: temporaries are hidden and
/// skipped, and so are files a published compaction replaced (see
/// [`crate::compact`]).
pub fn list_files(data_dir: &Path, date: PartitionDate) -> Result<Vec<PathBuf>, ReadError> {
    let dir = day_dir(data_dir, date);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::List { path: dir, source }),
    };
    let mut files = Vec::new();
    let mut manifests = false;
    for entry in entries {
        let entry = entry.map_err(|source| ReadError::List { path: dir.clone(), source })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".parquet") && !name.starts_with('.') {
            files.push(entry.path());
        }
        manifests |= name.starts_with('_') && name.ends_with(crate::compact::MANIFEST_SUFFIX);
    }
    if manifests {
        // A compaction in progress (or cut short): once its new file is
        // published, the sources it replaces are no longer part of the day.
        for (_, new_name, sources) in crate::compact::manifests(&dir) {
            if files.iter().any(|f| f.file_name().is_some_and(|n| n.to_string_lossy() == new_name)) {
                files.retain(|f| !f.file_name().is_some_and(|n| sources.iter().any(|s| n.to_string_lossy() == *s)));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A published file as the lookup engine reads it, kept with the file's
/// cached footer: a read-only memory mapping, so each page read is a slice
/// of it (the parquet crate's readers take `Bytes`) without a system call
/// or a copy, or, where the system refuses one more mapping (the count is
/// capped by `vm.max_map_count`, 65,530 by default, and each cached data or
/// index file takes one), the open file, read with positional reads.
///
/// Only for files that are never written again: data and index files are
/// published whole by rename and afterwards only ever deleted (a file
/// replaced under its name is a new inode; a mapping keeps the old one).
#[derive(Debug, Clone)]
pub enum PublishedFile {
    Mapped(bytes::Bytes),
    Opened(std::sync::Arc<File>),
}

impl PublishedFile {
    pub fn open(path: &Path) -> io::Result<PublishedFile> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(PublishedFile::Mapped(bytes::Bytes::new()));
        }
        // SAFETY: the mapping is read-only and the files mapped are
        // immutable once published (see above): cdrvault never writes,
        // truncates or resizes a published file in place, it only renames
        // new files over old names and unlinks, neither of which changes
        // the mapped inode. Were another process to truncate a published
        // file, reading its lost pages would raise SIGBUS and stop this
        // process: it would not return other bytes.
        match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => Ok(PublishedFile::Mapped(bytes::Bytes::from_owner(map))),
            Err(e) => {
                static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(reason = %e, "cannot map a data file; reading such files with system calls (compaction keeps the number of files low)");
                }
                Ok(PublishedFile::Opened(std::sync::Arc::new(file)))
            }
        }
    }
}

impl parquet::file::reader::Length for PublishedFile {
    fn len(&self) -> u64 {
        match self {
            PublishedFile::Mapped(bytes) => bytes.len() as u64,
            PublishedFile::Opened(file) => parquet::file::reader::Length::len(file.as_ref()),
        }
    }
}

impl parquet::file::reader::ChunkReader for PublishedFile {
    type T = Box<dyn io::Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            PublishedFile::Mapped(bytes) => Box::new(bytes.get_read(start)?),
            PublishedFile::Opened(file) => Box::new(file.as_ref().get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        match self {
            PublishedFile::Mapped(bytes) => bytes.get_bytes(start, length),
            PublishedFile::Opened(file) => file.as_ref().get_bytes(start, length),
        }
    }
}

/// The AAD prefix of a file: its path relative to the `cdr/` directory.
pub fn aad_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let day = path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{day}/{name}")
}

/// Reads the given columns of a file. Sealed columns can only be read with
/// the day key; clear columns need none.
pub fn read_file(path: &Path, day_key: Option<&DayKey>, columns: &[&str]) -> Result<Vec<RecordBatch>, ReadError> {
    let parquet_err = |source| ReadError::Parquet { path: path.to_path_buf(), source };
    let reader = file_reader(path, day_key, columns, 8_192)?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| parquet_err(ParquetError::ArrowError(e.to_string())))
}

/// The given columns of a file, `batch_size` rows at a time, for readers
/// that must not hold a whole file (compaction). Sealed columns can only be
/// read with the day key; clear columns need none.
pub fn file_reader(
    path: &Path,
    day_key: Option<&DayKey>,
    columns: &[&str],
    batch_size: usize,
) -> Result<ParquetRecordBatchReader, ReadError> {
    let parquet_err = |source| ReadError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|source| ReadError::Open { path: path.to_path_buf(), source })?;
    let mut options = ArrowReaderOptions::new();
    if let Some(key) = day_key {
        let secret = key.secret.expose().to_vec();
        // The writer binds each file to its place (`dt=…/part-….parquet`) as
        // the AAD prefix and does not store it: a file moved to another day
        // or name fails verification.
        let mut builder =
            FileDecryptionProperties::builder(secret.clone()).with_aad_prefix(aad_prefix(path).into_bytes());
        for column in schema::sealed_columns() {
            builder = builder.with_column_key(column, secret.clone());
        }
        options = options.with_file_decryption_properties(builder.build().map_err(parquet_err)?);
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).map_err(parquet_err)?;
    let parquet_schema = builder.parquet_schema();
    let indices: Vec<usize> = parquet_schema
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| columns.contains(&c.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::leaves(parquet_schema, indices);
    builder.with_projection(mask).with_batch_size(batch_size.max(1)).build().map_err(parquet_err)
}

/// A file's row count and token key id, from its plaintext footer (no key
/// needed).
pub fn footer_facts(path: &Path) -> Result<(u64, Option<crate::models::KeyId>), ReadError> {
    let parquet_err = |source| ReadError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|source| ReadError::Open { path: path.to_path_buf(), source })?;
    let metadata =
        parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&file).map_err(parquet_err)?;
    let rows = metadata.file_metadata().num_rows().max(0) as u64;
    Ok((rows, token_key_of(&metadata)))
}

/// The token key id a data file's footer names.
pub fn token_key_of(metadata: &parquet::file::metadata::ParquetMetaData) -> Option<crate::models::KeyId> {
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|e| e.key == schema::meta::TOKEN_KEY_ID)?
        .value
        .clone()
        .and_then(crate::models::KeyId::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use std::sync::Arc;

    fn rows(file: PublishedFile) -> Vec<i64> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().with_batch_size(100).build().unwrap();
        reader
            .flat_map(|b| {
                let b = b.unwrap();
                let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                column.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn a_published_file_reads_the_same_mapped_or_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-x.parquet");
        let values: Vec<i64> = (0..1_000).map(|i| i * 7 - 300).collect();
        let batch = RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(values.clone())) as _)]).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let mapped = PublishedFile::open(&path).unwrap();
        assert!(matches!(mapped, PublishedFile::Mapped(_)), "mapped where the system allows");
        assert_eq!(rows(mapped), values);
        // The fallback when no more mappings are allowed.
        let opened = PublishedFile::Opened(Arc::new(File::open(&path).unwrap()));
        assert_eq!(rows(opened), values);
        // A deleted file stays readable through its mapping.
        let mapped = PublishedFile::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(rows(mapped), values);
    }
}
