//! Reading the data directory back: which days and files exist, and the rows
//! of a file, with its sealed columns decrypted when the day key is given.
//!
//! This is the base of the lookup engine, compaction, preservation and the
//! checks in tests and `retention verify`. It never decrypts without a key
//! handed in by the caller, so the decision to unseal stays with the caller
//! (the lawful-access service, after the audit entry is durable).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::errors::ParquetError;

use super::layout::{self, CDR_DIR, day_dir};
use super::{manifest, schema};
use crate::keys::DayKey;
use crate::model::{KeyId, PartitionDate};

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
        if let Some(date) = entry.file_name().to_str().and_then(layout::date_of_dir) {
            days.push(date);
        }
    }
    days.sort();
    Ok(days)
}

/// The complete files of one day, sorted: temporaries are hidden and
/// skipped, and so are files a published compaction replaced (see
/// [`super::manifest`]).
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
        if layout::is_data_file(&name) {
            files.push(entry.path());
        }
        manifests |= layout::new_file_of_manifest(&name).is_some();
    }
    if manifests {
        // A compaction in progress (or cut short): once its new file is
        // published, the sources it replaces are no longer part of the day.
        for manifest in manifest::list(&dir) {
            if files.iter().any(|f| f.file_name().is_some_and(|n| n.to_string_lossy() == manifest.new_file)) {
                files.retain(|f| {
                    !f.file_name().is_some_and(|n| manifest.sources.iter().any(|s| n.to_string_lossy() == *s))
                });
            }
        }
    }
    files.sort();
    Ok(files)
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
        options = options.with_file_decryption_properties(decryption(path, key).map_err(parquet_err)?);
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

/// The decryption of a data file's sealed columns with `key`: the one
/// counterpart of the writer's encryption. The writer binds each file to its
/// place as the AAD prefix ([`layout::aad_prefix`]) and does not store it,
/// so a file moved to another day or name fails verification.
pub fn decryption(path: &Path, key: &DayKey) -> Result<std::sync::Arc<FileDecryptionProperties>, ParquetError> {
    let secret = key.secret.expose().to_vec();
    let mut builder =
        FileDecryptionProperties::builder(secret.clone()).with_aad_prefix(layout::aad_prefix(path).into_bytes());
    for column in schema::sealed_columns() {
        builder = builder.with_column_key(column, secret.clone());
    }
    builder.build()
}

/// A file's row count and token key id, from its plaintext footer (no key
/// needed).
pub fn footer_facts(path: &Path) -> Result<(u64, Option<KeyId>), ReadError> {
    let parquet_err = |source| ReadError::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|source| ReadError::Open { path: path.to_path_buf(), source })?;
    let metadata =
        parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&file).map_err(parquet_err)?;
    let rows = metadata.file_metadata().num_rows().max(0) as u64;
    Ok((rows, token_key_of(&metadata)))
}

/// The token key id a data file's footer names.
pub fn token_key_of(metadata: &parquet::file::metadata::ParquetMetaData) -> Option<KeyId> {
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|e| e.key == schema::meta::TOKEN_KEY_ID)?
        .value
        .clone()
        .and_then(KeyId::new)
}
