//! Writes date-partitioned, pseudonymised Parquet files, atomically and
//! durably, each with its token index ([`crate::storage::index`]).
//!
//! A file becomes visible only once complete: it is written under a hidden
//! temporary name, fsynced, its companion (the sealed columns) and its
//! token index published, then it is renamed into place and its directory
//! fsynced ([`SortedFile::finish`]). This
//! module must never leave a partial file under a data file's name. How a
//! file is encoded and sealed is [`properties`]'s business; the rows of a
//! file are sorted by calling number token, which [`SortedFile`] enforces.

mod properties;
mod sorted_file;

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use sorted_file::FileRole;
pub use sorted_file::SortedFile;

use super::config::ParquetConfig;
use super::error::WriteError;
use super::layout::{self, FileNamer};
use super::schema;
use crate::keys::DayKey;
use crate::model::{KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError};

/// The instance tag of files staged by a writer that belongs to no
/// instance (`import`, tools): they publish what they stage at once.
const STAGED_BY_TOOLS: &str = "tool";

/// A file that is complete and durable under its final name.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub date: PartitionDate,
    pub path: PathBuf,
    pub rows: usize,
    /// The size of the data file.
    pub bytes: u64,
    /// The size of its companion (the sealed columns).
    pub sealed_bytes: u64,
}

/// A data file complete and durable under its staged name, with its token
/// index published, but invisible to readers until [`StagedFile::publish`]
/// renames it to its name. Ingest stages a batch's files, commits them
/// with the batch's offsets ([`crate::storage::checkpoint`]) and only then
/// publishes them.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// The file as it will be once published (`path` is its final name).
    pub file: WrittenFile,
    /// Where it is until then.
    pub staged: PathBuf,
}

impl StagedFile {
    /// Renames the file into place and fsyncs its directory.
    pub fn publish(self) -> Result<WrittenFile, DurableError> {
        durable::publish(&self.staged, &self.file.path)?;
        Ok(self.file)
    }

    /// Removes the staged file, its companion and its index: a batch that
    /// was not committed leaves nothing behind.
    pub fn discard(&self) -> Result<(), DurableError> {
        durable::remove_file(&self.staged)?;
        durable::remove_file(&layout::sealed_path(&self.file.path))?;
        durable::remove_file(&layout::index_path(&self.file.path))
    }
}

/// Writes the files of the data directory.
#[derive(Debug)]
pub struct ParquetWriter {
    data_dir: PathBuf,
    config: ParquetConfig,
    schema: SchemaRef,
    namer: FileNamer,
    /// The instance whose name tags the files ingest stages.
    instance: Option<String>,
}

impl ParquetWriter {
    pub fn new(data_dir: &Path, config: ParquetConfig) -> Self {
        ParquetWriter {
            data_dir: data_dir.to_path_buf(),
            config,
            schema: schema::cdr_schema(),
            namer: FileNamer::new(),
            instance: None,
        }
    }

