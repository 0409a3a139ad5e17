//! The engine: plans a query, searches its files on the engine's threads
//! (one per core), and keeps the cache of what it read of each file.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::cache::{FileCache, Work};
use super::plan;
use super::search;
use super::{FoundRecord, LookupError, LookupStats, MAX_WINDOW_DAYS, Query};
use crate::keys::KeyStore;
use crate::model::{KeyId, PartitionDate};
use crate::ops::metrics::Metrics;
use crate::ops::{periodic, pool};
use crate::privacy::token::Tokeniser;
use crate::storage::layout;

/// The lookup engine with its cache of file metadata. `Send + Sync`: one
/// engine serves concurrent queries.
pub struct LookupEngine {
    data_dir: PathBuf,
    keys: Arc<KeyStore>,
    /// At most this many threads per query.
    threads: usize,
    /// Whether the few rows of a file with a match are read straight from
    /// their pages ([`crate::storage::direct`]) where they can be.
    direct: bool,
    cache: FileCache,
    metrics: Option<Arc<Metrics>>,
}

/// Which days' keys the caches of a process hold: the keystore's day keys
/// and the lookup cache's footers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCacheReport {
    /// Days whose key some cache holds.
    pub days: usize,
    /// Of those, the days retention destroyed: a destroyed key in memory.
    pub destroyed: Vec<PartitionDate>,
}

impl LookupEngine {
    pub fn new(data_dir: PathBuf, keys: Arc<KeyStore>) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        LookupEngine { data_dir, keys, threads, direct: true, cache: FileCache::default(), metrics: None }
    }

    /// Reads every row through the parquet crate's readers, never straight
    /// from its pages: the reference the direct reads are checked against.
    pub fn without_direct_reads(mut self) -> Self {
        self.direct = false;
        self
    }

    /// Reports [`KeyCacheReport`] to `metrics` after each cache sweep.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// At most `threads` threads per query (at least one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Runs a query. Blocks; see [`Self::find_async`]. A window of more
    /// than [`MAX_WINDOW_DAYS`] is refused before any day is planned.
    pub fn find(&self, query: &Query) -> Result<(Vec<FoundRecord>, LookupStats), LookupError> {
        let days = query.days();
        if days > i64::from(MAX_WINDOW_DAYS) {
            return Err(LookupError::WindowTooLong { days, limit: MAX_WINDOW_DAYS });
        }
        let mut stats = LookupStats::default();
        let work = plan::plan(&self.data_dir, &self.keys, &self.cache, query, &mut stats)?;
        // The targets' tokens under the token key of each day searched (and
        // of each order area's copies): a file is searched under the key it
        // names. A day's key is the only one its tokens were computed under.
        let mut tokens: HashMap<KeyId, Vec<i64>> = HashMap::with_capacity(work.len());
        for day in &work {
            tokens.entry(day.key.token.id.clone()).or_insert_with(|| {
                let tokeniser = Tokeniser::new(&day.key.token);
                query.targets.iter().map(|(kind, value)| tokeniser.token(*kind, value.as_bytes()).0).collect()
            });
        }
        // Workers list each day directory themselves, so listing runs in
        // parallel too.
        let days = pool::map(work.iter().collect(), self.threads, |day| {
            let mut found = Vec::new();
            let mut stats = LookupStats::default();
            for path in self.cache.list(&day.root, day.day, &mut stats)? {
                let file = Work { path, area: day.area.clone(), key: Arc::clone(&day.key) };
                search::search_file(&self.cache, &file, &tokens, query, self.direct, &mut stats, &mut found)
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
        self.cache.len()
    }

    /// Forgets the cached files of days destroyed (or whose key is gone)
    /// and of lifted orders, without waiting for the next query: their
    /// footers hold the parquet crate's copy of a key that no longer
    /// exists. The keystore drops its copies of destroyed day keys too.
    /// Returns how many files were forgotten. The service runs it
    /// every minute ([`periodic`]).
    pub fn forget_destroyed(&self) -> Result<usize, LookupError> {
        self.keys.forget_destroyed();
        let before = self.cached_files();
        self.cache.forget_gone(&self.data_dir, &self.keys, &layout::orders_with_areas(&self.data_dir))?;
        Ok(before.saturating_sub(self.cached_files()))
    }

    /// Which days' keys this process's caches hold (the keystore's and
    /// the lookup cache's), and which of them were destroyed.
    pub fn key_cache_report(&self) -> KeyCacheReport {
        let mut days: BTreeSet<PartitionDate> = self.keys.cached_days().into_iter().collect();
        days.extend(self.cache.live_days(&self.data_dir));
        let destroyed = days.iter().copied().filter(|day| self.keys.is_destroyed(*day)).collect();
        KeyCacheReport { days: days.len(), destroyed }
    }

    /// Forgets every cached footer.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }
}

/// The service sweeps the cache of destroyed days every minute, so a key's
/// copy in a cached footer does not outlive the key by more than that.
impl periodic::Job for LookupEngine {
    type Report = usize;
    type Error = LookupError;
    const NAME: &'static str = "lookup cache sweep";

    fn run_once(&self) -> Result<usize, LookupError> {
        let forgotten = self.forget_destroyed()?;
        let report = self.key_cache_report();
        if let Some(metrics) = &self.metrics {
            metrics.keys_cached_days.set(report.days as i64);
            metrics.keys_cached_destroyed.set(report.destroyed.len() as i64);
        }
        if !report.destroyed.is_empty() {
            tracing::error!(days = ?report.destroyed, "keys of destroyed days are still cached");
        }
        Ok(forgotten)
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

    #[test]
    fn a_window_beyond_the_hard_cap_is_refused_before_any_day_is_planned() {
        use crate::model::{Category, IdentifierKind, MICROS_PER_DAY, TimestampMicros};
        let root = tempfile::tempdir().unwrap();
        let keys_dir = root.path().join("keys");
        KeyStore::init(&keys_dir, None).unwrap();
        let engine = LookupEngine::new(root.path().join("data"), Arc::new(KeyStore::open(&keys_dir, None).unwrap()));
        let to = TimestampMicros(1_800_000_000_000_000);
        let query = |days: i64| Query {
            targets: vec![(IdentifierKind::Msisdn, "+4520000001".into())],
            from: TimestampMicros(to.0 - (days - 1) * MICROS_PER_DAY),
            to,
            categories: [Category::Traffic].into(),
            preserved: vec![],
        };
        let (found, stats) = engine.find(&query(i64::from(MAX_WINDOW_DAYS))).unwrap();
        assert!(found.is_empty());
        assert_eq!(stats.days, u64::from(MAX_WINDOW_DAYS));
        let error = engine.find(&query(i64::from(MAX_WINDOW_DAYS) + 1)).unwrap_err();
        assert!(matches!(error, LookupError::WindowTooLong { days, .. } if days == i64::from(MAX_WINDOW_DAYS) + 1));
        let centuries = Query { from: TimestampMicros(i64::MIN / 2), ..query(1) };
        assert!(matches!(engine.find(&centuries), Err(LookupError::WindowTooLong { .. })));
    }
}
