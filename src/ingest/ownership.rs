//! Which partitions this instance owns, claimed in the checkpoint, and
//! where reading each one stands: the consumer's context, so that every
//! assignment is claimed and seeked to the checkpoint inside the rebalance
//! itself, before a record of the new assignment is read.
//!
//! The fetch thread is the only one that polls the consumer, so rebalances
//! and the bookkeeping of [`Cursors`] happen on it. Every change of
//! assignment, and every resynchronisation after a refused commit, starts
//! a new *epoch*: batches read in an older epoch are dropped unprocessed,
//! because reading has restarted from the checkpoint since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tracing::{error, info, warn};

use crate::ops::metrics::{Metrics, PartitionLabels};
use crate::storage::checkpoint::{CheckpointError, CheckpointLog, PartitionId, Range};
use crate::storage::write::StagedFile;

/// Where reading one owned partition stands.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    /// The generation of this instance's claim.
    pub generation: u64,
    /// The offset the next batch of the partition starts from: the claimed
    /// checkpoint, then each batch's end. `None` before a first checkpoint.
    pub from: Option<i64>,
    /// Where the assignment started the partition: the checkpoint, else
    /// Kafka's committed offset, else the earliest. A resync before the
    /// first checkpoint goes back there.
    pub start: Offset,
}

/// The cursors of every owned partition.
pub type Cursors = HashMap<PartitionId, Cursor>;

