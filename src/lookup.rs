//! The lookup engine: the retained records of given targets within a time
//! window, with only the allowed data categories unsealed.
//!
//! Pruning, cheapest first:
//!
//! 1. days outside the window are never opened, nor days whose key is gone
//!    (beyond retention); a day destroyed by retention is then searched in
//!    the preservation areas that hold copies of it, under each order's key;
//! 2. per file, the token index ([`crate::index`]) names the rows where a
//!    target's token occurs; a file without a usable index (or a target of
//!    an unindexed kind, cells) falls back to row groups pruned by their
//!    `start_time` statistics and token bloom filters, then a scan of the
//!    clear token and time columns;
//! 3. only the candidate rows are read (page index and row selection), with
//!    the sealed columns of the allowed categories and of the target's kind,
//!    and every candidate is confirmed against its unsealed value, which
//!    removes index-prefix, bloom-filter and token-collision false matches.
//!
//! Tokens are computed under every token key id the searched files name, so
//! a token-key rotation inside the window loses nothing.
//!
//! What is cached ([`LookupEngine`]): per file, a read-only memory mapping
//! of it and of its index where the system allows (pages are slices of the
//! mappings, read without a system call; [`read::PublishedFile`]), the
//! parsed footer with its page index, the parsed index footer and the bloom
//! filters read so far.
//! These are immutable once a file is published and hold no identifier.
//! The parsed footer of a sealed file carries the parquet crate's copy of
//! the day key (its decryptor), so the cache forgets a day as soon as the
//! day is destroyed (tombstone) or its key is gone, and an order's files as
//! soon as its key is gone: every query checks, and the service calls
//! [`LookupEngine::forget_destroyed`] every minute between queries.
//! Decrypted values live only in the query that read them.
//!
//! This module returns raw identifiers: it is the disclosure path. Callers
//! (the lawful-access service) must have checked the request's scope and
//! made its audit entry durable before anything leaves the process. It
//! blocks (file reads, decryption, threads of its own): async callers use
//! [`LookupEngine::find_async`], which runs it off the runtime's workers.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::bloom_filter::Sbbf;
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::statistics::Statistics;

use crate::index::{self, IndexReader};
use crate::keys::{DayKey, KeyError, KeyStore, SecretKey};
use crate::models::{Category, IdentifierField, IdentifierKind, KeyId, PartitionDate, TimestampMicros};
use crate::preserve;
use crate::pseudonymise::Tokeniser;
use crate::read::{self, PublishedFile, ReadError};
use crate::write::{day_dir, schema};

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Targets as (kind, canonical value); see `orders::canonical_value`.
    pub targets: Vec<(IdentifierKind, String)>,
    /// Inclusive window on `start_time`.
    pub from: TimestampMicros,
    pub to: TimestampMicros,
    /// The categories whose identifiers may be disclosed.
    pub categories: BTreeSet<Category>,
}

/// One record found, with the identifiers of the allowed categories.
#[derive(Clone, PartialEq, Eq)]
pub struct FoundRecord {
    pub day: PartitionDate,
    pub record_id: String,
    pub service: String,
    pub direction: Option<String>,
    pub start_time: TimestampMicros,
    pub end_time: Option<TimestampMicros>,
    pub identifiers: Vec<(IdentifierField, String)>,
    pub src_port: Option<i32>,
    pub dst_port: Option<i32>,
    /// The preservation order whose copy held the record, if its day was
    /// already destroyed.
    pub preserved_under: Option<String>,
}

impl std::fmt::Debug for FoundRecord {
    // A found record holds raw identifiers: Debug shows the id only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FoundRecord({}, {} identifiers)", self.record_id, self.identifiers.len())
    }
}

