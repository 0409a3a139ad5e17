//! What the engine keeps of each published file it read: a read-only memory
//! mapping of it, of its index and, once a search needed its sealed
//! columns, of its companion where the system allows
//! ([`crate::storage::published`]), the parsed footers with their page
//! indexes, the parsed index footer and the bloom filters read so far. All
//! of it is immutable once a file is published and holds no identifier,
//! except that a companion's parsed footer carries the parquet crate's copy
//! of the key that unseals it, and its page cipher another: the cache
//! forgets a day as soon as its key is gone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::bloom_filter::Sbbf;
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;

use super::{LookupError, LookupStats};
use crate::keys::{DayKey, KeyStore};
use crate::model::{KeyId, PartitionDate};
use crate::storage::direct::PageCipher;
use crate::storage::index::IndexReader;
use crate::storage::published::PublishedFile;
use crate::storage::{layout, read};

/// The bloom filter of one column chunk, `None` if it has none.
pub(super) type BloomFilter = Option<Arc<Sbbf>>;

/// What the cache keeps of one published file. Immutable after loading.
pub(super) struct CachedFile {
    stamp: Stamp,
    /// The data file (clear columns), mapped where the system allows.
    pub(super) file: PublishedFile,
    pub(super) metadata: ArrowReaderMetadata,
    pub(super) token_key: Option<KeyId>,
    pub(super) index: Option<IndexReader>,
    pub(super) blooms: Mutex<HashMap<(usize, usize), BloomFilter>>,
    /// The companion (sealed columns), opened when a search first needs it.
    sealed: Mutex<Option<Arc<SealedFile>>>,
    /// The clear column chunks (row group, column) found equal to the
    /// companion's digests of them.
    checked: Mutex<HashSet<(usize, usize)>>,
}

/// What tells a cached file from the file now under its name: its size,
/// its modification time, and the change time and inode, which no writer
/// of the file can set back (the modification time can be), so that a
/// file changed in place after its chunks were checked is loaded and
/// checked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
    changed: (i64, i64),
    inode: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        Ok(Stamp {
            len: metadata.len(),
            modified: metadata.modified()?,
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
        })
    }

    /// True if the modification and change times lie more than `settled`
    /// before `time`.
    fn settled_before(&self, time: SystemTime, settled: Duration) -> bool {
        let changed = Duration::new(self.changed.0.max(0) as u64, self.changed.1.clamp(0, 999_999_999) as u32);
        let Some(changed) = UNIX_EPOCH.checked_add(changed) else { return false };
        [self.modified, changed].iter().all(|t| time.duration_since(*t).is_ok_and(|age| age > settled))
    }
}

/// A data file's companion, decrypted footer and all, checked to pair with
/// its data file.
pub(super) struct SealedFile {
    pub(super) file: PublishedFile,
    pub(super) metadata: ArrowReaderMetadata,
    /// The digests of the data file's clear chunks; `None` for a companion
    /// written before they were recorded.
    digests: Option<read::ChunkDigests>,
    /// The decryption of its pages for [direct](crate::storage::direct)
    /// reads; `None` for a companion that reader does not decrypt.
    pub(super) cipher: Option<PageCipher>,
}

impl CachedFile {
    /// The companion of the data file at `path`, sealed under `key`: opened
    /// and checked against the data file on first use
    /// ([`read::check_pairing`]), then kept.
    pub(super) fn sealed(&self, path: &Path, key: &DayKey) -> Result<Arc<SealedFile>, ParquetError> {
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(companion) = sealed.as_ref() {
            return Ok(Arc::clone(companion));
        }
        let companion = layout::sealed_path(path);
        let file = PublishedFile::open(&companion).map_err(|e| ParquetError::External(Box::new(e)))?;
        let options = ArrowReaderOptions::new()
            .with_file_decryption_properties(read::decryption(&companion, key)?)
            .with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(&file, options)?;
        read::check_pairing(self.metadata.metadata(), &read::footer_sha256(&self.file)?, metadata.metadata())?;
        let digests = read::ChunkDigests::of(metadata.metadata())?;
        let cipher = PageCipher::of(&file, key.secret.expose(), layout::aad_prefix(&companion).as_bytes())?;
        let opened = Arc::new(SealedFile { file, metadata, digests, cipher });
        *sealed = Some(Arc::clone(&opened));
        Ok(opened)
    }

    /// Checks the clear `columns` of row groups `groups` against the
    /// digests `sealed` holds of them, each chunk once: a chunk changed
    /// since writing is refused before a row of it is read.
    pub(super) fn check_chunks(
        &self,
        sealed: &SealedFile,
        groups: &[usize],
        columns: &[usize],
    ) -> Result<(), ParquetError> {
        let Some(digests) = &sealed.digests else { return Ok(()) };
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        for &group in groups {
            for &column in columns {
                if !checked.contains(&(group, column)) {
                    digests.check(&self.file, self.metadata.metadata(), group, column)?;
                    checked.insert((group, column));
                }
            }
        }
        Ok(())
    }
}

