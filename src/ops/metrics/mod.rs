//! Every Prometheus metric of cdrvault, declared in one place.
//!
//! Names follow `cdrvault_<subsystem>_<name>_<unit>`, counters end in
//! `_total`. Labels take bounded values only (a refusal reason code, a topic,
//! a partition number): never an identifier, a token, a record id or a
//! warrant reference. Hot paths count per batch, not per record.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::RefuseReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// An authority's registered id: bounded by the authorities an admin
/// registered, never a target or a warrant reference.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabel {
    pub authority: String,
}

/// One of cdrvault's directories: `data`, `state` or `keys`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabel {
    pub volume: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    /// `ok`, or the gRPC status code in snake case.
    pub outcome: &'static str,
}

/// Every metric of the process: ingest, retention, lawful access.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records_received: Counter,
    pub records_written: Counter,
    pub records_refused: Family<ReasonLabel, Counter>,
    pub bytes_received: Counter,
    pub files_written: Counter,
    pub bytes_written: Counter,
    pub batch_duration: Histogram,
    pub batches: Counter,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub dead_letter_failures: Counter,
    pub checkpoint_lag: Family<PartitionLabels, Gauge>,
    pub partitions_owned: Gauge,
    pub brokers_up: Gauge,
    pub partition_owned: Family<PartitionLabels, Gauge>,
    pub rebalances: Counter,
    pub fenced_commits: Counter,
    pub offset_gaps: Counter,
    pub batches_dropped: Counter,
    pub recovered_batches: Counter,
    pub discarded_staged_files: Counter,
    pub maintenance_leader: Gauge,
    pub maintenance_lease_acquired: Counter,
    pub last_commit_timestamp: Gauge<f64, AtomicU64>,
    /// Unix time of 00:00 UTC of the oldest day that still has files, 0
    /// when none has: measured at every scrape ([`Metrics::on_scrape`]).
    pub retention_oldest_day_timestamp: Gauge,
    pub retention_period: Gauge,
    pub retention_days_destroyed: Counter,
    pub retention_rows_deleted: Counter,
    pub retention_overdue_days: Gauge,
    pub retention_sweep_duration: Histogram,
    pub retention_last_success: Gauge<f64, AtomicU64>,
    pub retention_clock_suspect: Gauge,
    pub token_keys_created: Counter,
    pub keys_cached_destroyed: Gauge,
    pub keys_cached_days: Gauge,
    pub compaction_days: Counter,
    pub compaction_files_replaced: Counter,
    pub compaction_failures: Counter,
    pub compaction_run_duration: Histogram,
    pub compaction_last_success: Gauge<f64, AtomicU64>,
    pub access_calls: Family<CallLabels, Counter>,
    pub access_refusals: Family<ReasonLabel, Counter>,
    pub access_lookup_duration: Histogram,
    pub access_records_disclosed: Family<AuthorityLabel, Counter>,
    pub audit_entries: Counter,
    pub audit_write_failures: Counter,
    pub audit_damaged: Gauge,
    pub registry_rows_refused: Counter,
    pub storage_available: Family<VolumeLabel, Gauge>,
    pub storage_capacity: Family<VolumeLabel, Gauge>,
    scrape_hooks: ScrapeHooks,
}

/// A measurement run before each scrape ([`Metrics::on_scrape`]).
type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Default)]
struct ScrapeHooks(std::sync::Mutex<Vec<ScrapeHook>>);

