//! The engine: runs the files of a query on its threads, and keeps the
//! cache of what it read of each published file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::bloom_filter::Sbbf;
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;

use super::plan::Work;
use super::{FoundRecord, LookupError, LookupStats, Query};
use crate::keys::KeyStore;
use crate::model::{KeyId, PartitionDate};
use crate::ops::{periodic, pool};
use crate::privacy::token::Tokeniser;
use crate::storage::index::IndexReader;
use crate::storage::published::PublishedFile;
use crate::storage::{layout, read};

/// The bloom filter of one column chunk, `None` if it has none.
pub(super) type BloomFilter = Option<Arc<Sbbf>>;

/// What the cache keeps of one published file. Immutable after loading.
pub(super) struct CachedFile {
    stamp: (u64, SystemTime),
    /// The file, mapped where the system allows.
    pub(super) file: PublishedFile,
    pub(super) metadata: ArrowReaderMetadata,
    pub(super) token_key: Option<KeyId>,
    pub(super) index: Option<IndexReader>,
    pub(super) blooms: Mutex<HashMap<(usize, usize), BloomFilter>>,
}

/// The lookup engine with its cache of file metadata. `Send + Sync`: one
/// engine serves concurrent queries.
pub struct LookupEngine {
    pub(super) data_dir: PathBuf,
    pub(super) keys: Arc<KeyStore>,
    /// At most this many threads per query.
    threads: usize,
    /// Per day directory (live or preserved), its files.
    cache: Mutex<HashMap<PathBuf, HashMap<PathBuf, Arc<CachedFile>>>>,
}