    /// Stages files under names tagged with `instance`
    /// ([`layout::staged_name`]), so that the instance's recovery can tell
    /// its own uncommitted files from another instance's work.
    pub fn with_instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.to_string());
        self
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A new file name, for [`Self::write_day_named`].
    pub fn next_name(&self, now_millis: i64) -> String {
        self.namer.next(now_millis)
    }

    /// Writes the records of one day into one new file, durable but staged
    /// ([`StagedFile`]). `now_millis` only names the file.
    pub fn stage_day(
        &self,
        date: PartitionDate,
        batches: &[RecordBatch],
        day_key: &DayKey,
        token_key_id: &KeyId,
        now_millis: i64,
    ) -> Result<StagedFile, WriteError> {
        let name = self.namer.next(now_millis);
        let all = sorted_file::sort_by_calling_party(&self.schema, batches)?;
        let mut file = SortedFile::create(
            self,
            date,
            &name,
            day_key,
            token_key_id,
            all.num_rows(),
            FileRole::Staged(self.instance.as_deref().unwrap_or(STAGED_BY_TOOLS)),
        )?;
        file.push(all)?;
        file.stage()
    }

    /// Writes the records of one day into one new file and publishes it.
    pub fn write_day(
        &self,
        date: PartitionDate,
        batches: &[RecordBatch],
        day_key: &DayKey,
        token_key_id: &KeyId,
        now_millis: i64,
    ) -> Result<WrittenFile, WriteError> {
        Ok(self.stage_day(date, batches, day_key, token_key_id, now_millis)?.publish()?)
    }

    /// Like [`Self::write_day`] under a given file name, replacing a file of
    /// that name atomically: for copies that must be idempotent (a
    /// preservation copy made again after a crash).
    pub fn write_day_named(
        &self,
        date: PartitionDate,
        name: &str,
        batches: &[RecordBatch],
        day_key: &DayKey,
        token_key_id: &KeyId,
    ) -> Result<WrittenFile, WriteError> {
        let all = sorted_file::sort_by_calling_party(&self.schema, batches)?;
        let mut file = self.sorted_file(date, name, day_key, token_key_id, all.num_rows())?;
        file.push(all)?;
        file.finish()
    }

    /// A new file `name` of `date` that takes rows already in file order
    /// (sorted by calling number token, see [`SortedFile`]); `rows` is the
    /// number it will hold, which sizes the bloom filters.
    pub fn sorted_file(
        &self,
        date: PartitionDate,
        name: &str,
        day_key: &DayKey,
        token_key_id: &KeyId,
        rows: usize,
    ) -> Result<SortedFile<'_>, WriteError> {
        SortedFile::create(self, date, name, day_key, token_key_id, rows, FileRole::Named)
    }

    /// Like [`Self::sorted_file`], for the one file compaction makes of a
    /// closed day: written once and kept for the year, so its companion is
    /// compressed harder (`parquet.compacted_companion_zstd_level`).
    pub fn compacted_file(
        &self,
        date: PartitionDate,
        name: &str,
        day_key: &DayKey,
        token_key_id: &KeyId,
        rows: usize,
    ) -> Result<SortedFile<'_>, WriteError> {
        SortedFile::create(self, date, name, day_key, token_key_id, rows, FileRole::Compacted)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs::File;
    use std::sync::Arc;

    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;
    use crate::ingest::process::{Input, Processor, ProcessorConfig};
    use crate::keys::KeyStore;
    use crate::ops::clock::ManualClock;
    use crate::storage::{layout, read};

    pub(crate) fn write_one_file(root: &Path) -> (Arc<KeyStore>, PathBuf) {
        let keys_dir = root.join("keys");
        KeyStore::init(&keys_dir, None).unwrap();
        let keys = Arc::new(KeyStore::open(&keys_dir, None).unwrap());
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z").unwrap().to_utc();
        let clock = Arc::new(ManualClock::new(now));
        let config = ParquetConfig { row_group_rows: 100, ..ParquetConfig::default() };
        let writer = ParquetWriter::new(&root.join("data"), config);
        let processor = Processor::new(
            writer,
            Arc::clone(&keys),
            clock,
            ProcessorConfig {
                max_clock_skew: std::time::Duration::from_secs(60),
                decode_threads: 2,
                retention_days: Some(365),
            },
        );
        let inputs: Vec<Input> = (0..250)
            .map(|i| Input {
                encoding: crate::ingest::decode::Encoding::Json,
                payload: format!(
                    r#"{{"record_id":"r-{i}","service":"voice","start_time":"2026-11-24T10:00:{:02}Z","calling_number":"+45200{i:05}","cell_id_start":"238-01-1-{i}"}}"#,
                    i % 60
                )
                .into_bytes().into(),
            })
            .collect();
        let outcome = processor.process(&inputs).unwrap();
        assert_eq!(outcome.written, 250);
        assert_eq!(outcome.files.len(), 1);
        (keys, outcome.files[0].path.clone())
    }

    /// The day of the file [`write_one_file`] made, its key, and all its
    /// rows (in file order) as one batch.
    fn rows_of_one_file(keys: &KeyStore, path: &Path) -> (PartitionDate, Arc<DayKey>, RecordBatch) {
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let day_key = keys.existing_day_key(date).unwrap().unwrap();
        let schema = schema::cdr_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let batches = read::read_file(path, Some(&day_key), &names).unwrap();
        let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
        (date, day_key, all)
    }

    #[test]
    fn data_files_are_clear_with_bloom_filters_and_companions_hold_the_sealed_columns_encrypted_whole() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.num_row_groups(), 3, "row groups of 100 rows");
        let kv = |metadata: &parquet::file::metadata::ParquetMetaData| -> std::collections::HashMap<String, String> {
            metadata
                .file_metadata()
                .key_value_metadata()
                .unwrap()
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        };
        let public = kv(metadata);
        assert!(public[schema::meta::TOKEN_KEY_ID].starts_with("tok-2026-11-24-"));
        assert!(public[schema::meta::SEAL_KEY_ID].starts_with("day-2026-11-24-"));
        assert_eq!(public[schema::meta::PARTITION_DATE], "2026-11-24");
        assert_eq!(public[schema::meta::SCHEMA_VERSION], schema::SCHEMA_VERSION);
        for column in metadata.row_group(0).columns() {
            let name = column.column_path().string();
            assert!(!name.ends_with("_sealed"), "{name} is not in the data file");
            assert!(column.crypto_metadata().is_none(), "{name} is in clear");
            if name.ends_with("_token") {
                assert!(column.bloom_filter_offset().is_some(), "{name} has a bloom filter");
            }
        }

        // The companion opens with the day key only, and then shows the
        // same row groups, no statistics and no bloom filter on any column.
        let companion = layout::sealed_path(&path);
        assert!(SerializedFileReader::new(File::open(&companion).unwrap()).is_err(), "no key, no footer");
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let key = keys.existing_day_key(date).unwrap().unwrap();
        let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_file_decryption_properties(read::decryption(&companion, &key).unwrap());
        let sealed =
            parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&File::open(&companion).unwrap(), options).unwrap();
        let sealed = sealed.metadata();
        let names: Vec<String> =
            sealed.file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
        assert_eq!(names, schema::sealed_columns().map(str::to_string).collect::<Vec<_>>());
        assert_eq!(sealed.num_row_groups(), 3);
        for group in sealed.row_groups() {
            for column in group.columns() {
                assert!(column.statistics().is_none() && column.bloom_filter_offset().is_none());
            }
        }
        let hidden = kv(sealed);
        assert_eq!(hidden[schema::meta::FILE_ID], public[schema::meta::FILE_ID]);
        assert_eq!(hidden[schema::meta::DATA_FOOTER_SHA256], read::footer_sha256(&File::open(&path).unwrap()).unwrap());

        // No raw value in clear anywhere in either file.
        let needle = b"+4520000007";
        for file in [&path, &companion] {
            let bytes = std::fs::read(file).unwrap();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{}", file.display());
        }
    }

    #[test]
    fn a_sorted_file_refuses_rows_out_of_order_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let (date, day_key, all) = rows_of_one_file(&keys, &path);
        let writer = ParquetWriter::new(&root.path().join("data"), ParquetConfig::default());
        let listing = || {
            let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        let token_key = day_key.token.id.clone();

        // The file's rows are sorted: pushed in two parts, they are taken.
        let mut sorted = writer.sorted_file(date, "part-sorted.parquet", &day_key, &token_key, all.num_rows()).unwrap();
        sorted.push(all.slice(0, 120)).unwrap();
        sorted.push(all.slice(120, all.num_rows() - 120)).unwrap();
        let written = sorted.finish().unwrap();
        assert_eq!(written.rows, all.num_rows());
        assert!(layout::index_path(&written.path).exists() && layout::sealed_path(&written.path).exists());
        std::fs::remove_file(layout::index_path(&written.path)).unwrap();
        std::fs::remove_file(layout::sealed_path(&written.path)).unwrap();
        std::fs::remove_file(&written.path).unwrap();

        // Reversed, they are refused, and neither the file, its companion,
        // its index nor a temporary is left.
        let reversed = arrow_array::UInt32Array::from_iter_values((0..all.num_rows() as u32).rev());
        let reversed = arrow_select::take::take_record_batch(&all, &reversed).unwrap();
        let mut file = writer.sorted_file(date, "part-reversed.parquet", &day_key, &token_key, all.num_rows()).unwrap();
        assert!(file.push(reversed).is_err());
        drop(file);
        assert_eq!(listing(), before);
    }

    #[test]
    fn a_compacted_file_compresses_its_companion_at_its_own_level() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let (date, day_key, all) = rows_of_one_file(&keys, &path);
        let config = ParquetConfig { zstd_level: 1, compacted_companion_zstd_level: 19, ..ParquetConfig::default() };
        let writer = ParquetWriter::new(&root.path().join("data"), config);
        let token_key = day_key.token.id.clone();
        let mut plain = writer.sorted_file(date, "part-plain.parquet", &day_key, &token_key, all.num_rows()).unwrap();
        plain.push(all.clone()).unwrap();
        let plain = plain.finish().unwrap();
        let mut compacted =
            writer.compacted_file(date, "part-compacted.parquet", &day_key, &token_key, all.num_rows()).unwrap();
        compacted.push(all).unwrap();
        let compacted = compacted.finish().unwrap();
        let size = |path: &Path| std::fs::metadata(path).unwrap().len();
        assert_eq!(size(&plain.path), size(&compacted.path), "the data file keeps zstd_level");
        let calling = crate::model::IdentifierField::CallingNumber.token_column();
        assert!(matches!(codec(&compacted.path, calling), parquet::basic::Compression::ZSTD(_)), "tokens compressed");
        let (plain, compacted) = (size(&layout::sealed_path(&plain.path)), size(&layout::sealed_path(&compacted.path)));
        assert!(compacted < plain, "companion at level 19: {compacted} bytes, at level 1: {plain}");
    }

    #[test]
    fn ingest_s_files_are_compressed_at_their_own_level() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let (date, day_key, all) = rows_of_one_file(&keys, &path);
        let token_key = day_key.token.id.clone();
        let staged_at = |ingest_zstd_level: i32| {
            // `zstd_level` stays 1: only the ingest level may change the sizes.
            let config = ParquetConfig { zstd_level: 1, ingest_zstd_level, ..ParquetConfig::default() };
            let writer = ParquetWriter::new(&root.path().join(format!("data-{ingest_zstd_level}")), config);
            let staged = writer.stage_day(date, std::slice::from_ref(&all), &day_key, &token_key, 0).unwrap();
            (staged.file.bytes, staged.file.sealed_bytes)
        };
        let (fast, small) = (staged_at(1), staged_at(19));
        assert!(small.0 < fast.0, "data file at level 19: {} bytes, at level 1: {}", small.0, fast.0);
        assert!(small.1 < fast.1, "companion at level 19: {} bytes, at level 1: {}", small.1, fast.1);
        // Ingest's files leave their token columns uncompressed; the
        // other clear columns are compressed.
        let calling = crate::model::IdentifierField::CallingNumber.token_column();
        assert_eq!(codec(&path, calling), parquet::basic::Compression::UNCOMPRESSED);
        assert!(matches!(codec(&path, schema::RECORD_ID), parquet::basic::Compression::ZSTD(_)));
    }

    /// The codec of `column`'s chunk in the first row group of a data file.
    fn codec(path: &Path, column: &str) -> parquet::basic::Compression {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let chunk = group.columns().iter().find(|c| c.column_path().string() == column).unwrap();
        chunk.compression()
    }

    #[test]
    fn sealed_columns_need_the_day_key_and_the_files_own_place() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let key = keys.existing_day_key(date).unwrap().unwrap();
        let sealed = ["calling_number_sealed"];
        assert!(read::read_file(&path, None, &sealed).is_err(), "no key, no sealed column");
        let batches = read::read_file(&path, Some(&key), &sealed).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 250);
        assert!(
            read::read_file(&path, None, &["calling_number_token", "start_time"]).is_ok(),
            "clear columns need no key"
        );

        // Moved to another day's directory with its companion, the
        // companion no longer verifies.
        let other = layout::day_dir(&root.path().join("data"), PartitionDate::parse("2026-11-23").unwrap());
        std::fs::create_dir_all(&other).unwrap();
        let moved = other.join(path.file_name().unwrap());
        std::fs::rename(&path, &moved).unwrap();
        std::fs::rename(layout::sealed_path(&path), layout::sealed_path(&moved)).unwrap();
        assert!(read::read_file(&moved, Some(&key), &sealed).is_err());
        assert!(read::read_file(&moved, None, &["calling_number_token"]).is_ok());
    }

    #[test]
    fn a_companion_joins_only_the_data_file_it_was_written_with() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let key = keys.existing_day_key(date).unwrap().unwrap();
        let writer = ParquetWriter::new(&root.path().join("data"), ParquetConfig::default());
        let names: Vec<&str> = writer.schema().fields().iter().map(|f| f.name().as_str()).collect();
        let batches = read::read_file(&path, Some(&key), &names).unwrap();
        assert_eq!(batches[0].schema(), *writer.schema(), "a whole record, in the record's order");
        let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();

        // A second file of the same rows under another name: its companion
        // renamed over the first one's fails its place (AAD) ...
        let token_key = key.token.id.clone();
        let other =
            writer.write_day_named(date, "part-other.parquet", std::slice::from_ref(&all), &key, &token_key).unwrap();
        let sealed = ["calling_number_sealed"];
        let original = std::fs::read(layout::sealed_path(&path)).unwrap();
        std::fs::copy(layout::sealed_path(&other.path), layout::sealed_path(&path)).unwrap();
        assert!(read::read_file(&path, Some(&key), &sealed).is_err(), "a companion of another file");
        std::fs::write(layout::sealed_path(&path), &original).unwrap();
        assert!(read::read_file(&path, Some(&key), &sealed).is_ok());

        // ... and a data file replaced by another (same name, same rows,
        // its own footer) no longer pairs with the companion.
        let saved = std::fs::read(&path).unwrap();
        std::fs::copy(&other.path, &path).unwrap();
        let error = read::read_file(&path, Some(&key), &sealed).unwrap_err().to_string();
        assert!(error.contains("does not pair"), "{error}");
        assert!(read::read_file(&path, None, &["calling_number_token"]).is_ok(), "clear columns need no companion");
        std::fs::write(&path, saved).unwrap();

        // Without its companion, the sealed columns are unavailable, the
        // clear ones are not.
        std::fs::remove_file(layout::sealed_path(&path)).unwrap();
        assert!(read::read_file(&path, Some(&key), &sealed).is_err());
        assert!(read::read_file(&path, None, &["calling_number_token"]).is_ok());
    }

    #[test]
    fn a_clear_chunk_changed_in_place_is_refused_by_its_companion() {
        let root = tempfile::tempdir().unwrap();
        let (keys, path) = write_one_file(root.path());
        let key = keys.existing_day_key(PartitionDate::parse("2026-11-24").unwrap()).unwrap().unwrap();
        let columns = [schema::RECORD_ID, schema::START_TIME, "calling_number_sealed"];
        let before = read::read_file(&path, Some(&key), &columns).unwrap();

        // The companion holds a digest of every clear chunk but the tokens.
        let data = SerializedFileReader::new(File::open(&path).unwrap()).unwrap().metadata().clone();
        let recorded = read::chunk_digests(&File::open(&path).unwrap(), &data).unwrap();
        assert_eq!(recorded.matches("/start_time=").count(), data.num_row_groups());
        assert!(!recorded.contains("_token="), "{recorded}");

        // Someone who can write the data directory flips a bit at the end
        // of the second row group's start times (the delta-packed values
        // still decode, to other times), and sets the modification time
        // back.
        let (start, len) = {
            let group = data.row_group(1);
            let column =
                (0..group.num_columns()).find(|&c| group.column(c).column_descr().name() == schema::START_TIME);
            group.column(column.unwrap()).byte_range()
        };
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(start + len - 1) as usize] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
        let error = read::read_file(&path, Some(&key), &columns).unwrap_err().to_string();
        assert!(error.contains("start_time of row group 1 is not the one written"), "{error}");
        // Read without the key (no sealed column, no companion), the clear
        // columns carry no such check: a generic reader's view.
        assert!(read::read_file(&path, None, &[schema::START_TIME]).is_ok());

        bytes[(start + len - 1) as usize] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read::read_file(&path, Some(&key), &columns).unwrap(), before);
    }
}