/// How the lookup went, for metrics, tests and benchmarks (no identifiers).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupStats {
    pub days: u64,
    /// Days in the window whose key is gone (beyond retention): unavailable,
    /// except for what preservation orders hold.
    pub days_unavailable: u64,
    pub files: u64,
    pub row_groups: u64,
    pub row_groups_read: u64,
    pub candidates: u64,
    pub false_matches: u64,
    /// Files searched through their token index.
    pub files_indexed: u64,
    /// Files searched by bloom filters and a token-column scan.
    pub files_scanned: u64,
    /// Token column chunks read by scans (zero when every file was indexed).
    pub token_chunks_scanned: u64,
    /// Index pages read.
    pub index_pages: u64,
    /// Files of preservation areas searched.
    pub preserved_files: u64,
    /// Files whose footer came from the cache, and files opened afresh.
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl LookupStats {
    fn add(&mut self, other: &LookupStats) {
        self.days += other.days;
        self.days_unavailable += other.days_unavailable;
        self.files += other.files;
        self.row_groups += other.row_groups;
        self.row_groups_read += other.row_groups_read;
        self.candidates += other.candidates;
        self.false_matches += other.false_matches;
        self.files_indexed += other.files_indexed;
        self.files_scanned += other.files_scanned;
        self.token_chunks_scanned += other.token_chunks_scanned;
        self.index_pages += other.index_pages;
        self.preserved_files += other.preserved_files;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("cannot read {path}: {source}")]
    Parquet { path: String, source: ParquetError },
    #[error("lookup worker failed")]
    Worker,
}

/// Runs a query over the data directory without a cache: every footer is
/// read afresh. Long-lived callers keep a [`LookupEngine`].
pub fn find(data_dir: &Path, keys: &KeyStore, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
    let engine = LookupEngine::with_borrowed_keys(data_dir.to_path_buf(), keys);
    engine.find(query)
}

/// Where a file's rows come from: the live data or an order's copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Area {
    Live,
    Preserved(String),
}

/// One day directory to search (live data or an order's area), with the
/// key that unseals its files. Workers list the directory themselves, so
/// listing runs in parallel too.
struct DayWork {
    root: PathBuf,
    day: PartitionDate,
    area: Area,
    key: Arc<DayKey>,
}

/// One file to search, with the key that unseals it.
struct Work {
    path: PathBuf,
    area: Area,
    key: Arc<DayKey>,
}

/// The bloom filter of one column chunk, `None` if it has none.
type BloomFilter = Option<Arc<Sbbf>>;

/// What the cache keeps of one published file. Immutable after loading.
struct CachedFile {
    stamp: (u64, SystemTime),
    /// The file, mapped where the system allows (`read::PublishedFile`).
    file: PublishedFile,
    metadata: ArrowReaderMetadata,
    token_key: Option<KeyId>,
    index: Option<IndexReader>,
    blooms: Mutex<HashMap<(usize, usize), BloomFilter>>,
}

/// The keystore, owned by the engine or lent by [`find`].
enum Keys<'a> {
    Shared(Arc<KeyStore>),
    Borrowed(&'a KeyStore),
}

impl Keys<'_> {
    fn get(&self) -> &KeyStore {
        match self {
            Keys::Shared(keys) => keys,
            Keys::Borrowed(keys) => keys,
        }
    }
}

/// The lookup engine with its cache of file metadata. `Send + Sync`: one
/// engine serves concurrent queries.
pub struct LookupEngine {
    inner: Engine<'static>,
}

struct Engine<'a> {
    data_dir: PathBuf,
    keys: Keys<'a>,
    threads: usize,
    /// Per day directory (live or preserved), its files.
    cache: Mutex<HashMap<PathBuf, HashMap<PathBuf, Arc<CachedFile>>>>,
}