impl std::fmt::Debug for ScrapeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().map_or(0, |hooks| hooks.len());
        write!(f, "ScrapeHooks({count})")
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        // The process's own figures under their standard names, `process_*`.
        root.register_collector(Box::new(super::scrape::ProcessCollector));
        let registry = root.sub_registry_with_prefix("cdrvault");
        let records_received = Counter::default();
        let records_written = Counter::default();
        let records_refused = Family::<ReasonLabel, Counter>::default();
        let bytes_received = Counter::default();
        let files_written = Counter::default();
        let bytes_written = Counter::default();
        // 5 ms to about 40 s: a batch is tens of thousands of records.
        let batch_duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14));
        let batches = Counter::default();
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        let dead_letter_failures = Counter::default();
        let checkpoint_lag = Family::<PartitionLabels, Gauge>::default();
        let partitions_owned = Gauge::default();
        let brokers_up = Gauge::default();
        let partition_owned = Family::<PartitionLabels, Gauge>::default();
        let rebalances = Counter::default();
        let fenced_commits = Counter::default();
        let offset_gaps = Counter::default();
        let batches_dropped = Counter::default();
        let recovered_batches = Counter::default();
        let discarded_staged_files = Counter::default();
        let maintenance_leader = Gauge::default();
        let maintenance_lease_acquired = Counter::default();
        let last_commit_timestamp = Gauge::<f64, AtomicU64>::default();
        let retention_oldest_day_timestamp = Gauge::default();
        let retention_period = Gauge::default();
        let retention_days_destroyed = Counter::default();
        let retention_rows_deleted = Counter::default();
        let retention_overdue_days = Gauge::default();
        let retention_sweep_duration =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14));
        let retention_last_success = Gauge::<f64, AtomicU64>::default();
        let retention_clock_suspect = Gauge::default();
        let token_keys_created = Counter::default();
        let keys_cached_destroyed = Gauge::default();
        let keys_cached_days = Gauge::default();
        let compaction_days = Counter::default();
        let compaction_files_replaced = Counter::default();
        let compaction_failures = Counter::default();
        // 10 ms to about 3 h: a run over a year of days that need nothing
        // is a listing; a day of tens of millions of records takes minutes.
        let compaction_run_duration =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 21));
        let compaction_last_success = Gauge::<f64, AtomicU64>::default();
        let access_calls = Family::<CallLabels, Counter>::default();
        let access_refusals = Family::<ReasonLabel, Counter>::default();
        // 1 ms to about 16 s: a lookup over a year should stay under 0.3 s.
        let access_lookup_duration =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15));
        let access_records_disclosed = Family::<AuthorityLabel, Counter>::default();
        let storage_available = Family::<VolumeLabel, Gauge>::default();
        let storage_capacity = Family::<VolumeLabel, Gauge>::default();
        let audit_entries = Counter::default();
        let audit_write_failures = Counter::default();
        let audit_damaged = Gauge::default();
        let registry_rows_refused = Counter::default();

        // prometheus-client appends `_total` to counters itself.
        registry.register("ingest_records_received", "Records read from the source", records_received.clone());
        registry.register(
            "ingest_records_written",
            "Records written to durable Parquet files",
            records_written.clone(),
        );
        registry.register("ingest_records_refused", "Records refused, by reason code", records_refused.clone());
        registry.register("ingest_bytes_received", "Payload bytes read from the source", bytes_received.clone());
        registry.register("write_files", "Parquet files made durable", files_written.clone());
        registry.register("write_bytes", "Bytes of Parquet files made durable", bytes_written.clone());
        registry.register_with_unit(
            "ingest_batch_duration",
            "Time to decode, pseudonymise and durably write one batch",
            prometheus_client::registry::Unit::Seconds,
            batch_duration.clone(),
        );
        registry.register("ingest_batches", "Batches processed", batches.clone());
        registry.register_with_unit(
            "ingest_consumer_lag",
            "Records behind the end of each partition, from the Kafka client's statistics",
            prometheus_client::registry::Unit::Other("records".into()),
            consumer_lag.clone(),
        );
        registry.register_with_unit(
            "ingest_checkpoint_lag",
            "Records behind the end of each partition, counted from the checkpoint committed with the data",
            prometheus_client::registry::Unit::Other("records".into()),
            checkpoint_lag.clone(),
        );
        registry.register(
            "ingest_partitions_owned",
            "Partitions this instance owns (claimed in the checkpoint)",
            partitions_owned.clone(),
        );
        registry.register(
            "ingest_brokers_up",
            "Kafka brokers the consumer is connected to, from the client's statistics",
            brokers_up.clone(),
        );
        registry.register(
            "ingest_partition_owned",
            "1 for each partition this instance owns, 0 for one it owned and lost since it started",
            partition_owned.clone(),
        );
        registry.register(
            "ingest_rebalances",
            "Partition assignments received from the consumer group",
            rebalances.clone(),
        );
        registry.register(
            "ingest_fenced_commits",
            "Batch commits refused because their partitions were claimed since they were read",
            fenced_commits.clone(),
        );
        registry.register(
            "ingest_offset_gaps",
            "Partitions whose offsets jumped past the checkpoint, confirmed by reading again (records in the gap were never delivered)",
            offset_gaps.clone(),
        );
        registry.register(
            "ingest_batches_dropped",
            "Batches read before a rebalance or resync, dropped unprocessed (read again from the checkpoint)",
            batches_dropped.clone(),
        );
        registry.register(
            "ingest_recovered_batches",
            "Committed batches whose files a start-up found staged and published",
            recovered_batches.clone(),
        );
        registry.register(
            "ingest_discarded_staged_files",
            "Staged files of uncommitted batches removed at start-up",
            discarded_staged_files.clone(),
        );
        registry.register(
            "maintenance_leader",
            "1 while this instance holds the maintenance lease (retention and compaction run here)",
            maintenance_leader.clone(),
        );
        registry.register(
            "maintenance_lease_acquired",
            "Times this instance took the maintenance lease",
            maintenance_lease_acquired.clone(),
        );
        registry.register(
            "ingest_dead_letter_failures",
            "Refused records that could not be delivered to the dead-letter topic",
            dead_letter_failures.clone(),
        );
        registry.register_with_unit(
            "ingest_last_commit_timestamp",
            "Unix time of the last offset commit after durable files",
            prometheus_client::registry::Unit::Seconds,
            last_commit_timestamp.clone(),
        );

        registry.register_with_unit(
            "retention_oldest_day_timestamp",
            "Unix time of 00:00 UTC of the oldest day that still has files (0: none), measured at each scrape",
            prometheus_client::registry::Unit::Seconds,
            retention_oldest_day_timestamp.clone(),
        );
        registry.register_with_unit(
            "retention_period",
            "How long a day is kept after it ends (retention.days): a day is overdue once the oldest day's \
             timestamp is older than this plus one day",
            prometheus_client::registry::Unit::Seconds,
            retention_period.clone(),
        );
        registry.register(
            "retention_day_partitions_destroyed",
            "Days (date partitions) destroyed by retention",
            retention_days_destroyed.clone(),
        );
        registry.register("retention_rows_deleted", "Rows destroyed by retention", retention_rows_deleted.clone());
        registry.register(
            "retention_overdue_day_partitions",
            "Expired days (date partitions) that still have files, measured at each scrape: a just-expired day \
             counts until the next sweep, anything longer is a failure (alert on it)",
            retention_overdue_days.clone(),
        );
        registry.register_with_unit(
            "retention_sweep_duration",
            "Time of one retention sweep",
            prometheus_client::registry::Unit::Seconds,
            retention_sweep_duration.clone(),
        );
        registry.register_with_unit(
            "retention_last_success_timestamp",
            "Unix time of the last successful retention sweep",
            prometheus_client::registry::Unit::Seconds,
            retention_last_success.clone(),
        );
        registry.register(
            "retention_clock_suspect",
            "1 while retention refuses to destroy because the clock went back before the last sweep or jumped \
             beyond it and the newest data (alert on it; if the clock is right, run `cdrvault retention \
             confirm-clock`), 0 after a sweep",
            retention_clock_suspect.clone(),
        );
        registry.register(
            "token_keys_created",
            "Days whose data and token keys this process created (each day's token key is its own: the automatic \
             rotation)",
            token_keys_created.clone(),
        );
        registry.register(
            "keys_cached_destroyed",
            "Destroyed days of which a cache of this process still holds a key (the keystore's day keys, the \
             lookup cache's footers), measured every minute after the caches are swept; anything but 0 is a \
             destroyed key in memory",
            keys_cached_destroyed.clone(),
        );
        registry.register(
            "keys_cached_day_keys",
            "Days whose key the caches of this process hold, measured every minute",
            keys_cached_days.clone(),
        );

        registry.register(
            "compaction_day_partitions",
            "Days (date partitions) compacted into one file per token key",
            compaction_days.clone(),
        );
        registry.register(
            "compaction_files_replaced",
            "Files merged away by compaction",
            compaction_files_replaced.clone(),
        );
        registry.register(
            "compaction_failures",
            "Days whose compaction failed (their files stay as they were; retried at the next run)",
            compaction_failures.clone(),
        );
        registry.register_with_unit(
            "compaction_run_duration",
            "Time of one compaction run over the closed days",
            prometheus_client::registry::Unit::Seconds,
            compaction_run_duration.clone(),
        );
        registry.register_with_unit(
            "compaction_last_success_timestamp",
            "Unix time of the last compaction run without a failure",
            prometheus_client::registry::Unit::Seconds,
            compaction_last_success.clone(),
        );

        registry.register(
            "access_calls",
            "Lawful-access API calls, by method and outcome (ok or the gRPC status code)",
            access_calls.clone(),
        );
        registry.register(
            "access_refusals",
            "Lawful-access refusals and authentication failures, by reason code (each is also audited)",
            access_refusals.clone(),
        );
        registry.register_with_unit(
            "access_lookup_duration",
            "Time of one lookup for a request or a subject-access export",
            prometheus_client::registry::Unit::Seconds,
            access_lookup_duration.clone(),
        );
        registry.register(
            "access_records_disclosed",
            "Records in results delivered, per authority (`data_subject`: subject-access exports)",
            access_records_disclosed.clone(),
        );
        registry.register("audit_entries", "Audit entries appended by this process", audit_entries.clone());
        registry.register(
            "audit_write_failures",
            "Audit appends that failed (the audited action was refused or not done): the trail cannot be written",
            audit_write_failures.clone(),
        );
        registry.register(
            "audit_damaged",
            "1 once the audit trail was found cut or rewritten against its signed head: audited actions are refused",
            audit_damaged.clone(),
        );
        registry.register(
            "registry_rows_refused",
            "Registry rows (principals, warrants, orders) refused because their seal does not match: \
             written or changed outside cdrvault",
            registry_rows_refused.clone(),
        );
        registry.register_with_unit(
            "storage_available",
            "Bytes available to cdrvault on the file system of each of its directories (data, state, keys), \
             measured at each scrape",
            prometheus_client::registry::Unit::Bytes,
            storage_available.clone(),
        );
        registry.register_with_unit(
            "storage_capacity",
            "Size of the file system of each of cdrvault's directories (data, state, keys)",
            prometheus_client::registry::Unit::Bytes,
            storage_capacity.clone(),
        );

        // Every reason exists from the start, so dashboards and alerts see a
        // zero rather than a missing series.
        for reason in RefuseReason::ALL {
            let _ = records_refused.get_or_create(&ReasonLabel { reason: reason.code() });
        }

        Arc::new(Metrics {
            registry: root,
            records_received,
            records_written,
            records_refused,
            bytes_received,
            files_written,
            bytes_written,
            batch_duration,
            batches,
            consumer_lag,
            dead_letter_failures,
            checkpoint_lag,
            partitions_owned,
            brokers_up,
            partition_owned,
            rebalances,
            fenced_commits,
            offset_gaps,
            batches_dropped,
            recovered_batches,
            discarded_staged_files,
            maintenance_leader,
            maintenance_lease_acquired,
            last_commit_timestamp,
            retention_oldest_day_timestamp,
            retention_period,
            retention_days_destroyed,
            retention_rows_deleted,
            retention_overdue_days,
            retention_sweep_duration,
            retention_last_success,
            retention_clock_suspect,
            token_keys_created,
            keys_cached_destroyed,
            keys_cached_days,
            compaction_days,
            compaction_files_replaced,
            compaction_failures,
            compaction_run_duration,
            compaction_last_success,
            access_calls,
            access_refusals,
            access_lookup_duration,
            access_records_disclosed,
            audit_entries,
            audit_write_failures,
            audit_damaged,
            registry_rows_refused,
            storage_available,
            storage_capacity,
            scrape_hooks: ScrapeHooks::default(),
        })
    }

    /// Runs `hook` before every scrape, to measure what is cheap to read
    /// then and wrong if read less often (the oldest day on disk, free
    /// space). A hook must be quick and must not fail.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.scrape_hooks.0.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(hook));
    }

    /// The OpenMetrics text format, after the scrape hooks ran.
    pub fn encode(&self) -> String {
        for hook in self.scrape_hooks.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(self);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format (0.0.4), for scrapers and tools that do
    /// not ask for OpenMetrics (`promtool check metrics`, curl).
    pub fn encode_prometheus_text(&self) -> String {
        super::scrape::openmetrics_to_prometheus_text(&self.encode())
    }

    /// Sets `cdrvault_storage_available_bytes` and
    /// `cdrvault_storage_capacity_bytes` for each named directory. A
    /// directory whose file system cannot be read keeps its last figures.
    pub fn measure_volumes<P: AsRef<std::path::Path>>(&self, volumes: &[(&'static str, P)]) {
        for (volume, path) in volumes {
            if let Some((available, capacity)) = super::scrape::file_system_space(path.as_ref()) {
                let label = VolumeLabel { volume };
                self.storage_available.get_or_create(&label).set(available);
                self.storage_capacity.get_or_create(&label).set(capacity);
            }
        }
    }

    /// Counts `records` disclosed to `authority`.
    pub fn disclosed(&self, authority: &str, records: u64) {
        self.access_records_disclosed
            .get_or_create(&AuthorityLabel { authority: authority.to_string() })
            .inc_by(records);
    }

    pub fn refused(&self, reason: RefuseReason) -> Counter {
        self.records_refused.get_or_create(&ReasonLabel { reason: reason.code() }).clone()
    }
}

#[cfg(test)]
mod tests;