/// The consumer's context: claims on assignment, statistics into metrics.
pub struct Ownership {
    metrics: Arc<Metrics>,
    checkpoints: Arc<Mutex<CheckpointLog>>,
    cursors: Mutex<Cursors>,
    /// Each checkpoint's next offset, for the checkpoint lag.
    checkpointed: Mutex<HashMap<PartitionId, i64>>,
    epoch: AtomicU64,
    /// The epoch in which a commit was refused, asking for a resync.
    resync: AtomicU64,
    /// Why ingest must stop: set once, read before every record taken.
    failure: std::sync::OnceLock<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Ownership {
    pub fn new(metrics: Arc<Metrics>, checkpoints: Arc<Mutex<CheckpointLog>>) -> Self {
        Ownership {
            metrics,
            checkpoints,
            cursors: Mutex::new(HashMap::new()),
            checkpointed: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(1),
            resync: AtomicU64::new(0),
            failure: std::sync::OnceLock::new(),
        }
    }

    pub fn checkpoints(&self) -> &Arc<Mutex<CheckpointLog>> {
        &self.checkpoints
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Why ingest must stop, if a claim could not be written.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// The cursors now (a copy, for one batch).
    pub fn cursors(&self) -> Cursors {
        lock(&self.cursors).clone()
    }

    /// Moves the cursors past a batch read in `epoch`, unless the epoch has
    /// ended meanwhile (the batch will be dropped).
    pub fn advance(&self, epoch: u64, ranges: &[Range]) {
        let mut cursors = lock(&self.cursors);
        if self.epoch() != epoch {
            return;
        }
        for range in ranges {
            if let Some(cursor) = cursors.get_mut(&range.id) {
                cursor.from = Some(range.next);
            }
        }
    }

    /// Commits a batch read in this instance's claims: see
    /// [`CheckpointLog::commit`].
    pub fn commit(&self, ranges: &[Range], files: &[StagedFile]) -> Result<u64, CheckpointError> {
        let seq = lock(&self.checkpoints).commit(ranges.to_vec(), files, now_millis())?;
        let mut checkpointed = lock(&self.checkpointed);
        for range in ranges {
            checkpointed.insert(range.id.clone(), range.next);
        }
        Ok(seq)
    }

    /// Counts a confirmed jump in a partition's offsets.
    pub fn count_gap(&self) {
        self.metrics.offset_gaps.inc();
    }

    /// Asks the fetch thread to reread from the checkpoint: a commit of a
    /// batch read in `epoch` was refused.
    pub fn request_resync(&self, epoch: u64) {
        self.resync.store(epoch, Ordering::SeqCst);
    }

    /// On the fetch thread: if a resync was asked for in the current
    /// epoch, reads the checkpoint, seeks each partition still owned to it
    /// (before its first checkpoint, to where the assignment started it),
    /// forgets those claimed by another instance, and starts a new epoch.
    pub fn resync_if_asked(&self, consumer: &BaseConsumer<Ownership>) -> anyhow::Result<()> {
        let epoch = self.epoch();
        if self.resync.load(Ordering::SeqCst) != epoch || self.resync.swap(0, Ordering::SeqCst) != epoch {
            return Ok(());
        }
        let state = {
            let mut log = lock(&self.checkpoints);
            log.refresh()?;
            (log.instance().to_string(), log.state().partitions.clone())
        };
        let (instance, partitions) = state;
        let mut cursors = lock(&self.cursors);
        cursors.retain(|id, cursor| match partitions.get(id) {
            Some(state) if state.owner == instance && state.generation == cursor.generation => {
                cursor.from = state.next;
                let offset = match (state.next, cursor.start) {
                    (Some(next), _) => Offset::Offset(next),
                    // librdkafka looked the start up itself: Kafka's
                    // committed offset is no longer known here.
                    (None, Offset::Stored) => Offset::Beginning,
                    (None, start) => start,
                };
                if let Err(e) = consumer.seek(&id.topic, id.partition, offset, Duration::from_secs(10)) {
                    warn!(partition = %id, reason = %e, "seek to the checkpoint failed");
                }
                true
            }
            _ => {
                info!(partition = %id, "partition claimed by another instance; no longer read here");
                self.report(id, false);
                false
            }
        });
        self.metrics.partitions_owned.set(cursors.len() as i64);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Sets the per-partition ownership gauge. A partition no longer owned
    /// loses its lag series: another instance reports them now, and a
    /// frozen figure here would keep a lag alert firing on a standby.
    fn report(&self, id: &PartitionId, owned: bool) {
        let labels = PartitionLabels { topic: id.topic.clone(), partition: id.partition };
        self.metrics.partition_owned.get_or_create(&labels).set(i64::from(owned));
        if !owned {
            self.metrics.consumer_lag.remove(&labels);
            self.metrics.checkpoint_lag.remove(&labels);
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Ownership>, tpl: &mut TopicPartitionList) {
        self.metrics.rebalances.inc();
        let ids: Vec<PartitionId> = tpl
            .elements()
            .iter()
            .map(|e| PartitionId { topic: e.topic().to_string(), partition: e.partition() })
            .collect();
        let claimed = lock(&self.checkpoints).claim(&ids, now_millis());
        // Asked of the group coordinator (a round trip, up to a timeout on
        // failure) with no lock held.
        let kafka_starts = match &claimed {
            Ok(states) => {
                let never_checkpointed: Vec<&PartitionId> =
                    states.iter().filter(|(_, state)| state.next.is_none()).map(|(id, _)| id).collect();
                kafka_starts(consumer, &never_checkpointed)
            }
            Err(_) => HashMap::new(),
        };
        let mut cursors = lock(&self.cursors);
        match claimed {
            Ok(states) => {
                for (id, state) in states {
                    let offset = match state.next {
                        Some(next) => Offset::Offset(next),
                        None => kafka_starts.get(&id).copied().unwrap_or(Offset::Stored),
                    };
                    if let Err(e) = tpl.set_partition_offset(&id.topic, id.partition, offset) {
                        warn!(partition = %id, reason = %e, "cannot set the start offset");
                    }
                    if let Some(next) = state.next {
                        lock(&self.checkpointed).insert(id.clone(), next);
                    }
                    self.report(&id, true);
                    cursors.insert(id, Cursor { generation: state.generation, from: state.next, start: offset });
                }
                info!(
                    partitions = ids.len(),
                    owned = cursors.len(),
                    "partitions assigned, claimed and seeked to the checkpoint"
                );
            }
            Err(e) => {
                // Reading unclaimed partitions could duplicate records: take
                // none and stop ingest.
                error!(reason = %e, "partitions assigned but not claimed; ingest stops");
                // The first failure is the one reported.
                let _ = self.failure.set(format!("claiming assigned partitions failed: {e}"));
                *tpl = TopicPartitionList::new();
            }
        }
        self.metrics.partitions_owned.set(cursors.len() as i64);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        drop(cursors);
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = assigned {
            error!(reason = %e, "assignment failed");
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Ownership>, tpl: &TopicPartitionList) {
        let mut cursors = lock(&self.cursors);
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let revoked: Vec<PartitionId> = if cooperative {
            tpl.elements()
                .iter()
                .map(|e| PartitionId { topic: e.topic().to_string(), partition: e.partition() })
                .collect()
        } else {
            cursors.keys().cloned().collect()
        };
        for id in &revoked {
            cursors.remove(id);
            self.report(id, false);
        }
        self.metrics.partitions_owned.set(cursors.len() as i64);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        drop(cursors);
        info!(partitions = tpl.count(), "partitions revoked");
        let unassigned = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
        if let Err(e) = unassigned {
            error!(reason = %e, "unassignment failed");
        }
    }
}

/// Where each partition never checkpointed starts: at Kafka's committed
/// offset (an upgrade keeps its place), else at the earliest offset, as
/// `auto.offset.reset` says. Looked up here rather than left to librdkafka
/// (`Offset::Stored`), which resets a partition with no committed offset
/// only after a 100 ms back-off. A partition left out (the lookup failed)
/// is left to librdkafka.
fn kafka_starts(consumer: &BaseConsumer<Ownership>, ids: &[&PartitionId]) -> HashMap<PartitionId, Offset> {
    if ids.is_empty() {
        return HashMap::new();
    }
    let mut list = TopicPartitionList::new();
    for id in ids {
        list.add_partition(&id.topic, id.partition);
    }
    let committed = match consumer.committed_offsets(list, COMMITTED_TIMEOUT) {
        Ok(committed) => committed,
        Err(e) => {
            warn!(reason = %e, "cannot read Kafka's committed offsets; librdkafka will");
            return HashMap::new();
        }
    };
    committed
        .elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| {
            let start = match e.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                Offset::Invalid => Offset::Beginning,
                _ => return None,
            };
            Some((PartitionId { topic: e.topic().to_string(), partition: e.partition() }, start))
        })
        .collect()
}

/// How long an assignment waits for Kafka's committed offsets.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientContext for Ownership {
    fn stats(&self, statistics: Statistics) {
        // Bootstrap entries (node id -1) are not brokers of the cluster.
        let up = statistics.brokers.values().filter(|b| b.nodeid >= 0 && b.state == "UP").count();
        self.metrics.brokers_up.set(up as i64);
        let checkpointed = lock(&self.checkpointed);
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // librdkafka reports an internal "unassigned" partition -1.
                if partition < 0 || !p.desired {
                    continue;
                }
                let labels = PartitionLabels { topic: topic.clone(), partition };
                let lag = if p.consumer_lag_stored >= 0 { p.consumer_lag_stored } else { p.consumer_lag };
                if lag >= 0 {
                    self.metrics.consumer_lag.get_or_create(&labels).set(lag);
                }
                let id = PartitionId { topic: topic.clone(), partition };
                if p.hi_offset >= 0 {
                    let next = checkpointed.get(&id).copied().unwrap_or(0);
                    self.metrics.checkpoint_lag.get_or_create(&labels).set((p.hi_offset - next).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for Ownership {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                warn!(reason = ?other, "rebalance failed; every partition is given up");
                self.revoke(consumer, &TopicPartitionList::new());
            }
        }
    }
}