impl LookupEngine {
    pub fn new(data_dir: PathBuf, keys: Arc<KeyStore>) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        LookupEngine {
            inner: Engine { data_dir, keys: Keys::Shared(keys), threads, cache: Mutex::new(HashMap::new()) },
        }
    }

    /// At most `threads` threads per query (at least one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.inner.threads = threads.max(1);
        self
    }

    fn with_borrowed_keys(data_dir: PathBuf, keys: &KeyStore) -> Engine<'_> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Engine { data_dir, keys: Keys::Borrowed(keys), threads, cache: Mutex::new(HashMap::new()) }
    }

    /// Runs a query. Blocks; see [`Self::find_async`].
    pub fn find(&self, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
        self.inner.find(query)
    }

    /// Runs a query on a blocking thread, off the async runtime's workers.
    pub async fn find_async(self: Arc<Self>, query: Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
        tokio::task::spawn_blocking(move || self.find(&query)).await.map_err(|_| LookupError::Worker)?
    }

    /// How many files' footers the cache holds.
    pub fn cached_files(&self) -> usize {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).values().map(HashMap::len).sum()
    }

    /// Forgets the cached files of days destroyed (or whose key is gone)
    /// and of lifted orders, without waiting for the next query: their
    /// footers hold the parquet crate's copy of a key that no longer
    /// exists. Returns how many files were forgotten. The service runs it
    /// every minute ([`crate::periodic`]).
    pub fn forget_destroyed(&self) -> Result<usize, LookupError> {
        let before = self.cached_files();
        let orders = preserve::orders_with_areas(&self.inner.data_dir);
        self.inner.forget_gone(self.inner.keys.get(), &orders)?;
        Ok(before.saturating_sub(self.cached_files()))
    }

    /// Forgets every cached footer.
    pub fn clear_cache(&self) {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Engine<'_> {
    fn find(&self, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
        let keys = self.keys.get();
        let mut stats = LookupStats::default();
        let work = self.plan(query, &mut stats)?;
        // The targets' tokens under every token key: a file is searched
        // under the key it names.
        let tokens: HashMap<KeyId, Vec<i64>> = keys
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

        let next = AtomicUsize::new(0);
        let threads = self.threads.clamp(1, work.len().max(1));
        let lanes: Vec<Result<(Vec<FoundRecord>, LookupStats), LookupError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (work, next, tokens) = (&work, &next, &tokens);
                    scope.spawn(move || {
                        let mut found = Vec::new();
                        let mut stats = LookupStats::default();
                        while let Some(item) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                            for path in self.list(&item.root, item.day)? {
                                let file = Work { path, area: item.area.clone(), key: Arc::clone(&item.key) };
                                self.search_file(&file, tokens, query, &mut stats, &mut found).map_err(|source| {
                                    LookupError::Parquet { path: file.path.display().to_string(), source }
                                })?;
                            }
                        }
                        Ok((found, stats))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(LookupError::Worker))).collect()
        });
        let mut found = Vec::new();
        for lane in lanes {
            let (records, lane_stats) = lane?;
            found.extend(records);
            stats.add(&lane_stats);
        }
        found.sort_by(|a, b| (a.start_time, &a.record_id).cmp(&(b.start_time, &b.record_id)));
        Ok((found, stats))
    }

    /// The day directories to search, with their keys; forgets cached days
    /// that are gone.
    fn plan(&self, query: &Query, stats: &mut LookupStats) -> Result<Vec<DayWork>, LookupError> {
        let keys = self.keys.get();
        let (first, last) = (query.from.partition_date(), query.to.partition_date());
        let orders = preserve::orders_with_areas(&self.data_dir);
        self.forget_gone(keys, &orders)?;
        let mut order_keys: HashMap<String, Option<Arc<SecretKeyWithId>>> = HashMap::new();
        let mut work = Vec::new();
        let mut day = first;
        while day <= last {
            stats.days += 1;
            // The tombstone comes before the key's destruction: a day being
            // destroyed is no longer served, even if this process still
            // holds its key in memory.
            let key = if keys.is_destroyed(day) { None } else { keys.existing_day_key(day)? };
            match key {
                Some(key) => {
                    work.push(DayWork { root: self.data_dir.clone(), day, area: Area::Live, key });
                }
                None => {
                    stats.days_unavailable += 1;
                    self.forget(&day_dir(&self.data_dir, day));
                    // Only a destroyed day is searched in the preservation
                    // areas: while it is live, its own files are complete,
                    // and searching both would return records twice.
                    for order in &orders {
                        let area = preserve::order_dir(&self.data_dir, order);
                        if !day_dir(&area, day).exists() {
                            continue;
                        }
                        let secret = match order_keys.get(order) {
                            Some(secret) => secret.clone(),
                            None => {
                                let secret =
                                    keys.order_key(order)?.map(|(id, secret)| Arc::new(SecretKeyWithId { id, secret }));
                                order_keys.insert(order.clone(), secret.clone());
                                secret
                            }
                        };
                        let Some(secret) = secret else {
                            // The order was lifted: its copies are unreadable
                            // and about to be deleted.
                            self.forget(&day_dir(&area, day));
                            continue;
                        };
                        let key = Arc::new(DayKey {
                            id: secret.id.clone(),
                            date: day,
                            secret: SecretKey::from_bytes(*secret.secret.expose()),
                        });
                        work.push(DayWork { root: area, day, area: Area::Preserved(order.clone()), key });
                    }
                }
            }
            let Some(next) = PartitionDate::from_days_since_epoch(day.days_since_epoch() + 1) else { break };
            day = next;
        }
        Ok(work)
    }

    /// The files of a day, dropping cache entries of files no longer there.
    fn list(&self, root: &Path, day: PartitionDate) -> Result<Vec<PathBuf>, LookupError> {
        let files = read::list_files(root, day)?;
        let dir = day_dir(root, day);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if files.is_empty() {
            cache.remove(&dir);
        } else if let Some(entries) = cache.get_mut(&dir) {
            entries.retain(|path, _| files.contains(path));
        }
        Ok(files)
    }

    fn forget(&self, dir: &Path) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
    }

    /// Forgets cached days outside this query's window too, once their key
    /// is gone (or their order's area, which goes with the order's key): a
    /// cached footer holds the parquet crate's copy of the key, which must
    /// not outlive the key itself. One listing of the keystore's day keys.
    fn forget_gone(&self, keys: &KeyStore, orders: &[String]) -> Result<(), LookupError> {
        let live: BTreeSet<PartitionDate> = keys.days_with_keys()?.into_iter().collect();
        let live_root = self.data_dir.join(crate::write::CDR_DIR);
        let areas: Vec<PathBuf> = orders.iter().map(|o| preserve::order_dir(&self.data_dir, o)).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|dir, _| {
            if dir.parent() == Some(live_root.as_path()) {
                let day = dir.file_name().and_then(|n| n.to_str()).and_then(PartitionDate::from_dir_name);
                return day.is_some_and(|d| live.contains(&d));
            }
            areas.iter().any(|area| dir.starts_with(area))
        });
        Ok(())
    }

    /// The cached footer of a file, loaded on first use or when the file
    /// was replaced (a preservation copy made again).
    fn cached(&self, work: &Work, stats: &mut LookupStats) -> Result<Arc<CachedFile>, ParquetError> {
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
            if cached.index.is_some() || !index::sidecar_path(&work.path).exists() {
                stats.cache_hits += 1;
                return Ok(cached);
            }
        }
        stats.cache_misses += 1;
        let file = PublishedFile::open(&work.path).map_err(io)?;
        let options = decryption(&work.path, &work.key)?.with_page_index_policy(PageIndexPolicy::Optional);
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

    fn search_file(
        &self,
        work: &Work,
        tokens: &HashMap<KeyId, Vec<i64>>,
        query: &Query,
        stats: &mut LookupStats,
        found: &mut Vec<FoundRecord>,
    ) -> Result<(), ParquetError> {
        stats.files += 1;
        if work.area != Area::Live {
            stats.preserved_files += 1;
        }
        let cached = self.cached(work, stats)?;
        let metadata = Arc::clone(cached.metadata.metadata());
        stats.row_groups += metadata.num_row_groups() as u64;
        let Some(file_tokens) = cached.token_key.as_ref().and_then(|id| tokens.get(id)) else { return Ok(()) };
        // (field, token, canonical value) for every field a target can be in.
        let wanted: Vec<(IdentifierField, i64, &str)> = query
            .targets
            .iter()
            .zip(file_tokens)
            .flat_map(|((kind, value), token)| fields_of(*kind).map(move |f| (f, *token, value.as_str())))
            .collect();
        let parquet_schema = metadata.file_metadata().schema_descr();
        let index_of = |name: &str| parquet_schema.columns().iter().position(|c| c.name() == name);
        let Some(time_index) = index_of(schema::START_TIME) else { return Ok(()) };
        // Row groups that overlap the window, by their time statistics.
        let in_window: Vec<bool> = (0..metadata.num_row_groups())
            .map(|rg| match metadata.row_group(rg).column(time_index).statistics() {
                Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => *max >= query.from.0 && *min <= query.to.0,
                    _ => true,
                },
                _ => true,
            })
            .collect();

        let starts = group_starts(&metadata);
        let all_indexed = query.targets.iter().all(|(kind, _)| index::is_indexed(*kind));
        let prefixes: Vec<i32> = file_tokens.iter().map(|t| index::prefix(*t)).collect();
        // The cached index is a mapping of the file as it was opened, which
        // describes this very data file (checked at opening), so it stays
        // right even if the index file is deleted since. One that cannot
        // be decoded is derived data: the scan below finds the same rows.
        let indexed = match (&cached.index, all_indexed) {
            (Some(index), true) => index.rows_for(&prefixes).ok(),
            _ => None,
        };
        let candidates: Vec<usize> = match indexed {
            Some((rows, pages)) => {
                stats.files_indexed += 1;
                stats.index_pages += pages;
                rows.into_iter()
                    .map(|r| r as usize)
                    .filter(|r| group_of(&starts, *r).is_some_and(|rg| in_window[rg]))
                    .collect()
            }
            None => {
                stats.files_scanned += 1;
                self.scan(&cached, &wanted, &in_window, time_index, query, stats)?
            }
        };
        let groups: BTreeSet<usize> = candidates.iter().filter_map(|r| group_of(&starts, *r)).collect();
        stats.row_groups_read += groups.len() as u64;
        if candidates.is_empty() {
            return Ok(());
        }
        stats.candidates += candidates.len() as u64;

        // Only the candidates' rows, with the sealed columns needed to
        // confirm them and to answer.
        let needed: BTreeSet<IdentifierField> = IdentifierField::ALL
            .into_iter()
            .filter(|f| query.categories.contains(&f.category()) || wanted.iter().any(|(w, _, _)| w == f))
            .collect();
        let mut returned =
            vec![schema::RECORD_ID, schema::SERVICE, schema::DIRECTION, schema::START_TIME, schema::END_TIME];
        // Ports belong to the ip category: not read unless it is allowed.
        if query.categories.contains(&Category::Ip) {
            returned.extend([schema::SRC_PORT, schema::DST_PORT]);
        }
        let mut columns: Vec<usize> = returned.iter().filter_map(|c| index_of(c)).collect();
        columns.extend(needed.iter().filter_map(|f| index_of(f.sealed_column())));
        let groups: Vec<usize> = groups.into_iter().collect();
        let selection = selection_in_groups(&starts, &groups, &candidates, metadata.file_metadata().num_rows());
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(cached.file.clone(), cached.metadata.clone())
            .with_row_groups(groups)
            .with_row_selection(selection)
            .with_projection(ProjectionMask::leaves(parquet_schema, columns))
            .build()?;
        let preserved_under = match &work.area {
            Area::Live => None,
            Area::Preserved(order) => Some(order.as_str()),
        };
        for batch in reader {
            let batch = batch?;
            collect(&batch, &wanted, query, preserved_under, stats, found);
        }
        Ok(())
    }

    /// Candidate rows without an index: row groups pruned by bloom filters,
    /// then the clear token and time columns scanned.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        cached: &CachedFile,
        wanted: &[(IdentifierField, i64, &str)],
        in_window: &[bool],
        time_index: usize,
        query: &Query,
        stats: &mut LookupStats,
    ) -> Result<Vec<usize>, ParquetError> {
        let metadata = cached.metadata.metadata();
        let parquet_schema = metadata.file_metadata().schema_descr();
        let index_of = |name: &str| parquet_schema.columns().iter().position(|c| c.name() == name);
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(cached.file.clone(), cached.metadata.clone());
        let mut groups = Vec::new();
        for (rg, overlaps) in in_window.iter().enumerate() {
            if !overlaps {
                continue;
            }
            let mut maybe = false;
            for (field, token, _) in wanted {
                let Some(column) = index_of(field.token_column()) else { continue };
                let bloom = {
                    let blooms = cached.blooms.lock().unwrap_or_else(|p| p.into_inner());
                    blooms.get(&(rg, column)).cloned()
                };
                let bloom = match bloom {
                    Some(bloom) => bloom,
                    None => {
                        let bloom = builder.get_row_group_column_bloom_filter(rg, column)?.map(Arc::new);
                        cached.blooms.lock().unwrap_or_else(|p| p.into_inner()).insert((rg, column), bloom.clone());
                        bloom
                    }
                };
                maybe |= bloom.is_none_or(|b| b.check(token));
                if maybe {
                    break;
                }
            }
            if maybe {
                groups.push(rg);
            }
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut clear: Vec<usize> = vec![time_index];
        clear.extend(wanted.iter().filter_map(|(f, _, _)| index_of(f.token_column())));
        clear.sort_unstable();
        clear.dedup();
        stats.token_chunks_scanned += (groups.len() * (clear.len() - 1)) as u64;
        let starts = group_starts(metadata);
        let mut rows = Vec::new();
        for rg in groups {
            let reader =
                ParquetRecordBatchReaderBuilder::new_with_metadata(cached.file.clone(), cached.metadata.clone())
                    .with_row_groups(vec![rg])
                    .with_projection(ProjectionMask::leaves(parquet_schema, clear.clone()))
                    .with_batch_size(16_384)
                    .build()?;
            let mut offset = starts[rg];
            for batch in reader {
                let batch = batch?;
                let mask = candidate_rows(&batch, wanted, query);
                rows.extend(mask.iter().enumerate().filter(|(_, m)| *m == Some(true)).map(|(i, _)| offset + i));
                offset += batch.num_rows();
            }
        }
        Ok(rows)
    }
}