impl LookupEngine {
    pub fn new(data_dir: PathBuf, keys: Arc<KeyStore>) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        LookupEngine { data_dir, keys, threads, cache: Mutex::new(HashMap::new()) }
    }

    /// At most `threads` threads per query (at least one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Runs a query. Blocks; see [`Self::find_async`].
    pub fn find(&self, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
        let mut stats = LookupStats::default();
        let work = self.plan(query, &mut stats)?;
        // The targets' tokens under every token key: a file is searched
        // under the key it names.
        let tokens: HashMap<KeyId, Vec<i64>> = self
            .keys
            .token_keys()
            .iter()
            .map(|key| {
                let tokeniser = Tokeniser::new(key);
                (
                    key.id.clone(),
                    query.targets.iter().map(|(kind, value)| tokeniser.token(*kind, value.as_bytes()).0).collect(),
                )
            })
            .collect();
        // Workers list each day directory themselves, so listing runs in
        // parallel too.
        let days = pool::map(work.iter().collect(), self.threads, |day| {
            let mut found = Vec::new();
            let mut stats = LookupStats::default();
            for path in self.list(&day.root, day.day)? {
                let file = Work { path, area: day.area.clone(), key: Arc::clone(&day.key) };
                self.search_file(&file, &tokens, query, &mut stats, &mut found)
                    .map_err(|source| LookupError::Parquet { path: file.path.display().to_string(), source })?;
            }
            Ok::<_, LookupError>((found, stats))
        })?;
        let mut found = Vec::new();
        for (records, day_stats) in days {
            found.extend(records);
            stats.add(&day_stats);
        }
        found.sort_by(|a, b| (a.start_time, &a.record_id).cmp(&(b.start_time, &b.record_id)));
        Ok((found, stats))
    }

    /// Runs a query on a blocking thread, off the async runtime's workers.
    pub async fn find_async(self: Arc<Self>, query: Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
        tokio::task::spawn_blocking(move || self.find(&query)).await.map_err(|_| LookupError::Worker)?
    }

    /// How many files' footers the cache holds.
    pub fn cached_files(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).values().map(HashMap::len).sum()
    }

    /// Forgets the cached files of days destroyed (or whose key is gone)
    /// and of lifted orders, without waiting for the next query: their
    /// footers hold the parquet crate's copy of a key that no longer
    /// exists. Returns how many files were forgotten. The service runs it
    /// every minute ([`periodic`]).
    pub fn forget_destroyed(&self) -> Result<usize, LookupError> {
        let before = self.cached_files();
        self.forget_gone(&layout::orders_with_areas(&self.data_dir))?;
        Ok(before.saturating_sub(self.cached_files()))
    }

    /// Forgets every cached footer.
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The files of a day, dropping cache entries of files no longer there.
    pub(super) fn list(&self, root: &Path, day: PartitionDate) -> Result<Vec<PathBuf>, LookupError> {
        let files = read::list_files(root, day)?;
        let dir = layout::day_dir(root, day);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if files.is_empty() {
            cache.remove(&dir);
        } else if let Some(entries) = cache.get_mut(&dir) {
            entries.retain(|path, _| files.contains(path));
        }
        Ok(files)
    }

    pub(super) fn forget(&self, dir: &Path) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
    }

    /// Forgets cached days outside this query's window too, once their key
    /// is gone (or their order's area, which goes with the order's key): a
    /// cached footer holds the parquet crate's copy of the key, which must
    /// not outlive the key itself. One listing of the keystore's day keys.
    pub(super) fn forget_gone(&self, orders: &[String]) -> Result<(), LookupError> {
        let live: BTreeSet<PartitionDate> = self.keys.days_with_keys()?.into_iter().collect();
        let live_root = self.data_dir.join(layout::CDR_DIR);
        let areas: Vec<PathBuf> = orders.iter().map(|o| layout::order_dir(&self.data_dir, o)).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|dir, _| {
            if dir.parent() == Some(live_root.as_path()) {
                let day = dir.file_name().and_then(|n| n.to_str()).and_then(layout::date_of_dir);
                return day.is_some_and(|d| live.contains(&d));
            }
            areas.iter().any(|area| dir.starts_with(area))
        });
        Ok(())
    }

    /// The cached footer of a file, loaded on first use or when the file
    /// was replaced (a preservation copy made again).
    pub(super) fn cached(&self, work: &Work, stats: &mut LookupStats) -> Result<Arc<CachedFile>, ParquetError> {
        let io = |e: std::io::Error| ParquetError::External(Box::new(e));
        let file_meta = std::fs::metadata(&work.path).map_err(io)?;
        let stamp = (file_meta.len(), file_meta.modified().map_err(io)?);
        let dir = work.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let hit = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&dir).and_then(|files| files.get(&work.path)).filter(|c| c.stamp == stamp).cloned()
        };
        if let Some(cached) = hit {
            // An index rebuilt since the file was cached is picked up.
            if cached.index.is_some() || !layout::index_path(&work.path).exists() {
                stats.cache_hits += 1;
                return Ok(cached);
            }
        }
        stats.cache_misses += 1;
        let file = PublishedFile::open(&work.path).map_err(io)?;
        let options = ArrowReaderOptions::new()
            .with_file_decryption_properties(read::decryption(&work.path, &work.key)?)
            .with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(&file, options)?;
        let token_key = read::token_key_of(metadata.metadata());
        let name = work.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let rows = metadata.metadata().file_metadata().num_rows().max(0) as u64;
        // A damaged, stale or foreign index is ignored: the scan finds the
        // same rows, more slowly.
        let index = IndexReader::open(&work.path).ok().flatten().filter(|i| i.describes(&name, stamp.0, rows));
        let cached =
            Arc::new(CachedFile { stamp, file, metadata, token_key, index, blooms: Mutex::new(HashMap::new()) });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entry(dir).or_default().insert(work.path.clone(), Arc::clone(&cached));
        Ok(cached)
    }
}

/// The service sweeps the cache of destroyed days every minute, so a key's
/// copy in a cached footer does not outlive the key by more than that.
impl periodic::Job for LookupEngine {
    type Report = usize;
    type Error = LookupError;
    const NAME: &'static str = "lookup cache sweep";

    fn run_once(&self) -> Result<usize, LookupError> {
        self.forget_destroyed()
    }

    fn is_fatal(_: &LookupError) -> bool {
        false
    }

    fn log(forgotten: &usize) {
        if *forgotten > 0 {
            tracing::debug!(files = forgotten, "cached files of destroyed days forgotten");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_engine_is_shared_between_threads() {
        assert_send_sync::<LookupEngine>();
    }
}
