//! Published files as the lookup engine reads them: mapped into memory
//! where the system allows, so each page read is a slice of the mapping (the
//! parquet crate's readers take `Bytes`) without a system call or a copy.

use std::fs::File;
use std::io;
use std::path::Path;

/// A published file as the lookup engine reads it, kept with the file's
/// cached footer: a read-only memory mapping, so each page read is a slice
/// of it (the parquet crate's readers take `Bytes`) without a system call
/// or a copy, or, where the system refuses one more mapping (the count is
/// capped by `vm.max_map_count`, 65,530 by default, and each cached data,
/// index or companion file takes one), the open file, read with positional reads.
///
/// Only for files that are never written again: data, companion and index files are
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_array::RecordBatch;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::fs;
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