/// A record key with its id, read once per query per order.
struct SecretKeyWithId {
    id: KeyId,
    secret: SecretKey,
}

/// The first row of each row group, and the total after the last.
fn group_starts(metadata: &parquet::file::metadata::ParquetMetaData) -> Vec<usize> {
    let mut starts = Vec::with_capacity(metadata.num_row_groups() + 1);
    let mut offset = 0usize;
    for rg in 0..metadata.num_row_groups() {
        starts.push(offset);
        offset += metadata.row_group(rg).num_rows().max(0) as usize;
    }
    starts.push(offset);
    starts
}

fn group_of(starts: &[usize], row: usize) -> Option<usize> {
    let rg = starts.partition_point(|s| *s <= row).checked_sub(1)?;
    (rg + 1 < starts.len()).then_some(rg)
}

/// A selection of `rows` (sorted file rows) relative to the chosen groups.
fn selection_in_groups(starts: &[usize], groups: &[usize], rows: &[usize], _total: i64) -> RowSelection {
    let mut ranges = Vec::with_capacity(rows.len());
    let mut base = 0usize;
    for &rg in groups {
        let (start, end) = (starts[rg], starts[rg + 1]);
        for &row in rows.iter().filter(|r| **r >= start && **r < end) {
            let at = base + row - start;
            ranges.push(at..at + 1);
        }
        base += end - start;
    }
    RowSelection::from_consecutive_ranges(ranges.into_iter(), base)
}