/// Where a file's rows come from: the live data or an order's copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Area {
    Live,
    /// An order's copies, searched only for the query's targets at these
    /// positions: the ones the order itself targets.
    Preserved {
        order: String,
        targets: Arc<[usize]>,
    },
}

/// One file to search, with the key that unseals it.
pub(super) struct Work {
    pub(super) path: PathBuf,
    pub(super) area: Area,
    pub(super) key: Arc<DayKey>,
}
/// The cached files, per day directory (live or preserved).
pub(super) struct FileCache {
    files: Mutex<HashMap<PathBuf, HashMap<PathBuf, Arc<CachedFile>>>>,
    /// The last listing of each directory, kept while the directory's
    /// stamp says nothing was published, renamed or deleted in it since.
    listings: Mutex<HashMap<PathBuf, Listing>>,
    /// [`SETTLED`], shorter in tests.
    settled: Duration,
}

impl Default for FileCache {
    fn default() -> Self {
        FileCache { files: Mutex::default(), listings: Mutex::default(), settled: SETTLED }
    }
}

/// A directory's files as listed, and the directory's stamp before the
/// listing. A listing is kept only once the directory's times are older
/// than it by more than [`SETTLED`]: a change made within the same tick
/// of the file system's clock as the stamp could leave the times as they
/// were (so a directory being written to is listed at every lookup).
struct Listing {
    stamp: Stamp,
    files: Vec<PathBuf>,
}

/// How much older than a listing a directory's times must be for the
/// listing to be kept: well beyond any file system's timestamp tick.
const SETTLED: Duration = Duration::from_secs(2);