/// The fields a target of `kind` can appear in.
fn fields_of(kind: IdentifierKind) -> impl Iterator<Item = IdentifierField> {
    IdentifierField::ALL.into_iter().filter(move |f| f.kind() == kind)
}

/// Reader options that unseal a file's sealed columns with `key`.
fn decryption(path: &Path, key: &DayKey) -> Result<ArrowReaderOptions, ParquetError> {
    let secret = key.secret.expose().to_vec();
    let mut builder = parquet::encryption::decrypt::FileDecryptionProperties::builder(secret.clone())
        .with_aad_prefix(read::aad_prefix(path).into_bytes());
    for column in schema::sealed_columns() {
        builder = builder.with_column_key(column, secret.clone());
    }
    Ok(ArrowReaderOptions::new().with_file_decryption_properties(builder.build()?))
}

fn candidate_rows(batch: &RecordBatch, wanted: &[(IdentifierField, i64, &str)], query: &Query) -> BooleanArray {
    let time = batch.column_by_name(schema::START_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let Some(time) = time else { return BooleanArray::from(vec![false; batch.num_rows()]) };
    let tokens: Vec<(i64, Option<arrow_array::PrimitiveArray<Int64Type>>)> = wanted
        .iter()
        .map(|(f, t, _)| (*t, batch.column_by_name(f.token_column()).map(|c| c.as_primitive::<Int64Type>().clone())))
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            let t = time.value(row);
            let in_window = t >= query.from.0 && t <= query.to.0;
            Some(
                in_window
                    && tokens.iter().any(|(token, column)| {
                        column.as_ref().is_some_and(|c| !c.is_null(row) && c.value(row) == *token)
                    }),
            )
        })
        .collect()
}

fn collect(
    batch: &RecordBatch,
    wanted: &[(IdentifierField, i64, &str)],
    query: &Query,
    preserved_under: Option<&str>,
    stats: &mut LookupStats,
    found: &mut Vec<FoundRecord>,
) {
    let text = |name: &str| batch.column_by_name(name).map(|c| c.as_string::<i32>().clone());
    let (Some(ids), Some(service)) = (text(schema::RECORD_ID), text(schema::SERVICE)) else { return };
    let direction = text(schema::DIRECTION);
    let start = batch.column_by_name(schema::START_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let end = batch.column_by_name(schema::END_TIME).map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
    let port = |name: &str| batch.column_by_name(name).map(|c| c.as_primitive::<Int32Type>().clone());
    let (src_port, dst_port) = (port(schema::SRC_PORT), port(schema::DST_PORT));
    let Some(start) = start else { return };
    let sealed: HashMap<IdentifierField, arrow_array::StringArray> =
        IdentifierField::ALL.into_iter().filter_map(|f| text(f.sealed_column()).map(|c| (f, c))).collect();
    let ip = query.categories.contains(&Category::Ip);
    for row in 0..batch.num_rows() {
        let value_of = |field: IdentifierField| sealed.get(&field).filter(|c| !c.is_null(row)).map(|c| c.value(row));
        let time = TimestampMicros(start.value(row));
        // Confirm against the unsealed value: drops index, bloom and token
        // collisions, so a stranger's record is never disclosed.
        let confirmed = wanted.iter().any(|(field, _, value)| value_of(*field) == Some(*value));
        if !confirmed {
            stats.false_matches += 1;
            continue;
        }
        if time.0 < query.from.0 || time.0 > query.to.0 {
            continue;
        }
        let identifiers = IdentifierField::ALL
            .into_iter()
            .filter(|f| query.categories.contains(&f.category()))
            .filter_map(|f| value_of(f).map(|v| (f, v.to_string())))
            .collect();
        let int = |column: &Option<arrow_array::PrimitiveArray<Int32Type>>| {
            column.as_ref().filter(|_| ip).and_then(|p| (!p.is_null(row)).then(|| p.value(row)))
        };
        found.push(FoundRecord {
            day: time.partition_date(),
            record_id: ids.value(row).to_string(),
            service: service.value(row).to_string(),
            direction: direction.as_ref().and_then(|d| (!d.is_null(row)).then(|| d.value(row).to_string())),
            start_time: time,
            end_time: end.as_ref().and_then(|e| (!e.is_null(row)).then(|| TimestampMicros(e.value(row)))),
            identifiers,
            src_port: int(&src_port),
            dst_port: int(&dst_port),
            preserved_under: preserved_under.map(str::to_string),
        });
    }
}

/// The service sweeps the cache of destroyed days every minute, so a key's
/// copy in a cached footer does not outlive the key by more than that.
impl crate::periodic::Job for LookupEngine {
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

    #[test]
    fn rows_map_to_their_groups_and_selections_are_relative_to_chosen_groups() {
        let starts = vec![0, 10, 20, 25];
        assert_eq!(group_of(&starts, 0), Some(0));
        assert_eq!(group_of(&starts, 9), Some(0));
        assert_eq!(group_of(&starts, 10), Some(1));
        assert_eq!(group_of(&starts, 24), Some(2));
        assert_eq!(group_of(&starts, 25), None);
        // Groups 0 and 2 chosen: rows 3 and 21 are the 4th and 12th rows read.
        let selection = selection_in_groups(&starts, &[0, 2], &[3, 21], 25);
        assert_eq!(selection.row_count(), 2);
        assert_eq!(selection.total_row_count(), 15);
        let selected: Vec<usize> = {
            let mut at = 0;
            let mut out = Vec::new();
            for s in selection.iter() {
                if !s.skip {
                    out.extend(at..at + s.row_count);
                }
                at += s.row_count;
            }
            out
        };
        assert_eq!(selected, vec![3, 11]);
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_engine_is_shared_between_threads() {
        assert_send_sync::<LookupEngine>();
    }
}