impl FileCache {
    /// How many files the cache holds.
    pub(super) fn len(&self) -> usize {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).values().map(HashMap::len).sum()
    }

    pub(super) fn clear(&self) {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The files of a day, dropping cache entries of files no longer there.
    /// One `stat` of the day's directory when it has not changed since it
    /// was last listed.
    pub(super) fn list(
        &self,
        root: &Path,
        day: PartitionDate,
        stats: &mut LookupStats,
    ) -> Result<Vec<PathBuf>, LookupError> {
        let dir = layout::day_dir(root, day);
        let before = SystemTime::now();
        let stamp = std::fs::metadata(&dir).and_then(|m| Stamp::of(&m)).ok();
        if let Some(stamp) = stamp {
            let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(listing) = listings.get(&dir).filter(|l| l.stamp == stamp) {
                return Ok(listing.files.clone());
            }
        }
        stats.listings += 1;
        let files = read::list_files(root, day)?;
        {
            let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            match stamp.filter(|s| s.settled_before(before, self.settled)) {
                Some(stamp) => listings.insert(dir.clone(), Listing { stamp, files: files.clone() }),
                None => listings.remove(&dir),
            };
        }
        let mut cache = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.is_empty() {
            cache.remove(&dir);
        } else if let Some(entries) = cache.get_mut(&dir) {
            entries.retain(|path, _| files.contains(path));
        }
        Ok(files)
    }

    pub(super) fn forget(&self, dir: &Path) {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
    }

    /// Forgets cached days outside this query's window too, once their key
    /// is gone (or their order's area, which goes with the order's key): a
    /// cached footer holds the parquet crate's copy of the key, which must
    /// not outlive the key itself. One listing of the keystore's day keys.
    pub(super) fn forget_gone(&self, data_dir: &Path, keys: &KeyStore, orders: &[String]) -> Result<(), LookupError> {
        let live: BTreeSet<PartitionDate> = keys.days_with_keys()?.into_iter().collect();
        let live_root = data_dir.join(layout::CDR_DIR);
        let areas: Vec<PathBuf> = orders.iter().map(|o| layout::order_dir(data_dir, o)).collect();
        let keep = |dir: &PathBuf| {
            if dir.parent() == Some(live_root.as_path()) {
                let day = dir.file_name().and_then(|n| n.to_str()).and_then(layout::date_of_dir);
                return day.is_some_and(|d| live.contains(&d));
            }
            areas.iter().any(|area| dir.starts_with(area))
        };
        self.files.lock().unwrap_or_else(|p| p.into_inner()).retain(|dir, _| keep(dir));
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).retain(|dir, _| keep(dir));
        Ok(())
    }

    /// The live days of which the cache holds files (and so their footers,
    /// with the parquet crate's copy of the day's key).
    pub(super) fn live_days(&self, data_dir: &Path) -> BTreeSet<PartitionDate> {
        let live_root = data_dir.join(layout::CDR_DIR);
        let cache = self.files.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .filter(|(dir, files)| !files.is_empty() && dir.parent() == Some(live_root.as_path()))
            .filter_map(|(dir, _)| dir.file_name().and_then(|n| n.to_str()).and_then(layout::date_of_dir))
            .collect()
    }

    /// The cached footer of the file at `path`, loaded on first use or when
    /// the file was replaced (a preservation copy made again).
    pub(super) fn get(&self, path: &Path, stats: &mut LookupStats) -> Result<Arc<CachedFile>, ParquetError> {
        let io = |e: std::io::Error| ParquetError::External(Box::new(e));
        let file_meta = std::fs::metadata(path).map_err(io)?;
        let stamp = Stamp::of(&file_meta).map_err(io)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let hit = {
            let cache = self.files.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&dir).and_then(|files| files.get(path)).filter(|c| c.stamp == stamp).cloned()
        };
        if let Some(cached) = hit {
            // An index rebuilt since the file was cached is picked up.
            if cached.index.is_some() || !layout::index_path(path).exists() {
                stats.cache_hits += 1;
                return Ok(cached);
            }
        }
        stats.cache_misses += 1;
        let file = PublishedFile::open(path).map_err(io)?;
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(&file, options)?;
        let token_key = read::token_key_of(metadata.metadata());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let rows = metadata.metadata().file_metadata().num_rows().max(0) as u64;
        // A damaged, stale or foreign index is ignored: the scan finds the
        // same rows, more slowly.
        let index = IndexReader::open(path).ok().flatten().filter(|i| i.describes(&name, stamp.len, rows));
        let cached = Arc::new(CachedFile {
            stamp,
            file,
            metadata,
            token_key,
            index,
            blooms: Mutex::new(HashMap::new()),
            sealed: Mutex::new(None),
            checked: Mutex::new(HashSet::new()),
        });
        let mut cache = self.files.lock().unwrap_or_else(|p| p.into_inner());
        cache.entry(dir).or_default().insert(path.to_path_buf(), Arc::clone(&cached));
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> PartitionDate {
        PartitionDate::parse("2026-03-01").unwrap()
    }

    fn listed(cache: &FileCache, root: &Path) -> (Vec<String>, u64) {
        let mut stats = LookupStats::default();
        let files = cache.list(root, day(), &mut stats).unwrap();
        let names = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        (names, stats.listings)
    }

    #[test]
    fn a_directory_is_listed_again_only_once_something_changed_in_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = layout::day_dir(root.path(), day());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("part-a.parquet"), b"").unwrap();
        let settled = Duration::from_millis(20);
        let cache = FileCache { settled, ..FileCache::default() };
        // The file system's clock passes the directory's times by more
        // than `settled` (a wait for the wall clock, not for another
        // thread): only then is a listing kept.
        let stamp = Stamp::of(&std::fs::metadata(&dir).unwrap()).unwrap();
        assert_eq!(listed(&cache, root.path()), (vec!["part-a.parquet".to_string()], 1));
        assert_eq!(listed(&cache, root.path()).1, 1, "times too recent: listed again");
        while !stamp.settled_before(SystemTime::now(), settled) {
            std::thread::sleep(settled);
        }
        assert_eq!(listed(&cache, root.path()), (vec!["part-a.parquet".to_string()], 1));
        assert_eq!(listed(&cache, root.path()), (vec!["part-a.parquet".to_string()], 0), "one stat, no listing");
        // Published, replaced by rename, deleted: each is seen at once.
        std::fs::write(dir.join("part-b.parquet"), b"").unwrap();
        assert_eq!(listed(&cache, root.path()), (vec!["part-a.parquet".into(), "part-b.parquet".into()], 1));
        std::fs::write(dir.join(".part-c.parquet.tmp"), b"").unwrap();
        std::fs::rename(dir.join(".part-c.parquet.tmp"), dir.join("part-a.parquet")).unwrap();
        assert_eq!(listed(&cache, root.path()), (vec!["part-a.parquet".into(), "part-b.parquet".into()], 1));
        std::fs::remove_file(dir.join("part-a.parquet")).unwrap();
        assert_eq!(listed(&cache, root.path()), (vec!["part-b.parquet".to_string()], 1));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(listed(&cache, root.path()), (vec![], 1), "a day deleted");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("part-d.parquet"), b"").unwrap();
        assert_eq!(listed(&cache, root.path()), (vec!["part-d.parquet".to_string()], 1), "and made again");
    }

    #[test]
    fn a_stamp_is_settled_once_both_its_times_are_older_than_the_margin() {
        let root = tempfile::tempdir().unwrap();
        let stamp = Stamp::of(&std::fs::metadata(root.path()).unwrap()).unwrap();
        let now = SystemTime::now();
        assert!(!stamp.settled_before(now, SETTLED));
        assert!(stamp.settled_before(now + SETTLED + Duration::from_millis(10), SETTLED));
        assert!(!stamp.settled_before(UNIX_EPOCH, Duration::ZERO), "a clock behind the times trusts nothing");
        let changed_late = Stamp { changed: (i64::MAX / 4, 0), ..stamp };
        assert!(!changed_late.settled_before(now + SETTLED * 2, SETTLED), "the change time counts too");
    }
}
